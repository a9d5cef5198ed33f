//! Reads: hosts, a host's latest values, and history queries. Each runs in one read
//! transaction on the caller's thread (call from `spawn_blocking` in async code).

use std::ops::Bound;

use heed::RoTxn;

use vigil_shared::wire::PolicyEvent;

use super::records::{HostRecord, LatestPoint, Point, StoredPoint};
use super::{codec, keys, Store, StoreError};

/// A history query.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Only this host (all hosts when `None`).
    pub host: Option<String>,
    /// The metric name.
    pub name: String,
    /// From this time, inclusive, epoch ms.
    pub from_ms: i64,
    /// To this time, inclusive, epoch ms.
    pub to_ms: i64,
    /// At most this many points (the earliest ones).
    pub limit: usize,
}

/// A filter for policy events (every field optional).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this host.
    pub host: Option<String>,
    /// Only this policy.
    pub policy: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this kind (`fired`, `act`, …).
    pub kind: Option<String>,
    /// Only at or after this time, epoch ms.
    pub since_ms: Option<i64>,
    /// At most this many (newest first).
    pub limit: usize,
}

impl Store {
    /// Policy events, newest first. Scans back from the newest and stops at `limit`
    /// matches or at `since_ms`.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<PolicyEvent>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in self.dbs.events.rev_iter(txn)? {
                let (key, bytes) = entry?;
                let at = key
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(keys::time_from_bytes);
                if let (Some(since), Some(at)) = (query.since_ms, at) {
                    if at < since {
                        break;
                    }
                }
                let event = codec::decode::<PolicyEvent>("events", bytes)?;
                let keep = query.host.as_ref().is_none_or(|h| *h == event.host)
                    && query.policy.as_ref().is_none_or(|p| *p == event.policy)
                    && query.target.as_ref().is_none_or(|t| *t == event.target)
                    && query.kind.as_ref().is_none_or(|k| *k == event.kind);
                if keep {
                    out.push(event);
                    if out.len() >= query.limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Runs `f` in a read transaction (holding the resize lock for reading).
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&RoTxn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.env.read_txn()?;
        f(&txn)
    }

    /// Every known host, sorted by name.
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.read(|txn| {
            self.dbs
                .hosts
                .iter(txn)?
                .map(|entry| {
                    let (_, bytes) = entry?;
                    HostRecord::decode(bytes)
                })
                .collect()
        })
    }

    /// One host's record alone (no series).
    pub fn host_record(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        self.read(|txn| match self.dbs.hosts.get(txn, host.as_bytes())? {
            Some(bytes) => HostRecord::decode(bytes).map(Some),
            None => Ok(None),
        })
    }

    /// One host and the latest value of each of its series (and tagged variants). While
    /// the writer is behind, these may lag its stored history by up to a second (see
    /// the writer's `LatestPuts`).
    pub fn host(&self, host: &str) -> Result<Option<(HostRecord, Vec<LatestPoint>)>, StoreError> {
        self.read(|txn| {
            let Some(bytes) = self.dbs.hosts.get(txn, host.as_bytes())? else {
                return Ok(None);
            };
            let record = HostRecord::decode(bytes)?;
            let mut latest = Vec::new();
            for entry in self
                .dbs
                .series
                .prefix_iter(txn, &keys::series_prefix(host))?
            {
                let (_, id) = entry?;
                let id = series_id(id)?;
                for point in self.dbs.latest.prefix_iter(txn, &id.to_be_bytes())? {
                    let (_, bytes) = point?;
                    latest.push(codec::decode::<LatestPoint>("latest", bytes)?);
                }
            }
            latest.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.tags.cmp(&b.tags)));
            Ok(Some((record, latest)))
        })
    }

    /// History of one metric, time-ordered (ties by host), at most `limit` points.
    pub fn query(&self, query: &HistoryQuery) -> Result<Vec<Point>, StoreError> {
        self.read(|txn| {
            let mut series: Vec<(String, u64)> = Vec::new();
            match &query.host {
                Some(host) => {
                    if let Some(id) = self.dbs.series.get(txn, &keys::series(host, &query.name))? {
                        series.push((host.clone(), series_id(id)?));
                    }
                }
                None => {
                    for entry in self.dbs.series.iter(txn)? {
                        let (key, id) = entry?;
                        if let Some((host, name)) = keys::split_series(key) {
                            if name == query.name {
                                series.push((host.to_string(), series_id(id)?));
                            }
                        }
                    }
                }
            }
            let mut points = Vec::new();
            for (host, id) in series {
                let from = keys::history(id, query.from_ms, 0);
                let to = keys::history(id, query.to_ms, u64::MAX);
                let range = (
                    Bound::Included(from.as_slice()),
                    Bound::Included(to.as_slice()),
                );
                for entry in self.dbs.history.range(txn, &range)?.take(query.limit) {
                    let (key, bytes) = entry?;
                    let stored = codec::decode::<StoredPoint>("history", bytes)?;
                    points.push(Point {
                        host: host.clone(),
                        name: query.name.clone(),
                        value: stored.value,
                        ts_ms: keys::history_time(key).unwrap_or_default(),
                        tags: stored.tags,
                    });
                }
            }
            points.sort_by(|a, b| a.ts_ms.cmp(&b.ts_ms).then_with(|| a.host.cmp(&b.host)));
            points.truncate(query.limit);
            Ok(points)
        })
    }
}

