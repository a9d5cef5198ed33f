//! Benchmark part: coordinator ingest throughput — metric samples per second stored in
//! LMDB and queryable — with 100 and 1,000 virtual agents sending batches of 100
//! samples, through the embedded broker and, as the same-run baseline, through
//! Mosquitto as an external broker.
//!
//! Two loads:
//! - **burst**: every agent sends its share of 1,000,000 samples (at least 50 batches
//!   each: 5,000,000 for 1,000 agents) as fast as its connection takes, all starting
//!   together once every agent is connected and holds its session key; the rate is read
//!   off the coordinator's own `vigil_samples_stored_total` between 10% and 90% stored
//!   (so the first and last batches do not count). This is the coordinator's capacity.
//! - **sustained**: 1,000 agents offer a fixed 300,000 samples/s (`--sustained-rate`)
//!   for 20 s, as a fleet on a timer does; the figure is what was stored per second over
//!   the run, with the largest backlog seen (sent but not yet stored).
//!
//! Every virtual agent is enrolled (before the clock starts) and makes a session key
//! handshake when it connects (and every 100 s), so the coordinator checks one BLAKE3 MAC
//! per batch. The authentication figure runs the 100-agent burst twice through the
//! embedded broker in the same run: with session keys, and with every batch signed with
//! the agent's ed25519 key (the per-message path, [`Plan::signatures_only`]); the ratio
//! is what session keys buy at the coordinator's ingest.
//!
//! Each run must store every sample (`vigil_metric_batches_missing_total` stays 0) and
//! ends with a REST query that must return the last agent's samples.

use std::time::{Duration, Instant};

use super::stack::{self, Stack};
use super::{Baseline, BenchEnv, BenchError, Figure};
use crate::chaos::Chaos;
use crate::fleet::{Fleet, FleetConfig};
use crate::mode::Mode;
use crate::virtual_agent::Plan;
use vigil_testkit::prometheus_value;

/// Samples per batch, as the issue asks.
const BATCH: usize = 100;

/// Samples offered per second in the sustained run, unless `--sustained-rate` says.
const SUSTAINED_RATE: u64 = 300_000;
/// The same for `--quick` (a smoke test, often of debug builds, which ingest far less).
const QUICK_SUSTAINED_RATE: u64 = 30_000;

/// The sustained run's offered rate.
fn sustained_rate(env: &BenchEnv) -> u64 {
    env.sustained_rate.unwrap_or(if env.quick {
        QUICK_SUSTAINED_RATE
    } else {
        SUSTAINED_RATE
    })
}

/// Samples in one burst: 1,000,000, and at least 50 batches per agent, so that the
/// 10%–90% window is the fleet's steady flow rather than its first and last batches
/// (1,000 agents: 5,000,000). A tenth of that with `--quick`.
fn burst_samples(env: &BenchEnv, agents: usize) -> u64 {
    let samples = (agents as u64 * 50 * BATCH as u64).max(1_000_000);
    if env.quick {
        samples / 10
    } else {
        samples
    }
}

/// What one run sends.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// This many samples, as fast as the connections take.
    Burst { samples: u64 },
    /// [`sustained_rate`] samples a second for this long.
    Sustained { duration: Duration },
}

