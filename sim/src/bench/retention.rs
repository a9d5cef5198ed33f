//! Benchmark part: retention — what audit retention costs, and that it bounds the store.
//!
//! 1. **Fill.** 1,000,000 actions (20,000 with `--quick`) over the last 30 days, written
//!    through the store's real writer as the audit part does ([`super::audit::fill`]).
//! 2. **Shorten.** A real coordinator serves that data dir with `--audit-retention 1d`:
//!    the time until only the last day's actions are left, against the rate the same
//!    actions were written at (the baseline).
//! 3. **Steady load.** Two coordinators, each on a copy of the pruned data dir, each under
//!    the same load of enrolled virtual agents recording actions over MQTT, at the same
//!    time (same machine noise): one with a short retention of audit records and metric
//!    history (1 min; 10 s with `--quick`), the baseline with the defaults (90 and 7
//!    days). The data file's size and the pages holding data (`vigil_store_used_bytes`)
//!    are sampled once per retention window: with retention, LMDB reuses the pages
//!    retention frees and the file stops growing; without, it grows with the load.
//!
//! Every size is printed, so the README's table comes from one run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_testkit::{prometheus_value, CoordinatorOptions, CoordinatorProc, Launcher};

use super::audit::{disk_usage, fill, thousands};
use super::stack;
use super::{Baseline, BenchEnv, BenchError, Figure};
use crate::chaos::Chaos;
use crate::fleet::{Fleet, FleetConfig};
use crate::mode::Mode;
use crate::virtual_agent::Plan;

