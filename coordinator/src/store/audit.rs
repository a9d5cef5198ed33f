//! Audit retention: removes action records, policy events and feed entries older than
//! `--audit-retention`, so the audit trail stops growing on a steady fleet (LMDB puts the
//! freed pages on its free list and reuses them for later writes).
//!
//! A pass is a series of chunks, each one [`Write::PruneAudit`] applied by the single
//! writer inside its ordinary transaction, removing or looking at no more than the
//! chunk's limit of records, so other writes wait at most one chunk. Between chunks the
//! caller keeps an [`AuditCursor`].
//!
//! What goes:
//! - an action whose *latest* transition is older than the cut-off, whole: its record,
//!   every index key and its share of the counters (an action is never left half there).
//!   Actions are walked in order of creation, up to the cut-off; one created earlier but
//!   with a later transition is kept and passed over;
//! - a policy event whose time is older than the cut-off (and its id's entry);
//! - a feed entry stored before the cut-off. The feed's sequence numbers go on from the
//!   highest ever used, even when every entry is gone (see [`super::feed`]).

use std::sync::Arc;

use heed::RwTxn;
use tokio::sync::oneshot;

use super::{actions, feed, keys, Store, StoreError, StoreWriter, Write};

/// Default number of records one chunk removes or looks at.
pub const DEFAULT_CHUNK: usize = 1000;

/// Where a pass is between chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditCursor {
    /// The last action index key walked (the walk continues after it).
    pub(crate) actions_after: Option<Vec<u8>>,
    /// The walk has reached the cut-off.
    pub(crate) actions_done: bool,
}

/// What was removed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditPruned {
    /// Action records (each with all its transitions).
    pub actions: u64,
    /// Policy events.
    pub events: u64,
    /// Feed entries.
    pub feed: u64,
    /// Actions created before the cut-off but kept for a later transition.
    pub kept: u64,
}

impl AuditPruned {
    /// Records removed, of every kind.
    pub fn total(&self) -> u64 {
        self.actions + self.events + self.feed
    }

    fn add(&mut self, other: &AuditPruned) {
        self.actions += other.actions;
        self.events += other.events;
        self.feed += other.feed;
        self.kept += other.kept;
    }

    /// `(kind, count)` for the `vigil_audit_pruned_total{kind}` counter.
    pub fn by_kind(&self) -> [(&'static str, u64); 3] {
        [
            ("action", self.actions),
            ("event", self.events),
            ("feed", self.feed),
        ]
    }
}

/// What one chunk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditChunk {
    /// What it removed.
    pub pruned: AuditPruned,
    /// Where the next chunk starts.
    pub cursor: AuditCursor,
    /// Nothing older than the cut-off is left.
    pub done: bool,
}

/// Where the writer sends a chunk's outcome.
pub type AuditReply = oneshot::Sender<Result<AuditChunk, Arc<StoreError>>>;

/// Removes (or looks at) at most `limit` records older than `before_ms`, continuing from
/// `cursor`; runs inside the writer's transaction.
pub(crate) fn prune_chunk(
    store: &Store,
    txn: &mut RwTxn,
    before_ms: i64,
    limit: usize,
    cursor: &AuditCursor,
) -> Result<AuditChunk, StoreError> {
    let limit = limit.max(1);
    let mut chunk = AuditChunk {
        cursor: cursor.clone(),
        ..AuditChunk::default()
    };
    let mut budget = limit;
    if !cursor.actions_done {
        let walk = actions::prune(
            store,
            txn,
            before_ms,
            cursor.actions_after.as_deref(),
            budget,
        )?;
        budget -= walk.walked;
        chunk.pruned.actions = walk.deleted;
        chunk.pruned.kept = walk.walked as u64 - walk.deleted;
        chunk.cursor.actions_done = walk.done;
        chunk.cursor.actions_after = walk.last;
    }
    let mut events_done = false;
    if budget > 0 {
        let (deleted, done) = prune_events(store, txn, before_ms, budget)?;
        budget -= deleted as usize;
        chunk.pruned.events = deleted;
        events_done = done;
    }
    let mut feed_done = false;
    if budget > 0 {
        let (deleted, done) = feed::prune(store, txn, before_ms, budget)?;
        chunk.pruned.feed = deleted;
        feed_done = done;
    }
    chunk.done = chunk.cursor.actions_done && events_done && feed_done;
    Ok(chunk)
}

