//! Benchmark part: audit — REST latency of a filtered page of 50 actions over a large
//! action audit trail, against a same-run baseline over a small one.
//!
//! Two coordinator data dirs are filled in-process through the store's real writer
//! ([`StoreWriter`], one [`Write::Action`] per transition, as ingest does), then served by
//! two real `vigil-coordinator serve` processes and queried over HTTP:
//!
//! - the large store: 1,000,000 actions (100,000 with `--quick`) on 1,000 hosts (100);
//! - the baseline: 10,000 actions on the first 10 of those hosts.
//!
//! Every host's actions come from its own seeded generator, so the hosts that are queried
//! (the first 10) hold byte-for-byte the same actions in both stores, and every query
//! must answer the same JSON from both (checked). The only difference between the two is
//! the 990 other hosts' actions around them: the ratio says what the store's size costs.
//!
//! The queries are `host + status` (`status=dead_letter`: "what failed for good on this
//! host") and `host + policy`, `limit=50`, each answering a full page. Requests alternate
//! between the two coordinators, one at a time over keep-alive connections, so both see
//! the same machine noise.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use vigil_coordinator::store::{MapSize, Store, StoreWriter, Write};
use vigil_coordinator::telemetry::Telemetry;
use vigil_shared::wire::{ActionEvent, ActionState};

use super::stack::{self, start_coordinator};
use super::{Baseline, BenchEnv, BenchError, Figure};
use vigil_testkit::CoordinatorProc;

/// Actions per host, in both stores.
const ACTIONS_PER_HOST: usize = 1_000;
/// Hosts of the large store.
const HOSTS: usize = 1_000;
/// Hosts of the large store with `--quick`.
const HOSTS_QUICK: usize = 100;
/// Hosts of the baseline store (10,000 actions); also the hosts that are queried.
const BASELINE_HOSTS: usize = 10;
/// The audit trail covers this much time, ending an hour before the run.
pub(super) const SPAN_MS: i64 = 30 * 24 * 3_600_000;
/// The page size asked for.
const PAGE: usize = 50;
/// The policy of the host + policy query.
const QUERY_POLICY: &str = "service-down";
/// The status of the host + status query.
const QUERY_STATUS: ActionState = ActionState::DeadLetter;

