//! One host's stored history in time order, tick by tick, for replaying it through the
//! policy engine: every distinct sample time of any of the host's series is a tick (what
//! its agent evaluated at), and each tick carries the samples of the metrics asked for.
//!
//! Reads go window by window ([`WINDOW_MS`] of history per read transaction, merging the
//! host's series in time order), so no transaction stays open for a whole replay and
//! memory is one tick's samples. The caller gives a budget of history keys to read; the
//! read stops when it is spent.

use std::collections::BTreeSet;
use std::iter::Peekable;
use std::ops::Bound;

use vigil_shared::wire::Sample;

use super::records::StoredPoint;
use super::{codec, keys, Store, StoreError};

/// History read per read transaction, ms.
pub const WINDOW_MS: i64 = 3_600_000;

/// How a timeline read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineEnd {
    /// Every tick in the range was read.
    Complete,
    /// The key budget ran out first.
    BudgetSpent,
}

impl Store {
    /// Calls `tick(time, samples)` for every sample time of `host`'s series from `from_ms`
    /// to `to_ms` (inclusive), in time order, with the samples of `metrics` at that time
    /// (none when only other series have a point then). Each history key read takes one
    /// from `budget`.
    pub fn timeline(
        &self,
        host: &str,
        metrics: &BTreeSet<String>,
        from_ms: i64,
        to_ms: i64,
        budget: &mut u64,
        mut tick: impl FnMut(i64, &[Sample]),
    ) -> Result<TimelineEnd, StoreError> {
        let series: Vec<(String, u64, bool)> = self.read(|txn| {
            let mut out = Vec::new();
            for entry in self
                .dbs
                .series
                .prefix_iter(txn, &keys::series_prefix(host))?
            {
                let (key, id) = entry?;
                let Some((_, name)) = keys::split_series(key) else {
                    continue;
                };
                let id: [u8; 8] = id.try_into().map_err(|_| StoreError::Corrupt {
                    db: "series",
                    reason: "series id is not 8 bytes".into(),
                })?;
                out.push((
                    name.to_string(),
                    u64::from_be_bytes(id),
                    metrics.contains(name),
                ));
            }
            Ok(out)
        })?;
        let mut start = from_ms;
        while start <= to_ms {
            let end = start.saturating_add(WINDOW_MS - 1).min(to_ms);
            let spent = self.read(|txn| {
                let mut cursors = Vec::with_capacity(series.len());
                for (name, id, wanted) in &series {
                    let from = keys::history(*id, start, 0);
                    let to = keys::history(*id, end, u64::MAX);
                    let range = (
                        Bound::Included(from.as_slice()),
                        Bound::Included(to.as_slice()),
                    );
                    cursors.push((
                        name,
                        *wanted,
                        self.dbs.history.range(txn, &range)?.peekable(),
                    ));
                }
                let mut samples = Vec::new();
                loop {
                    let mut next: Option<i64> = None;
                    for (_, _, cursor) in cursors.iter_mut() {
                        if let Some(at) = peek_time(cursor)? {
                            next = Some(next.map_or(at, |n| n.min(at)));
                        }
                    }
                    let Some(at) = next else {
                        return Ok(false);
                    };
                    samples.clear();
                    for (name, wanted, cursor) in cursors.iter_mut() {
                        while peek_time(cursor)? == Some(at) {
                            if *budget == 0 {
                                return Ok(true);
                            }
                            *budget -= 1;
                            let Some(entry) = cursor.next() else { break };
                            let (_, bytes) = entry?;
                            if *wanted {
                                let point = codec::decode::<StoredPoint>("history", bytes)?;
                                samples.push(Sample {
                                    name: name.to_string(),
                                    value: point.value,
                                    ts_ms: at,
                                    tags: point.tags,
                                });
                            }
                        }
                    }
                    tick(at, &samples);
                }
            })?;
            if spent {
                return Ok(TimelineEnd::BudgetSpent);
            }
            if end == to_ms {
                break;
            }
            start = end + 1;
        }
        Ok(TimelineEnd::Complete)
    }
}

/// The time of the next entry of a history cursor (`None` at its end); a read error is
/// returned rather than skipped.
fn peek_time<'t, I>(cursor: &mut Peekable<I>) -> Result<Option<i64>, StoreError>
where
    I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
{
    match cursor.peek() {
        None => Ok(None),
        Some(Ok((key, _))) => Ok(keys::history_time(key)),
        Some(Err(_)) => match cursor.next() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Points, Source, StoreWriter, Write};
    use crate::telemetry::Telemetry;

    fn sample(name: &str, value: f64, ts_ms: i64) -> Sample {
        Sample {
            name: name.into(),
            value,
            ts_ms,
            tags: vec![],
        }
    }

    #[tokio::test]
    async fn ticks_come_in_time_order_with_the_asked_metrics_and_the_budget_stops_the_read() {
        let (_dir, store) = Store::temporary();
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let hour = WINDOW_MS;
        let samples = vec![
            sample("cpu", 1.0, 1_000),
            sample("mem", 5.0, 1_000),
            sample("mem", 6.0, 2_000),
            sample("cpu", 2.0, 3_000),
            sample("cpu", 3.0, hour + 10),
            sample("cpu", 9.0, 3 * hour),
        ];
        writer
            .send_and_wait(|reply| Write::Samples {
                host: "h".into(),
                points: Points::new("h", &[("role".into(), "web".into())], &samples),
                source: Source::Mqtt,
                received_ms: 1,
                reply: Some(reply),
            })
            .await
            .unwrap();
        let metrics = BTreeSet::from(["cpu".to_string()]);
        let mut seen = Vec::new();
        let mut budget = 100;
        let end = store
            .timeline("h", &metrics, 0, 2 * hour, &mut budget, |at, samples| {
                seen.push((at, samples.iter().map(|s| s.value).collect::<Vec<_>>()));
            })
            .unwrap();
        assert_eq!(end, TimelineEnd::Complete);
        assert_eq!(
            seen,
            vec![
                (1_000, vec![1.0]),
                (2_000, vec![]),
                (3_000, vec![2.0]),
                (hour + 10, vec![3.0]),
            ]
        );
        assert_eq!(budget, 95);
        let mut budget = 2;
        let mut ticks = 0;
        let end = store
            .timeline("h", &metrics, 0, 4 * hour, &mut budget, |_, _| ticks += 1)
            .unwrap();
        assert_eq!((end, ticks), (TimelineEnd::BudgetSpent, 1));
        let mut none = 0;
        store
            .timeline("nobody", &metrics, 0, 4 * hour, &mut 10, |_, _| none += 1)
            .unwrap();
        assert_eq!(none, 0);
    }
}
