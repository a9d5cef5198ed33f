//! The `vigil-agent` command line: without a subcommand it runs the agent; it also
//! installs, removes and inspects the agent as a systemd service, and runs the offline
//! `policy` tool.
//!
//! - [`args`]: the flags and subcommands (clap), and how they make the agent's config.
//! - [`install`]: `vigil-agent install|uninstall`.
//! - [`status`]: `vigil-agent status`, read from the running agent's status file.
//! - [`policy`]: `vigil-agent policy check|test`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{AgentFile, DEFAULT_DATA_DIR};
use crate::reporting::enrollment::IdentityError;
use crate::runner::AgentError;

mod args;
mod install;
mod policy;
mod status;

use args::{Cli, Command, PolicyCommand};

/// `EX_CONFIG` from sysexits.h: the agent is not configured to run. The unit's
/// `RestartPreventExitStatus=78` keeps systemd from restarting it in a loop.
const EXIT_NOT_CONFIGURED: u8 = 78;

/// The agent's command line as clap describes it (for the man page and completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Reads the command line and does what it says; the process's exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Policy(PolicyCommand::Check { paths })) => policy::check(&paths),
        Some(Command::Policy(PolicyCommand::Test {
            paths,
            metrics,
            states,
            target,
            json,
        })) => policy::test(&paths, &metrics, &states, target.as_deref(), json),
        Some(Command::Install(args)) => {
            let request = args.into_request();
            // systemctl waits for the agent's readiness: keep it off the async workers.
            let result = tokio::task::spawn_blocking(move || install::install(&request)).await;
            match result {
                Ok(Ok(steps)) => {
                    print!("{steps}");
                    if steps.changed() {
                        println!(
                            "vigil-agent is installed and running; `vigil-agent status` tells \
                             what it is doing"
                        );
                    } else {
                        println!("unchanged: vigil-agent is installed, enabled and running");
                    }
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => {
                    eprintln!("vigil-agent install: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("vigil-agent install: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Uninstall { purge }) => match install::uninstall(purge) {
            Ok(steps) => {
                print!("{steps}");
                println!("vigil-agent is uninstalled");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vigil-agent uninstall: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Status {
            config,
            data_dir,
            json,
        }) => {
            let data_dir = match data_dir_for_status(config, data_dir) {
                Ok(dir) => dir,
                Err(e) => {
                    eprintln!("vigil-agent status: {e}");
                    return ExitCode::from(4);
                }
            };
            status::status(&data_dir, json)
        }
        None => {
            let config = match cli.run.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("vigil-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            match crate::runner::run(config, vigil_service::process::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ AgentError::Identity(IdentityError::NotEnrolled { .. })) => {
                    eprintln!("vigil-agent: {e}");
                    ExitCode::from(EXIT_NOT_CONFIGURED)
                }
                Err(e) => {
                    eprintln!("vigil-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The data directory `status` reads: `--data-dir`, else the config's (`--config`, else
/// the installed one if it exists), else the default.
fn data_dir_for_status(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<PathBuf, String> {
    if let Some(dir) = data_dir {
        return Ok(dir);
    }
    let config = config.or_else(|| {
        let installed = PathBuf::from(install::CONFIG_FILE);
        installed.exists().then_some(installed)
    });
    let from_file = match config {
        Some(path) => AgentFile::load(&path).map_err(|e| e.to_string())?.data_dir,
        None => None,
    };
    Ok(from_file.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)))
}
