//! The `vigilctl` binary: parses the command line and hands it to [`vigilctl::run`].

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    vigilctl::run(vigilctl::cli::Cli::parse()).await
}