/// A policy (`None`: an action without one), how often it fires, what it does, with which
/// executor, on which targets.
type PolicyRow = (
    Option<&'static str>,
    u32,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// The policies the generated actions come from.
const POLICIES: [PolicyRow; 7] = [
    (Some("service-down"), 30, "restart", "systemd", SERVICES),
    (Some("high-cpu"), 18, "restart", "systemd", SERVICES),
    (
        Some("container-unhealthy"),
        15,
        "restart",
        "docker",
        CONTAINERS,
    ),
    (Some("disk-full"), 12, "exec", "exec", DISKS),
    (Some("mem-pressure"), 10, "restart", "systemd", SERVICES),
    (Some("cert-expiry"), 8, "webhook", "webhook", &["host"]),
    (None, 7, "restart", "systemd", SERVICES),
];
const SERVICES: &[&str] = &[
    "nginx.service",
    "postgresql.service",
    "redis-server.service",
    "vigil-agent.service",
    "sshd.service",
    "cron.service",
    "node-exporter.service",
];
const CONTAINERS: &[&str] = &["api-1", "api-2", "worker-1", "worker-2", "cache"];
const DISKS: &[&str] = &["/var/log", "/tmp", "/var/lib/docker"];

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let hosts = if env.quick { HOSTS_QUICK } else { HOSTS };
    let (requests, warmup) = if env.quick { (100, 20) } else { (400, 50) };
    // One base time for both stores, so that their shared hosts' actions are identical.
    let end_ms = vigil_shared::time::now_ms() - 3_600_000;
    let base_ms = end_ms - SPAN_MS;

    let small_dir = env.work_dir.join("audit-10k");
    let small = fill(&small_dir, BASELINE_HOSTS, base_ms).await?;
    let big_dir = env.work_dir.join("audit-large");
    let big = fill(&big_dir, hosts, base_ms).await?;
    for (stats, label) in [(&small, "baseline"), (&big, "large")] {
        println!(
            "audit: {label} store: {} actions ({} transitions, {} redelivered) on {} hosts \
             filled in {:.1} s ({:.0} transitions/s); data dir {:.1} MiB ({})",
            stats.actions,
            stats.transitions,
            stats.redelivered,
            stats.hosts,
            stats.took.as_secs_f64(),
            stats.transitions as f64 / stats.took.as_secs_f64(),
            stats.disk_bytes as f64 / (1 << 20) as f64,
            stats.data_dir.display()
        );
    }

    let big_proc = start_coordinator(&big_dir).await?;
    let small_proc = start_coordinator(&small_dir).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::Failed(format!("cannot build an HTTP client: {e}")))?;

    let kinds = [
        QueryKind {
            label: "host + status",
            param: ("status", QUERY_STATUS.as_str()),
        },
        QueryKind {
            label: "host + policy",
            param: ("policy", QUERY_POLICY),
        },
    ];
    let mut figures = Vec::new();
    let mut page_bytes = 0usize;
    for (k, kind) in kinds.iter().enumerate() {
        let mut times = [Vec::new(), Vec::new()];
        for round in 0..warmup + requests {
            let host = round % BASELINE_HOSTS;
            let path = format!(
                "/api/v1/actions?host={}&{}={}&limit={PAGE}",
                host_name(host),
                kind.param.0,
                kind.param.1
            );
            let expected = if k == 0 {
                small.dead_letter[host]
            } else {
                small.policy[host]
            }
            .min(PAGE);
            // Alternate which store goes first, so neither always follows the other.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut bodies: [Option<Value>; 2] = [None, None];
            for which in order {
                let proc = [&big_proc, &small_proc][which];
                let (took, body) = get(&client, proc, &path).await?;
                page_bytes = page_bytes.max(body.len());
                let json = check_page(&body, &path, kind, &host_name(host), expected)?;
                if round >= warmup {
                    times[which].push(took);
                }
                bodies[which] = Some(json);
            }
            if bodies[0] != bodies[1] {
                return Err(BenchError::Failed(format!(
                    "GET {path} answered differently from the large and the baseline store, \
                     which hold the same actions for this host"
                )));
            }
        }
        let [big_times, small_times] = times;
        for (name, pct) in [("p50", 0.50), ("p99", 0.99)] {
            figures.push(Figure {
                name: format!(
                    "audit query {name}, {}, page of {PAGE}, {} actions",
                    kind.label,
                    thousands(big.actions)
                ),
                value: percentile_ms(&big_times, pct),
                unit: "ms",
                baseline: Some(Baseline {
                    name: format!("same queries, {} actions", thousands(small.actions)),
                    value: percentile_ms(&small_times, pct),
                }),
                note: if name == "p99" {
                    String::new()
                } else {
                    format!(
                        "{requests} sequential GETs per store after {warmup} warm-up, \
                         alternating stores, one keep-alive connection each, loopback, warm \
                         page cache; {} hosts queried in turn, each answer checked (full \
                         page, every item matching, newest first, identical in both stores); \
                         includes encoding up to {} KiB of JSON per page; the store's part is the index walk (cost follows the host's actions down to the 50th match, not the store's size) and reading 50 records",
                        BASELINE_HOSTS,
                        page_bytes / 1024
                    )
                },
            });
        }
    }
    figures.push(Figure {
        name: format!("audit store on disk, {} actions", thousands(big.actions)),
        value: big.disk_bytes as f64 / (1 << 20) as f64,
        unit: "MiB",
        baseline: Some(Baseline {
            name: format!("{} actions", thousands(small.actions)),
            value: small.disk_bytes as f64 / (1 << 20) as f64,
        }),
        note: format!(
            "LMDB file after filling ({} transitions), before the coordinator started; \
             filled in {:.1} s through the store writer",
            thousands(big.transitions),
            big.took.as_secs_f64()
        ),
    });
    stack::stop(big_proc.proc);
    stack::stop(small_proc.proc);
    Ok(figures)
}

/// One kind of query: the host filter plus one more.
struct QueryKind {
    label: &'static str,
    param: (&'static str, &'static str),
}

/// What filling a store did, and what the queried hosts hold.
pub(super) struct Filled {
    hosts: usize,
    pub(super) actions: usize,
    pub(super) transitions: usize,
    redelivered: usize,
    pub(super) took: Duration,
    pub(super) disk_bytes: u64,
    data_dir: PathBuf,
    /// Per queried host: actions whose final status is [`QUERY_STATUS`].
    dead_letter: Vec<usize>,
    /// Per queried host: actions of [`QUERY_POLICY`].
    policy: Vec<usize>,
}

