//! The `vigil-agent` binary: runs the agent, or an offline `policy` tool.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vigil_agent::cli::{Cli, Command, PolicyCommand};
use vigil_agent::policy_cli;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Policy(PolicyCommand::Check { paths })) => policy_cli::check(&paths),
        Some(Command::Policy(PolicyCommand::Test {
            paths,
            metrics,
            states,
            target,
            json,
        })) => policy_cli::test(&paths, &metrics, &states, target.as_deref(), json),
        None => {
            let config = match cli.run.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("vigil-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            match vigil_agent::run(config, vigil_agent::signal::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vigil-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
