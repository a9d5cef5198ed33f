//! `vigil-sim`: the fleet simulator (`simulate`) and the benchmark suite (`bench`).

use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use vigil_shared::broker_url::BrokerUrl;
use vigil_sim::bench::{self, BenchEnv, Part};
use vigil_sim::chaos::Chaos;
use vigil_sim::enroll::Enroller;
use vigil_sim::fleet::{Fleet, FleetConfig};
use vigil_sim::mode::Mode;
use vigil_sim::verify::{self, CoordinatorCounts};
use vigil_sim::virtual_agent::Plan;

/// Vigil fleet simulator and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "vigil-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fleet of virtual agents against a broker and the coordinator behind it: each
    /// is enrolled at the coordinator first (its own key and MQTT login), then connects
    /// as `vigil-agent-{host}` and seals everything it publishes.
    Simulate(Box<SimulateArgs>),
    /// Measure the README's performance figures against real processes (build first:
    /// `cargo build --release --bins`).
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// The broker the virtual agents connect to.
    #[arg(long, env = "VIGIL_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    broker: BrokerUrl,
    /// The coordinator's REST address, where the virtual agents enroll before they
    /// connect [default: the --verify URL, else http://127.0.0.1:8000]
    #[arg(long, env = "VIGIL_COORDINATOR", value_name = "URL")]
    coordinator: Option<String>,
    /// Admin REST API token (the coordinator writes it to <data-dir>/admin.token): makes
    /// the join token the virtual agents enroll with, revokes identities an earlier run
    /// left under the same host names, and authenticates --verify's lookups. Required
    /// unless --join-token is given.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Enroll with this join token (`vigil-coordinator token create --join --uses N`, N
    /// at least --agents) instead of making one with --token; without --token, hosts
    /// already enrolled cannot be replaced.
    #[arg(long, env = "VIGIL_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// MQTT user name for every agent, instead of each one's enrolled login (only for an
    /// external broker with accounts of its own) [default: the enrolled logins]
    #[arg(long, env = "VIGIL_MQTT_USERNAME")]
    username: Option<String>,
    /// MQTT password going with --username [default: none]
    #[arg(long, env = "VIGIL_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Number of virtual agents, 1 to 10,000.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Load shape.
    #[arg(long, value_enum, default_value = "steady")]
    mode: Mode,
    /// How long to run, e.g. 60s, 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between an agent's ticks (one batch per tick at the steady rate); 0s sends as
    /// fast as the connection takes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Samples per metric batch.
    #[arg(long, default_value_t = 100)]
    samples_per_batch: usize,
    /// Publish an action's transitions every this many batches (0: never).
    #[arg(long, default_value_t = 10)]
    action_every: u64,
    /// Stop each agent after this many batches [default: run for --duration]
    #[arg(long)]
    batches_per_agent: Option<u64>,
    /// Probability that a batch is replaced by a malformed payload [default: 0.05 in
    /// chaos mode, else 0]
    #[arg(long)]
    malformed_rate: Option<f64>,
    /// Probability that an action transition is published twice [default: 0.2 in chaos
    /// mode, else 0]
    #[arg(long)]
    duplicate_rate: Option<f64>,
    /// Probability that a batch carries old timestamps and sequence numbers [default: 0.1
    /// in chaos mode, else 0]
    #[arg(long)]
    out_of_order_rate: Option<f64>,
    /// Probability per tick that an agent drops its connection without a DISCONNECT
    /// [default: 0.01 in chaos mode, else 0]
    #[arg(long)]
    disconnect_rate: Option<f64>,
    /// Host names are this prefix and the agent's index.
    #[arg(long, default_value = "sim-")]
    host_prefix: String,
    /// Extra label for every agent, as key=value; repeat for more.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// New connections per second while the fleet starts.
    #[arg(long, default_value_t = 500)]
    connect_rate: u32,
    /// Seed for the fault dice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sign every message with the agent's ed25519 key (no session key handshake).
    #[arg(long)]
    signatures_only: bool,
    /// Follow the coordinator's policy bundles as real agents do (subscribe, check each
    /// signature, report the versions applied in the status: `/api/v1/drift`). Needs
    /// enrolled agents (the enrollment names the coordinator's key).
    #[arg(long)]
    follow_bundles: bool,
    /// Print a progress line this often.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    progress: Duration,
    /// Verify the run against the coordinator (at URL, or at --coordinator when no URL is
    /// given), one id at a time over its REST API: every action transition generated
    /// must be stored exactly once, and every metric sample generated must be stored
    /// (each host's series at each batch's timestamp); its counters are read before and
    /// after (every malformed payload counted as rejected under its kind's reason,
    /// nothing else rejected; skipped with a note if the coordinator restarted). Exits
    /// non-zero if it does not hold.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    verify: Option<String>,
}

