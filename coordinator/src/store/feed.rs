//! The event feed: what happened in the fleet, in the order the coordinator stored it —
//! policy violations (every policy decision), action transitions, hosts going online,
//! offline or silent, bundles applied, and bundle drift changing. Integrations read it as Server-Sent
//! Events and as JSON on MQTT, both in one JSON form (the `events::json` module).
//!
//! The store writer appends an entry, with the next sequence number, in the same
//! transaction that stores what it reports (so a redelivered message, which stores
//! nothing, adds nothing to the feed) and broadcasts it once committed ([`Feed`]). Entries
//! are kept in the `feed` database (pruned with the audit retention, see
//! [`super::audit`]), so a client that reconnects with the last sequence number it saw
//! gets exactly what it missed, if that is still kept.
//!
//! The `feed` database: every [`FeedEntry`] by sequence number (u64, big-endian), for
//! clients that resume the event stream (see [`crate::store::feed`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use vigil_shared::wire::{ActionEvent, PolicyEvent, Tag};

use heed::RwTxn;

/// How many entries a slow live subscriber may fall behind before it re-reads the store.
const BROADCAST_CAPACITY: usize = 4096;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeedEvent {
    /// A policy decision (fired, act, verified, deferred, escalated, resolved).
    Violation(PolicyEvent),
    /// One transition of an action.
    Action(ActionEvent),
    /// A host's agent came online or went offline.
    Host {
        /// The host.
        host: String,
        /// Whether it is online now.
        online: bool,
        /// The agent's version.
        agent_version: String,
        /// The agent's labels.
        labels: Vec<Tag>,
    },
    /// A host applied a (new version of a) policy bundle.
    Bundle {
        /// The host.
        host: String,
        /// The host group.
        group: String,
        /// The bundle version.
        version: u64,
        /// Its content hash (hex).
        hash: String,
    },
    /// A host's bundle for a group went out of sync with the published one, or back in
    /// sync (see the bundles' drift tracking).
    Drift {
        /// The host.
        host: String,
        /// The host group.
        group: String,
        /// The published version (`None`: the group no longer selects this host, or is
        /// gone).
        desired_version: Option<u64>,
        /// The version the host reports (`None`: it has none).
        applied_version: Option<u64>,
        /// Whether it runs the published bundle.
        in_sync: bool,
    },
    /// A host's agent went offline: it stopped cleanly (its own offline status), or its
    /// connection was lost (the broker sent its last will). (Entries stored before this
    /// variant existed say it as [`FeedEvent::Host`] with `online: false`.)
    Offline {
        /// The host.
        host: String,
        /// Whether the connection was lost (the last will), not a clean stop.
        connection_lost: bool,
        /// The agent's version.
        agent_version: String,
        /// The agent's labels.
        labels: Vec<Tag>,
    },
    /// A host whose agent said it was online went silent (nothing from it for too
    /// long, see the coordinator's deadman), or reported again after being silent.
    Silence {
        /// The host.
        host: String,
        /// Whether it is silent now (false: it reported again).
        silent: bool,
        /// When it was last heard from, epoch ms.
        last_seen_ms: i64,
        /// The agent's version.
        agent_version: String,
        /// The agent's labels.
        labels: Vec<Tag>,
    },
}

/// The kinds of feed event, as named in JSON, topics and the `kind` filter.
pub const KINDS: [&str; 5] = ["violation", "action", "host", "bundle", "drift"];

impl FeedEvent {
    /// `violation`, `action`, `host`, `bundle` or `drift` (a host's silence is a `host`
    /// event).
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::Violation(_) => "violation",
            FeedEvent::Action(_) => "action",
            FeedEvent::Host { .. } | FeedEvent::Offline { .. } | FeedEvent::Silence { .. } => {
                "host"
            }
            FeedEvent::Bundle { .. } => "bundle",
            FeedEvent::Drift { .. } => "drift",
        }
    }

    /// The host it is about.
    pub fn host(&self) -> &str {
        match self {
            FeedEvent::Violation(e) => &e.host,
            FeedEvent::Action(e) => &e.host,
            FeedEvent::Host { host, .. }
            | FeedEvent::Offline { host, .. }
            | FeedEvent::Silence { host, .. }
            | FeedEvent::Bundle { host, .. }
            | FeedEvent::Drift { host, .. } => host,
        }
    }
}

