//! Benchmark part: a large fleet on one coordinator with its embedded broker. 10,000
//! virtual agents (enrolled and handshaken as real agents are, one MQTT connection each,
//! subscribed to their commands, acknowledgements and the bundles) send a batch every
//! 10 s for 5 minutes. The figure is the coordinator's anonymous memory at the end of
//! those 5 minutes; the same-run baseline is 1,000 agents on the same path, and the
//! coordinator idle before them, so that the difference says what one agent costs.
//! Every batch sent must be stored (`vigil_samples_stored_total` reaches what the fleet
//! sent, `vigil_metric_batches_missing_total` stays 0).

use std::time::{Duration, Instant};

use super::stack::{self, Stack};
use super::{Baseline, BenchEnv, BenchError, Figure};
use crate::chaos::Chaos;
use crate::fleet::{Fleet, FleetConfig};
use crate::mode::Mode;
use crate::virtual_agent::Plan;
use vigil_testkit::prometheus_value;

/// Time between an agent's batches.
const INTERVAL: Duration = Duration::from_secs(10);

/// Samples in each batch.
const SAMPLES: usize = 10;

/// How long the whole fleet may take to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(300);

/// How long after the last batch everything must be stored.
const STORE_WITHIN: Duration = Duration::from_secs(60);

/// One measured fleet.
struct Run {
    /// The coordinator's anonymous memory before the fleet connected, MiB.
    idle_mib: f64,
    /// The same with the whole fleet connected, once the run's time is up, MiB.
    end_mib: f64,
    /// The most seen during the run, MiB.
    peak_mib: f64,
    /// From the first connection until every agent was connected.
    connected_in: Duration,
    /// Samples the fleet sent (all stored).
    samples: u64,
    /// The coordinator's open file descriptors with the fleet connected.
    open_files: usize,
}

/// Measures this part's figure.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let (big, small, minutes) = if env.quick {
        (300, 30, 0.5)
    } else {
        (10_000, 1_000, 5.0)
    };
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let baseline = measure(env, small, run_for).await?;
    let run = match measure(env, big, run_for).await {
        Ok(run) => run,
        // The smaller fleet's figure still says what an agent costs.
        Err(e) => {
            return Ok(vec![Figure {
                name: format!(
                    "{small} agents on the embedded broker: coordinator anonymous memory after {minutes} min"
                ),
                value: baseline.end_mib,
                unit: "MiB",
                baseline: Some(Baseline {
                    name: "idle, before the fleet".into(),
                    value: baseline.idle_mib,
                }),
                note: format!(
                    "all {} samples stored; peak {:.0} MiB; all connected in {:.1} s; \
                     {big} agents did not come up: {e}",
                    baseline.samples,
                    baseline.peak_mib,
                    baseline.connected_in.as_secs_f64(),
                ),
            }])
        }
    };
    let per_agent_kib = (run.end_mib - baseline.end_mib) * 1024.0 / (big - small) as f64;
    Ok(vec![Figure {
        name: format!(
            "{big} agents on the embedded broker: coordinator anonymous memory after {minutes} min"
        ),
        value: run.end_mib,
        unit: "MiB",
        baseline: Some(Baseline {
            name: format!("{small} agents, same path"),
            value: baseline.end_mib,
        }),
        note: format!(
            "one batch of {SAMPLES} samples per agent every {} s, all {} samples stored \
             ({small} agents: {}); idle before the fleet: {:.0} MiB; peak {:.0} MiB \
             ({small}: {:.0}); ≈ {per_agent_kib:.0} KiB per added agent; all connected \
             in {:.1} s ({small}: {:.1} s); {} open files ({small}: {})",
            INTERVAL.as_secs(),
            run.samples,
            baseline.samples,
            run.idle_mib,
            run.peak_mib,
            baseline.peak_mib,
            run.connected_in.as_secs_f64(),
            baseline.connected_in.as_secs_f64(),
            run.open_files,
            baseline.open_files,
        ),
    }])
}

async fn measure(env: &BenchEnv, agents: usize, run_for: Duration) -> Result<Run, BenchError> {
    let label = format!("fleet-{agents}-embedded");
    let mut stack = Stack::start(&env.work_dir.join(&label), false, &[]).await?;
    let pid = stack.coordinator.proc.pid();
    let batches_per_agent = (run_for.as_secs_f64() / INTERVAL.as_secs_f64()).ceil() as u64 + 1;
    let mut config = FleetConfig {
        agents,
        host_prefix: format!("{label}-"),
        labels: Vec::new(),
        connect_rate: 1000,
        plan: Plan {
            broker: stack.broker.clone(),
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: INTERVAL,
            samples_per_batch: SAMPLES,
            action_every: 0,
            duration: run_for + CONNECT_WITHIN + INTERVAL * 3,
            batches_per_agent: Some(batches_per_agent),
            seed: 13,
            signatures_only: false,
            pattern: None,
            follow_bundles: true,
            start_together: false,
        },
        logins: Default::default(),
    };
    config.logins = stack::enroll(&stack.coordinator, &config.hosts())
        .await
        .map_err(|e| BenchError::Failed(format!("{label}: {e}")))?;
    let idle_mib = stack::anon_mib(pid);
    let fleet = Fleet::start(config).map_err(BenchError::Failed)?;
    let started = Instant::now();
    while fleet.snapshot().connected < agents as u64 {
        if started.elapsed() > CONNECT_WITHIN {
            let connected = fleet.snapshot().connected;
            fleet.stop();
            let _ = fleet.wait(None).await;
            stack.stop();
            return Err(BenchError::Failed(format!(
                "{label}: {connected} of {agents} agents connected after {CONNECT_WITHIN:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected_in = started.elapsed();
    eprintln!(
        "  {label}: {agents} agents connected in {:.1} s",
        connected_in.as_secs_f64()
    );
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let until = Instant::now() + run_for;
    let mut peak_mib: f64 = 0.0;
    let mut end_mib = 0.0;
    while Instant::now() < until {
        end_mib = stack::anon_mib(pid);
        peak_mib = peak_mib.max(end_mib);
        stack::check_alive(&label, &mut stack.coordinator.proc)?;
        tokio::time::sleep(Duration::from_secs(5).min(until - Instant::now())).await;
    }
    let sent = fleet.snapshot();
    eprintln!(
        "  {label}: {:.0} MiB anonymous after {:.0} s ({} batches sent so far)",
        end_mib,
        run_for.as_secs_f64(),
        sent.batches
    );

    // Every agent sends its last batch, then every sample must be stored.
    let outcome = fleet.wait(None).await;
    let samples = outcome.report.samples;
    let metrics_url = format!("{}/metrics", stack.coordinator.http);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + STORE_WITHIN;
    loop {
        let page = match client.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => return Err(BenchError::Failed(format!("GET {metrics_url}: {e}"))),
        };
        let stored = prometheus_value(&page, "vigil_samples_stored_total");
        let missing = prometheus_value(&page, "vigil_metric_batches_missing_total");
        if missing > 0.0 {
            return Err(BenchError::Failed(format!(
                "{label}: {missing} metric batches lost (vigil_metric_batches_missing_total)"
            )));
        }
        if stored >= samples as f64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{label}: {stored} of {samples} samples stored {STORE_WITHIN:?} after the last batch"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop();
    Ok(Run {
        idle_mib,
        end_mib,
        peak_mib,
        connected_in,
        samples,
        open_files,
    })
}