fn host_name(host: usize) -> String {
    format!("host-{host:04}")
}

/// One host's actions in creation order, from its own seeded generator.
struct HostStream {
    host: usize,
    rng: StdRng,
    made: usize,
    next_ms: i64,
}

impl HostStream {
    fn new(host: usize, base_ms: i64) -> HostStream {
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + host as u64);
        let gap = SPAN_MS / ACTIONS_PER_HOST as i64;
        let next_ms = base_ms + rng.random_range(0..gap);
        HostStream {
            host,
            rng,
            made: 0,
            next_ms,
        }
    }

    /// The next action's transitions in the order they reach the coordinator, and its
    /// final status and policy.
    fn next_action(&mut self) -> (Vec<ActionEvent>, ActionState, Option<&'static str>) {
        let rng = &mut self.rng;
        let created = self.next_ms;
        let gap = SPAN_MS / ACTIONS_PER_HOST as i64;
        self.next_ms += rng.random_range(1..2 * gap);
        self.made += 1;
        let newest = self.made > ACTIONS_PER_HOST - 3;

        let total: u32 = POLICIES.iter().map(|p| p.1).sum();
        let mut roll = rng.random_range(0..total);
        let (policy, _, action, executor, targets) = *POLICIES
            .iter()
            .find(|p| {
                if roll < p.1 {
                    true
                } else {
                    roll -= p.1;
                    false
                }
            })
            .unwrap_or(&POLICIES[0]);
        let target = targets[rng.random_range(0..targets.len())];
        let step = policy.map(|_| match rng.random_range(0..100) {
            0..80 => 0,
            80..95 => 1,
            _ => 2,
        });
        let params = match action {
            "exec" => Some(format!(
                r#"{{"command":["/usr/local/bin/clean-dir","{target}"],"timeout_s":60}}"#
            )),
            "webhook" => Some(r#"{"url":"https://hooks.example.invalid/certs"}"#.to_string()),
            _ => None,
        };
        let max_attempts = if action == "webhook" { 5 } else { 3 };
        let id = ulid::Ulid::from_parts(created as u64, rng.random::<u128>()).to_string();
        let template = ActionEvent {
            id,
            host: host_name(self.host),
            policy: policy.map(str::to_string),
            target: target.to_string(),
            action: action.to_string(),
            state: ActionState::Pending,
            attempt: 0,
            dry_run: false,
            detail: None,
            created_at_ms: created,
            at_ms: created,
            max_attempts,
            executor: None,
            step,
            params,
        };
        let ev = |state, attempt, at_ms, detail: Option<String>| {
            let mut e = template.clone();
            e.state = state;
            e.attempt = attempt;
            e.at_ms = at_ms;
            e.detail = detail;
            if state != ActionState::Pending || attempt > 0 {
                e.executor = Some(executor.to_string());
            }
            e
        };
        let mut events = vec![ev(ActionState::Pending, 0, created, None)];
        let mut t = created + rng.random_range(5..500);
        // Runs attempts until one succeeds (returns true) or none is left (false); each
        // fails with probability `fail`, retryably. Advances `t`.
        let attempts =
            |rng: &mut StdRng, events: &mut Vec<ActionEvent>, t: &mut i64, fail: f64| -> bool {
                for attempt in 1..=max_attempts {
                    events.push(ev(
                        ActionState::Running,
                        attempt,
                        *t,
                        Some(format!("{executor}: {action} {target}")),
                    ));
                    *t += rng.random_range(200..20_000);
                    if !rng.random_bool(fail) {
                        events.push(ev(
                            ActionState::Completed,
                            attempt,
                            *t,
                            Some(format!("{action} {target}: ok")),
                        ));
                        return true;
                    }
                    if attempt < max_attempts {
                        let backoff = 30_000 << (attempt - 1);
                        events.push(ev(
                            ActionState::Failed,
                            attempt,
                            *t,
                            Some(format!(
                                "attempt {attempt} of {max_attempts} failed: exit status 1; \
                             retrying in {}s",
                                backoff / 1000
                            )),
                        ));
                        *t += backoff;
                    } else {
                        let detail = format!(
                        "attempt {attempt} of {max_attempts} failed: exit status 1; no attempts \
                         left"
                    );
                        events.push(ev(ActionState::Failed, attempt, *t, Some(detail.clone())));
                        events.push(ev(ActionState::DeadLetter, attempt, *t, Some(detail)));
                    }
                }
                false
            };
        let kind = rng.random_range(0..1000);
        if newest && kind < 500 {
            // Still in flight at the end of the trail: queued, running, or awaiting a retry.
            match kind % 3 {
                0 => {}
                1 => events.push(ev(ActionState::Running, 1, t, None)),
                _ => {
                    events.push(ev(ActionState::Running, 1, t, None));
                    events.push(ev(
                        ActionState::Failed,
                        1,
                        t + 900,
                        Some("attempt 1 of 3 failed: timed out after 30s; retrying in 30s".into()),
                    ));
                }
            }
        } else if kind < 40 {
            events.push(ev(
                ActionState::Cancelled,
                0,
                created,
                Some("remediation is paused on this host (kill switch)".into()),
            ));
        } else if kind < 70 {
            let mut e = ev(
                ActionState::Completed,
                0,
                t,
                Some(format!("dry run: would {action} {target}")),
            );
            e.dry_run = true;
            events[0].dry_run = true;
            events.push(e);
        } else if kind < 100 {
            events.push(ev(ActionState::Running, 1, t, None));
            let detail = format!("failed: {executor}: permission denied; not retried");
            t += rng.random_range(10..2_000);
            events.push(ev(ActionState::Failed, 1, t, Some(detail.clone())));
            events.push(ev(ActionState::DeadLetter, 1, t, Some(detail)));
        } else {
            // A retryable failure rate that leaves ~4% dead-lettered after 3 attempts.
            let fail = if kind < 140 { 1.0 } else { 0.08 };
            if attempts(rng, &mut events, &mut t, fail) && policy.is_some() && rng.random_bool(0.9)
            {
                t += 60_000 + rng.random_range(0..240_000);
                let attempt = events.last().map_or(1, |e| e.attempt);
                if rng.random_bool(0.88) {
                    events.push(ev(
                        ActionState::Resolved,
                        attempt,
                        t,
                        Some("condition cleared".into()),
                    ));
                } else {
                    events.push(ev(
                        ActionState::NotResolved,
                        attempt,
                        t,
                        Some("condition still holds after the verify window".into()),
                    ));
                }
            }
        }
        let last = events
            .iter()
            .max_by_key(|e| (e.at_ms, e.attempt, rank(e.state)))
            .map_or(ActionState::Pending, |e| e.state);
        // Outbox replay and QoS 1: some transitions arrive late, some twice.
        if events.len() > 2 && rng.random_bool(0.02) {
            let n = events.len();
            events.swap(n - 1, n - 2);
        }
        if rng.random_bool(0.01) {
            let again = events[rng.random_range(0..events.len())].clone();
            events.push(again);
        }
        (events, last, policy)
    }
}

