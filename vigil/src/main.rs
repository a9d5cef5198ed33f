//! The `vigil` binary: `vigil up` starts Vigil on one machine with embedded defaults, the
//! coordinator (broker, LMDB in a data dir, REST API) and an agent for this host in one
//! process. It is the only crate that links both the agent and the coordinator; each is
//! also shipped alone (`vigil-agent`, `vigil-coordinator`).

// The coordinator's warp filter tree is deep: optimized builds overflow the default
// trait-evaluation depth (E0275) proving its futures `Unpin`.
#![recursion_limit = "256"]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vigil_agent::config::{resolve as resolve_agent, AgentFile, Overrides as AgentOverrides};
use vigil_coordinator::cli::ServeArgs;
use vigil_coordinator::Coordinator;
use vigil_service::process::shutdown_signal;

/// Vigil on one machine: the coordinator and an agent for this host.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator and an agent for this machine in one process: Vigil on embedded
    /// defaults.
    Up(UpArgs),
}

/// Settings of `up`: the coordinator's (as `vigil-coordinator serve` takes them), plus the
/// local agent's.
#[derive(Debug, Args)]
struct UpArgs {
    /// Coordinator settings.
    #[command(flatten)]
    serve: ServeArgs,

    /// Host name the local agent reports under [default: this machine's host name]
    #[arg(long, env = "VIGIL_AGENT_HOST")]
    agent_host: Option<String>,

    /// Label for the local agent, as key=value; repeat for more [default: none]
    #[arg(
        long = "agent-label",
        env = "VIGIL_AGENT_LABELS",
        value_delimiter = ','
    )]
    agent_labels: Vec<String>,

    /// Local agent's sampling interval [default: 5s]
    #[arg(long, env = "VIGIL_AGENT_INTERVAL")]
    agent_interval: Option<String>,

    /// Local agent's policy directory [default: policies/local, if it exists]
    #[arg(long, env = "VIGIL_AGENT_POLICIES")]
    agent_policies: Option<PathBuf>,
}

/// The local agent's policy directory when none is given.
const DEFAULT_AGENT_POLICIES: &str = "policies/local";

#[tokio::main]
async fn main() -> ExitCode {
    vigil_service::logging::init(
        "vigil",
        EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off")),
    );
    let Command::Up(args) = Cli::parse().command;
    match up(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vigil: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> Result<(), String> {
    let config = args.serve.into_config().map_err(|e| e.to_string())?;
    let data_dir = config.data_dir.clone();
    let curl = match (&config.tls, &config.tls_ca) {
        (Some(_), Some(ca)) => format!("curl --cacert {}", ca.display()),
        _ => "curl".to_string(),
    };
    // The local agent trusts this coordinator's bundle-signing key.
    let bundle_public_key = vigil_coordinator::bundle_public_key_path(&config.bundle_key);
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
                let default = PathBuf::from(DEFAULT_AGENT_POLICIES);
                default.is_dir().then_some(default)
            }),
            ..AgentOverrides::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let coordinator_key = std::fs::read_to_string(&bundle_public_key)
        .map_err(|e| format!("cannot read {}: {e}", bundle_public_key.display()))?;
    coordinator.ensure_local_identity(&data_dir, &agent_config.host, coordinator_key.trim())?;
    let http = format!(
        "{}://{}",
        if coordinator.tls { "https" } else { "http" },
        coordinator.http_addr
    );
    let token_file = data_dir.join(vigil_coordinator::ADMIN_TOKEN_FILE);
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