/// One measured run.
struct Run {
    /// Burst: samples per second between 10% and 90% stored. Sustained: samples stored
    /// per second from the first publish to the last sample stored.
    rate: f64,
    /// Samples per second from the first publish to the last sample stored.
    overall: f64,
    /// Most samples sent but not yet stored at one moment.
    backlog: f64,
    /// From the last batch made (queued to send) to the last sample stored, seconds (to
    /// the 100 ms poll).
    tail: f64,
}

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let mut figures = Vec::new();
    for agents in [100usize, 1000] {
        let burst = burst_samples(env, agents);
        let load = Load::Burst { samples: burst };
        let embedded = measure(env, agents, load, EMBEDDED).await?;
        let mosquitto = measure(env, agents, load, MOSQUITTO).await?;
        if agents == 1000 {
            let one_thread = measure(env, agents, load, ONE_THREAD).await?;
            figures.push(Figure {
                name: format!("ingest burst, {agents} agents, checks on every core"),
                value: embedded.rate,
                unit: "samples/s",
                baseline: Some(Baseline {
                    name: "checks on one thread (--ingest-threads 1), same load".into(),
                    value: one_thread.rate,
                }),
                note: format!(
                    "embedded broker, {burst} samples in batches of {BATCH}; decode, MAC \
                     check and validation on {} threads (one per core, each host on one), \
                     against one thread; ratio {:.2}",
                    std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
                    embedded.rate / one_thread.rate.max(1.0)
                ),
            });
        }
        if agents == 100 {
            let signed = measure(env, agents, load, SIGNED).await?;
            figures.push(Figure {
                name: format!("ingest burst, {agents} agents, session-key MACs"),
                value: embedded.rate,
                unit: "samples/s",
                baseline: Some(Baseline {
                    name: "every batch signed (ed25519), same load".into(),
                    value: signed.rate,
                }),
                note: format!(
                    "embedded broker, {burst} samples in batches of {BATCH}; MAC'd after \
                     each agent's handshake at connect, against every batch signed and \
                     checked with ed25519; ratio {:.2}",
                    embedded.rate / signed.rate.max(1.0)
                ),
            });
        }
        figures.push(Figure {
            name: format!("ingest burst, {agents} agents, embedded broker"),
            value: embedded.rate,
            unit: "samples/s",
            baseline: Some(Baseline {
                name: "Mosquitto as external broker".into(),
                value: mosquitto.rate,
            }),
            note: format!(
                "{burst} samples in batches of {BATCH}, sent as fast as the connections \
                 take, all stored in LMDB and queryable; rate between 10% and 90% stored \
                 (first publish to last stored: {:.0} embedded, {:.0} via Mosquitto)",
                embedded.overall, mosquitto.overall
            ),
        });
    }
    figures.extend(sustained(env).await?);
    Ok(figures)
}

/// Measures the sustained run's figure alone (also the last of [`run`]'s).
pub async fn sustained(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let mut figures = Vec::new();
    let duration = Duration::from_secs(if env.quick { 5 } else { 20 });
    let load = Load::Sustained { duration };
    // The quick run (a smoke test, often of a debug build) keeps the fleet at 300.
    let fleet = if env.quick { 300 } else { 1000 };
    let embedded = measure(env, fleet, load, EMBEDDED).await?;
    let mosquitto = measure(env, fleet, load, MOSQUITTO).await?;
    figures.push(Figure {
        name: format!(
            "ingest sustained, {fleet} agents, {} samples/s offered",
            sustained_rate(env)
        ),
        value: embedded.rate,
        unit: "samples/s",
        baseline: Some(Baseline {
            name: "Mosquitto as external broker".into(),
            value: mosquitto.rate,
        }),
        note: format!(
            "{:.0} s at a fixed offered rate, every sample stored; largest backlog \
             (sent, not yet stored) {:.0} samples embedded, {:.0} via Mosquitto; all \
             stored {:.1} s after the last batch was made embedded, {:.1} s via Mosquitto",
            duration.as_secs_f64(),
            embedded.backlog,
            mosquitto.backlog,
            embedded.tail,
            mosquitto.tail
        ),
    });
    Ok(figures)
}

/// How one run's coordinator and agents are set up.
#[derive(Debug, Clone, Copy, Default)]
struct Setup {
    /// Through Mosquitto as an external broker instead of the embedded one.
    via_mosquitto: bool,
    /// Every batch signed with ed25519 instead of MAC'd under a session key.
    signatures_only: bool,
    /// The coordinator checks messages on one thread (`--ingest-threads 1`) instead of one
    /// per core.
    one_thread: bool,
}

