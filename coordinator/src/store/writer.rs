//! The store's single writer: a thread that takes [`Write`]s from a channel, applies as
//! many as are waiting in one LMDB transaction, and answers each.
//!
//! One writer means no write-lock contention and few, large transactions (LMDB's commit
//! cost is per transaction, not per key). When the map fills up, the writer grows it (up
//! to [`super::MapSize::max`]) and retries; at the ceiling (or when the file system is
//! full) it answers [`StoreError::Full`] (or the I/O error) and carries on with later
//! writes.
//!
//! A message from an agent's durable queue comes as a [`Write::Queued`]: the writer
//! keeps each host's delivery [`Window`] in the same transaction as the data, so a
//! message is stored at most once however often it is sent, and after each commit it
//! tells the acknowledgement sender ([`Stored`]) how far each touched stream is stored.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::thread::JoinHandle;

use heed::RwTxn;
use tokio::sync::{mpsc, oneshot};
use vigil_shared::delivery::{Admit, Delivery, Stream, Window};
use vigil_shared::validate;
use vigil_shared::wire::{ActionEvent, AgentState, AgentStatus, PolicyEvent, RunningPolicies};

use super::audit::{AuditChunk, AuditCursor, AuditReply};
use super::points::Points;
use super::records::{HostRecord, LatestPoint, Source};
use super::{actions, audit, codec, feed, keys, Store, StoreError};
use crate::store::feed::{FeedEntry, FeedEvent};
use crate::telemetry::Telemetry;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 2048;
/// Capacity of the writer's queue; senders wait when it is full (backpressure).
const QUEUE: usize = 8192;

/// The answer to a write: for samples, the id of the last sample stored; for a prune, the
/// number of points deleted.
pub type WriteReply = oneshot::Sender<Result<u64, Arc<StoreError>>>;

/// How far one agent stream is stored, after a commit: what the agent may forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The host.
    pub host: String,
    /// The stream.
    pub stream: Stream,
    /// Its epoch.
    pub epoch: u64,
    /// Everything up to here is stored.
    pub upto: u64,
}

/// Where a status stands among one agent's statuses: later sessions and, within one,
/// higher sequence numbers are newer. The last will is sealed when the agent connects,
/// before the statuses it supersedes, so it is newer than anything of an earlier session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusOrder {
    /// The agent's session.
    pub session: u64,
    /// The seal's sequence number.
    pub seq: u64,
    /// Whether it is the last will.
    pub will: bool,
}

/// One thing to write.
// A status is the largest variant; writes are moved once, into the writer's queue.
#[allow(clippy::large_enum_variant)]
pub enum Write {
    /// A message from an agent's durable queue: `write` is stored unless the host's
    /// delivery window says it already is. Answers 1 if stored now, 0 if not.
    Queued {
        /// The host (the one the message was sealed by).
        host: String,
        /// Its place in the agent's queue.
        delivery: Delivery,
        /// What it carries (samples, an action transition or a policy event).
        write: Box<Write>,
        /// Where to send the outcome once committed, if anyone waits for it.
        reply: Option<WriteReply>,
    },
    /// Samples from one host.
    Samples {
        /// The host.
        host: String,
        /// The samples, with the host's labels merged into their tags, made ready by
        /// the sender ([`Points::new`]).
        points: Points,
        /// How they arrived.
        source: Source,
        /// When the coordinator received them, epoch ms (the host's "last seen").
        received_ms: i64,
        /// Where to send the outcome, if anyone waits for it.
        reply: Option<WriteReply>,
    },
    /// An agent's status.
    Status {
        /// The status.
        status: AgentStatus,
        /// The policies the agent runs (`None`: it does not say).
        running: Option<RunningPolicies>,
        /// When it was received, epoch ms.
        received_ms: i64,
        /// The agent's clock minus the coordinator's, ms, from the message's seal.
        clock_skew_ms: Option<i64>,
        /// Where the status stands among the agent's statuses (from its seal).
        order: Option<StatusOrder>,
    },
    /// An event for the feed that no other write makes (drift changes).
    Feed {
        /// What happened.
        event: FeedEvent,
        /// When, epoch ms.
        at_ms: i64,
    },
    /// A policy event for the audit history (ignored if its id is already stored).
    Event {
        /// The event.
        event: PolicyEvent,
    },
    /// One transition of an action for the action audit trail (ignored if already stored).
    Action {
        /// The event.
        event: ActionEvent,
    },
    /// A manual action created over REST (its first transition, source `api`); answers 1.
    ManualAction {
        /// The action as its first event.
        event: ActionEvent,
        /// Where to send the outcome, if anyone waits for it.
        reply: Option<WriteReply>,
    },
    /// An Alertmanager alert as the audit trail records it, in one transaction: its policy
    /// event (`act` for a firing alert routed to an action, `resolved` when it ends) and,
    /// with `act`, the action's first transition (source `alertmanager`). Answers 1 if it
    /// is new, 0 if already stored (the action's id, or else the event's): a repeat of
    /// the same alert.
    Alert {
        /// The action the alert causes, if it causes one.
        action: Option<ActionEvent>,
        /// The alert's event in the policy audit history.
        event: PolicyEvent,
        /// Where to send the outcome, if anyone waits for it.
        reply: Option<WriteReply>,
    },
    /// Delete audit records (actions, policy events, feed entries) older than
    /// `before_ms`: one chunk of an audit retention pass (see [`super::audit`]).
    PruneAudit {
        /// The cut-off, epoch ms.
        before_ms: i64,
        /// Most records this chunk removes or looks at.
        limit: usize,
        /// Where the pass is.
        cursor: AuditCursor,
        /// Where to send what the chunk did.
        reply: Option<AuditReply>,
    },
    /// Marks a host silent (the deadman's verdict): applied, with a feed event, only if
    /// its agent's last status says online, it is not silent already, and nothing newer
    /// than `last_seen_ms` came from it since the verdict. Answers 1 if applied, else 0.
    Silence {
        /// The host.
        host: String,
        /// When it was last heard from as the verdict saw it, epoch ms.
        last_seen_ms: i64,
        /// When it was found silent, epoch ms.
        at_ms: i64,
        /// Where to send the outcome, if anyone waits for it.
        reply: Option<WriteReply>,
    },
    /// Delete metric history older than `before_ms`.
    Prune {
        /// The cut-off, epoch ms.
        before_ms: i64,
        /// Where to send the number of points deleted.
        reply: Option<WriteReply>,
    },
    /// Answers once every write queued before it has been applied.
    Flush {
        /// Where to answer.
        reply: WriteReply,
    },
}