/// Hosts of the filled store (1,000 actions each).
const HOSTS: usize = 1_000;
/// Hosts of the filled store with `--quick`.
const HOSTS_QUICK: usize = 20;
/// The shortened retention of step 2.
const SHORTENED: &str = "1d";
/// Virtual agents of the steady load, per coordinator.
const AGENTS: usize = 50;
/// Virtual agents with `--quick`.
const AGENTS_QUICK: usize = 10;
/// The steady load's retention window.
const WINDOW: Duration = Duration::from_secs(60);
/// The window with `--quick`.
const WINDOW_QUICK: Duration = Duration::from_secs(10);
/// Windows of steady load (sizes are compared over the last ones, after the store has
/// reached its steady content).
const WINDOWS: usize = 5;

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let hosts = if env.quick { HOSTS_QUICK } else { HOSTS };
    let dir = env.work_dir.join("retention");
    let end_ms = vigil_shared::time::now_ms() - 3_600_000;
    let filled = fill(&dir, hosts, end_ms - super::audit::SPAN_MS).await?;
    let fill_rate = filled.actions as f64 / filled.took.as_secs_f64();
    println!(
        "retention: filled {} actions ({} transitions) in {:.1} s; data dir {:.1} MiB",
        thousands(filled.actions),
        thousands(filled.transitions),
        filled.took.as_secs_f64(),
        mib(filled.disk_bytes)
    );

    // 2. Shorten the retention of the full store.
    let lmdb = dir.join("data").join("lmdb");
    // Timed from the start: its first retention pass runs as it starts.
    let started = Instant::now();
    let shortened = start(&dir, SHORTENED, false).await?;
    // No kept-alive connections: the samples are seconds apart, longer than the
    // coordinator keeps an idle connection open.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::Failed(format!("cannot build an HTTP client: {e}")))?;
    let total_at_start = filled.actions as u64;
    // What a day holds: the fill spreads actions evenly over 30 days ending an hour ago.
    let expected_left = filled.actions as f64 * (23.0 / (30.0 * 24.0));
    let deadline = started + Duration::from_secs(1800);
    // Done when the removed count has stood still for 4 s (a pass removes everything due,
    // chunk after chunk).
    let mut last_change = (Instant::now(), 0.0);
    let (left, removed, prune_took) = loop {
        let page = metrics(&client, &shortened).await?;
        let removed = prometheus_value(&page, r#"vigil_audit_pruned_total{kind="action"}"#);
        if removed != last_change.1 {
            last_change = (Instant::now(), removed);
        } else if removed > 0.0 && last_change.0.elapsed() > Duration::from_secs(4) {
            let left = action_total(&client, &shortened).await?;
            break (left, removed, last_change.0 - started);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "retention: {removed} of {total_at_start} actions removed after {:.0} s with \
                 --audit-retention {SHORTENED}",
                started.elapsed().as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if left as f64 > expected_left * 1.5 + 100.0 {
        return Err(BenchError::Failed(format!(
            "retention: {left} actions left with --audit-retention {SHORTENED}, expected about \
             {expected_left:.0}"
        )));
    }
    let page = metrics(&client, &shortened).await?;
    let after_prune = Space::of(&lmdb, &page);
    println!(
        "retention: --audit-retention {SHORTENED}: {} actions removed in {:.1} s, {} left; \
         file {:.1} MiB, used {:.1} MiB",
        thousands(removed as usize),
        prune_took.as_secs_f64(),
        thousands(left as usize),
        mib(after_prune.file),
        mib(after_prune.used)
    );
    stack::stop(shortened.proc);

    // 3. Steady load, with a short retention and with the default, side by side.
    let window = if env.quick { WINDOW_QUICK } else { WINDOW };
    let agents = if env.quick { AGENTS_QUICK } else { AGENTS };
    let baseline_dir = env.work_dir.join("retention-baseline");
    copy_data_dir(&dir, &baseline_dir)?;
    let short_text = vigil_shared::time::format_duration(window);
    let short = start(&dir, &short_text, true).await?;
    let long = start(&baseline_dir, "90d", false).await?;
    let mut fleets = Vec::new();
    for (label, coordinator) in [("short", &short), ("long", &long)] {
        fleets.push(load(coordinator, label, agents, window * WINDOWS as u32 + window).await?);
    }
    let mut rows = Vec::new();
    let loaded = Instant::now();
    for w in 1..=WINDOWS {
        tokio::time::sleep_until((loaded + window * w as u32).into()).await;
        let short_page = metrics(&client, &short).await?;
        let long_page = metrics(&client, &long).await?;
        let row = Row {
            at: loaded.elapsed(),
            short: Space::of(&lmdb, &short_page),
            short_actions: action_total(&client, &short).await?,
            long: Space::of(&baseline_dir.join("data").join("lmdb"), &long_page),
            long_actions: action_total(&client, &long).await?,
        };
        println!("retention: {row}");
        rows.push(row);
    }
    for fleet in &fleets {
        fleet.stop();
    }
    let mut stored = 0;
    for fleet in fleets {
        stored += fleet.wait(None).await.report.action_transitions;
    }
    stack::stop(short.proc);
    stack::stop(long.proc);

    // Growth over the last windows, once the short store holds a window's worth.
    let first = &rows[1];
    let last = &rows[rows.len() - 1];
    if last.short_actions >= last.long_actions || last.long_actions <= first.long_actions {
        return Err(BenchError::Failed(format!(
            "retention: the steady load did not show retention at work: {first} … {last}"
        )));
    }
    let grew = |a: u64, b: u64| mib(b.saturating_sub(a));
    Ok(vec![
        Figure {
            name: format!(
                "audit retention shortened to {SHORTENED}, {} actions, removed",
                thousands(filled.actions)
            ),
            value: removed / prune_took.as_secs_f64(),
            unit: "actions/s",
            baseline: Some(Baseline {
                name: "the same actions written".into(),
                value: fill_rate,
            }),
            note: format!(
                "{} of {} actions removed in {:.1} s by the coordinator's retention passes \
                 (chunks of 1,000 records, other writes in between), with their transitions' \
                 index keys and policy events; the data file stays {:.1} MiB (LMDB keeps its \
                 pages), of which {:.1} MiB hold data",
                thousands(removed as usize),
                thousands(total_at_start as usize),
                prune_took.as_secs_f64(),
                mib(after_prune.file),
                mib(after_prune.used)
            ),
        },
        Figure {
            name: format!(
                "store growth under steady action load, retention {short_text}, windows 2-{WINDOWS}"
            ),
            value: grew(first.short.used, last.short.used),
            unit: "MiB",
            baseline: Some(Baseline {
                name: "same load, default retention".into(),
                value: grew(first.long.used, last.long.used),
            }),
            note: format!(
                "pages holding data (vigil_store_used_bytes): {:.1} → {:.1} MiB with retention, \
                 {:.1} → {:.1} MiB without; the data file {:.1} → {:.1} MiB with retention, \
                 {:.1} → {:.1} MiB without (it grows only once the free pages are used up); \
                 live actions {} → {} with retention, {} → {} without; {agents} virtual \
                 agents per coordinator recording actions over MQTT ({} transitions stored in \
                 all)",
                mib(first.short.used),
                mib(last.short.used),
                mib(first.long.used),
                mib(last.long.used),
                mib(first.short.file),
                mib(last.short.file),
                mib(first.long.file),
                mib(last.long.file),
                thousands(first.short_actions as usize),
                thousands(last.short_actions as usize),
                thousands(first.long_actions as usize),
                thousands(last.long_actions as usize),
                thousands(stored as usize),
            ),
        },
    ])
}

/// The data file's size on disk and the bytes of it holding data.
#[derive(Debug, Clone, Copy)]
struct Space {
    file: u64,
    used: u64,
}

impl Space {
    fn of(lmdb: &Path, metrics_page: &str) -> Space {
        Space {
            file: disk_usage(lmdb),
            used: prometheus_value(metrics_page, "vigil_store_used_bytes") as u64,
        }
    }
}

/// One sample of the steady load.
struct Row {
    at: Duration,
    short: Space,
    short_actions: u64,
    long: Space,
    long_actions: u64,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "after {:>4.0} s: short retention: {} actions, file {:.1} MiB, used {:.1} MiB; \
             default retention: {} actions, file {:.1} MiB, used {:.1} MiB",
            self.at.as_secs_f64(),
            thousands(self.short_actions as usize),
            mib(self.short.file),
            mib(self.short.used),
            thousands(self.long_actions as usize),
            mib(self.long.file),
            mib(self.long.used),
        )
    }
}

