//! The agent's own LMDB store (heed), under its data directory: the action queue's jobs,
//! the durable outbox of messages for the coordinator, and a few counters and flags.
//!
//! A state change and the message that reports it are written in one transaction
//! ([`AgentStore::commit`]), so after a crash the queue and the outbox agree: every
//! transition that happened is still due to be reported, and nothing is reported twice
//! as a new transition (the coordinator also ignores redelivered ones).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::job::Job;

/// LMDB map size for the agent (the file only grows as needed).
const MAP_SIZE: usize = 256 * 1024 * 1024;

/// Why the agent store failed.
#[derive(Debug, Error)]
pub enum AgentStoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// LMDB failed (open, read, write, full disk).
    #[error("agent store in {path}: {source}")]
    Lmdb {
        /// The directory.
        path: PathBuf,
        /// What LMDB said.
        source: heed::Error,
    },
    /// A record could not be decoded.
    #[error("corrupt record in the agent store: {0}")]
    Corrupt(String),
}

impl AgentStoreError {
    /// Whether a write failed for want of space or because the disk failed (`ENOSPC`,
    /// `EDQUOT`, `EIO` — LMDB reports a write cut short by a full disk as `EIO` — or a
    /// full LMDB map): the store may take the same write again later, so the queue goes
    /// on from memory. A corrupt record or an LMDB panic is not such a failure.
    pub fn is_write_failure(&self) -> bool {
        match self {
            AgentStoreError::Lmdb { source, .. } => matches!(
                source,
                heed::Error::Io(_)
                    | heed::Error::Mdb(heed::MdbError::MapFull | heed::MdbError::Other(_))
            ),
            AgentStoreError::CreateDir { .. } | AgentStoreError::Corrupt(_) => false,
        }
    }
}

/// Counters and flags kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Actions accepted.
    pub enqueued_total: u64,
    /// Attempts started.
    pub dequeued_total: u64,
    /// Actions completed.
    pub completed_total: u64,
    /// Attempts failed.
    pub failed_total: u64,
    /// The last action to reach a final state: id, target, when.
    pub last_processed: Option<(String, String, i64)>,
    /// The kill switch: remediation paused on this host.
    pub paused: bool,
}

/// One message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its position (delivery order).
    pub seq: u64,
    /// MQTT topic.
    pub topic: String,
    /// Payload (a versioned wire message).
    pub payload: Vec<u8>,
}

/// Where the action queue says that the agent store refuses writes (read by the status).
/// Cheap to clone; clones share one slot.
#[derive(Debug, Clone, Default)]
pub struct StorageAlarm(Arc<std::sync::Mutex<Option<String>>>);

impl StorageAlarm {
    /// Sets (`Some`: why) or clears the alarm.
    pub fn set(&self, error: Option<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// Why the store refuses writes, while it does.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Wakes the outbox publisher ([`crate::reporting::outbox`]) when new entries are stored.
#[derive(Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    /// Tells the publisher that entries were added.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next [`OutboxSignal::wake`] (or at once if one is pending).
    pub fn notified(&self) -> Notified<'_> {
        self.0.notified()
    }
}

/// The open store. Cheap to clone.
#[derive(Clone)]
pub struct AgentStore {
    env: Env,
    path: PathBuf,
    jobs: Database<Bytes, Bytes>,
    outbox: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
    done: Database<Bytes, Bytes>,
    next_seq: std::sync::Arc<AtomicU64>,
    outbox_epoch: u64,
}

const COUNTERS: &[u8] = b"counters";
/// Meta key of the session counter (raised at every start).
const SESSION: &[u8] = b"session";
/// Meta key of the outbox's epoch (random, chosen when the store was made).
const OUTBOX_EPOCH: &[u8] = b"outbox-epoch";
/// Meta key of the highest outbox sequence number handed out.
const OUTBOX_LAST: &[u8] = b"outbox-last";
/// Meta key of the last finished jobs.
const RECENT: &[u8] = b"recent-finished";
/// How many finished jobs [`AgentStore::remember_finished`] keeps.
pub const RECENT_FINISHED: usize = 10;

