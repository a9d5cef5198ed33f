//! Benchmark part: bundle fan-out. A group's policy file changes in the coordinator's
//! bundle directory; the figure is the time from that write until `GET /api/v1/drift`
//! shows every virtual agent of the group in sync with the new version, with the time
//! until the last agent had the new signed bundle (checked and applied) beside it.
//!
//! The agents are virtual ([`Plan::follow_bundles`]): enrolled, connected and
//! handshaken before the clock starts, subscribed to `vigil/v1/bundles/+` as real agents
//! are, each checking the bundle's signature (once per distinct message in the
//! simulator's process) and reporting the version applied in a new status, which the
//! coordinator checks (MAC), stores and compares. They send one sample every 10 s
//! meanwhile. 10,000 agents (the simulator's most) go through Mosquitto: the embedded
//! broker (rumqttd 0.20) stops routing with a few thousand connections (README,
//! Performance). The same-run baseline is 1,000 agents on the same path, so the ratio
//! says how fan-out scales with the fleet.

use std::path::Path;
use std::time::{Duration, Instant};

use super::stack::{self, Stack};
use super::{Baseline, BenchEnv, BenchError, Figure};
use crate::chaos::Chaos;
use crate::fleet::{Fleet, FleetConfig};
use crate::mode::Mode;
use crate::virtual_agent::Plan;

/// The bundle group the agents are in.
const GROUP: &str = "fleet";

/// How long the fleet may take to connect and apply the first version.
const SETTLE: Duration = Duration::from_secs(600);
/// How long the change may take to reach everyone.
const FAN_OUT: Duration = Duration::from_secs(120);

/// One measured fan-out.
struct Run {
    /// The file written → the last agent applied the new version.
    applied: Duration,
    /// The file written → `/api/v1/drift` shows every agent in sync with it.
    in_sync: Duration,
    /// One `GET /api/v1/drift` of the whole fleet, once in sync.
    drift_request: Duration,
    /// The coordinator's anonymous memory with every agent connected, MiB.
    coordinator_anon_mib: f64,
    /// Mosquitto's, MiB.
    broker_anon_mib: f64,
}

/// Measures this part's figure.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let (big, small) = if env.quick {
        (300, 30)
    } else {
        (10_000, 1_000)
    };
    let baseline = measure(env, small, true).await?;
    let run = measure(env, big, true).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(vec![Figure {
        name: format!("bundle fan-out to {big} agents, until /api/v1/drift in sync"),
        value: ms(run.in_sync),
        unit: "ms",
        baseline: Some(Baseline {
            name: format!("{small} agents, same path"),
            value: ms(baseline.in_sync),
        }),
        note: format!(
            "a policy file of the group changed → all {big} agents in sync in /api/v1/drift \
             (via Mosquitto); the last agent had applied the new signed \
             bundle after {:.0} ms ({small} agents: {:.0} ms); includes the coordinator \
             seeing the change (inotify), building and signing the bundle, the broker's \
             fan-out, every agent's signature check and status, and the coordinator \
             storing {big} statuses, polled every 20 ms (one GET /api/v1/drift of {big} \
             hosts: {:.0} ms; {small}: {:.0} ms); anonymous memory with all connected: coordinator \
             {:.0} MiB ({small}: {:.0} MiB), Mosquitto {:.0} MiB ({small}: {:.0} MiB)",
            ms(run.applied),
            ms(baseline.applied),
            ms(run.drift_request),
            ms(baseline.drift_request),
            run.coordinator_anon_mib,
            baseline.coordinator_anon_mib,
            run.broker_anon_mib,
            baseline.broker_anon_mib,
        ),
    }])
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| BenchError::Failed(format!("create {}: {e}", parent.display())))?;
    }
    // Written to a temporary file and renamed over: the coordinator never reads half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| BenchError::Failed(format!("write {}: {e}", path.display())))
}

fn policy(threshold: u32) -> String {
    format!(
        "policies:\n  - name: cpu-high\n    condition: {{type: metric_exceeds, metric: cpu_percent, threshold: {threshold}}}\n"
    )
}