/// Starts a coordinator on `dir`'s data with `--audit-retention retention`, and as much
/// metric history (`--retention`) if `metrics_too`.
async fn start(
    dir: &Path,
    retention: &str,
    metrics_too: bool,
) -> Result<CoordinatorProc, BenchError> {
    let both = ["--audit-retention", retention, "--retention", retention];
    let extra = if metrics_too { &both[..] } else { &both[..2] };
    let options = CoordinatorOptions {
        extra,
        ..CoordinatorOptions::default()
    };
    Ok(Launcher::Simulator.start_coordinator(dir, &options).await?)
}

/// Starts `agents` enrolled virtual agents recording an action every 100 ms each on
/// `coordinator`, for `duration`.
async fn load(
    coordinator: &CoordinatorProc,
    label: &str,
    agents: usize,
    duration: Duration,
) -> Result<Fleet, BenchError> {
    let broker = coordinator
        .broker
        .parse()
        .map_err(|e| BenchError::Failed(format!("broker `{}`: {e}", coordinator.broker)))?;
    let mut config = FleetConfig {
        agents,
        host_prefix: format!("retention-{label}-"),
        labels: Vec::new(),
        connect_rate: 1000,
        plan: Plan {
            broker,
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: Duration::from_millis(100),
            samples_per_batch: 4,
            action_every: 1,
            duration,
            batches_per_agent: None,
            seed: 11,
            signatures_only: false,
            follow_bundles: false,
            start_together: false,
            pattern: None,
        },
        logins: Default::default(),
    };
    config.logins = stack::enroll(coordinator, &config.hosts())
        .await
        .map_err(|e| BenchError::Failed(format!("retention {label}: {e}")))?;
    Fleet::start(config).map_err(BenchError::Failed)
}

/// The coordinator's `/metrics` page.
async fn metrics(client: &reqwest::Client, c: &CoordinatorProc) -> Result<String, BenchError> {
    let url = format!("{}/metrics", c.http);
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))?;
    response
        .text()
        .await
        .map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))
}

/// How many actions the coordinator holds (`GET /api/v1/ui/queue/stats`).
async fn action_total(client: &reqwest::Client, c: &CoordinatorProc) -> Result<u64, BenchError> {
    let url = format!("{}/api/v1/ui/queue/stats", c.http);
    let failed = |e: &dyn std::fmt::Display| BenchError::Failed(format!("GET {url}: {e}"));
    let response = c
        .authorize(client.get(&url))
        .send()
        .await
        .map_err(|e| failed(&e))?;
    let json: Value = response.json().await.map_err(|e| failed(&e))?;
    json["actions"]["total"]
        .as_u64()
        .ok_or_else(|| failed(&format!("no actions.total in {json}")))
}

/// Copies `from`'s data dir (the coordinator is stopped) to `to`: LMDB files, keys and
/// the admin token.
fn copy_data_dir(from: &Path, to: &Path) -> Result<(), BenchError> {
    let failed = |e: &dyn std::fmt::Display| {
        BenchError::Failed(format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    };
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| failed(&e))?;
    }
    std::fs::create_dir_all(to).map_err(|e| failed(&e))?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("data"))
        .arg(to)
        .status()
        .map_err(|e| failed(&e))?;
    if !status.success() {
        return Err(failed(&format!("cp -a {status}")));
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