fn series_id(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        db: "series",
        reason: "series id is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vigil_shared::wire::{AgentState, AgentStatus, Sample};

    use super::*;
    use crate::store::{MapSize, Points, Source, StoreWriter, Write};
    use crate::telemetry::Telemetry;

    fn sample(name: &str, value: f64, ts_ms: i64, tags: &[(&str, &str)]) -> Sample {
        Sample::new(name, value, ts_ms, tags)
    }

    fn open(dir: &std::path::Path, max: usize) -> Store {
        Store::open(
            dir,
            MapSize {
                initial: 1 << 20,
                max,
            },
        )
        .unwrap()
    }

    async fn write_samples(
        writer: &StoreWriter,
        host: &str,
        samples: Vec<Sample>,
    ) -> Result<u64, Arc<StoreError>> {
        writer
            .send_and_wait(|reply| Write::Samples {
                points: Points::new(host, &[("role".into(), "web".into())], &samples),
                host: host.into(),
                source: Source::Mqtt,
                received_ms: 1_000,
                reply: Some(reply),
            })
            .await
    }

    #[tokio::test]
    async fn samples_are_queryable_by_host_name_and_time_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 1 << 30);
            let (writer, thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
            write_samples(
                &writer,
                "web-01",
                vec![
                    sample("cpu_percent", 10.0, 1_000, &[]),
                    sample("disk_free_percent", 50.0, 1_000, &[("mount", "/")]),
                    sample("disk_free_percent", 70.0, 1_000, &[("mount", "/var")]),
                ],
            )
            .await
            .unwrap();
            write_samples(
                &writer,
                "web-01",
                vec![sample("cpu_percent", 20.0, 2_000, &[])],
            )
            .await
            .unwrap();
            write_samples(
                &writer,
                "web-02",
                vec![sample("cpu_percent", 30.0, 1_500, &[])],
            )
            .await
            .unwrap();
            drop(writer);
            thread.join().unwrap();
        }
        let store = open(dir.path(), 1 << 30);
        let all = store
            .query(&HistoryQuery {
                host: None,
                name: "cpu_percent".into(),
                from_ms: 0,
                to_ms: 10_000,
                limit: 100,
            })
            .unwrap();
        let seen: Vec<(&str, f64)> = all.iter().map(|p| (p.host.as_str(), p.value)).collect();
        assert_eq!(
            seen,
            vec![("web-01", 10.0), ("web-02", 30.0), ("web-01", 20.0)]
        );
        assert_eq!(all[0].tags, vec![("role".to_string(), "web".to_string())]);
        let windowed = store
            .query(&HistoryQuery {
                host: Some("web-01".into()),
                name: "cpu_percent".into(),
                from_ms: 1_500,
                to_ms: 2_000,
                limit: 100,
            })
            .unwrap();
        assert_eq!(windowed.len(), 1);
        assert_eq!(windowed[0].value, 20.0);
        let (record, latest) = store.host("web-01").unwrap().unwrap();
        assert_eq!(record.source, Source::Mqtt);
        assert_eq!(latest.len(), 3);
        assert_eq!(
            latest
                .iter()
                .find(|p| p.name == "cpu_percent")
                .unwrap()
                .value,
            20.0
        );
        assert!(store.host("nobody").unwrap().is_none());
    }

    fn event(id: &str, at_ms: i64, kind: &str) -> PolicyEvent {
        PolicyEvent {
            id: id.into(),
            host: "h".into(),
            policy: "p".into(),
            target: "t".into(),
            severity: "warning".into(),
            kind: kind.into(),
            summary: String::new(),
            explanation: None,
            action: None,
            step: None,
            action_requested: false,
            dry_run: false,
            detail: None,
            at_ms,
        }
    }

    #[tokio::test]
    async fn events_are_stored_once_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 30);
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        for e in [
            event("a", 1, "fired"),
            event("b", 2, "act"),
            event("a", 1, "fired"),
            event("c", 3, "resolved"),
        ] {
            writer.send(Write::Event { event: e }).await.unwrap();
        }
        writer.flush().await.unwrap();
        let all = store
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["c", "b", "a"], "redelivered `a` stored once");
        let acts = store
            .events(&EventQuery {
                kind: Some("act".into()),
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(acts.len(), 1);
        let recent = store
            .events(&EventQuery {
                since_ms: Some(2),
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(recent.len(), 2);
    }

    #[tokio::test]
    async fn prune_deletes_only_old_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 30);
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let samples = (0..10)
            .map(|i| sample("load1", i as f64, i * 1_000, &[]))
            .collect();
        write_samples(&writer, "h", samples).await.unwrap();
        let deleted = writer
            .send_and_wait(|reply| Write::Prune {
                before_ms: 5_000,
                reply: Some(reply),
            })
            .await
            .unwrap();
        assert_eq!(deleted, 5);
        let left = store
            .query(&HistoryQuery {
                host: Some("h".into()),
                name: "load1".into(),
                from_ms: i64::MIN,
                to_ms: i64::MAX,
                limit: 100,
            })
            .unwrap();
        assert_eq!(left.first().map(|p| p.ts_ms), Some(5_000));
    }

    #[tokio::test]
    async fn a_status_from_an_older_run_never_overwrites_a_newer_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1 << 30);
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let status = |state, started_at_ms| AgentStatus {
            host: "h".into(),
            state,
            agent_version: "1".into(),
            started_at_ms,
            sent_at_ms: started_at_ms,
            interval_ms: 1000,
            labels: vec![],
            bundles: Vec::new(),
            bundle_error: None,
            remediation_paused: false,
            detail: None,
            policies: Default::default(),
            queue: Default::default(),
            delivery: None,
        };
        for s in [
            status(AgentState::Offline, 20),
            status(AgentState::Online, 10),
        ] {
            writer
                .send(Write::Status {
                    running: None,
                    clock_skew_ms: None,
                    order: None,
                    status: s,
                    received_ms: 5,
                })
                .await
                .unwrap();
        }
        writer.flush().await.unwrap();
        let record = store.hosts().unwrap().remove(0);
        assert_eq!(record.status.unwrap().state, AgentState::Offline);
    }

    #[tokio::test]
    async fn a_full_map_grows_then_rejects_with_a_clear_error_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 4 << 20);
        let telemetry = Arc::new(Telemetry::new());
        let (writer, _thread) = StoreWriter::start(store.clone(), telemetry.clone());
        let mut full = None;
        for round in 0..200 {
            let samples = (0..500)
                .map(|i| sample("m", 1.0, round * 1_000 + i, &[("pad", &"x".repeat(200))]))
                .collect();
            if let Err(e) = write_samples(&writer, "h", samples).await {
                full = Some(e);
                break;
            }
        }
        let err = full.expect("a 4 MiB map must fill up");
        assert!(matches!(*err, StoreError::Full { .. }), "{err}");
        assert!(err.to_string().contains("--db-max-size"), "{err}");
        assert!(
            store.current_map_size() > 1 << 20,
            "the map grew before giving up"
        );
        assert_eq!(
            telemetry
                .store_errors
                .with_label_values(&["map_full"])
                .get(),
            1
        );
        // Reads still work, and so do small writes after a prune frees pages.
        assert!(!store.hosts().unwrap().is_empty());
        writer
            .send_and_wait(|reply| Write::Prune {
                before_ms: i64::MAX,
                reply: Some(reply),
            })
            .await
            .unwrap();
        write_samples(&writer, "h", vec![sample("m", 2.0, 1, &[])])
            .await
            .unwrap();
    }
}
