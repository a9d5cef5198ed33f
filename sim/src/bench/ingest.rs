//! Benchmark part: coordinator ingest throughput — metric samples per second stored in
//! LMDB and queryable — with 100 and 1,000 virtual agents sending batches of 100 samples
//! as fast as their connections take, through the embedded broker and, as the same-run
//! baseline, through Mosquitto as an external broker.
//!
//! The rate is read off the coordinator's own `vigil_samples_stored_total` between 10%
//! and 90% of the samples stored (so connection set-up and the last stragglers do not
//! count), and the run ends with a REST query that must return the last host's samples.

use std::time::{Duration, Instant};

use vigil_shared::broker_url::BrokerUrl;

use super::{Baseline, BenchEnv, BenchError, Figure};
use crate::chaos::Chaos;
use crate::fleet::{Fleet, FleetConfig};
use crate::mode::Mode;
use crate::procs::{self, prometheus_value};
use crate::virtual_agent::Plan;

/// Samples per batch, as the issue asks.
const BATCH: usize = 100;

/// One measured run.
struct Run {
    /// Samples per second between 10% and 90% stored.
    rate: f64,
    /// Samples per second from the first publish to the last sample stored.
    overall: f64,
}

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let total_samples: u64 = if env.quick {
        200_000
    } else {
        std::env::var("VIGIL_BENCH_SAMPLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000_000)
    };
    let mut figures = Vec::new();
    for agents in [100usize, 1000] {
        let embedded = measure(env, agents, total_samples, false).await?;
        let mosquitto = measure(env, agents, total_samples, true).await?;
        figures.push(Figure {
            name: format!("ingest, {agents} agents, embedded broker"),
            value: embedded.rate,
            unit: "samples/s",
            baseline: Some(Baseline {
                name: "Mosquitto as external broker".into(),
                value: mosquitto.rate,
            }),
            note: format!(
                "{total_samples} samples in batches of {BATCH}, stored in LMDB and queryable; \
                 first publish to last stored: {:.0} samples/s embedded, {:.0} via Mosquitto. \
                 Simulator, broker and coordinator share the machine's cores.",
                embedded.overall, mosquitto.overall
            ),
        });
    }
    Ok(figures)
}

async fn measure(
    env: &BenchEnv,
    agents: usize,
    total_samples: u64,
    via_mosquitto: bool,
) -> Result<Run, BenchError> {
    let label = format!(
        "ingest-{agents}-{}",
        if via_mosquitto {
            "mosquitto"
        } else {
            "embedded"
        }
    );
    let dir = env.work_dir.join(&label);
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let mosquitto = if via_mosquitto {
        Some(procs::start_mosquitto(&dir)?)
    } else {
        None
    };
    let coordinator =
        procs::start_coordinator(&dir, mosquitto.as_ref().map(|m| m.url.as_str()), &[]).await?;
    // Give an external broker's subscription a moment to be in place.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker: BrokerUrl = coordinator
        .broker
        .parse()
        .map_err(|e| BenchError::Failed(format!("broker URL: {e}")))?;
    let batches_per_agent = (total_samples / BATCH as u64).div_ceil(agents as u64);
    let expected = batches_per_agent * agents as u64 * BATCH as u64;
    let fleet = Fleet::start(FleetConfig {
        agents,
        host_prefix: format!("{label}-"),
        labels: Vec::new(),
        connect_rate: 2000,
        plan: Plan {
            broker,
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: Duration::ZERO,
            samples_per_batch: BATCH,
            action_every: 0,
            duration: Duration::from_secs(600),
            batches_per_agent: Some(batches_per_agent),
            seed: 7,
        },
    })
    .map_err(BenchError::Failed)?;
    let started = Instant::now();
    let metrics_url = format!("{}/metrics", coordinator.http);
    let client = reqwest::Client::new();
    let mut low: Option<(Instant, f64)> = None;
    let mut high: Option<(Instant, f64)> = None;
    let deadline = started + Duration::from_secs(600);
    let stored = loop {
        let stored = match client.get(&metrics_url).send().await {
            Ok(r) => prometheus_value(
                &r.text().await.unwrap_or_default(),
                "vigil_samples_stored_total",
            ),
            Err(e) => return Err(BenchError::Failed(format!("GET {metrics_url}: {e}"))),
        };
        let now = Instant::now();
        if low.is_none() && stored >= expected as f64 * 0.1 {
            low = Some((now, stored));
        }
        if high.is_none() && stored >= expected as f64 * 0.9 {
            high = Some((now, stored));
        }
        if stored >= expected as f64 {
            break stored;
        }
        if now > deadline {
            return Err(BenchError::Failed(format!(
                "{label}: only {stored} of {expected} samples stored after 600 s (sent: {})",
                fleet.snapshot().progress_line()
            )));
        }
        if fleet.is_finished() && fleet.snapshot().batches * (BATCH as u64) < expected {
            return Err(BenchError::Failed(format!(
                "{label}: the fleet finished without sending everything: {}",
                fleet.snapshot().progress_line()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished = Instant::now();
    let outcome = fleet.wait(None).await;
    if outcome.report.acked < outcome.report.batches {
        tracing::warn!("{label}: {}", outcome.report.progress_line());
    }
    // Queryable: the last agent's samples come back over REST.
    let host = format!("{label}-{:05}", agents - 1);
    let url = format!(
        "{}/api/v1/metrics/query?name=cpu_percent&host={host}&limit=10000",
        coordinator.http
    );
    let body: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))?
        .json()
        .await
        .map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))?;
    let points = body["count"].as_u64().unwrap_or(0);
    // Each batch holds BATCH / 10 cpu_percent samples (one per `core` tag).
    let wanted = batches_per_agent * (BATCH as u64 / 10);
    if points < wanted {
        return Err(BenchError::Failed(format!(
            "{label}: {host} has {points} cpu_percent points over REST, expected {wanted}"
        )));
    }
    let (Some((t_low, s_low)), Some((t_high, s_high))) = (low, high) else {
        return Err(BenchError::Failed(format!(
            "{label}: no progress was observed"
        )));
    };
    let window = (t_high - t_low).as_secs_f64().max(0.1);
    let run = Run {
        rate: (s_high - s_low) / window,
        overall: stored / (finished - started).as_secs_f64(),
    };
    eprintln!(
        "  {label}: {:.0} samples/s (10%–90%), {:.0} overall, {} samples in {:.1} s",
        run.rate,
        run.overall,
        stored,
        (finished - started).as_secs_f64()
    );
    coordinator.proc.stop();
    if let Some(m) = mosquitto {
        m.proc.stop();
    }
    Ok(run)
}