/// A handle for queueing writes. Cheap to clone.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Write>,
    queued: Arc<QueuedBytes>,
}

/// Bytes of samples (their prepared [`Points`]) queued for the writer at most; past this,
/// a sender on an ingest thread waits for the writer to commit some. [`QUEUE`] bounds the
/// queue's writes, not their size: 8,192 agent batches of up to twice
/// [`vigil_shared::wire::MAX_BATCH_STORED_BYTES`] each.
const QUEUED_SAMPLE_BYTES: usize = 256 * 1024 * 1024;

/// The bytes of samples in the writer's queue, and a way to wait for room.
struct QueuedBytes {
    bytes: std::sync::Mutex<usize>,
    room: std::sync::Condvar,
    limit: usize,
}

impl QueuedBytes {
    fn new(limit: usize) -> QueuedBytes {
        QueuedBytes {
            bytes: std::sync::Mutex::new(0),
            room: std::sync::Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `n` more bytes queued, first waiting while that would pass the limit (one
    /// write larger than the limit passes alone) or until `gone` says the writer is gone.
    fn wait_for_room(&self, n: usize, gone: impl Fn() -> bool) {
        let mut bytes = self.lock();
        while *bytes > 0 && bytes.saturating_add(n) > self.limit && !gone() {
            bytes = self
                .room
                .wait_timeout(bytes, std::time::Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *bytes = bytes.saturating_add(n);
    }

    /// Counts `n` more bytes queued, without waiting.
    fn count(&self, n: usize) {
        let mut bytes = self.lock();
        *bytes = bytes.saturating_add(n);
    }

    /// Counts `n` bytes no longer queued.
    fn release(&self, n: usize) {
        if n > 0 {
            let mut bytes = self.lock();
            *bytes = bytes.saturating_sub(n);
            self.room.notify_all();
        }
    }
}

impl Write {
    /// The bytes of samples this write holds (its points), for [`QueuedBytes`].
    fn sample_bytes(&self) -> usize {
        match self {
            Write::Samples { points, .. } => points.size_bytes(),
            Write::Queued { write, .. } => write.sample_bytes(),
            _ => 0,
        }
    }
}

impl StoreWriter {
    /// Starts the writer thread for `store`.
    pub fn start(store: Store, telemetry: Arc<Telemetry>) -> (StoreWriter, JoinHandle<()>) {
        Self::start_with_acks(store, telemetry, None)
    }

    /// Starts the writer thread for `store`; after every commit that touched agent
    /// streams, what they have stored goes to `acks` (dropped if it is full: the next
    /// message of the stream brings it again).
    pub fn start_with_acks(
        store: Store,
        telemetry: Arc<Telemetry>,
        acks: Option<mpsc::Sender<Vec<Stored>>>,
    ) -> (StoreWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(QueuedBytes::new(QUEUED_SAMPLE_BYTES));
        let thread = {
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name("vigil-store-writer".into())
                .spawn(move || run(store, telemetry, rx, acks, &queued))
                .unwrap_or_else(|e| panic!("cannot start the store writer thread: {e}"))
        };
        (StoreWriter { tx, queued }, thread)
    }

    /// Queues a write, waiting while the queue is full. (Its samples count towards
    /// [`QUEUED_SAMPLE_BYTES`] without waiting for room: the runtime's senders write a
    /// sample or a few, the ingest threads' batches wait in [`Self::send_blocking`].)
    pub async fn send(&self, write: Write) -> Result<(), StoreError> {
        let bytes = write.sample_bytes();
        self.queued.count(bytes);
        self.tx.send(write).await.map_err(|_| {
            self.queued.release(bytes);
            StoreError::WriterGone
        })
    }

    /// Queues a write from a thread outside the async runtime, blocking while the queue is
    /// full, in writes ([`QUEUE`]) or in bytes of samples ([`QUEUED_SAMPLE_BYTES`]).
    pub fn send_blocking(&self, write: Write) -> Result<(), StoreError> {
        let bytes = write.sample_bytes();
        self.queued.wait_for_room(bytes, || self.tx.is_closed());
        self.tx.blocking_send(write).map_err(|_| {
            self.queued.release(bytes);
            StoreError::WriterGone
        })
    }

    /// Queues a write and waits for its outcome.
    pub async fn send_and_wait(
        &self,
        make: impl FnOnce(WriteReply) -> Write,
    ) -> Result<u64, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).await.map_err(Arc::new)?;
        answer.await.map_err(|_| Arc::new(StoreError::WriterGone))?
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) -> Result<(), Arc<StoreError>> {
        self.send_and_wait(|reply| Write::Flush { reply })
            .await
            .map(|_| ())
    }
}

/// The writer's memory between transactions.
struct WriterState {
    /// Series key → id, for series already in the store.
    series: FastMap<Vec<u8>, u64>,
    next_series_id: u64,
    samples_total: u64,
    /// Delivery windows read so far, by host and stream.
    windows: HashMap<(String, Stream), Window>,
    /// The time of the stored latest point, by `latest` key, for keys written or read
    /// so far: a sample is checked against it without reading and decoding the record.
    /// Only this thread writes `latest`, and nothing removes its records.
    latest_ts: FastMap<[u8; 16], i64>,
    /// `latest` records newer than the stored ones, committed with their samples'
    /// history but not yet put in `latest` ([`LatestPuts`]).
    latest_due: FastMap<[u8; 16], Vec<u8>>,
    /// When `latest` was last brought up to date.
    latest_put_at: std::time::Instant,
}

/// How long `latest` may lag behind `history` while the writer is behind.
const LATEST_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How many `latest` records may wait ([`WriterState::latest_due`]) before they are put
/// anyway (about 100 bytes each).
const LATEST_DUE_MAX: usize = 262_144;

/// When a transaction puts the `latest` records of its samples. `latest` holds each
/// series' newest point per tag set; `history` holds every point. Under load a host's
/// series get a new latest point several times a second, and each was a second B-tree
/// put per sample, a quarter of the writer's work in the 1,000-agent ingest burst. So
/// while the writer is behind (writes wait in its queue as it commits) the newest
/// record of each key waits in memory, and is put once: after [`LATEST_EVERY`], once
/// [`LATEST_DUE_MAX`] wait, when nothing waits in the queue (so also with the last
/// write before the queue closes), and on a [`StoreWriter::flush`]. The samples
/// themselves are in `history`, committed before they are acknowledged, as always; a
/// crash loses at most the last second of `latest` updates (the host's page shows the
/// value before, until its next sample).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LatestPuts {
    /// With this transaction: the writer has caught up, or `latest` is due.
    Now,
    /// Later: more writes wait.
    Later,
}

/// The writer's per-sample maps: keyed by what agents send (series names, tags), so
/// randomly seeded against crafted collisions, and quicker than the standard hasher.
type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

const META_NEXT_SERIES: &[u8] = b"next_series_id";
const META_SAMPLES: &[u8] = b"samples_total";

fn run(
    store: Store,
    telemetry: Arc<Telemetry>,
    mut rx: mpsc::Receiver<Write>,
    acks: Option<mpsc::Sender<Vec<Stored>>>,
    queued: &QueuedBytes,
) {
    let mut state = match load_state(&store) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!("store writer cannot start: {e}");
            return;
        }
    };
    telemetry
        .store_map_size_bytes
        .set(i64::try_from(store.current_map_size()).unwrap_or(i64::MAX));
    report_space(&store, &telemetry);
    let mut space_reported = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let prunes = batch
            .iter()
            .any(|w| matches!(w, Write::Prune { .. } | Write::PruneAudit { .. }));
        let began = std::time::Instant::now();
        let applied = apply_growing(&store, &mut state, &telemetry, &batch, &|| rx.is_empty());
        queued.release(batch.iter().map(Write::sample_bytes).sum());
        if applied.is_ok() {
            telemetry.store_commits.inc();
            telemetry.store_commit_writes.inc_by(batch.len() as u64);
            telemetry
                .store_commit_duration
                .observe(began.elapsed().as_secs_f64());
        }
        match applied {
            Ok(Applied {
                outcomes,
                admitted,
                feed_entries,
                stored,
                audits,
            }) => {
                store.feed.committed(feed_entries);
                let mut audits = audits.into_iter();
                if let (Some(acks), false) = (&acks, stored.is_empty()) {
                    let _ = acks.try_send(stored);
                }
                for ((write, outcome), admitted) in batch.into_iter().zip(outcomes).zip(admitted) {
                    let inner = match &write {
                        Write::Queued { write, .. } if admitted => Some(&**write),
                        Write::Queued { .. } => None,
                        other => Some(other),
                    };
                    if let Some(Write::Samples { source, points, .. }) = inner {
                        telemetry
                            .samples_stored
                            .with_label_values(&[source.as_str()])
                            .inc_by(points.len() as u64);
                    }
                    if let Some(inner) = inner {
                        super::actions::count_stored(&telemetry, inner, outcome);
                    }
                    if let Write::PruneAudit { reply, .. } = write {
                        let chunk = audits.next().unwrap_or_default();
                        for (kind, n) in chunk.pruned.by_kind() {
                            telemetry.audit_pruned.with_label_values(&[kind]).inc_by(n);
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(chunk));
                        }
                        continue;
                    }
                    if let Some(reply) = reply_of(write) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                if prunes || space_reported.elapsed() >= SPACE_EVERY {
                    report_space(&store, &telemetry);
                    space_reported = std::time::Instant::now();
                }
            }
            Err(e) => {
                telemetry
                    .store_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::error!(writes = batch.len(), "store write failed: {e}");
                let e = Arc::new(e);
                for write in batch {
                    if let Write::PruneAudit {
                        reply: Some(reply), ..
                    } = write
                    {
                        let _ = reply.send(Err(e.clone()));
                    } else if let Some(reply) = reply_of(write) {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// How often, at most, a commit refreshes the store's space gauges (retention passes
/// always do).
const SPACE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets the store's file and used-bytes gauges: at start, after retention passes, and
/// after a commit at most every [`SPACE_EVERY`].
fn report_space(store: &Store, telemetry: &Telemetry) {
    match store.space() {
        Ok(space) => {
            telemetry
                .store_file_bytes
                .set(i64::try_from(space.file_bytes).unwrap_or(i64::MAX));
            telemetry
                .store_used_bytes
                .set(i64::try_from(space.used_bytes).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!("cannot read the store's space: {e}"),
    }
}

fn reply_of(write: Write) -> Option<WriteReply> {
    match write {
        Write::Samples { reply, .. }
        | Write::Prune { reply, .. }
        | Write::Queued { reply, .. }
        | Write::Silence { reply, .. }
        | Write::ManualAction { reply, .. }
        | Write::Alert { reply, .. } => reply,
        Write::Flush { reply } => Some(reply),
        Write::Status { .. }
        | Write::Event { .. }
        | Write::Action { .. }
        | Write::Feed { .. }
        | Write::PruneAudit { .. } => None,
    }
}

fn load_state(store: &Store) -> Result<WriterState, StoreError> {
    let rtxn = store.env.read_txn()?;
    let read_u64 = |key: &[u8]| -> Result<u64, StoreError> {
        Ok(match store.dbs.meta.get(&rtxn, key)? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.try_into().map_err(|_| StoreError::Corrupt {
                    db: "meta",
                    reason: "counter is not 8 bytes".into(),
                })?)
            }
            None => 0,
        })
    };
    let next_series_id = read_u64(META_NEXT_SERIES)?;
    let samples_total = read_u64(META_SAMPLES)?;
    let mut series = FastMap::default();
    for entry in store.dbs.series.iter(&rtxn)? {
        let (key, id) = entry?;
        let id: [u8; 8] = id.try_into().map_err(|_| StoreError::Corrupt {
            db: "series",
            reason: "series id is not 8 bytes".into(),
        })?;
        series.insert(key.to_vec(), u64::from_be_bytes(id));
    }
    Ok(WriterState {
        series,
        next_series_id,
        samples_total,
        windows: HashMap::new(),
        latest_ts: FastMap::default(),
        latest_due: FastMap::default(),
        latest_put_at: std::time::Instant::now(),
    })
}

/// Applies a batch; on a full map, grows it and retries, up to the ceiling.
/// What a committed batch did.
struct Applied {
    /// Each write's outcome.
    outcomes: Vec<u64>,
    /// Whether each write was applied (false: a queued message already stored).
    admitted: Vec<bool>,
    /// The feed entries it added.
    feed_entries: Vec<FeedEntry>,
    /// How far each agent stream it touched is now stored.
    stored: Vec<Stored>,
    /// What each audit prune chunk did, in batch order.
    audits: Vec<AuditChunk>,
}

fn apply_growing(
    store: &Store,
    state: &mut WriterState,
    telemetry: &Telemetry,
    batch: &[Write],
    caught_up: &dyn Fn() -> bool,
) -> Result<Applied, StoreError> {
    loop {
        match apply(store, state, telemetry, batch, caught_up) {
            Err(StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull))) => {
                let current = store.current_map_size();
                if current >= store.map_size.max {
                    return Err(StoreError::Full {
                        max_bytes: store.map_size.max,
                    });
                }
                let grown = current.saturating_mul(2).min(store.map_size.max);
                let _no_readers = store
                    .resize_lock
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // SAFETY: no transaction is open: this thread's write transaction was
                // dropped when `apply` returned, and every read transaction holds
                // `resize_lock` for reading, which we now hold for writing.
                unsafe { store.env.resize(grown) }?;
                tracing::warn!(from = current, to = grown, "LMDB map was full; grew it");
                telemetry
                    .store_map_size_bytes
                    .set(i64::try_from(grown).unwrap_or(i64::MAX));
            }
            other => return other,
        }
    }
}

/// Applies a batch in one transaction. The writer's state changes only if it commits.
/// Returns each write's outcome and the feed entries the batch added.
fn apply(
    store: &Store,
    state: &mut WriterState,
    telemetry: &Telemetry,
    batch: &[Write],
    caught_up: &dyn Fn() -> bool,
) -> Result<Applied, StoreError> {
    let _guard = store
        .resize_lock
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut txn = store.env.write_txn()?;
    let stored_ms = vigil_shared::time::now_ms();
    let mut feed_entries: Vec<FeedEntry> = Vec::new();
    let mut add_to_feed = |txn: &mut RwTxn, at_ms: i64, event: FeedEvent| {
        let entry = FeedEntry {
            seq: store.feed.last_seq() + 1 + feed_entries.len() as u64,
            stored_ms,
            at_ms,
            event,
        };
        feed::append(store, txn, &entry)?;
        feed_entries.push(entry);
        Ok::<(), StoreError>(())
    };
    let mut new_series: FastMap<Vec<u8>, u64> = FastMap::default();
    // The ids of one write's series, by their place in its points.
    let mut series_ids: Vec<u64> = Vec::new();
    let mut next_series_id = state.next_series_id;
    let mut samples_total = state.samples_total;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut admitted = Vec::with_capacity(batch.len());
    let mut windows: HashMap<(String, Stream), Window> = HashMap::new();
    let mut missing = 0u64;
    let mut redelivered: Vec<(Stream, &'static str)> = Vec::new();
    let mut audits = Vec::new();
    // The latest times this transaction wrote (with the record: see `LatestPuts`) or
    // read from `latest`.
    let mut latest_seen: FastMap<[u8; 16], (i64, Option<&[u8]>)> = FastMap::default();
    for write in batch {
        let write = match write {
            Write::Queued {
                host,
                delivery,
                write,
                ..
            } => {
                let key = (host.clone(), delivery.stream);
                let window = match windows.entry(key) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        let known = match state.windows.get(entry.key()) {
                            Some(window) => Some(window.clone()),
                            None => read_window(store, &txn, host, delivery.stream)?,
                        };
                        entry.insert(known.unwrap_or_else(|| Window::new(delivery)))
                    }
                };
                match window.admit(delivery) {
                    Admit::New { skipped } => {
                        if skipped > 0 {
                            if delivery.stream == Stream::Metrics {
                                missing += skipped;
                            }
                            tracing::warn!(
                                %host,
                                stream = delivery.stream.as_str(),
                                skipped,
                                "the agent dropped queued messages before they were stored"
                            );
                        }
                        &**write
                    }
                    refused @ (Admit::Duplicate | Admit::Ahead) => {
                        let outcome = if refused == Admit::Ahead {
                            "ahead"
                        } else {
                            "duplicate"
                        };
                        redelivered.push((delivery.stream, outcome));
                        outcomes.push(0);
                        admitted.push(false);
                        continue;
                    }
                }
            }
            other => other,
        };
        admitted.push(true);
        let outcome = match write {
            Write::Samples {
                host,
                points,
                source,
                received_ms,
                ..
            } => {
                for change in touch_host(store, &mut txn, host, *source, *received_ms, None, None)?
                {
                    add_to_feed(&mut txn, *received_ms, change)?;
                }
                series_ids.clear();
                for series in points.series() {
                    let known = state.series.get(series);
                    series_ids.push(match known.or_else(|| new_series.get(series)) {
                        Some(&id) => id,
                        None => {
                            let id = next_series_id;
                            next_series_id += 1;
                            store.dbs.series.put(&mut txn, series, &id.to_be_bytes())?;
                            new_series.insert(series.to_vec(), id);
                            id
                        }
                    });
                }
                for point in points.iter() {
                    let Some(&id) = series_ids.get(point.series_slot) else {
                        continue;
                    };
                    let latest_key = keys::latest(id, point.tag_hash);
                    let cached = latest_seen.get(&latest_key).map(|&(ts, _)| ts);
                    let latest_ts =
                        match cached.or_else(|| state.latest_ts.get(&latest_key).copied()) {
                            Some(ts) => Some(ts),
                            None => match store.dbs.latest.get(&txn, &latest_key)? {
                                Some(bytes) => {
                                    let ts = codec::decode::<LatestPoint>("latest", bytes)?.ts_ms;
                                    latest_seen.insert(latest_key, (ts, None));
                                    Some(ts)
                                }
                                None => None,
                            },
                        };
                    if latest_ts.is_none_or(|ts| ts <= point.ts_ms) {
                        latest_seen.insert(latest_key, (point.ts_ms, Some(point.latest)));
                    }
                    store.dbs.history.put(
                        &mut txn,
                        &keys::history(id, point.ts_ms, point.tag_hash),
                        point.history,
                    )?;
                    samples_total += 1;
                }
                samples_total
            }
            Write::Status {
                status,
                running,
                received_ms,
                clock_skew_ms,
                order,
            } => {
                let changes = touch_host(
                    store,
                    &mut txn,
                    &status.host,
                    Source::Mqtt,
                    *received_ms,
                    Some((status, running.as_ref(), *order)),
                    *clock_skew_ms,
                )?;
                for change in changes {
                    add_to_feed(&mut txn, *received_ms, change)?;
                }
                0
            }
            Write::Event { event } => {
                let stored = store_event(store, &mut txn, event)?;
                if stored == 1 {
                    add_to_feed(&mut txn, event.at_ms, FeedEvent::Violation(event.clone()))?;
                }
                stored
            }
            Write::Action { event } | Write::ManualAction { event, .. } => {
                let source = match write {
                    Write::ManualAction { .. } => actions::ActionSource::Api,
                    _ => actions::ActionSource::Agent,
                };
                let stored = actions::store_action(store, &mut txn, event, source)?;
                if stored == 1 {
                    add_to_feed(&mut txn, event.at_ms, FeedEvent::Action(event.clone()))?;
                }
                stored
            }
            Write::Alert { action, event, .. } => {
                let fresh = match action {
                    Some(action) => {
                        let source = actions::ActionSource::Alertmanager;
                        let stored = actions::store_action(store, &mut txn, action, source)?;
                        if stored == 1 {
                            add_to_feed(&mut txn, action.at_ms, FeedEvent::Action(action.clone()))?;
                        }
                        stored
                    }
                    None => 1,
                };
                let noted = if fresh == 1 {
                    store_event(store, &mut txn, event)?
                } else {
                    0
                };
                if noted == 1 {
                    add_to_feed(&mut txn, event.at_ms, FeedEvent::Violation(event.clone()))?;
                }
                if action.is_some() {
                    fresh
                } else {
                    noted
                }
            }
            Write::Feed { event, at_ms } => {
                add_to_feed(&mut txn, *at_ms, event.clone())?;
                1
            }
            Write::Silence {
                host,
                last_seen_ms,
                at_ms,
                ..
            } => match silence(store, &mut txn, host, *last_seen_ms, *at_ms)? {
                Some(event) => {
                    add_to_feed(&mut txn, *at_ms, event)?;
                    1
                }
                None => 0,
            },
            Write::Prune { before_ms, .. } => prune(store, &mut txn, *before_ms)?,
            Write::PruneAudit {
                before_ms,
                limit,
                cursor,
                ..
            } => {
                let chunk = audit::prune_chunk(store, &mut txn, *before_ms, *limit, cursor)?;
                let removed = chunk.pruned.total();
                audits.push(chunk);
                removed
            }
            // A queued write never holds another.
            Write::Flush { .. } | Write::Queued { .. } => 0,
        };
        outcomes.push(outcome);
    }
    let latest_puts = if batch.iter().any(|w| matches!(w, Write::Flush { .. }))
        || state.latest_put_at.elapsed() >= LATEST_EVERY
        || state.latest_due.len() + latest_seen.len() >= LATEST_DUE_MAX
        || caught_up()
    {
        LatestPuts::Now
    } else {
        LatestPuts::Later
    };
    if latest_puts == LatestPuts::Now {
        for (key, record) in &state.latest_due {
            if !latest_seen.get(key).is_some_and(|(_, new)| new.is_some()) {
                store.dbs.latest.put(&mut txn, key, record)?;
            }
        }
        for (key, (_, record)) in &latest_seen {
            if let Some(record) = record {
                store.dbs.latest.put(&mut txn, key, record)?;
            }
        }
    }
    for ((host, stream), window) in &windows {
        store.dbs.deliveries.put(
            &mut txn,
            &keys::delivery(host, *stream),
            &codec::encode(window),
        )?;
    }
    store
        .dbs
        .meta
        .put(&mut txn, META_NEXT_SERIES, &next_series_id.to_be_bytes())?;
    store
        .dbs
        .meta
        .put(&mut txn, META_SAMPLES, &samples_total.to_be_bytes())?;
    txn.commit()?;
    state.series.extend(new_series);
    state
        .latest_ts
        .extend(latest_seen.iter().map(|(key, &(ts, _))| (*key, ts)));
    match latest_puts {
        LatestPuts::Now => {
            state.latest_due.clear();
            state.latest_put_at = std::time::Instant::now();
        }
        LatestPuts::Later => {
            for (key, (_, record)) in latest_seen {
                let Some(record) = record else { continue };
                let due = state.latest_due.entry(key).or_default();
                due.clear();
                due.extend_from_slice(record);
            }
        }
    }
    state.next_series_id = next_series_id;
    state.samples_total = samples_total;
    telemetry.batches_missing.inc_by(missing);
    for (stream, outcome) in redelivered {
        telemetry
            .delivery_redelivered
            .with_label_values(&[stream.as_str(), outcome])
            .inc();
    }
    let stored = windows
        .iter()
        .map(|((host, stream), window)| Stored {
            host: host.clone(),
            stream: *stream,
            epoch: window.epoch,
            upto: window.upto,
        })
        .collect();
    state.windows.extend(windows);
    Ok(Applied {
        outcomes,
        admitted,
        feed_entries,
        stored,
        audits,
    })
}

/// The stored delivery window of `host`'s `stream`, if there is one.
fn read_window(
    store: &Store,
    txn: &RwTxn,
    host: &str,
    stream: Stream,
) -> Result<Option<Window>, StoreError> {
    match store
        .dbs
        .deliveries
        .get(txn, &keys::delivery(host, stream))?
    {
        Some(bytes) => codec::decode("deliveries", bytes).map(Some),
        None => Ok(None),
    }
}

/// Creates or updates a host record: last seen, source, and (if given) its agent status.
/// Returns what the feed should say about it: the host coming online or going offline,
/// bundles applied, a silent host reporting again (anything from it ends its silence).
///
/// A status older than the stored one (by [`StatusOrder`]: an earlier session, or an
/// earlier sequence number in the same one) is ignored, so a late retained message or a
/// replay cannot undo a newer state. The last will (sealed when the agent connected, but
/// sent by the broker when it vanished) wins over every status of its session. A record
/// stored without an order falls back to the agents' start times.
fn touch_host(
    store: &Store,
    txn: &mut RwTxn,
    host: &str,
    source: Source,
    received_ms: i64,
    status: Option<(&AgentStatus, Option<&RunningPolicies>, Option<StatusOrder>)>,
    clock_skew_ms: Option<i64>,
) -> Result<Vec<FeedEvent>, StoreError> {
    let mut changes = Vec::new();
    let mut record = match store.dbs.hosts.get(txn, host.as_bytes())? {
        Some(bytes) => HostRecord::decode(bytes)?,
        None => HostRecord {
            host: host.to_string(),
            first_seen_ms: received_ms,
            last_seen_ms: received_ms,
            source,
            status: None,
            clock_skew_ms: None,
            status_order: None,
            silent_since_ms: None,
            running_policies: None,
        },
    };
    record.last_seen_ms = record.last_seen_ms.max(received_ms);
    record.source = source;
    let was_silent = record.silent_since_ms.take().is_some();
    if clock_skew_ms.is_some() {
        record.clock_skew_ms = clock_skew_ms;
    }
    if let Some((status, running, order)) = status {
        let newer = match (order, record.status_order) {
            (Some(new), Some((session, _))) if new.will => new.session >= session,
            (Some(new), Some(old)) => (new.session, new.seq) > old,
            (Some(_), None) => true,
            // A later agent run replaces an earlier one's status. A stored start time
            // past the plausible range (kept from before times were checked where they
            // enter) counts as earliest, so it cannot shut out every status after it.
            (None, _) => record.status.as_ref().is_none_or(|old| {
                old.started_at_ms >= validate::MAX_PLAUSIBLE_MS
                    || status.started_at_ms >= old.started_at_ms
            }),
        };
        if newer {
            let will = order.is_some_and(|o| o.will);
            changes = status_changes(record.status.as_ref(), status, will);
            record.status = Some(status.clone());
            // An agent going down (its last will, or an older agent) does not say what
            // it ran: the list it last gave stays.
            if running.is_some() || status.state == AgentState::Online {
                record.running_policies = running.cloned();
            }
            if let Some(order) = order {
                // A will of the current session is older by number than the statuses it
                // supersedes: keep the highest number seen, so they cannot come back.
                let seq = match record.status_order {
                    Some((session, seq)) if session == order.session => seq.max(order.seq),
                    _ => order.seq,
                };
                record.status_order = Some((order.session, seq));
            }
        }
    }
    if was_silent {
        let offline = changes
            .iter()
            .any(|c| matches!(c, FeedEvent::Offline { .. }));
        if let (Some(status), false) = (&record.status, offline) {
            changes.insert(
                0,
                FeedEvent::Silence {
                    host: host.to_string(),
                    silent: false,
                    last_seen_ms: record.last_seen_ms,
                    agent_version: status.agent_version.clone(),
                    labels: status.labels.clone(),
                },
            );
        }
    }
    store
        .dbs
        .hosts
        .put(txn, host.as_bytes(), &codec::encode(&record))?;
    Ok(changes)
}

/// Applies [`Write::Silence`]: the feed event if the host is now silent.
fn silence(
    store: &Store,
    txn: &mut RwTxn,
    host: &str,
    last_seen_ms: i64,
    at_ms: i64,
) -> Result<Option<FeedEvent>, StoreError> {
    let Some(bytes) = store.dbs.hosts.get(txn, host.as_bytes())? else {
        return Ok(None);
    };
    let mut record = HostRecord::decode(bytes)?;
    let event = match &record.status {
        Some(status)
            if status.state == AgentState::Online
                && record.silent_since_ms.is_none()
                && record.last_seen_ms <= last_seen_ms =>
        {
            FeedEvent::Silence {
                host: host.to_string(),
                silent: true,
                last_seen_ms: record.last_seen_ms,
                agent_version: status.agent_version.clone(),
                labels: status.labels.clone(),
            }
        }
        _ => return Ok(None),
    };
    record.silent_since_ms = Some(at_ms);
    store
        .dbs
        .hosts
        .put(txn, host.as_bytes(), &codec::encode(&record))?;
    Ok(Some(event))
}

/// What a new status says that the previous one (if any) did not: a change of online
/// state, and bundles at a version not reported before.
fn status_changes(old: Option<&AgentStatus>, new: &AgentStatus, will: bool) -> Vec<FeedEvent> {
    let mut changes = Vec::new();
    if old.is_none_or(|old| old.state != new.state) {
        changes.push(match new.state {
            AgentState::Online => FeedEvent::Host {
                host: new.host.clone(),
                online: true,
                agent_version: new.agent_version.clone(),
                labels: new.labels.clone(),
            },
            AgentState::Offline => FeedEvent::Offline {
                host: new.host.clone(),
                connection_lost: will,
                agent_version: new.agent_version.clone(),
                labels: new.labels.clone(),
            },
        });
    }
    for bundle in &new.bundles {
        let known = old.is_some_and(|old| {
            old.bundles
                .iter()
                .any(|b| b.group == bundle.group && b.hash == bundle.hash)
        });
        if !known {
            changes.push(FeedEvent::Bundle {
                host: new.host.clone(),
                group: bundle.group.clone(),
                version: bundle.version,
                hash: bundle.hash.clone(),
            });
        }
    }
    changes
}

/// Appends a policy event to the audit history unless its id is already there (QoS 1
/// redelivery). Returns 1 if stored, 0 if it was a duplicate.
fn store_event(store: &Store, txn: &mut RwTxn, event: &PolicyEvent) -> Result<u64, StoreError> {
    if store.dbs.event_ids.get(txn, event.id.as_bytes())?.is_some() {
        return Ok(0);
    }
    let key = keys::event(event.at_ms, &event.id);
    store.dbs.events.put(txn, &key, &codec::encode(event))?;
    store.dbs.event_ids.put(txn, event.id.as_bytes(), &key)?;
    Ok(1)
}

/// Deletes every point older than `before_ms`, one range per series.
fn prune(store: &Store, txn: &mut RwTxn, before_ms: i64) -> Result<u64, StoreError> {
    let ids: Vec<u64> = store
        .dbs
        .series
        .iter(txn)?
        .filter_map(|entry| entry.ok())
        .filter_map(|(_, id)| id.try_into().ok().map(u64::from_be_bytes))
        .collect();
    let mut deleted = 0u64;
    for id in ids {
        let from = keys::history(id, i64::MIN, 0);
        let to = keys::history(id, before_ms, 0);
        let range = (
            Bound::Included(from.as_slice()),
            Bound::Excluded(to.as_slice()),
        );
        deleted += store.dbs.history.delete_range(txn, &range)? as u64;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::wire::Sample;

    fn queued(host: &str, seq: u64, floor: u64, ts_ms: i64) -> Write {
        Write::Queued {
            host: host.into(),
            delivery: Delivery {
                stream: Stream::Metrics,
                epoch: 9,
                seq,
                floor,
            },
            write: Box::new(Write::Samples {
                points: Points::new(
                    host,
                    &[],
                    &[Sample {
                        name: "cpu_percent".into(),
                        value: seq as f64,
                        ts_ms,
                        tags: Vec::new(),
                    }],
                ),
                host: host.into(),
                source: Source::Mqtt,
                received_ms: ts_ms,
                reply: None,
            }),
            reply: None,
        }
    }

    /// A store in `dir` with a small map (4 MiB, growing to 16 MiB).
    fn open_small(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            super::super::MapSize {
                initial: 1 << 22,
                max: 1 << 24,
            },
        )
        .unwrap()
    }

    /// The points of `host`'s `cpu_percent`, by time.
    fn points(store: &Store, host: &str) -> Vec<(i64, f64)> {
        store
            .query(&super::super::reader::HistoryQuery {
                host: Some(host.into()),
                name: "cpu_percent".into(),
                from_ms: 0,
                to_ms: i64::MAX,
                limit: 10_000,
            })
            .unwrap()
            .into_iter()
            .map(|p| (p.ts_ms, p.value))
            .collect()
    }

    #[tokio::test]
    async fn a_queued_message_is_stored_once_and_acknowledged_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_small(dir.path());
        let telemetry = Arc::new(Telemetry::new());
        {
            let store = open();
            let (acks, mut notes) = mpsc::channel(16);
            let (writer, thread) =
                StoreWriter::start_with_acks(store.clone(), telemetry.clone(), Some(acks));
            for seq in [1, 2, 2, 1, 4] {
                writer
                    .send(queued("h", seq, 1, 1_000 + seq as i64))
                    .await
                    .unwrap();
            }
            writer.flush().await.unwrap();
            let mut last = None;
            while let Ok(note) = notes.try_recv() {
                last = note.into_iter().last();
            }
            // 3 has not come: 4 is held above the window's bottom.
            assert_eq!(
                last,
                Some(Stored {
                    host: "h".into(),
                    stream: Stream::Metrics,
                    epoch: 9,
                    upto: 2
                })
            );
            drop(writer);
            thread.join().unwrap();
        }
        // A restarted writer still knows 1, 2 and 4, and takes 3 once.
        let store = open();
        let (acks, mut notes) = mpsc::channel(16);
        let (writer, _thread) =
            StoreWriter::start_with_acks(store.clone(), telemetry.clone(), Some(acks));
        for seq in [4, 3, 3, 1] {
            writer
                .send(queued("h", seq, 1, 1_000 + seq as i64))
                .await
                .unwrap();
        }
        writer.flush().await.unwrap();
        let mut last = None;
        while let Ok(note) = notes.try_recv() {
            last = note.into_iter().last();
        }
        assert_eq!(last.map(|s| s.upto), Some(4));
        assert_eq!(
            points(&store, "h"),
            vec![(1_001, 1.0), (1_002, 2.0), (1_003, 3.0), (1_004, 4.0)]
        );
        assert_eq!(
            telemetry
                .delivery_redelivered
                .with_label_values(&["metrics", "duplicate"])
                .get(),
            5
        );
        // The agent dropped 5..=9 from its full buffer: counted once, then 10 is stored.
        writer.send(queued("h", 10, 10, 1_010)).await.unwrap();
        writer.flush().await.unwrap();
        assert_eq!(telemetry.batches_missing.get(), 5);
        assert_eq!(points(&store, "h").len(), 5);
    }

