//! The `vigil-agent` binary: parses the command line and runs the agent.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vigil_agent::cli::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vigil-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match vigil_agent::run(config, vigil_agent::signal::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
