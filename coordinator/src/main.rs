//! The `vigil-coordinator` binary: `up` (coordinator plus local agent), `serve`, the
//! offline tools, and `install`/`uninstall` as a systemd service.

// The REST API's warp filter tree is deep: optimized builds (release, musl) overflow the
// default trait-evaluation depth (E0275) proving its futures `Unpin`.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vigil_agent::config::{resolve as resolve_agent, AgentFile, Overrides as AgentOverrides};
use vigil_agent::signal::shutdown_signal;
use vigil_coordinator::cli::{Cli, Command, DEFAULT_AGENT_POLICIES};
use vigil_coordinator::{install_cli, Coordinator};
use vigil_service::ServiceManager;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off")),
        )
        .init();
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
        Command::Bundle(args) => vigil_coordinator::bundles::cli::run(args),
        Command::Token(args) => vigil_coordinator::tokens_cli::run(args),
        Command::Agent(args) => vigil_coordinator::agents_cli::run(args),
        Command::Certs(args) => vigil_coordinator::certs_cli::run(args),
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
                    vigil_coordinator::tokens::ADMIN_TOKEN_FILE
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
        Command::Up(args) => {
            let config = args.serve.into_config().map_err(|e| e.to_string())?;
            let data_dir = config.data_dir.clone();
            let curl = match (&config.tls, &config.tls_ca) {
                (Some(_), Some(ca)) => format!("curl --cacert {}", ca.display()),
                _ => "curl".to_string(),
            };
            // The local agent trusts this coordinator's bundle-signing key.
            let bundle_public_key =
                vigil_coordinator::bundles::keys::public_path(&config.bundle_key);
            let coordinator = Coordinator::start(config)
                .await
                .map_err(|e| e.to_string())?;
            let agent_config = resolve_agent(
                AgentFile::default(),
                AgentOverrides {
                    host: args.agent_host,
                    labels: args.agent_labels,
                    // In-process, the agent uses the broker's plaintext loopback address.
                    broker: Some(
                        coordinator
                            .local_broker_url
                            .as_ref()
                            .unwrap_or(&coordinator.broker_url)
                            .to_string(),
                    ),
                    interval: args.agent_interval,
                    data_dir: Some(data_dir.clone()),
                    bundle_key: Some(bundle_public_key.display().to_string()),
                    policies: args.agent_policies.or_else(|| {
                        let default = std::path::PathBuf::from(DEFAULT_AGENT_POLICIES);
                        default.is_dir().then_some(default)
                    }),
                    ..AgentOverrides::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let coordinator_key = std::fs::read_to_string(&bundle_public_key)
                .map_err(|e| format!("cannot read {}: {e}", bundle_public_key.display()))?;
            vigil_coordinator::local_agent::ensure_identity(
                &coordinator.store,
                &data_dir,
                &agent_config.host,
                Some(coordinator_key.trim()),
            )?;
            let http = format!(
                "{}://{}",
                if coordinator.tls { "https" } else { "http" },
                coordinator.http_addr
            );
            let token_file = data_dir.join(vigil_coordinator::tokens::ADMIN_TOKEN_FILE);
            let token_note = match &coordinator.admin_token_file {
                Some(path) => format!("{} (created now, mode 0600)", path.display()),
                None if token_file.is_file() => format!("{}", token_file.display()),
                None => "see `vigil-coordinator token create --role admin --name me`".into(),
            };
            println!(
                "Vigil is up.\n  REST API:  {http}  (status page: {http}/ — give it the admin token)\n  MQTT:      {}\n  data dir:  {}\n  \
                 admin token: {token_note}\n  \
                 local agent `{}` reports every {}, policies: {}\n\
                 Try:  {curl} -H \"Authorization: Bearer $(cat {})\" {http}/api/v1/hosts\n\
                 Stop with Ctrl-C.",
                coordinator.broker_url,
                data_dir.display(),
                agent_config.host,
                vigil_shared::time::format_duration(agent_config.interval),
                agent_config
                    .policies
                    .as_ref()
                    .map_or("none".to_string(), |p| p.display().to_string()),
                token_file.display(),
            );
            let result = vigil_agent::run(agent_config, shutdown_signal()).await;
            tracing::info!("shutting down");
            coordinator.stop().await;
            result.map_err(|e| e.to_string())
        }
    }
}
