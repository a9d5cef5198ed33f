//! The store's single writer: a thread that takes [`Write`]s from a channel, applies as
//! many as are waiting in one LMDB transaction, and answers each.
//!
//! One writer means no write-lock contention and few, large transactions (LMDB's commit
//! cost is per transaction, not per key). When the map fills up, the writer grows it (up
//! to [`super::MapSize::max`]) and retries; at the ceiling it answers
//! [`StoreError::Full`] and carries on with later writes.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::thread::JoinHandle;

use heed::RwTxn;
use tokio::sync::{mpsc, oneshot};
use vigil_shared::validate;
use vigil_shared::wire::{ActionEvent, AgentState, AgentStatus, PolicyEvent, Sample, Tag};

use super::records::{HostRecord, LatestPoint, Source, StoredPoint};
use super::{actions, codec, feed, keys, Store, StoreError};
use crate::store::feed::{FeedEntry, FeedEvent};
use crate::telemetry::Telemetry;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 2048;
/// Capacity of the writer's queue; senders wait when it is full (backpressure).
const QUEUE: usize = 8192;

/// The answer to a write: for samples, the id of the last sample stored; for a prune, the
/// number of points deleted.
pub type WriteReply = oneshot::Sender<Result<u64, Arc<StoreError>>>;

/// One thing to write.
pub enum Write {
    /// Samples from one host.
    Samples {
        /// The host.
        host: String,
        /// Labels to merge into every sample's tags.
        labels: Vec<Tag>,
        /// The samples.
        samples: Vec<Sample>,
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
        /// When it was received, epoch ms.
        received_ms: i64,
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
    /// Delete history older than `before_ms`.
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
}

impl StoreWriter {
    /// Starts the writer thread for `store`.
    pub fn start(store: Store, telemetry: Arc<Telemetry>) -> (StoreWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("vigil-store-writer".into())
            .spawn(move || run(store, telemetry, rx))
            .unwrap_or_else(|e| panic!("cannot start the store writer thread: {e}"));
        (StoreWriter { tx }, thread)
    }