impl AgentStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<AgentStore, AgentStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| AgentStoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lmdb = |source| AgentStoreError::Lmdb {
            path: dir.to_path_buf(),
            source,
        };
        // SAFETY: the agent opens its data directory once per process and only through heed.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(MAP_SIZE)
                .max_dbs(8)
                .open(dir)
        }
        .map_err(lmdb)?;
        let mut txn = env.write_txn().map_err(lmdb)?;
        let jobs = env.create_database(&mut txn, Some("jobs")).map_err(lmdb)?;
        let outbox: Database<Bytes, Bytes> = env
            .create_database(&mut txn, Some("outbox"))
            .map_err(lmdb)?;
        let meta: Database<Bytes, Bytes> =
            env.create_database(&mut txn, Some("meta")).map_err(lmdb)?;
        let done = env.create_database(&mut txn, Some("done")).map_err(lmdb)?;
        let last = outbox
            .last(&txn)
            .map_err(lmdb)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k).ok())
            .map_or(0, u64::from_be_bytes);
        let read_u64 = |txn: &heed::RwTxn, key: &[u8]| -> Result<Option<u64>, AgentStoreError> {
            Ok(meta
                .get(txn, key)
                .map_err(lmdb)?
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes))
        };
        // The outbox's sequence numbers continue from the highest ever handed out (kept
        // with the epoch), so an emptied outbox does not start again at 1.
        let handed_out = read_u64(&txn, OUTBOX_LAST)?.unwrap_or(0);
        let last = last.max(handed_out);
        let outbox_epoch = match read_u64(&txn, OUTBOX_EPOCH)? {
            Some(epoch) => epoch,
            None => {
                let epoch: u64 = rand::random();
                meta.put(&mut txn, OUTBOX_EPOCH, &epoch.to_be_bytes()[..])
                    .map_err(lmdb)?;
                epoch
            }
        };
        txn.commit().map_err(lmdb)?;
        Ok(AgentStore {
            env,
            path: dir.to_path_buf(),
            jobs,
            outbox,
            meta,
            done,
            next_seq: std::sync::Arc::new(AtomicU64::new(last + 1)),
            outbox_epoch,
        })
    }

    /// Raises the session counter and returns the new session: higher than every
    /// earlier run's, whatever the clock says.
    pub fn next_session(&self) -> Result<u64, AgentStoreError> {
        let last = {
            let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
            self.meta
                .get(&txn, SESSION)
                .map_err(|e| self.lmdb(e))?
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes)
        };
        let session = last + 1;
        let saved = self.env.write_txn().and_then(|mut txn| {
            self.meta.put(&mut txn, SESSION, &session.to_be_bytes())?;
            txn.commit()
        });
        if let Err(e) = saved {
            // A full data dir must not keep the agent from starting. The next start reads
            // the same counter and may reuse this session; the coordinator then takes its
            // first messages for replays until the new run's numbers pass this one's.
            tracing::warn!("cannot keep the session counter ({e}); running as session {session}");
        }
        Ok(session)
    }

    /// The outbox's epoch: a random number chosen when the store was made.
    pub fn outbox_epoch(&self) -> u64 {
        self.outbox_epoch
    }

    /// The lowest sequence number still in the outbox (the next one to be handed out if
    /// it is empty).
    pub fn outbox_floor(&self) -> Result<u64, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        Ok(self
            .outbox
            .first(&txn)
            .map_err(|e| self.lmdb(e))?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k).ok())
            .map_or_else(|| self.next_seq.load(Ordering::SeqCst), u64::from_be_bytes))
    }

    /// Removes every outbox entry up to and including `upto` (the coordinator stored
    /// them); returns how many.
    pub fn outbox_ack(&self, upto: u64) -> Result<u64, AgentStoreError> {
        let mut txn = self.env.write_txn().map_err(|e| self.lmdb(e))?;
        let to = upto.to_be_bytes();
        let range = (
            std::ops::Bound::Unbounded,
            std::ops::Bound::Included(&to[..]),
        );
        let removed = self
            .outbox
            .delete_range(&mut txn, &range)
            .map_err(|e| self.lmdb(e))?;
        txn.commit().map_err(|e| self.lmdb(e))?;
        Ok(removed as u64)
    }

    fn lmdb(&self, source: heed::Error) -> AgentStoreError {
        AgentStoreError::Lmdb {
            path: self.path.clone(),
            source,
        }
    }

    /// Every job in the store.
    pub fn jobs(&self) -> Result<Vec<Job>, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let mut out = Vec::new();
        for entry in self.jobs.iter(&txn).map_err(|e| self.lmdb(e))? {
            let (_, bytes) = entry.map_err(|e| self.lmdb(e))?;
            out.push(
                serde_json::from_slice(bytes)
                    .map_err(|e| AgentStoreError::Corrupt(format!("job: {e}")))?,
            );
        }
        Ok(out)
    }

    /// The counters and flags.
    pub fn counters(&self) -> Result<Counters, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        match self.meta.get(&txn, COUNTERS).map_err(|e| self.lmdb(e))? {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| AgentStoreError::Corrupt(format!("counters: {e}"))),
            None => Ok(Counters::default()),
        }
    }

    /// Writes jobs, counters and outgoing messages in one transaction; removes
    /// `forget` jobs (final ones no longer needed).
    pub fn commit(
        &self,
        jobs: &[&Job],
        forget: &[String],
        counters: &Counters,
        messages: &[(String, Vec<u8>)],
    ) -> Result<(), AgentStoreError> {
        let mut txn = self.env.write_txn().map_err(|e| self.lmdb(e))?;
        for job in jobs {
            let bytes = serde_json::to_vec(job)
                .map_err(|e| AgentStoreError::Corrupt(format!("job: {e}")))?;
            self.jobs
                .put(&mut txn, job.id.as_bytes(), &bytes)
                .map_err(|e| self.lmdb(e))?;
        }
        let now = vigil_shared::time::now_ms().to_be_bytes();
        for id in forget {
            self.jobs
                .delete(&mut txn, id.as_bytes())
                .map_err(|e| self.lmdb(e))?;
            // Remember finished ids for a while, so a redelivered command is not run twice.
            self.done
                .put(&mut txn, id.as_bytes(), &now)
                .map_err(|e| self.lmdb(e))?;
        }
        let bytes = serde_json::to_vec(counters)
            .map_err(|e| AgentStoreError::Corrupt(format!("counters: {e}")))?;
        self.meta
            .put(&mut txn, COUNTERS, &bytes)
            .map_err(|e| self.lmdb(e))?;
        // Sequence numbers are taken only when the transaction commits (writers take
        // turns at LMDB's write lock), so a failed commit leaves no gap in the outbox.
        let first = self.next_seq.load(Ordering::SeqCst);
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let value = encode_outbox_value(topic, payload);
            self.outbox
                .put(&mut txn, &(first + i as u64).to_be_bytes(), &value)
                .map_err(|e| self.lmdb(e))?;
        }
        if !messages.is_empty() {
            let last = first + messages.len() as u64 - 1;
            self.meta
                .put(&mut txn, OUTBOX_LAST, &last.to_be_bytes())
                .map_err(|e| self.lmdb(e))?;
        }
        txn.commit().map_err(|e| self.lmdb(e))?;
        self.next_seq
            .store(first + messages.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    /// Keeps `job`, which reached a final state and is forgotten by the queue, among the
    /// last [`RECENT_FINISHED`] finished jobs (for `vigil-agent status`).
    pub fn remember_finished(&self, job: &Job) -> Result<(), AgentStoreError> {
        let mut recent = self.recent_finished()?;
        recent.retain(|j| j.id != job.id);
        recent.insert(0, job.clone());
        recent.truncate(RECENT_FINISHED);
        let bytes = serde_json::to_vec(&recent)
            .map_err(|e| AgentStoreError::Corrupt(format!("recent jobs: {e}")))?;
        let mut txn = self.env.write_txn().map_err(|e| self.lmdb(e))?;
        self.meta
            .put(&mut txn, RECENT, &bytes)
            .map_err(|e| self.lmdb(e))?;
        txn.commit().map_err(|e| self.lmdb(e))
    }

    /// The last finished jobs the queue forgot, newest first.
    pub fn recent_finished(&self) -> Result<Vec<Job>, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        match self.meta.get(&txn, RECENT).map_err(|e| self.lmdb(e))? {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| AgentStoreError::Corrupt(format!("recent jobs: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    /// Whether an action with this id finished recently (and was forgotten).
    pub fn is_done(&self, id: &str) -> Result<bool, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        Ok(self
            .done
            .get(&txn, id.as_bytes())
            .map_err(|e| self.lmdb(e))?
            .is_some())
    }

    /// Forgets finished ids older than `before_ms`.
    pub fn prune_done(&self, before_ms: i64) -> Result<usize, AgentStoreError> {
        let mut txn = self.env.write_txn().map_err(|e| self.lmdb(e))?;
        let old: Vec<Vec<u8>> = self
            .done
            .iter(&txn)
            .map_err(|e| self.lmdb(e))?
            .filter_map(Result::ok)
            .filter(|(_, at)| {
                <[u8; 8]>::try_from(*at).is_ok_and(|b| i64::from_be_bytes(b) < before_ms)
            })
            .map(|(id, _)| id.to_vec())
            .collect();
        for id in &old {
            self.done.delete(&mut txn, id).map_err(|e| self.lmdb(e))?;
        }
        txn.commit().map_err(|e| self.lmdb(e))?;
        Ok(old.len())
    }

    /// Up to `limit` outbox entries from `seq` on, in order.
    pub fn outbox_from(&self, seq: u64, limit: usize) -> Result<Vec<OutboxEntry>, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let from = seq.to_be_bytes();
        let range = (
            std::ops::Bound::Included(&from[..]),
            std::ops::Bound::Unbounded,
        );
        let mut out = Vec::new();
        for entry in self
            .outbox
            .range(&txn, &range)
            .map_err(|e| self.lmdb(e))?
            .take(limit)
        {
            let (key, value) = entry.map_err(|e| self.lmdb(e))?;
            out.push(decode_outbox_entry(key, value)?);
        }
        Ok(out)
    }

    /// Removes delivered outbox entries.
    pub fn outbox_delete(&self, seqs: &[u64]) -> Result<(), AgentStoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut txn = self.env.write_txn().map_err(|e| self.lmdb(e))?;
        for seq in seqs {
            self.outbox
                .delete(&mut txn, &seq.to_be_bytes())
                .map_err(|e| self.lmdb(e))?;
        }
        txn.commit().map_err(|e| self.lmdb(e))
    }

    /// How many messages wait in the outbox.
    pub fn outbox_len(&self) -> Result<u64, AgentStoreError> {
        let txn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.outbox.len(&txn).map_err(|e| self.lmdb(e))
    }
}

/// An outbox value: the topic's length (u16, big-endian), the topic, the payload.
pub fn encode_outbox_value(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(2 + topic.len() + payload.len());
    value.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    value.extend_from_slice(topic.as_bytes());
    value.extend_from_slice(payload);
    value
}

/// Reads an outbox entry from its key (the sequence number, u64 big-endian) and value
/// (see [`encode_outbox_value`]).
pub fn decode_outbox_entry(key: &[u8], value: &[u8]) -> Result<OutboxEntry, AgentStoreError> {
    let seq = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| AgentStoreError::Corrupt("outbox key".into()))?;
    let len = value
        .get(..2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_be_bytes)
        .ok_or_else(|| AgentStoreError::Corrupt("outbox entry".into()))? as usize;
    let topic = value
        .get(2..2 + len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| AgentStoreError::Corrupt("outbox topic".into()))?
        .to_string();
    let payload = value.get(2 + len..).unwrap_or_default().to_vec();
    Ok(OutboxEntry {
        seq,
        topic,
        payload,
    })
}