/// One stored feed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// Its place in the feed (from 1, no gaps).
    pub seq: u64,
    /// When the coordinator stored it, epoch ms.
    pub stored_ms: i64,
    /// When it happened (the agent's clock for agent events), epoch ms.
    pub at_ms: i64,
    /// What happened.
    pub event: FeedEvent,
}

/// The live side of the feed: a broadcast of committed entries and the last sequence
/// number committed. Cloned into every part of the coordinator that needs it (it lives in
/// the [`crate::store::Store`]).
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<FeedEntry>>,
    last_seq: Arc<AtomicU64>,
}

impl Feed {
    /// A feed whose last committed entry is `last_seq` (0: none yet).
    pub fn new(last_seq: u64) -> Feed {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Feed {
            tx,
            last_seq: Arc::new(AtomicU64::new(last_seq)),
        }
    }

    /// Entries committed from now on. Subscribe *before* reading the store's backlog, so
    /// that nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEntry>> {
        self.tx.subscribe()
    }

    /// The sequence number of the last committed entry.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Called by the store writer once `entries` are committed.
    pub(crate) fn committed(&self, entries: Vec<FeedEntry>) {
        for entry in entries {
            self.last_seq.store(entry.seq, Ordering::Release);
            // No receivers is fine: nobody is listening right now.
            let _ = self.tx.send(Arc::new(entry));
        }
    }
}

use super::{codec, Store, StoreError};

/// Most entries one read returns.
pub const MAX_READ: usize = 1000;

impl Store {
    /// Entries after `seq` (oldest first), at most `limit` (capped at [`MAX_READ`]).
    pub fn feed_after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let rtxn = self.env.read_txn()?;
        let start = seq.saturating_add(1).to_be_bytes();
        let range = (
            std::ops::Bound::Included(start.as_slice()),
            std::ops::Bound::Unbounded,
        );
        let mut entries = Vec::new();
        for item in self.dbs.feed.range(&rtxn, &range)? {
            let (_, bytes) = item?;
            entries.push(codec::decode::<FeedEntry>("feed", bytes)?);
            if entries.len() >= limit.min(MAX_READ) {
                break;
            }
        }
        Ok(entries)
    }

    /// The sequence number of the last entry stored, pruned or not (0: none yet).
    pub fn feed_last_seq(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        let stored = match self.dbs.feed.last(&rtxn)? {
            Some((key, _)) => seq_of(key)?,
            None => 0,
        };
        let pruned = match self.dbs.meta.get(&rtxn, META_PRUNED_UPTO)? {
            Some(bytes) => seq_of(bytes)?,
            None => 0,
        };
        Ok(stored.max(pruned))
    }
}

/// Stores `entry` (inside the writer's transaction).
pub(crate) fn append(store: &Store, txn: &mut RwTxn, entry: &FeedEntry) -> Result<(), StoreError> {
    store
        .dbs
        .feed
        .put(txn, &entry.seq.to_be_bytes(), &codec::encode(entry))?;
    Ok(())
}

/// The `meta` key holding the highest sequence number pruned: sequence numbers go on from
/// it when every entry is gone.
const META_PRUNED_UPTO: &[u8] = b"feed_pruned_upto";

