//! Helpers for the fault suite (`tests/faults.rs`): what an agent made, read from its
//! metric spool on disk; what the coordinator stored, read from its REST history; the
//! per-agent check that compares the two (generated, stored, missing, duplicates, order);
//! the agent's own status (`vigil-agent status --json`); scenario durations from the
//! environment; and the static binaries (built once per test process with
//! `scripts/dist`, without the `.deb` packages).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::packaging::{target_dir, workspace_root, STATIC_TARGET, VERSION};

/// A duration in seconds from the environment variable `name`, else `default`.
pub fn secs_from_env(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// The static (musl) agent and coordinator.
#[derive(Debug, Clone)]
pub struct StaticBinaries {
    /// `vigil-agent-<version>-x86_64-unknown-linux-musl`.
    pub agent: PathBuf,
    /// `vigil-coordinator-<version>-x86_64-unknown-linux-musl`.
    pub coordinator: PathBuf,
}

/// Runs `scripts/dist --profile release --out <target dir>/vigil-dist-faults` once per
/// test process (seconds when nothing changed) and returns the two static binaries.
pub fn static_binaries() -> StaticBinaries {
    static BUILT: Mutex<Option<Result<StaticBinaries, String>>> = Mutex::new(None);
    let mut slot = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let out = target_dir().join("vigil-dist-faults");
        eprintln!(
            "running scripts/dist --profile release --out {}",
            out.display()
        );
        let result = Command::new(workspace_root().join("scripts/dist"))
            .args(["--profile", "release", "--out"])
            .arg(&out)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/dist: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(StaticBinaries {
                        agent: out.join(format!("vigil-agent-{VERSION}-{STATIC_TARGET}")),
                        coordinator: out
                            .join(format!("vigil-coordinator-{VERSION}-{STATIC_TARGET}")),
                    })
                } else {
                    Err(format!(
                        "scripts/dist --profile release failed ({}):\n{}\n{}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ))
                }
            });
        *slot = Some(result);
    }
    match slot.as_ref().expect("just set") {
        Ok(binaries) => binaries.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// An agent's metric spool as its files say (read without the agent's code: the
/// `acked` file and the sequence numbers of the records in the `*.seg` segments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolOnDisk {
    /// The acknowledged position (`acked`), 0 when there is none.
    pub acked: u64,
    /// The lowest seq in a segment, if any segment holds a record.
    pub first: Option<u64>,
    /// The highest seq in a segment, if any.
    pub last: Option<u64>,
    /// Records above `acked` in the segments: waiting for an acknowledgement.
    pub held: u64,
}

impl SpoolOnDisk {
    /// Reads `<data_dir>/metrics-spool`. A record cut short at a segment's end (an append
    /// under way) ends that segment.
    pub fn read(data_dir: &Path) -> SpoolOnDisk {
        let dir = data_dir.join("metrics-spool");
        let acked = std::fs::read_to_string(dir.join("acked"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut seqs: Vec<u64> = Vec::new();
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                    .collect()
            })
            .unwrap_or_default();
        segments.sort();
        for segment in segments {
            let Ok(bytes) = std::fs::read(&segment) else {
                continue;
            };
            let mut at = 9usize; // "VGLSPOOL" and the version byte
            while at + 16 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
                let end = at + 16 + len as usize;
                if end > bytes.len() {
                    break;
                }
                seqs.push(seq);
                at = end;
            }
        }
        SpoolOnDisk {
            acked,
            first: seqs.iter().copied().min(),
            last: seqs.iter().copied().max(),
            held: seqs.iter().filter(|s| **s > acked).count() as u64,
        }
    }

    /// The batches the agent has made: the highest seq it gave out (on disk or
    /// acknowledged).
    pub fn generated(&self) -> u64 {
        self.acked.max(self.last.unwrap_or(0))
    }

    /// Batches the full spool dropped that were never acknowledged (those between the
    /// acknowledged position and the oldest segment left).
    pub fn dropped_unacknowledged(&self) -> u64 {
        match self.first {
            Some(first) if first > self.acked + 1 => first - self.acked - 1,
            _ => 0,
        }
    }
}