async fn measure(env: &BenchEnv, agents: usize, via_mosquitto: bool) -> Result<Run, BenchError> {
    let label = format!(
        "fanout-{agents}-{}",
        if via_mosquitto {
            "mosquitto"
        } else {
            "embedded"
        }
    );
    let dir = env.work_dir.join(&label);
    let bundles = dir.join("bundles");
    write(
        &bundles.join(GROUP).join("group.yaml"),
        "selector: {fanout: \"yes\"}\n",
    )?;
    write(&bundles.join(GROUP).join("cpu.yaml"), &policy(90))?;
    let bundles_arg = bundles.display().to_string();
    let stack = Stack::start(&dir, via_mosquitto, &["--bundles", &bundles_arg]).await?;
    let coordinator = &stack.coordinator;
    let mut config = FleetConfig {
        agents,
        host_prefix: format!("{label}-"),
        labels: vec![("fanout".into(), "yes".into())],
        connect_rate: 1000,
        plan: Plan {
            broker: stack.broker.clone(),
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: Duration::from_secs(10),
            samples_per_batch: 1,
            action_every: 0,
            duration: Duration::from_secs(3600),
            batches_per_agent: None,
            seed: 11,
            signatures_only: false,
            pattern: None,
            follow_bundles: true,
            start_together: false,
        },
        logins: Default::default(),
    };
    let enrolling = Instant::now();
    config.logins = stack::enroll(coordinator, &config.hosts())
        .await
        .map_err(|e| BenchError::Failed(format!("{label}: {e}")))?;
    eprintln!(
        "  {label}: {agents} agents enrolled in {:.1} s",
        enrolling.elapsed().as_secs_f64()
    );
    let fleet = Fleet::start(config).map_err(BenchError::Failed)?;
    let client = reqwest::Client::new();

    // Everyone connected, on version 1, and seen so by the coordinator.
    let connecting = Instant::now();
    wait(&label, "every agent applied version 1", SETTLE, || async {
        fleet
            .bundle_applied(GROUP, 1)
            .is_some_and(|t| t.agents >= agents as u64)
    })
    .await?;
    wait(&label, "drift in sync at version 1", SETTLE, || async {
        in_sync(coordinator, &client, 1).await >= agents
    })
    .await?;
    eprintln!(
        "  {label}: connected and on version 1 after {:.1} s",
        connecting.elapsed().as_secs_f64()
    );

    let written = Instant::now();
    write(&bundles.join(GROUP).join("cpu.yaml"), &policy(77))?;
    wait(&label, "every agent applied version 2", FAN_OUT, || async {
        fleet
            .bundle_applied(GROUP, 2)
            .is_some_and(|t| t.agents >= agents as u64)
    })
    .await?;
    let applied = fleet.bundle_applied(GROUP, 2).map_or(Duration::ZERO, |t| {
        t.last.saturating_duration_since(written)
    });
    wait(&label, "drift in sync at version 2", FAN_OUT, || async {
        in_sync(coordinator, &client, 2).await >= agents
    })
    .await?;
    let synced = written.elapsed();
    eprintln!(
        "  {label}: applied by all after {:.0} ms, in sync in /api/v1/drift after {:.0} ms",
        applied.as_secs_f64() * 1000.0,
        synced.as_secs_f64() * 1000.0
    );
    let asked = Instant::now();
    in_sync(coordinator, &client, 2).await;
    let drift_request = asked.elapsed();
    let coordinator_anon_mib = stack::anon_mib(coordinator.proc.pid());
    let broker_anon_mib = stack
        .mosquitto
        .as_ref()
        .map_or(0.0, |m| stack::anon_mib(m.proc.pid()));
    fleet.stop();
    let _ = fleet.wait(None).await;
    stack.stop();
    Ok(Run {
        applied,
        in_sync: synced,
        drift_request,
        coordinator_anon_mib,
        broker_anon_mib,
    })
}

/// Waits (checking every 20 ms) until `done` says so, up to `within`.
async fn wait<F, Fut>(
    label: &str,
    what: &str,
    within: Duration,
    mut done: F,
) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{label}: not reached within {within:?}: {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How many hosts `/api/v1/drift` shows in sync with `version` of the group.
async fn in_sync(
    coordinator: &vigil_testkit::CoordinatorProc,
    client: &reqwest::Client,
    version: u64,
) -> usize {
    let url = format!("{}/api/v1/drift", coordinator.http);
    let Ok(response) = coordinator.authorize(client.get(&url)).send().await else {
        return 0;
    };
    let Ok(drift) = response.json::<serde_json::Value>().await else {
        return 0;
    };
    drift["hosts"].as_array().map_or(0, |hosts| {
        hosts
            .iter()
            .filter(|h| {
                h["groups"].as_array().is_some_and(|groups| {
                    groups.iter().any(|g| {
                        g["group"] == GROUP
                            && g["applied_version"] == version
                            && g["in_sync"] == true
                    })
                })
            })
            .count()
    })
}
