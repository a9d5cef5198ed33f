//! The event feed: what happened in the fleet, in the order the coordinator stored it —
//! policy violations (every policy decision), action transitions, hosts going online or
//! offline, bundles applied, and bundle drift changing. Integrations read it as Server-Sent Events
//! (`GET /api/v1/events`, [`crate::api::events`]) and as JSON on MQTT
//! ([`crate::json_mirror`]).
//!
//! The store writer appends an entry, with the next sequence number, in the same
//! transaction that stores what it reports (so a redelivered message, which stores
//! nothing, adds nothing to the feed) and broadcasts it once committed. Entries are kept
//! in LMDB (`feed`, pruned with the metric retention), so a client that reconnects with
//! the last sequence number it saw gets exactly what it missed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use vigil_shared::time::to_rfc3339;
use vigil_shared::wire::{ActionEvent, PolicyEvent, Tag};

use crate::api::hosts::tags_json;
use crate::api::violations::event_json;

/// The version of the feed's JSON shapes (the `version` field of every message).
pub const JSON_VERSION: u32 = 1;
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
    /// sync (see [`crate::bundles::drift_feed`]).
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
}

/// The kinds of feed event, as named in JSON, topics and the `kind` filter.
pub const KINDS: [&str; 5] = ["violation", "action", "host", "bundle", "drift"];

impl FeedEvent {
    /// `violation`, `action`, `host` or `bundle`.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::Violation(_) => "violation",
            FeedEvent::Action(_) => "action",
            FeedEvent::Host { .. } => "host",
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
            | FeedEvent::Bundle { host, .. }
            | FeedEvent::Drift { host, .. } => host,
        }
    }

    fn data_json(&self) -> Value {
        match self {
            FeedEvent::Violation(event) => event_json(event),
            FeedEvent::Action(e) => json!({
                "id": e.id,
                "policy": e.policy,
                "target": e.target,
                "action": e.action,
                "state": e.state.as_str(),
                "attempt": e.attempt,
                "max_attempts": e.max_attempts,
                "dry_run": e.dry_run,
                "executor": e.executor,
                "step": e.step,
                "detail": e.detail,
                "created_at": to_rfc3339(e.created_at_ms),
            }),
            FeedEvent::Host {
                online,
                agent_version,
                labels,
                ..
            } => json!({
                "state": if *online { "online" } else { "offline" },
                "agent_version": agent_version,
                "labels": tags_json(labels),
            }),
            FeedEvent::Bundle {
                group,
                version,
                hash,
                ..
            } => json!({
                "group": group,
                "bundle_version": version,
                "hash": hash,
            }),
            FeedEvent::Drift {
                group,
                desired_version,
                applied_version,
                in_sync,
                ..
            } => json!({
                "group": group,
                "desired_version": desired_version,
                "applied_version": applied_version,
                "in_sync": in_sync,
            }),
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

impl FeedEntry {
    /// The entry as integrations see it:
    /// `{"version","seq","kind","host","timestamp","data"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "version": JSON_VERSION,
            "seq": self.seq,
            "kind": self.event.kind(),
            "host": self.event.host(),
            "timestamp": to_rfc3339(self.at_ms),
            "data": self.event.data_json(),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_render_with_version_seq_kind_host_and_data() {
        let entry = FeedEntry {
            seq: 7,
            stored_ms: 1_700_000_000_500,
            at_ms: 1_700_000_000_000,
            event: FeedEvent::Bundle {
                host: "web-01".into(),
                group: "web".into(),
                version: 3,
                hash: "ab".into(),
            },
        };
        let json = entry.to_json();
        assert_eq!(json["version"], 1);
        assert_eq!(json["seq"], 7);
        assert_eq!(json["kind"], "bundle");
        assert_eq!(json["host"], "web-01");
        assert_eq!(json["data"]["bundle_version"], 3);
        assert!(json["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T"));
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