const EMBEDDED: Setup = Setup {
    via_mosquitto: false,
    signatures_only: false,
    one_thread: false,
};
const MOSQUITTO: Setup = Setup {
    via_mosquitto: true,
    ..EMBEDDED
};
const SIGNED: Setup = Setup {
    signatures_only: true,
    ..EMBEDDED
};
const ONE_THREAD: Setup = Setup {
    one_thread: true,
    ..EMBEDDED
};

async fn measure(
    env: &BenchEnv,
    agents: usize,
    load: Load,
    setup: Setup,
) -> Result<Run, BenchError> {
    let Setup {
        via_mosquitto,
        signatures_only,
        one_thread,
    } = setup;
    let label = format!(
        "ingest-{}-{agents}-{}{}",
        match load {
            Load::Burst { .. } => "burst",
            Load::Sustained { .. } => "sustained",
        },
        if via_mosquitto {
            "mosquitto"
        } else {
            "embedded"
        },
        if signatures_only { "-signed" } else { "" }
    ) + if one_thread { "-one-thread" } else { "" };
    let extra: &[&str] = if one_thread {
        &["--ingest-threads", "1"]
    } else {
        &[]
    };
    let stack = Stack::start(&env.work_dir.join(&label), via_mosquitto, extra).await?;
    let coordinator = &stack.coordinator;
    // Give an external broker's subscription a moment to be in place.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker = stack.broker.clone();
    let (interval, batches_per_agent) = match load {
        Load::Burst { samples } => (
            Duration::ZERO,
            (samples / BATCH as u64).div_ceil(agents as u64),
        ),
        Load::Sustained { duration } => {
            let batches_per_second = sustained_rate(env) as f64 / BATCH as f64 / agents as f64;
            (
                Duration::from_secs_f64(1.0 / batches_per_second),
                (duration.as_secs_f64() * batches_per_second).round() as u64,
            )
        }
    };
    let expected = batches_per_agent * agents as u64 * BATCH as u64;
    let mut config = FleetConfig {
        agents,
        host_prefix: format!("{label}-"),
        labels: Vec::new(),
        connect_rate: 2000,
        plan: Plan {
            broker,
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval,
            samples_per_batch: BATCH,
            action_every: 0,
            duration: Duration::from_secs(600),
            batches_per_agent: Some(batches_per_agent),
            seed: 7,
            signatures_only,
            pattern: None,
            follow_bundles: false,
            // Connected and keyed before the clock starts: the figure is ingest, not
            // connection set-up (1,000 handshakes, and batches signed until each is done).
            start_together: true,
        },
        logins: Default::default(),
    };
    // Enrolled before the clock starts: the figure is ingest, not enrollment.
    config.logins = stack::enroll(coordinator, &config.hosts())
        .await
        .map_err(|e| BenchError::Failed(format!("{label}: {e}")))?;
    let fleet = Fleet::start(config).map_err(BenchError::Failed)?;
    let started = Instant::now();
    let metrics_url = format!("{}/metrics", coordinator.http);
    let client = reqwest::Client::new();
    let mut low: Option<(Instant, f64)> = None;
    let mut high: Option<(Instant, f64)> = None;
    let mut backlog: f64 = 0.0;
    let mut sent_all: Option<Instant> = None;
    let deadline = started + Duration::from_secs(300);
    let mut page: String;
    let (stored, missing) = loop {
        page = match client.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => return Err(BenchError::Failed(format!("GET {metrics_url}: {e}"))),
        };
        let stored = prometheus_value(&page, "vigil_samples_stored_total");
        let missing = prometheus_value(&page, "vigil_metric_batches_missing_total");
        let now = Instant::now();
        let sent = fleet.snapshot().samples;
        backlog = backlog.max(sent as f64 - stored);
        if sent_all.is_none() && sent >= expected {
            sent_all = Some(now);
        }
        if low.is_none() && stored >= expected as f64 * 0.1 {
            low = Some((now, stored));
        }
        if high.is_none() && stored >= expected as f64 * 0.9 {
            high = Some((now, stored));
        }
        if stored >= expected as f64 {
            break (stored, missing);
        }
        if now > deadline || (missing > 0.0 && fleet.is_finished()) {
            return Err(BenchError::Failed(format!(
                "{label}: only {stored} of {expected} samples stored after {:.0} s, \
                 {missing} batches lost on the way (vigil_metric_batches_missing_total); \
                 sent: {}; coordinator: {}",
                started.elapsed().as_secs_f64(),
                fleet.snapshot().progress_line(),
                refusals(&page)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished = Instant::now();
    let tail = (finished - sent_all.unwrap_or(finished)).as_secs_f64();
    let agents_saw = fleet.wait(None).await.report;
    if missing > 0.0 {
        return Err(BenchError::Failed(format!(
            "{label}: {missing} metric batches were lost on the way"
        )));
    }
    // Queryable: the last agent's samples come back over REST.
    let host = format!("{label}-{:05}", agents - 1);
    let url = format!(
        "{}/api/v1/metrics/query?name=cpu_percent&host={host}&limit=10000",
        coordinator.http
    );
    let body: serde_json::Value = coordinator
        .authorize(client.get(&url))
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
    let elapsed = (finished - started).as_secs_f64();
    let overall = stored / elapsed;
    let rate = match load {
        Load::Sustained { .. } => overall,
        Load::Burst { .. } => {
            let (Some((t_low, s_low)), Some((t_high, s_high))) = (low, high) else {
                return Err(BenchError::Failed(format!(
                    "{label}: no progress was observed"
                )));
            };
            (s_high - s_low) / (t_high - t_low).as_secs_f64().max(0.1)
        }
    };
    eprintln!(
        "  {label}: {rate:.0} samples/s, {overall:.0} overall, {stored} samples in \
         {elapsed:.1} s, largest backlog {backlog:.0}, all stored {tail:.1} s after the last \
         batch was made; agents: {} batches sent again, {} resend timeouts; coordinator: {}; \
         store: {}",
        agents_saw.batch_resends,
        agents_saw.stalls,
        refusals(&page),
        commits(&page)
    );
    stack.stop();
    Ok(Run {
        rate,
        overall,
        backlog,
        tail,
    })
}

/// How the store writer's transactions went, from the coordinator's last `/metrics` page:
/// how many, their mean size, and their mean time (flush to disk included).
fn commits(page: &str) -> String {
    let commits = prometheus_value(page, "vigil_store_commits_total");
    let writes = prometheus_value(page, "vigil_store_commit_writes_total");
    let seconds = prometheus_value(page, "vigil_store_commit_duration_seconds_sum");
    format!(
        "{commits:.0} commits, {:.0} writes and {:.1} ms each on average",
        writes / commits.max(1.0),
        seconds * 1000.0 / commits.max(1.0)
    )
}

/// What the coordinator refused, took twice or asked for again, and how often agents
/// waited for ingest during a run, from its
/// last `/metrics` page: every non-zero series of those counters, one `name{labels} value`
/// each (what to read first when a run is slow or fails).
fn refusals(page: &str) -> String {
    const COUNTERS: [&str; 5] = [
        "vigil_mqtt_messages_rejected_total",
        "vigil_agent_handshakes_total",
        "vigil_mqtt_messages_duplicate_total",
        "vigil_delivery_redelivered_total",
        "vigil_mqtt_front_waits_total",
    ];
    let found: Vec<&str> = page
        .lines()
        .filter(|line| COUNTERS.iter().any(|c| line.starts_with(c)))
        .filter(|line| line.rsplit(' ').next().is_some_and(|v| v != "0"))
        .collect();
    if found.is_empty() {
        "nothing refused".to_string()
    } else {
        found.join(", ")
    }
}