/// The store's order of transitions that share a millisecond (see
/// `vigil_coordinator::store::actions::lifecycle_rank`).
fn rank(state: ActionState) -> u8 {
    vigil_coordinator::store::actions::lifecycle_rank(state)
}

/// Fills `<dir>/data/lmdb` (the coordinator's store under `--data-dir <dir>/data`, see
/// `Coordinator::start`) with `hosts` × [`ACTIONS_PER_HOST`] actions, created in time
/// order across hosts, through the real store writer.
pub(super) async fn fill(dir: &Path, hosts: usize, base_ms: i64) -> Result<Filled, BenchError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        BenchError::Failed(format!("audit fill of {}: {what}: {e}", dir.display()))
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| failed("cannot clear the old data", &e))?;
    }
    let lmdb = dir.join("data").join("lmdb");
    let started = Instant::now();
    let store = {
        let lmdb = lmdb.clone();
        tokio::task::spawn_blocking(move || {
            Store::open(
                &lmdb,
                MapSize {
                    initial: 1 << 30,
                    max: 64 << 30,
                },
            )
        })
        .await
        .map_err(|e| failed("open task", &e))?
        .map_err(|e| failed("cannot open the store", &e))?
    };
    let (writer, thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
    let mut streams: Vec<HostStream> = (0..hosts).map(|h| HostStream::new(h, base_ms)).collect();
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = streams
        .iter()
        .map(|s| Reverse((s.next_ms, s.host)))
        .collect();
    let mut filled = Filled {
        hosts,
        actions: 0,
        transitions: 0,
        redelivered: 0,
        took: Duration::ZERO,
        disk_bytes: 0,
        data_dir: dir.join("data"),
        dead_letter: vec![0; BASELINE_HOSTS.min(hosts)],
        policy: vec![0; BASELINE_HOSTS.min(hosts)],
    };
    while let Some(Reverse((_, host))) = heap.pop() {
        let stream = &mut streams[host];
        let (events, last, policy) = stream.next_action();
        if stream.made < ACTIONS_PER_HOST {
            heap.push(Reverse((stream.next_ms, host)));
        }
        if host < BASELINE_HOSTS {
            filled.dead_letter[host] += usize::from(last == QUERY_STATUS);
            filled.policy[host] += usize::from(policy == Some(QUERY_POLICY));
        }
        filled.actions += 1;
        let n = events.len();
        let mut seen: Vec<(ActionState, u32)> = Vec::with_capacity(n);
        for event in events {
            if seen.contains(&(event.state, event.attempt)) {
                filled.redelivered += 1;
            } else {
                seen.push((event.state, event.attempt));
                filled.transitions += 1;
            }
            writer
                .send(Write::Action { event })
                .await
                .map_err(|e| failed("write", &e))?;
        }
    }
    writer.flush().await.map_err(|e| failed("flush", &e))?;
    drop(writer);
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| failed("writer join task", &e))?
        .map_err(|_| failed("writer thread", &"panicked"))?;
    let counts = store
        .action_counts()
        .map_err(|e| failed("cannot count the actions", &e))?;
    drop(store);
    filled.took = started.elapsed();
    if counts.total != filled.actions as u64 {
        return Err(failed(
            "count",
            &format!(
                "the store holds {} actions, {} were written",
                counts.total, filled.actions
            ),
        ));
    }
    filled.disk_bytes = disk_usage(&lmdb);
    Ok(filled)
}