/// Deletes up to `limit` policy events older than `before_ms`, oldest first; returns how
/// many, and whether none older is left.
fn prune_events(
    store: &Store,
    txn: &mut RwTxn,
    before_ms: i64,
    limit: usize,
) -> Result<(u64, bool), StoreError> {
    let end = keys::time_bytes(before_ms);
    let range = (
        std::ops::Bound::Unbounded,
        std::ops::Bound::Excluded(end.as_slice()),
    );
    let mut old: Vec<Vec<u8>> = Vec::new();
    let mut done = true;
    for entry in store.dbs.events.range(txn, &range)? {
        let (key, _) = entry?;
        if old.len() >= limit {
            done = false;
            break;
        }
        old.push(key.to_vec());
    }
    delete_events(store, txn, &old).map(|n| (n, done))
}

fn delete_events(store: &Store, txn: &mut RwTxn, old: &[Vec<u8>]) -> Result<u64, StoreError> {
    for key in old {
        store.dbs.events.delete(txn, key)?;
        // `time · id`: the id's entry goes with the event, if it still names this one.
        let id = key.get(8..).unwrap_or_default();
        if store.dbs.event_ids.get(txn, id)? == Some(key.as_slice()) {
            store.dbs.event_ids.delete(txn, id)?;
        }
    }
    Ok(old.len() as u64)
}

