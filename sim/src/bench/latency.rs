//! Benchmark part: end-to-end latency from a sample leaving an agent to it being
//! queryable over REST, p50 and p99, through the embedded broker and — the same-run
//! baseline — through Mosquitto as an external broker.
//!
//! A probe — an enrolled agent, sealing what it sends with its place in a metrics queue
//! of its own (it holds only the current batch: the floor is its sequence number) —
//! publishes one batch at a time (QoS 1, like an agent) holding one sample
//! whose value is the probe's sequence number, then asks
//! `GET /api/v1/metrics/query` until that value comes back, each time as soon as the
//! previous answer came (a pause between asks would be part of the figure: tokio's timer
//! makes a 1 ms sleep 1–2 ms); the time from handing the batch to the MQTT client to the
//! first answer that holds it is one measurement.
//! Meanwhile a background fleet of virtual agents keeps the coordinator busy with
//! ordinary traffic, so the figure is not one of an idle machine.

use std::time::{Duration, Instant};

use rumqttc::QoS;
use vigil_shared::agent_auth::Sealer;
use vigil_shared::delivery::{Delivery, Stream};
use vigil_shared::mqtt::client_options;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, MetricBatch, Sample};

use super::stack::{self, Stack};
use super::{Baseline, BenchEnv, BenchError, Figure};
use crate::chaos::Chaos;
use crate::fleet::{Fleet, FleetConfig};
use crate::mode::Mode;
use crate::virtual_agent::Plan;

/// The probe's host name and metric.
const PROBE_HOST: &str = "latency-probe";
const PROBE_METRIC: &str = "probe_sequence";

/// Background load: agents, each sending one batch of this many samples a second.
const BACKGROUND_AGENTS: usize = 100;
const BACKGROUND_SAMPLES: usize = 100;

/// Latency percentiles of one run, in milliseconds.
struct Percentiles {
    p50: f64,
    p99: f64,
}

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    // The p99 of 2,000 is the 20th slowest: steadier from run to run than the 5th of 500.
    let probes = if env.quick { 50 } else { 2000 };
    let embedded = measure(env, probes, false).await?;
    let mosquitto = measure(env, probes, true).await?;
    let note = format!(
        "{probes} probes, one at a time, while {BACKGROUND_AGENTS} virtual agents send \
         {BACKGROUND_SAMPLES} samples/s each; includes the REST round trip (asked again as each answer comes)"
    );
    Ok(vec![
        Figure {
            name: "sample → queryable over REST, p50, embedded broker".into(),
            value: embedded.p50,
            unit: "ms",
            baseline: Some(Baseline {
                name: "Mosquitto".into(),
                value: mosquitto.p50,
            }),
            note: note.clone(),
        },
        Figure {
            name: "sample → queryable over REST, p99, embedded broker".into(),
            value: embedded.p99,
            unit: "ms",
            baseline: Some(Baseline {
                name: "Mosquitto".into(),
                value: mosquitto.p99,
            }),
            note,
        },
    ])
}