/// Deletes up to `limit` entries stored before `before_ms`, oldest first; returns how
/// many, and whether none older is left.
pub(crate) fn prune(
    store: &Store,
    txn: &mut RwTxn,
    before_ms: i64,
    limit: usize,
) -> Result<(u64, bool), StoreError> {
    let mut old = Vec::new();
    let mut done = true;
    for item in store.dbs.feed.iter(txn)? {
        let (key, bytes) = item?;
        if codec::decode::<FeedEntry>("feed", bytes)?.stored_ms >= before_ms {
            break;
        }
        if old.len() >= limit {
            done = false;
            break;
        }
        old.push(seq_of(key)?);
    }
    for seq in &old {
        store.dbs.feed.delete(txn, &seq.to_be_bytes())?;
    }
    if let Some(last) = old.last() {
        store
            .dbs
            .meta
            .put(txn, META_PRUNED_UPTO, &last.to_be_bytes())?;
    }
    Ok((old.len() as u64, done))
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| {
        StoreError::Corrupt {
            db: "feed",
            reason: "key is not 8 bytes".into(),
        }
    })?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vigil_shared::wire::{
        ActionEvent, ActionState, AgentState, AgentStatus, AppliedBundle, PolicyEvent,
    };

    use crate::store::{MapSize, StoreWriter, Write};
    use crate::telemetry::Telemetry;

    use super::*;

    fn open(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            MapSize {
                initial: 16 << 20,
                max: 64 << 20,
            },
        )
        .unwrap()
    }

    fn status(state: AgentState, bundle_hash: Option<&str>) -> AgentStatus {
        AgentStatus {
            host: "web-01".into(),
            state,
            agent_version: "1".into(),
            started_at_ms: 10,
            sent_at_ms: 10,
            interval_ms: 1000,
            labels: vec![],
            bundles: bundle_hash
                .map(|hash| AppliedBundle {
                    group: "web".into(),
                    version: 2,
                    hash: hash.into(),
                })
                .into_iter()
                .collect(),
            bundle_error: None,
            remediation_paused: false,
            detail: None,
            policies: Default::default(),
            queue: Default::default(),
            delivery: None,
        }
    }

    fn violation() -> PolicyEvent {
        PolicyEvent {
            id: "01JVIOLATION".into(),
            host: "web-01".into(),
            policy: "high-cpu".into(),
            target: "web-01".into(),
            severity: "warning".into(),
            kind: "fired".into(),
            summary: "cpu_percent > 80 (observed 93)".into(),
            explanation: None,
            action: None,
            step: None,
            action_requested: false,
            dry_run: false,
            detail: None,
            at_ms: 1_000,
        }
    }

    fn action(state: ActionState) -> ActionEvent {
        ActionEvent {
            id: "01JACTION".into(),
            host: "web-01".into(),
            policy: Some("high-cpu".into()),
            target: "nginx.service".into(),
            action: "restart".into(),
            state,
            attempt: 1,
            dry_run: false,
            detail: None,
            created_at_ms: 1_000,
            at_ms: 1_100,
            max_attempts: 3,
            executor: Some("systemd".into()),
            step: Some(0),
            params: None,
        }
    }

    #[tokio::test]
    async fn stored_news_enters_the_feed_once_in_order_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut live = store.feed().subscribe();
        let (writer, thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let writes = vec![
            Write::Status {
                running: None,
                clock_skew_ms: None,
                order: None,
                status: status(AgentState::Online, None),
                received_ms: 5,
            },
            Write::Event { event: violation() },
            Write::Event { event: violation() }, // redelivery: nothing new
            Write::Action {
                event: action(ActionState::Running),
            },
            Write::Action {
                event: action(ActionState::Running),
            },
            Write::Status {
                running: None,
                clock_skew_ms: None,
                order: None,
                status: status(AgentState::Online, Some("aa")),
                received_ms: 6,
            },
            Write::Status {
                running: None,
                clock_skew_ms: None,
                order: None,
                status: status(AgentState::Online, Some("aa")), // nothing changed
                received_ms: 7,
            },
            Write::Status {
                running: None,
                clock_skew_ms: None,
                order: None,
                status: status(AgentState::Offline, Some("aa")),
                received_ms: 8,
            },
        ];
        for write in writes {
            writer.send(write).await.unwrap();
        }
        writer.flush().await.unwrap();

        let entries = store.feed_after(0, 100).unwrap();
        let kinds: Vec<_> = entries.iter().map(|e| e.event.kind()).collect();
        assert_eq!(kinds, ["host", "violation", "action", "bundle", "host"]);
        let seqs: Vec<_> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(
            crate::events::json::entry_json(&entries[4])["data"]["state"],
            "offline"
        );
        assert_eq!(store.feed().last_seq(), 5);
        assert_eq!(store.feed_after(3, 100).unwrap()[0].seq, 4);
        for seq in 1..=5 {
            assert_eq!(live.recv().await.unwrap().seq, seq);
        }

        drop(writer);
        thread.join().unwrap();
        drop(store);
        let reopened = open(dir.path());
        assert_eq!(reopened.feed().last_seq(), 5);
        assert_eq!(reopened.feed_after(0, 2).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn silence_is_recorded_once_only_for_a_quiet_online_host_and_ends_with_its_next_word() {
        use crate::store::writer::StatusOrder;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let silence = |last_seen_ms: i64, at_ms: i64| {
            let writer = writer.clone();
            async move {
                writer
                    .send_and_wait(|reply| Write::Silence {
                        host: "web-01".into(),
                        last_seen_ms,
                        at_ms,
                        reply: Some(reply),
                    })
                    .await
                    .unwrap()
            }
        };
        let status_at = |state, received_ms, seq, will| Write::Status {
            running: None,
            clock_skew_ms: None,
            order: Some(StatusOrder {
                session: 1,
                seq,
                will,
            }),
            status: status(state, None),
            received_ms,
        };
        // An unknown host is not silent.
        assert_eq!(silence(5, 10).await, 0);
        writer
            .send(status_at(AgentState::Online, 5, 1, false))
            .await
            .unwrap();
        // Something came after the verdict's last word: not silent.
        assert_eq!(silence(4, 10).await, 0);
        assert_eq!(silence(5, 10).await, 1);
        assert_eq!(silence(5, 11).await, 0, "silent already");
        let (record, _) = store.host("web-01").unwrap().unwrap();
        assert_eq!(record.silent_since_ms, Some(10));
        assert!(!record.is_online(10));
        // Its next batch ends the silence.
        writer
            .send(Write::Samples {
                host: "web-01".into(),
                points: crate::store::points::Points::default(),
                source: crate::store::Source::Mqtt,
                received_ms: 20,
                reply: None,
            })
            .await
            .unwrap();
        // Silent again, then its last will: offline, and no "online" in between.
        assert_eq!(silence(20, 30).await, 1);
        writer
            .send(status_at(AgentState::Offline, 40, 1, true))
            .await
            .unwrap();
        assert_eq!(silence(40, 50).await, 0, "an offline host is never silent");
        writer.flush().await.unwrap();
        let json: Vec<_> = store
            .feed_after(0, 100)
            .unwrap()
            .iter()
            .map(crate::events::json::entry_json)
            .collect();
        let states: Vec<_> = json.iter().map(|j| j["data"]["state"].clone()).collect();
        assert_eq!(
            states,
            ["online", "silent", "online", "silent", "offline"],
            "{json:?}"
        );
        assert!(json.iter().all(|j| j["kind"] == "host"));
        assert_eq!(json[1]["data"]["last_seen"], "1970-01-01T00:00:00.005Z");
        assert_eq!(json[4]["data"]["reason"], "connection_lost");
        assert_eq!(json[0]["data"].get("reason"), None);
        assert_eq!(json[0]["data"].get("last_seen"), None);
        let (record, _) = store.host("web-01").unwrap().unwrap();
        assert_eq!(record.silent_since_ms, None);
    }

    #[tokio::test]
    async fn committed_entries_reach_subscribers_and_move_last_seq() {
        let feed = Feed::new(4);
        let mut rx = feed.subscribe();
        let entry = |seq| FeedEntry {
            seq,
            stored_ms: 0,
            at_ms: 0,
            event: FeedEvent::Host {
                host: "h".into(),
                online: true,
                agent_version: "1".into(),
                labels: vec![],
            },
        };
        feed.committed(vec![entry(5), entry(6)]);
        assert_eq!(feed.last_seq(), 6);
        assert_eq!(rx.recv().await.unwrap().seq, 5);
        assert_eq!(rx.recv().await.unwrap().seq, 6);
    }
}
