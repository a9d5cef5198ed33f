//! The `vigil-agent` binary: runs the agent; installs, removes and inspects it as a
//! systemd service; or runs an offline `policy` tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vigil_agent::cli::{Cli, Command, PolicyCommand};
use vigil_agent::config::{AgentFile, DEFAULT_DATA_DIR};
use vigil_agent::identity::IdentityError;
use vigil_agent::runner::AgentError;
use vigil_agent::{install, policy_cli, status_cli};

/// `EX_CONFIG` from sysexits.h: the agent is not configured to run. The unit's
/// `RestartPreventExitStatus=78` keeps systemd from restarting it in a loop.
const EXIT_NOT_CONFIGURED: u8 = 78;

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
            status_cli::status(&data_dir, json)
        }
        None => {
            let config = match cli.run.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("vigil-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            match vigil_agent::run(config, vigil_service::process::shutdown_signal()).await {
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