/// Where `simulate` finds the coordinator when neither --coordinator nor --verify URL is
/// given (its default REST listen address).
const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:8000";

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
    /// The agent binary the footprint and restart parts run, e.g. the static build of
    /// `scripts/dist` [default: the vigil-agent beside this program]
    #[arg(long, value_name = "PATH")]
    agent: Option<std::path::PathBuf>,
    /// Samples per second offered in the ingest part's sustained run [default: 300000,
    /// 30000 with --quick]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1000..=10_000_000))]
    sustained_rate: Option<u64>,
}

// Thousands of virtual agents make, seal and publish a batch each every few
// milliseconds on the runtime's threads: with glibc's malloc, the simulator's allocations
// took a tenth of a 2-core machine during an ingest burst, CPU the coordinator under test
// could not have. mimalloc, as the coordinator uses (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Simulate(args) => simulate_main(*args).await,
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
        vec![
            Part::Ingest,
            Part::Latency,
            Part::Footprint,
            Part::Audit,
            Part::Retention,
            Part::Restart,
            Part::Fanout,
            Part::Fleet,
        ]
    } else {
        args.parts
    };
    let env = BenchEnv {
        work_dir,
        quick: args.quick,
        agent: args.agent,
        sustained_rate: args.sustained_rate,
    };
    match bench::run(&env, &parts).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-sim bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate_main(args: SimulateArgs) -> ExitCode {
    let defaults = if args.mode == Mode::Chaos {
        Chaos::DEFAULT
    } else {
        Chaos::NONE
    };
    let chaos = Chaos {
        malformed_rate: args.malformed_rate.unwrap_or(defaults.malformed_rate),
        duplicate_rate: args.duplicate_rate.unwrap_or(defaults.duplicate_rate),
        out_of_order_rate: args.out_of_order_rate.unwrap_or(defaults.out_of_order_rate),
        disconnect_rate: args.disconnect_rate.unwrap_or(defaults.disconnect_rate),
    };
    let mut labels = Vec::new();
    for label in &args.labels {
        match label.split_once('=') {
            Some((k, v)) if !k.is_empty() => labels.push((k.to_string(), v.to_string())),
            _ => {
                eprintln!("vigil-sim: --label `{label}` is not key=value");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.broker.tls {
        eprintln!(
            "vigil-sim: {} uses TLS; the simulator speaks plain MQTT only (run it on the \
             coordinator's machine, against the embedded broker's loopback address)",
            args.broker
        );
        return ExitCode::FAILURE;
    }
    let mut config = FleetConfig {
        agents: args.agents,
        host_prefix: args.host_prefix,
        labels,
        connect_rate: args.connect_rate,
        plan: Plan {
            broker: args.broker,
            credentials: args
                .username
                .map(|u| (u, args.password.unwrap_or_default())),
            mode: args.mode,
            chaos,
            interval: args.interval,
            samples_per_batch: args.samples_per_batch,
            action_every: args.action_every,
            duration: args.duration,
            batches_per_agent: args.batches_per_agent,
            seed: args.seed,
            signatures_only: args.signatures_only,
            pattern: None,
            follow_bundles: args.follow_bundles,
            start_together: false,
        },
        logins: Default::default(),
    };
    if let Err(e) = config.validate() {
        eprintln!("vigil-sim: {e}");
        return ExitCode::FAILURE;
    }
    let coordinator = args
        .coordinator
        .clone()
        .or_else(|| args.verify.clone().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_COORDINATOR.to_string());
    let coordinator = coordinator.trim_end_matches('/').to_string();
    let verify_url = args.verify.as_ref().map(|v| {
        if v.is_empty() {
            coordinator.clone()
        } else {
            v.trim_end_matches('/').to_string()
        }
    });
    if args.token.is_none() && args.join_token.is_none() {
        eprintln!(
            "vigil-sim: simulate needs an admin REST token (--token, see \
             <data-dir>/admin.token) to enroll its virtual agents (or a join token: \
             --join-token)"
        );
        return ExitCode::FAILURE;
    }
    let enroller = Enroller {
        http: coordinator,
        admin_token: args.token.clone(),
        join_token: args.join_token.clone(),
        progress: true,
    };
    config.logins = match enroller.enroll(&config.hosts()).await {
        Ok(logins) => logins,
        Err(e) => {
            eprintln!("vigil-sim: enrollment failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let before = match &verify_url {
        Some(http) => match CoordinatorCounts::read(http).await {
            Ok(counts) => Some(counts),
            Err(e) => {
                eprintln!("vigil-sim: cannot read the coordinator's counters: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let fleet = match Fleet::start(config) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("vigil-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = fleet.stop_handle();
    let stopper = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "vigil-sim: stopping (waiting for the coordinator to acknowledge what the \
                 agents queued)"
            );
            stop.stop();
        }
    });
    let outcome = fleet.wait(Some(args.progress)).await;
    stopper.abort();
    print!("{}", outcome.report);
    if let (Some(http), Some(before)) = (&verify_url, before) {
        match verify::verify(
            http,
            args.token.as_deref(),
            &outcome,
            before,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(result) => {
                println!("{result}");
                if !result.passed() {
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("vigil-sim: verification failed to run: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