/// Bytes allocated on disk under `dir` (like `du`; LMDB's file may be sparse).
pub(super) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.blocks() * 512)
        .sum()
}

/// One timed GET, the whole body read.
async fn get(
    client: &reqwest::Client,
    proc: &CoordinatorProc,
    path: &str,
) -> Result<(Duration, Vec<u8>), BenchError> {
    let url = format!("{}{path}", proc.http);
    let started = Instant::now();
    let response = proc
        .authorize(client.get(&url))
        .send()
        .await
        .map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| BenchError::Failed(format!("GET {url}: reading the body: {e}")))?;
    let took = started.elapsed();
    if !status.is_success() {
        return Err(BenchError::Failed(format!(
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok((took, body.to_vec()))
}

/// Checks a page: `expected` items, each of `host` and matching the query's other filter,
/// newest first (ULIDs start with the creation time, so ids descend).
fn check_page(
    body: &[u8],
    path: &str,
    kind: &QueryKind,
    host: &str,
    expected: usize,
) -> Result<Value, BenchError> {
    let bad = |why: String| BenchError::Failed(format!("GET {path}: {why}"));
    let json: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("answer is not JSON: {e}")))?;
    let actions = json["actions"]
        .as_array()
        .ok_or_else(|| bad("no `actions` array".into()))?;
    if expected == 0 || actions.len() != expected || json["count"] != expected {
        return Err(bad(format!(
            "{} actions (count {}), expected {expected} (> 0)",
            actions.len(),
            json["count"]
        )));
    }
    let (field, value) = kind.param;
    let mut previous: Option<&str> = None;
    for action in actions {
        if action["host"] != host || action[field] != value {
            return Err(bad(format!(
                "action {} has host {} and {field} {}, not {host} and {value}",
                action["id"], action["host"], action[field]
            )));
        }
        let id = action["id"].as_str().unwrap_or_default();
        if previous.is_some_and(|p| p <= id) {
            return Err(bad(format!("not newest first: {id} follows {previous:?}")));
        }
        previous = Some(id);
    }
    Ok(json)
}

/// The `pct` percentile (nearest rank) of `times`, in ms.
fn percentile_ms(times: &[Duration], pct: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((pct * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
    ms[rank - 1]
}

/// `1000000` → `1,000,000`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_stream_is_the_same_whatever_else_is_generated() {
        let take = |n| {
            let mut s = HostStream::new(3, 1_000_000);
            (0..n).map(|_| s.next_action().0).collect::<Vec<_>>()
        };
        let a = take(20);
        let b = take(20);
        assert_eq!(a, b);
        assert!(a
            .iter()
            .all(|events| events[0].state == ActionState::Pending));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&times, 0.5), 50.0);
        assert_eq!(percentile_ms(&times, 0.99), 99.0);
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
