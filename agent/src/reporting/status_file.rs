//! What the running agent is doing, as a small JSON file in its data directory
//! (`status.json`), rewritten every few seconds. `vigil-agent status` reads it: the agent
//! needs no listening socket, and the file says something useful even when the agent has
//! stopped (how long ago, and what it was doing then).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_shared::wire::{AppliedBundle, QueueStatus};

use crate::acting::Job;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "status.json";

/// How often the running agent rewrites the file.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How many recent actions the file lists.
pub const RECENT_ACTIONS: usize = 10;

/// A snapshot of the running agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// The agent's process id.
    pub pid: u32,
    /// When this snapshot was written, epoch ms.
    pub written_at_ms: i64,
    /// The host it reports as.
    pub host: String,
    /// The agent's version.
    pub version: String,
    /// When the process started, epoch ms.
    pub started_at_ms: i64,
    /// The broker it reports to.
    pub broker: String,
    /// Whether it is connected to the broker now.
    pub connected: bool,
    /// When it last took a sample, epoch ms.
    pub last_sample_at_ms: Option<i64>,
    /// Policies loaded and, of those, enabled.
    pub policies_loaded: u32,
    /// Enabled policies.
    pub policies_enabled: u32,
    /// The policy bundles in force.
    pub bundles: Vec<AppliedBundle>,
    /// Why the last bundle offered was refused, if it was.
    pub bundle_error: Option<String>,
    /// Whether remediation is paused (the kill switch).
    pub remediation_paused: bool,
    /// The action queue's state.
    pub queue: QueueStatus,
    /// Messages (policy events, action transitions) waiting in the outbox until the
    /// coordinator has stored them.
    pub outbox_queued: u64,
    /// How delivery to the coordinator is going (buffered metrics, clock skew, a data
    /// directory that cannot be written).
    #[serde(default)]
    pub delivery: Option<vigil_shared::wire::DeliveryStatus>,
    /// The latest actions, newest first.
    pub recent_actions: Vec<RecentAction>,
    /// Anything the agent wants an operator to read.
    pub detail: Option<String>,
}

/// One action in [`StatusSnapshot::recent_actions`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentAction {
    /// The action's id.
    pub id: String,
    /// As written in the policy (`restart-service`).
    pub action: String,
    /// What it acts on.
    pub target: String,
    /// Where it stands (`pending`, `completed`, …).
    pub state: String,
    /// When it was accepted, epoch ms.
    pub created_at_ms: i64,
    /// The last thing that happened.
    pub detail: Option<String>,
}

impl RecentAction {
    /// The newest `RECENT_ACTIONS` of `jobs`, newest first (the first of two with one id).
    pub fn latest(jobs: &[Job]) -> Vec<RecentAction> {
        let mut seen = std::collections::HashSet::new();
        let mut jobs: Vec<&Job> = jobs.iter().filter(|j| seen.insert(&j.id)).collect();
        jobs.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then(b.seq.cmp(&a.seq))
        });
        jobs.into_iter()
            .take(RECENT_ACTIONS)
            .map(|job| RecentAction {
                id: job.id.clone(),
                action: job.written.clone(),
                target: job.target.clone(),
                state: job.state.as_str().to_string(),
                created_at_ms: job.created_at_ms,
                detail: job.detail.clone(),
            })
            .collect()
    }
}

/// The status file's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Writes the snapshot atomically (temporary file, then rename). It holds no secrets;
/// the data directory around it is root's alone.
pub fn write(data_dir: &Path, snapshot: &StatusSnapshot) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
    let target = path(data_dir);
    let temporary = data_dir.join(format!(".{FILE_NAME}.new"));
    std::fs::write(&temporary, json)?;
    std::fs::rename(&temporary, &target)
}

/// Why the status file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusFileError {
    /// There is none: the agent never ran with this data directory.
    #[error("no status file at {0}: the agent has not run with this data directory")]
    Missing(PathBuf),
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is not a status snapshot.
    #[error("{path} is not an agent status file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// Reads the snapshot the agent last wrote.
pub fn read(data_dir: &Path) -> Result<StatusSnapshot, StatusFileError> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StatusFileError::Missing(path))
        }
        Err(source) => return Err(StatusFileError::Read { path, source }),
    };
    serde_json::from_slice(&bytes).map_err(|source| StatusFileError::Parse { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            pid: std::process::id(),
            written_at_ms: 1_700_000_000_000,
            host: "web-1".into(),
            version: "0.1.0".into(),
            started_at_ms: 1_699_999_990_000,
            broker: "mqtt://127.0.0.1:1883".into(),
            connected: true,
            last_sample_at_ms: Some(1_699_999_999_000),
            policies_loaded: 3,
            policies_enabled: 2,
            bundles: vec![AppliedBundle {
                group: "web".into(),
                version: 4,
                hash: "ab".into(),
            }],
            bundle_error: None,
            remediation_paused: false,
            queue: QueueStatus::default(),
            delivery: None,
            outbox_queued: 0,
            recent_actions: Vec::new(),
            detail: None,
        }
    }

    #[test]
    fn a_written_snapshot_reads_back_and_a_missing_one_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(read(dir.path()), Err(StatusFileError::Missing(_))));
        write(dir.path(), &snapshot()).expect("write");
        assert_eq!(read(dir.path()).expect("read"), snapshot());
        std::fs::write(path(dir.path()), "{").expect("write junk");
        let err = read(dir.path()).expect_err("junk");
        assert!(
            err.to_string().contains("is not an agent status file"),
            "{err}"
        );
    }
}
