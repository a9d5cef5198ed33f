//! `vigil-sim`: the fleet simulator (`simulate`) and the benchmark suite (`bench`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vigil_sim::bench::{self, BenchEnv, Part};

/// Vigil fleet simulator and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "vigil-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the README's performance figures against real processes (build first:
    /// `cargo build --release --bins`).
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Parts to run [default: all]
    #[arg(long = "part", value_enum, value_delimiter = ',')]
    parts: Vec<Part>,
    /// Smaller sizes and shorter runs: a smoke test, not the README's figures.
    #[arg(long)]
    quick: bool,
    /// Scratch directory for data and logs [default: a temporary directory]
    #[arg(long)]
    work_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench_main(args).await,
    }
}

async fn bench_main(args: BenchArgs) -> ExitCode {
    let temp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vigil-sim: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work_dir = args.work_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let parts = if args.parts.is_empty() {
        vec![Part::Ingest, Part::Latency, Part::Footprint, Part::Audit]
    } else {
        args.parts
    };
    let env = BenchEnv {
        work_dir,
        quick: args.quick,
    };
    match bench::run(&env, &parts).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-sim bench: {e}");
            ExitCode::FAILURE
        }
    }
}