    fn samples(points: &[(i64, f64, &str)]) -> Write {
        let samples: Vec<Sample> = points
            .iter()
            .map(|&(ts_ms, value, core)| Sample {
                name: "cpu_percent".into(),
                value,
                ts_ms,
                tags: vec![("core".into(), core.into())],
            })
            .collect();
        Write::Samples {
            host: "h".into(),
            points: Points::new("h", &[("role".into(), "web".into())], &samples),
            source: Source::Mqtt,
            received_ms: 1_000,
            reply: None,
        }
    }

    /// `host`'s latest `cpu_percent` by its `core` tag: (core, time, value).
    fn latest(store: &Store) -> Vec<(String, i64, f64)> {
        let (_, latest) = store.host("h").unwrap().unwrap();
        latest
            .into_iter()
            .map(|p| {
                assert_eq!(p.tags[1], ("role".to_string(), "web".to_string()));
                (p.tags[0].1.clone(), p.ts_ms, p.value)
            })
            .collect()
    }

    #[tokio::test]
    async fn the_latest_value_is_the_newest_in_any_order_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_small(dir.path());
        let telemetry = Arc::new(Telemetry::new());
        {
            let store = open();
            let (writer, thread) = StoreWriter::start(store.clone(), telemetry.clone());
            // Within one batch, an older point after a newer one.
            writer
                .send(samples(&[
                    (2_000, 2.0, "0"),
                    (1_000, 1.0, "0"),
                    (1_000, 7.0, "1"),
                ]))
                .await
                .unwrap();
            writer.flush().await.unwrap();
            // In later batches: an older point, then a newer one of core 1.
            writer.send(samples(&[(1_500, 1.5, "0")])).await.unwrap();
            writer.send(samples(&[(3_000, 8.0, "1")])).await.unwrap();
            writer.flush().await.unwrap();
            assert_eq!(
                latest(&store),
                [("0".into(), 2_000, 2.0), ("1".into(), 3_000, 8.0)]
            );
            drop(writer);
            thread.join().unwrap();
        }
        // A new writer knows the stored times without having written them.
        let store = open();
        let (writer, _thread) = StoreWriter::start(store.clone(), telemetry);
        writer
            .send(samples(&[(2_500, 9.0, "1"), (2_500, 3.0, "0")]))
            .await
            .unwrap();
        writer.flush().await.unwrap();
        assert_eq!(
            latest(&store),
            [("0".into(), 2_500, 3.0), ("1".into(), 3_000, 8.0)]
        );
        assert_eq!(points(&store, "h").len(), 7, "every point is history");
    }

    #[test]
    fn behind_its_queue_the_writer_puts_latest_once_caught_up_due_or_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_small(dir.path());
        let telemetry = Telemetry::new();
        let mut state = load_state(&store).unwrap();
        let commit = |state: &mut WriterState, batch: &[Write], caught_up: bool| {
            apply_growing(&store, state, &telemetry, batch, &|| caught_up).unwrap();
        };
        // Writes wait behind these: history is committed, `latest` waits in memory.
        commit(&mut state, &[samples(&[(1_000, 1.0, "0")])], false);
        commit(
            &mut state,
            &[samples(&[(2_000, 2.0, "0"), (2_000, 5.0, "1")])],
            false,
        );
        assert_eq!(
            points(&store, "h").len(),
            3,
            "every point is history at once"
        );
        assert!(latest(&store).is_empty());
        assert_eq!(state.latest_due.len(), 2);
        // Caught up (nothing waits): the newest of each key is put, an older one is not.
        commit(&mut state, &[samples(&[(1_500, 9.0, "0")])], true);
        assert_eq!(
            latest(&store),
            [("0".into(), 2_000, 2.0), ("1".into(), 2_000, 5.0)]
        );
        assert!(state.latest_due.is_empty());
        // Behind, but `latest` has waited LATEST_EVERY: put now.
        commit(&mut state, &[samples(&[(3_000, 3.0, "1")])], false);
        assert_eq!(latest(&store)[1], ("1".into(), 2_000, 5.0));
        state.latest_put_at = std::time::Instant::now().checked_sub(LATEST_EVERY).unwrap();
        commit(&mut state, &[samples(&[(3_000, 4.0, "0")])], false);
        assert_eq!(
            latest(&store),
            [("0".into(), 3_000, 4.0), ("1".into(), 3_000, 3.0)]
        );
        // Behind, with a flush in the batch: put now.
        commit(&mut state, &[samples(&[(4_000, 6.0, "1")])], false);
        let (reply, _answer) = tokio::sync::oneshot::channel();
        commit(&mut state, &[Write::Flush { reply }], false);
        assert_eq!(latest(&store)[1], ("1".into(), 4_000, 6.0));
        assert_eq!(points(&store, "h").len(), 7);
    }

    #[tokio::test]
    async fn latest_is_up_to_date_once_a_queued_burst_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_small(dir.path());
        let (writer, thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        // Queued together: the first commits while the rest wait behind it.
        for ts in 1..=200 {
            writer
                .send(samples(&[(ts * 1_000, ts as f64, "0")]))
                .await
                .unwrap();
        }
        drop(writer);
        thread.join().unwrap();
        assert_eq!(latest(&store), [("0".into(), 200_000, 200.0)]);
        assert_eq!(points(&store, "h").len(), 200);
    }

    #[test]
    fn a_sender_waits_for_room_in_bytes_until_the_writer_commits_some() {
        let queued = Arc::new(QueuedBytes::new(100));
        queued.wait_for_room(80, || false);
        let waiter = {
            let queued = Arc::clone(&queued);
            std::thread::spawn(move || queued.wait_for_room(50, || false))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "80 + 50 bytes passed a limit of 100");
        queued.release(80);
        waiter.join().unwrap();
        assert_eq!(*queued.lock(), 50);
        // One write larger than the limit passes alone, once the queue is empty.
        queued.release(50);
        queued.wait_for_room(500, || false);
        assert_eq!(*queued.lock(), 500);
        // A writer that is gone holds no sender.
        queued.wait_for_room(10, || true);
        assert_eq!(*queued.lock(), 510);
    }
}