impl StoreWriter {
    /// Runs one audit retention pass: removes everything older than `before_ms`, `chunk`
    /// records per write, and returns what went.
    pub async fn prune_audit(
        &self,
        before_ms: i64,
        chunk: usize,
    ) -> Result<AuditPruned, Arc<StoreError>> {
        let mut total = AuditPruned::default();
        let mut cursor = AuditCursor::default();
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(Write::PruneAudit {
                before_ms,
                limit: chunk,
                cursor,
                reply: Some(reply),
            })
            .await
            .map_err(Arc::new)?;
            let done = answer
                .await
                .map_err(|_| Arc::new(StoreError::WriterGone))??;
            total.add(&done.pruned);
            if done.done {
                return Ok(total);
            }
            cursor = done.cursor;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use vigil_shared::time::now_ms;
    use vigil_shared::wire::{ActionEvent, ActionState, PolicyEvent};

    use super::*;
    use crate::store::actions::{check_consistency, ActionQuery};
    use crate::store::feed::FeedEvent;
    use crate::store::reader::EventQuery;
    use crate::store::MapSize;
    use crate::telemetry::Telemetry;

    fn open(dir: &Path) -> Store {
        Store::open(
            dir,
            MapSize {
                initial: 64 << 20,
                max: 4 << 30,
            },
        )
        .unwrap()
    }

    fn action(id: &str, host: &str, created: i64, state: ActionState, at: i64) -> ActionEvent {
        ActionEvent {
            id: id.into(),
            host: host.into(),
            policy: Some("high-cpu".into()),
            target: format!("{host}-app.service"),
            action: "restart".into(),
            state,
            attempt: u32::from(state != ActionState::Pending),
            dry_run: false,
            detail: Some(state.as_str().into()),
            created_at_ms: created,
            at_ms: at,
            max_attempts: 3,
            executor: Some("systemd".into()),
            step: Some(0),
            params: None,
        }
    }

    /// An action's three transitions: pending at `created`, running 10 ms later, then
    /// `end` 20 ms later.
    fn lifecycle(id: &str, host: &str, created: i64, end: ActionState) -> Vec<Write> {
        [
            (ActionState::Pending, 0),
            (ActionState::Running, 10),
            (end, 20),
        ]
        .into_iter()
        .map(|(state, after)| Write::Action {
            event: action(id, host, created, state, created + after),
        })
        .collect()
    }

    fn policy_event(id: &str, host: &str, at_ms: i64) -> PolicyEvent {
        PolicyEvent {
            id: id.into(),
            host: host.into(),
            policy: "high-cpu".into(),
            target: host.into(),
            severity: "warning".into(),
            kind: "fired".into(),
            summary: "cpu_percent > 80 (observed 93)".into(),
            explanation: None,
            action: None,
            step: None,
            action_requested: false,
            dry_run: false,
            detail: None,
            at_ms,
        }
    }

    async fn write_all(writer: &StoreWriter, writes: Vec<Write>) {
        for write in writes {
            writer.send(write).await.unwrap();
        }
        writer.flush().await.unwrap();
    }

    /// The first clock reading past `t` (so that what was stored by `t` is older).
    fn past(t: i64) -> i64 {
        loop {
            let now = now_ms();
            if now > t {
                return now;
            }
            std::thread::yield_now();
        }
    }

    fn ids(store: &Store, query: ActionQuery) -> Vec<String> {
        let mut ids: Vec<String> = store
            .actions(&query)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    }

    fn all() -> ActionQuery {
        ActionQuery {
            limit: 100_000,
            ..ActionQuery::default()
        }
    }

    /// Every stored event has its id entry and every id entry names a stored event.
    fn check_events(store: &Store) -> usize {
        store
            .read(|txn| {
                let mut n = 0;
                for entry in store.dbs.events.iter(txn)? {
                    let (key, _) = entry?;
                    let id = &key[8..];
                    assert_eq!(store.dbs.event_ids.get(txn, id)?, Some(key));
                    n += 1;
                }
                for entry in store.dbs.event_ids.iter(txn)? {
                    let (_, key) = entry?;
                    assert!(store.dbs.events.get(txn, key)?.is_some());
                }
                Ok(n)
            })
            .unwrap()
    }

    #[tokio::test]
    async fn old_records_go_whole_newer_ones_stay_and_indexes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let telemetry = Arc::new(Telemetry::new());
        let (writer, _thread) = StoreWriter::start(store.clone(), telemetry.clone());
        let hosts = ["h0", "h1", "h2"];
        let mut old = Vec::new();
        for i in 0..20i64 {
            let end = if i % 4 == 0 {
                ActionState::DeadLetter
            } else {
                ActionState::Completed
            };
            old.extend(lifecycle(
                &format!("old-{i:02}"),
                hosts[(i % 3) as usize],
                1_000 + i,
                end,
            ));
            old.push(Write::Event {
                event: policy_event(
                    &format!("ev-old-{i:02}"),
                    hosts[(i % 3) as usize],
                    2_000 + i,
                ),
            });
        }
        // Created long ago and still going: its first transition is old, its last is not.
        old.push(Write::Action {
            event: action("long", "h0", 500, ActionState::Pending, 500),
        });
        write_all(&writer, old).await;
        let cutoff = past(now_ms());
        let old_feed = store.feed_after(0, 1000).unwrap();
        assert!(old_feed.iter().all(|e| e.stored_ms < cutoff));
        let mut new = Vec::new();
        for i in 0..10i64 {
            let end = if i % 2 == 0 {
                ActionState::DeadLetter
            } else {
                ActionState::Completed
            };
            new.extend(lifecycle(
                &format!("new-{i:02}"),
                hosts[(i % 3) as usize],
                cutoff + 1_000 + i,
                end,
            ));
            new.push(Write::Event {
                event: policy_event(
                    &format!("ev-new-{i:02}"),
                    hosts[(i % 3) as usize],
                    cutoff + i,
                ),
            });
        }
        new.push(Write::Action {
            event: action("long", "h0", 500, ActionState::Running, cutoff + 5_000),
        });
        write_all(&writer, new).await;
        let last_seq = store.feed().last_seq();
        assert_eq!(check_consistency(&store), Ok(31));

        let pruned = writer.prune_audit(cutoff, 7).await.unwrap();
        assert_eq!(pruned.actions, 20);
        assert_eq!(pruned.events, 20);
        assert_eq!(pruned.feed, old_feed.len() as u64);
        assert_eq!(pruned.kept, 1, "`long` is looked at and kept");

        let mut expected: Vec<String> = (0..10).map(|i| format!("new-{i:02}")).collect();
        expected.insert(0, "long".into());
        assert_eq!(ids(&store, all()), expected);
        let long = store.action("long").unwrap().unwrap();
        assert_eq!(long.transitions.len(), 2, "an action is kept whole");
        assert!(store.action("old-00").unwrap().is_none());
        // The indexes hold exactly the records left: by host, by status, by policy.
        assert_eq!(check_consistency(&store), Ok(11));
        let by = |host: Option<&str>, status: Option<ActionState>| {
            ids(
                &store,
                ActionQuery {
                    host: host.map(str::to_string),
                    status,
                    ..all()
                },
            )
        };
        assert_eq!(
            by(Some("h0"), None),
            ["long", "new-00", "new-03", "new-06", "new-09"]
        );
        assert_eq!(
            by(None, Some(ActionState::DeadLetter)),
            ["new-00", "new-02", "new-04", "new-06", "new-08"]
        );
        assert_eq!(
            by(Some("h1"), Some(ActionState::Completed)),
            ["new-01", "new-07"]
        );
        let counts = store.action_counts().unwrap();
        assert_eq!(counts.total, 11);
        assert_eq!(counts.by_status["dead_letter"], 5);
        assert_eq!(counts.by_status["running"], 1);
        let events = store
            .events(&EventQuery {
                limit: 1000,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(events.len(), 10);
        assert!(events.iter().all(|e| e.id.starts_with("ev-new")));
        assert_eq!(check_events(&store), 10);
        let feed = store.feed_after(0, 1000).unwrap();
        assert!(!feed.is_empty());
        assert!(feed.iter().all(|e| e.stored_ms >= cutoff));
        assert_eq!(feed.last().map(|e| e.seq), Some(last_seq));
        for (kind, n) in [
            ("action", 20),
            ("event", 20),
            ("feed", old_feed.len() as u64),
        ] {
            assert_eq!(telemetry.audit_pruned.with_label_values(&[kind]).get(), n);
        }

        // A second pass finds nothing; the store takes new writes as before.
        assert_eq!(writer.prune_audit(cutoff, 7).await.unwrap().total(), 0);
        write_all(
            &writer,
            lifecycle("after", "h2", cutoff + 9_000, ActionState::Completed),
        )
        .await;
        assert_eq!(check_consistency(&store), Ok(12));
        assert_eq!(store.feed().last_seq(), last_seq + 3);
    }

    #[tokio::test]
    async fn the_walk_moves_past_kept_actions_however_many_chunks_they_fill() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let cutoff = 1_000_000;
        let mut writes = Vec::new();
        // 30 actions created first but still active after the cut-off, then 10 old ones.
        for i in 0..30 {
            writes.push(Write::Action {
                event: action(
                    &format!("kept-{i:02}"),
                    "h",
                    i,
                    ActionState::Running,
                    cutoff + i,
                ),
            });
        }
        for i in 0..10 {
            writes.extend(lifecycle(
                &format!("gone-{i:02}"),
                "h",
                100 + i,
                ActionState::Completed,
            ));
        }
        write_all(&writer, writes).await;
        let pruned = writer.prune_audit(cutoff, 7).await.unwrap();
        assert_eq!((pruned.actions, pruned.kept), (10, 30));
        assert_eq!(ids(&store, all()).len(), 30);
        assert!(ids(&store, all()).iter().all(|id| id.starts_with("kept")));
        assert_eq!(check_consistency(&store), Ok(30));
    }

    #[tokio::test]
    async fn feed_numbers_go_on_after_every_entry_is_pruned_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let host = |n: usize| Write::Feed {
            event: FeedEvent::Host {
                host: format!("h{n}"),
                online: true,
                agent_version: "1".into(),
                labels: vec![],
            },
            at_ms: 1,
        };
        {
            let store = open(dir.path());
            let (writer, thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
            write_all(&writer, (0..5).map(host).collect()).await;
            let cutoff = past(now_ms());
            assert_eq!(writer.prune_audit(cutoff, 2).await.unwrap().feed, 5);
            assert!(store.feed_after(0, 100).unwrap().is_empty());
            drop(writer);
            thread.join().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.feed().last_seq(), 5);
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        write_all(&writer, vec![host(6)]).await;
        let seqs: Vec<u64> = store
            .feed_after(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [6]);
    }

    /// The size of the LMDB data file.
    fn data_file_size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("data.mdb")).unwrap().len()
    }

    /// One cycle's writes: `n` actions of three transitions and `n` policy events, at
    /// `at` (the coordinator's clock, as the feed's entries get it).
    fn cycle(cycle: usize, n: usize, at: i64) -> Vec<Write> {
        let mut writes = Vec::new();
        for i in 0..n {
            let host = format!("host-{:02}", i % 17);
            writes.extend(lifecycle(
                &format!("c{cycle:04}-{i:04}"),
                &host,
                at,
                ActionState::Completed,
            ));
            writes.push(Write::Event {
                event: policy_event(&format!("e{cycle:04}-{i:04}"), &host, at),
            });
        }
        writes
    }

    #[tokio::test]
    async fn the_data_file_stops_growing_when_each_cycle_prunes_what_it_adds() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        // Keep the last 4 cycles; each writes 500 actions (1,500 transitions), 500 events
        // and 2,000 feed entries.
        const KEEP: usize = 4;
        const PER_CYCLE: usize = 500;
        let mut starts = Vec::new();
        let mut sizes = Vec::new();
        let mut used = Vec::new();
        let mut last = now_ms();
        for c in 0..40 {
            last = past(last);
            starts.push(last);
            write_all(&writer, cycle(c, PER_CYCLE, last)).await;
            if c + 1 >= KEEP {
                let before_ms = starts[c + 1 - KEEP];
                let pruned = writer.prune_audit(before_ms, DEFAULT_CHUNK).await.unwrap();
                if c + 1 > KEEP {
                    assert_eq!(pruned.actions, PER_CYCLE as u64, "cycle {c}");
                    assert_eq!(pruned.events, PER_CYCLE as u64, "cycle {c}");
                }
            }
            last = now_ms().max(last);
            sizes.push(data_file_size(dir.path()));
            let space = store.space().unwrap();
            assert!(
                space.used_bytes <= space.file_bytes && space.file_bytes <= sizes[c],
                "cycle {c}: {space:?}, file {} bytes",
                sizes[c]
            );
            used.push(space.used_bytes);
        }
        assert_eq!(check_consistency(&store), Ok((KEEP * PER_CYCLE) as u64));
        println!(
            "data.mdb size after each cycle (KiB): {:?}",
            sizes.iter().map(|s| s / 1024).collect::<Vec<_>>()
        );
        // Once steady (10 cycles in), the file stays within 10% of its size then; without
        // pruning the last 30 cycles would have added about 7.5 times the steady content.
        let steady = sizes[9];
        let end = *sizes.last().unwrap();
        assert!(
            end <= steady + steady / 10,
            "data file grew from {steady} to {end} bytes over 30 steady cycles: {sizes:?}"
        );
        // The pages holding data stay as steady as the content (B-tree fill varies a little).
        let (steady, end) = (used[9], *used.last().unwrap());
        assert!(
            end <= steady + steady / 4,
            "used pages grew from {steady} to {end} bytes over 30 steady cycles: {used:?}"
        );
    }

    /// Measures a prune pass: 100,000 actions (300,000 transitions) and 100,000 policy
    /// events written, then removed in one pass; prints records per second, and the rate
    /// they were written at in the same run.
    #[tokio::test]
    #[ignore = "a measurement: cargo test -p vigil-coordinator --release --lib prune_pass_rate -- --ignored --nocapture"]
    async fn prune_pass_rate() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        const N: usize = 100_000;
        let at = now_ms();
        let started = Instant::now();
        for chunk in 0..N / 1000 {
            let mut writes = Vec::new();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                let host = format!("host-{:03}", i % 500);
                writes.extend(lifecycle(
                    &format!("a{i:06}"),
                    &host,
                    at,
                    ActionState::Completed,
                ));
                writes.push(Write::Event {
                    event: policy_event(&format!("e{i:06}"), &host, at),
                });
            }
            write_all(&writer, writes).await;
        }
        let wrote = started.elapsed();
        let records = store
            .feed_after(0, 1)
            .map(|_| ())
            .map(|()| (2 * N) as u64 + store.feed().last_seq());
        let records = records.unwrap();
        let cutoff = past(now_ms());
        let started = Instant::now();
        let pruned = writer.prune_audit(cutoff, DEFAULT_CHUNK).await.unwrap();
        let took = started.elapsed();
        assert_eq!(pruned.actions, N as u64);
        assert_eq!(pruned.events, N as u64);
        assert_eq!(pruned.total(), records);
        assert_eq!(check_consistency(&store), Ok(0));
        let write_rate = records as f64 / wrote.as_secs_f64();
        let prune_rate = records as f64 / took.as_secs_f64();
        println!(
            "wrote {records} records ({N} actions of 3 transitions, {N} events, {} feed entries) \
             in {:.2} s: {write_rate:.0}/s",
            records - 2 * N as u64,
            wrote.as_secs_f64()
        );
        println!(
            "pruned them in {:.2} s, chunks of {DEFAULT_CHUNK}: {prune_rate:.0} records/s \
             ({:.1}x the write rate)",
            took.as_secs_f64(),
            prune_rate / write_rate
        );
    }
}
