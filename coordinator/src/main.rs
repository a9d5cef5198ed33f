//! The `vigil-coordinator` binary: `serve`, the offline tools, and `install`/`uninstall` as a systemd service.

// The REST API's warp filter tree is deep: optimized builds (release, musl) overflow the
// default trait-evaluation depth (E0275) proving its futures `Unpin`.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vigil_coordinator::cli::install as install_cli;
use vigil_coordinator::cli::{Cli, Command};
use vigil_coordinator::Coordinator;
use vigil_service::process::shutdown_signal;
use vigil_service::ServiceManager;

// Ingest allocates and frees for every message (decoded batches, LMDB keys and values,
// acknowledgements) on several threads at once: mimalloc's per-thread heaps cost less
// there than glibc's malloc, and far less than musl's (the shipped static build).
// Built without transparent huge pages (`no_thp`): with them, each sparsely used buffer
// the embedded broker keeps per connection and per subscription (reserved for hundreds
// of messages, holding a few) made 2 MiB resident instead of a few pages, ≈ 1.4 MiB
// per connected agent against ≈ 0.1 MiB without (README, "vigil-sim bench").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    vigil_service::logging::init(
        "vigil-coordinator",
        EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off")),
    );
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vigil-coordinator: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Bundle(args) => vigil_coordinator::cli::bundle::run(args),
        Command::Policy(args) => vigil_coordinator::cli::policy::run(args).await,
        Command::Token(args) => vigil_coordinator::cli::tokens::run(args),
        Command::Agent(args) => vigil_coordinator::cli::agents::run(args),
        Command::Certs(args) => vigil_coordinator::cli::certs::run(args),
        Command::Install(args) => {
            // systemctl waits for the coordinator's readiness: keep it off the async workers.
            let steps = tokio::task::spawn_blocking(move || install_cli::install(&args))
                .await
                .map_err(|e| e.to_string())??;
            print!("{steps}");
            if steps.changed() {
                println!(
                    "vigil-coordinator is installed and running as user `{}`; its admin token \
                     is in {}/{} (created on its first start)",
                    install_cli::USER,
                    install_cli::DATA_DIR,
                    vigil_coordinator::ADMIN_TOKEN_FILE
                );
            } else {
                println!("unchanged: vigil-coordinator is installed, enabled and running");
            }
            Ok(())
        }
        Command::Uninstall(args) => {
            let steps = install_cli::uninstall(&args)?;
            print!("{steps}");
            println!("vigil-coordinator is uninstalled");
            Ok(())
        }
        Command::Serve(args) => {
            let service = ServiceManager::from_env();
            service.status("starting");
            let config = args.into_config().map_err(|e| e.to_string())?;
            let coordinator = Coordinator::start(config)
                .await
                .map_err(|e| e.to_string())?;
            // Listeners are bound: systemd may start what comes after this unit.
            service.ready(&format!(
                "REST API on {}://{}, MQTT on {}",
                if coordinator.tls { "https" } else { "http" },
                coordinator.http_addr,
                coordinator.broker_url
            ));
            shutdown_signal().await;
            service.stopping();
            tracing::info!("shutting down");
            coordinator.stop().await;
            Ok(())
        }
    }
}
