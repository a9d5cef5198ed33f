//! The `feed` database: every [`FeedEntry`] by sequence number (u64, big-endian), for
//! clients that resume the event stream (see [`crate::feed`]).

use heed::RwTxn;

use super::{codec, Store, StoreError};
use crate::feed::FeedEntry;

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

    /// The sequence number of the last stored entry (0: none).
    pub fn feed_last_seq(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(match self.dbs.feed.last(&rtxn)? {
            Some((key, _)) => seq_of(key)?,
            None => 0,
        })
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

/// Deletes entries stored before `before_ms`; returns how many.
pub(crate) fn prune(store: &Store, txn: &mut RwTxn, before_ms: i64) -> Result<u64, StoreError> {
    let mut old = Vec::new();
    for item in store.dbs.feed.iter(txn)? {
        let (key, bytes) = item?;
        if codec::decode::<FeedEntry>("feed", bytes)?.stored_ms >= before_ms {
            break;
        }
        old.push(seq_of(key)?);
    }
    for seq in &old {
        store.dbs.feed.delete(txn, &seq.to_be_bytes())?;
    }
    Ok(old.len() as u64)
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
                status: status(AgentState::Online, Some("aa")),
                received_ms: 6,
            },
            Write::Status {
                status: status(AgentState::Online, Some("aa")), // nothing changed
                received_ms: 7,
            },
            Write::Status {
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
        assert_eq!(entries[4].to_json()["data"]["state"], "offline");
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
}