    /// Queues a write, waiting while the queue is full.
    pub async fn send(&self, write: Write) -> Result<(), StoreError> {
        self.tx
            .send(write)
            .await
            .map_err(|_| StoreError::WriterGone)
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
    series: HashMap<Vec<u8>, u64>,
    next_series_id: u64,
    samples_total: u64,
}

const META_NEXT_SERIES: &[u8] = b"next_series_id";
const META_SAMPLES: &[u8] = b"samples_total";

fn run(store: Store, telemetry: Arc<Telemetry>, mut rx: mpsc::Receiver<Write>) {
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
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        match apply_growing(&store, &mut state, &telemetry, &batch) {
            Ok((outcomes, feed_entries)) => {
                store.feed.committed(feed_entries);
                for (write, outcome) in batch.into_iter().zip(outcomes) {
                    if let Write::Samples {
                        source, samples, ..
                    } = &write
                    {
                        telemetry
                            .samples_stored
                            .with_label_values(&[source.as_str()])
                            .inc_by(samples.len() as u64);
                    }
                    super::actions::count_stored(&telemetry, &write, outcome);
                    if let Some(reply) = reply_of(write) {
                        let _ = reply.send(Ok(outcome));
                    }
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
                    if let Some(reply) = reply_of(write) {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

fn reply_of(write: Write) -> Option<WriteReply> {
    match write {
        Write::Samples { reply, .. }
        | Write::Prune { reply, .. }
        | Write::ManualAction { reply, .. } => reply,
        Write::Flush { reply } => Some(reply),
        Write::Status { .. } | Write::Event { .. } | Write::Action { .. } | Write::Feed { .. } => {
            None
        }
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
    let mut series = HashMap::new();
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
    })
}

/// Applies a batch; on a full map, grows it and retries, up to the ceiling.
fn apply_growing(
    store: &Store,
    state: &mut WriterState,
    telemetry: &Telemetry,
    batch: &[Write],
) -> Result<(Vec<u64>, Vec<FeedEntry>), StoreError> {
    loop {
        match apply(store, state, batch) {
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
    batch: &[Write],
) -> Result<(Vec<u64>, Vec<FeedEntry>), StoreError> {
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
    let mut new_series: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut next_series_id = state.next_series_id;
    let mut samples_total = state.samples_total;
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        let outcome = match write {
            Write::Samples {
                host,
                labels,
                samples,
                source,
                received_ms,
                ..
            } => {
                touch_host(store, &mut txn, host, *source, *received_ms, None)?;
                for sample in samples {
                    let key = keys::series(host, &sample.name);
                    let id = match state.series.get(&key) {
                        Some(&id) => id,
                        None => match new_series.get(&key) {
                            Some(&id) => id,
                            None => {
                                let id = next_series_id;
                                next_series_id += 1;
                                store.dbs.series.put(&mut txn, &key, &id.to_be_bytes())?;
                                new_series.insert(key, id);
                                id
                            }
                        },
                    };
                    let tags = merge_tags(labels, &sample.tags);
                    let hash = keys::tag_hash(&tags);
                    let latest_key = keys::latest(id, hash);
                    let newer = match store.dbs.latest.get(&txn, &latest_key)? {
                        Some(bytes) => {
                            codec::decode::<LatestPoint>("latest", bytes)?.ts_ms <= sample.ts_ms
                        }
                        None => true,
                    };
                    if newer {
                        let latest = LatestPoint {
                            name: sample.name.clone(),
                            value: sample.value,
                            ts_ms: sample.ts_ms,
                            tags: tags.clone(),
                        };
                        store
                            .dbs
                            .latest
                            .put(&mut txn, &latest_key, &codec::encode(&latest))?;
                    }
                    let point = StoredPoint {
                        value: sample.value,
                        tags,
                    };
                    store.dbs.history.put(
                        &mut txn,
                        &keys::history(id, sample.ts_ms, hash),
                        &codec::encode(&point),
                    )?;
                    samples_total += 1;
                }
                samples_total
            }
            Write::Status {
                status,
                received_ms,
            } => {
                let changes = touch_host(
                    store,
                    &mut txn,
                    &status.host,
                    Source::Mqtt,
                    *received_ms,
                    Some(status),
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
            Write::Feed { event, at_ms } => {
                add_to_feed(&mut txn, *at_ms, event.clone())?;
                1
            }
            Write::Prune { before_ms, .. } => {
                feed::prune(store, &mut txn, *before_ms)?;
                prune(store, &mut txn, *before_ms)?
            }
            Write::Flush { .. } => 0,
        };
        outcomes.push(outcome);
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
    state.next_series_id = next_series_id;
    state.samples_total = samples_total;
    Ok((outcomes, feed_entries))
}

/// Creates or updates a host record: last seen, source, and (if given) its agent status.
/// Returns what the feed should say about it: the host coming online or going offline,
/// bundles applied.
///
/// A status from an older agent run (earlier `started_at_ms`) than the stored one is
/// ignored, so a late retained message cannot undo a newer run. Within one run, arrival
/// order decides: the broker delivers one client's messages in order, and the last will
/// (stamped when the agent connected, but sent by the broker when it vanished) must win
/// over the online status that came before it.
fn touch_host(
    store: &Store,
    txn: &mut RwTxn,
    host: &str,
    source: Source,
    received_ms: i64,
    status: Option<&AgentStatus>,
) -> Result<Vec<FeedEvent>, StoreError> {
    let mut changes = Vec::new();
    let mut record = match store.dbs.hosts.get(txn, host.as_bytes())? {
        Some(bytes) => codec::decode::<HostRecord>("hosts", bytes)?,
        None => HostRecord {
            host: host.to_string(),
            first_seen_ms: received_ms,
            last_seen_ms: received_ms,
            source,
            status: None,
        },
    };
    record.last_seen_ms = record.last_seen_ms.max(received_ms);
    record.source = source;
    if let Some(status) = status {
        // A later agent run replaces an earlier one's status. A stored start time past the
        // plausible range (kept from before times were checked where they enter) counts
        // as earliest, so it cannot shut out every status after it.
        let newer = record.status.as_ref().is_none_or(|old| {
            old.started_at_ms >= validate::MAX_PLAUSIBLE_MS
                || status.started_at_ms >= old.started_at_ms
        });
        if newer {
            changes = status_changes(record.status.as_ref(), status);
            record.status = Some(status.clone());
        }
    }
    store
        .dbs
        .hosts
        .put(txn, host.as_bytes(), &codec::encode(&record))?;
    Ok(changes)
}

/// What a new status says that the previous one (if any) did not: a change of online
/// state, and bundles at a version not reported before.
fn status_changes(old: Option<&AgentStatus>, new: &AgentStatus) -> Vec<FeedEvent> {
    let mut changes = Vec::new();
    let online = new.state == AgentState::Online;
    if old.is_none_or(|old| old.state != new.state) {
        changes.push(FeedEvent::Host {
            host: new.host.clone(),
            online,
            agent_version: new.agent_version.clone(),
            labels: new.labels.clone(),
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

/// The tags a point is stored with: the sample's own, plus the agent's labels where the
/// sample has no tag of that name; sorted by key; never `host` (that is the key).
fn merge_tags(labels: &[Tag], tags: &[Tag]) -> Vec<Tag> {
    let mut merged: Vec<Tag> = tags.iter().filter(|(k, _)| k != "host").cloned().collect();
    for (k, v) in labels {
        if k != "host" && !merged.iter().any(|(key, _)| key == k) {
            merged.push((k.clone(), v.clone()));
        }
    }
    merged.sort();
    merged.dedup_by(|a, b| a.0 == b.0);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_tags_win_over_labels_and_host_is_dropped() {
        let labels = vec![
            ("role".to_string(), "web".to_string()),
            ("env".into(), "prod".into()),
        ];
        let tags = vec![
            ("role".to_string(), "db".to_string()),
            ("host".into(), "x".into()),
        ];
        assert_eq!(
            merge_tags(&labels, &tags),
            vec![("env".into(), "prod".into()), ("role".into(), "db".into())]
        );
    }
}
