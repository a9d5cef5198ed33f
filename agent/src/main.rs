//! The `vigil-agent` binary: logs to stderr (`VIGIL_LOG` sets the filter, default
//! `info`) and hands the command line to [`vigil_agent::cli::main`].

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    vigil_agent::cli::main().await
}