/// `vigil-agent status --json --data-dir DIR` with `agent` (the binary): the JSON it
/// prints (whatever its exit code: a stopped agent exits 3), `Null` when it prints none.
pub fn agent_status(agent: &Path, data_dir: &Path) -> Value {
    let output = Command::new(agent)
        .args(["status", "--json", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} status: {e}", agent.display()));
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// The timestamps (epoch ms), in the order answered, of the stored points of `name` for
/// `host` between `from_ms` and `to_ms`, from `GET /api/v1/metrics/query` on `http`
/// with `token`.
pub async fn stored_timestamps(
    http: &str,
    token: Option<&str>,
    host: &str,
    name: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<i64>, String> {
    let url = format!(
        "{http}/api/v1/metrics/query?name={name}&host={host}&from={from_ms}&to={to_ms}&limit=10000"
    );
    let request =
        super::with_token(reqwest::Client::new().get(&url), token).timeout(Duration::from_secs(20));
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {body}"));
    }
    body["points"]
        .as_array()
        .ok_or_else(|| format!("GET {url}: no points: {body}"))?
        .iter()
        .map(|p| {
            let text = p["timestamp"].as_str().unwrap_or_default();
            vigil_shared::time::parse_time(text).map_err(|e| format!("timestamp {text}: {e}"))
        })
        .collect()
}

/// The figures of one agent after a scenario.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The agent's host.
    pub host: String,
    /// Batches it made (its spool's highest seq).
    pub generated: u64,
    /// What its status said it made (`delivery.metrics_generated_total`), if it said.
    pub status_generated: Option<u64>,
    /// Batches its full buffer dropped that the coordinator never stored: what the
    /// coordinator counts as missing.
    pub dropped: u64,
    /// Records still in its spool, not acknowledged.
    pub held: u64,
    /// One-point-per-batch points the coordinator stored for it.
    pub stored: u64,
    /// Stored points whose timestamp does not increase on the one before (a batch
    /// stored twice, or out of order).
    pub out_of_order: u64,
}

impl Tally {
    /// Batches neither stored nor counted missing: lost on the way (negative: stored
    /// more than made, or counted missing although stored).
    pub fn lost(&self) -> i64 {
        self.generated as i64 - self.dropped as i64 - self.stored as i64
    }
}

/// Counts the timestamps that do not strictly increase.
pub fn not_increasing(timestamps: &[i64]) -> u64 {
    timestamps.windows(2).filter(|w| w[1] <= w[0]).count() as u64
}

/// Prints a scenario's table (to stderr, for `--nocapture`), and the extra lines.
pub fn print_table(scenario: &str, tallies: &[Tally], extra: &[String]) {
    let mut out = format!(
        "\n=== {scenario} ===\n{:<26} {:>9} {:>9} {:>8} {:>7} {:>6} {:>5} {:>9}\n",
        "agent", "generated", "status", "missing", "stored", "held", "lost", "unordered"
    );
    for t in tallies {
        out.push_str(&format!(
            "{:<26} {:>9} {:>9} {:>8} {:>7} {:>6} {:>5} {:>9}\n",
            t.host,
            t.generated,
            t.status_generated
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            t.dropped,
            t.stored,
            t.held,
            t.lost(),
            t.out_of_order
        ));
    }
    for line in extra {
        out.push_str(line);
        out.push('\n');
    }
    eprintln!("{out}");
}

/// Panics unless every agent's batches were all stored (or dropped by the agent itself),
/// once each and in order, and nothing is held any more.
pub fn assert_delivered(scenario: &str, tallies: &[Tally]) {
    for t in tallies {
        assert!(
            t.generated > 0,
            "{scenario}: {} made no metric batch: {t:?}",
            t.host
        );
        assert_eq!(
            t.lost(),
            0,
            "{scenario}: {} lost batches: made {}, missing {}, stored {}: {t:?}",
            t.host,
            t.generated,
            t.dropped,
            t.stored
        );
        assert_eq!(
            t.out_of_order, 0,
            "{scenario}: {} has stored points out of order or twice: {t:?}",
            t.host
        );
        assert_eq!(
            t.held, 0,
            "{scenario}: {} still holds unacknowledged batches at the end: {t:?}",
            t.host
        );
    }
}