async fn measure(
    env: &BenchEnv,
    probes: usize,
    via_mosquitto: bool,
) -> Result<Percentiles, BenchError> {
    let label = if via_mosquitto {
        "latency-mosquitto"
    } else {
        "latency-embedded"
    };
    let stack = Stack::start(&env.work_dir.join(label), via_mosquitto, &[]).await?;
    let coordinator = &stack.coordinator;
    let broker = stack.broker.clone();
    let mut config = FleetConfig {
        agents: BACKGROUND_AGENTS,
        host_prefix: format!("{label}-"),
        labels: Vec::new(),
        connect_rate: 1000,
        plan: Plan {
            broker: broker.clone(),
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: Duration::from_secs(1),
            samples_per_batch: BACKGROUND_SAMPLES,
            action_every: 0,
            duration: Duration::from_secs(3600),
            batches_per_agent: None,
            seed: 3,
            signatures_only: false,
            follow_bundles: false,
            start_together: false,
            pattern: None,
        },
        logins: Default::default(),
    };
    let mut hosts = config.hosts();
    hosts.push(PROBE_HOST.to_string());
    let mut logins = stack::enroll(coordinator, &hosts)
        .await
        .map_err(|e| BenchError::Failed(format!("{label}: {e}")))?;
    let probe = logins
        .remove(PROBE_HOST)
        .ok_or_else(|| BenchError::Failed(format!("{label}: the probe was not enrolled")))?;
    config.logins = logins;
    let background = Fleet::start(config).map_err(BenchError::Failed)?;

    // The probe is an enrolled agent too: its login, its client id, its seal.
    let sealer = Sealer::new(PROBE_HOST, probe.key());
    let epoch: u64 = rand::random();
    // The bench starts its own plaintext brokers, so this cannot fail.
    let options = client_options(
        &vigil_shared::mqtt::agent_client_id(PROBE_HOST),
        &broker.without_tls(),
        Some(&probe.username),
        Some(&probe.password),
        None,
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let (client, mut eventloop) = vigil_shared::mqtt::client(options, 16);
    let driver = tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                tracing::debug!("latency probe connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let http = reqwest::Client::new();
    let topic = topics::agent(PROBE_HOST, AgentChannel::Metrics);
    // Warm-up: the first probe also waits for subscriptions and connections.
    let mut samples = Vec::with_capacity(probes);
    for seq in 0..=probes as u64 {
        let ts_ms = now_ms();
        let batch = MetricBatch {
            host: PROBE_HOST.into(),
            seq,
            sent_at_ms: ts_ms,
            labels: Vec::new(),
            samples: vec![Sample {
                name: PROBE_METRIC.into(),
                value: seq as f64,
                ts_ms,
                tags: Vec::new(),
            }],
        };
        let url = format!(
            "{}/api/v1/metrics/query?name={PROBE_METRIC}&host={PROBE_HOST}&from={}&limit=100",
            coordinator.http,
            ts_ms - 1
        );
        // Queue position seq + 1 (from 1); nothing older is held.
        let delivery = Delivery {
            stream: Stream::Metrics,
            epoch,
            seq: seq + 1,
            floor: seq + 1,
        };
        let encoded = wire::encode(&batch);
        let sent = Instant::now();
        client
            .publish(
                topic.as_str(),
                QoS::AtLeastOnce,
                false,
                sealer.seal_queued(AgentChannel::Metrics, encoded.clone(), delivery),
            )
            .await
            .map_err(|e| BenchError::Failed(format!("probe publish: {e}")))?;
        let mut resent = Instant::now();
        let timeout = if seq == 0 {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(10)
        };
        loop {
            let body: serde_json::Value = match coordinator.authorize(http.get(&url)).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(e) => return Err(BenchError::Failed(format!("GET {url}: {e}"))),
            };
            let found = body["points"]
                .as_array()
                .is_some_and(|points| points.iter().any(|p| p["value"] == seq as f64));
            if found {
                break;
            }
            if sent.elapsed() > timeout {
                return Err(BenchError::Failed(format!(
                    "{label}: probe {seq} was not queryable after {timeout:?}"
                )));
            }
            // Sent before the connection was up, or lost with it: again, as an agent
            // sends what is not acknowledged (stored once however often it comes).
            if resent.elapsed() > Duration::from_secs(2) {
                resent = Instant::now();
                let _ = client.try_publish(
                    topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    sealer.seal_queued(AgentChannel::Metrics, encoded.clone(), delivery),
                );
            }
        }
        if seq > 0 {
            samples.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        // Space the probes out a little, off the background agents' beat.
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    driver.abort();
    background.stop();
    let _ = background.wait(None).await;
    stack.stop();
    let result = percentiles(&mut samples);
    eprintln!(
        "  {label}: p50 {:.2} ms, p99 {:.2} ms over {} probes",
        result.p50,
        result.p99,
        samples.len()
    );
    Ok(result)
}

/// p50 and p99 (nearest rank) of `values`, in place.
fn percentiles(values: &mut [f64]) -> Percentiles {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if values.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = percentiles(&mut values);
        assert_eq!((p.p50, p.p99), (50.0, 99.0));
        let mut one = vec![3.0];
        let p = percentiles(&mut one);
        assert_eq!((p.p50, p.p99), (3.0, 3.0));
        assert!(percentiles(&mut []).p50.is_nan());
    }
}
