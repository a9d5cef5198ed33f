//! Samples made ready for the store writer by the thread that sends them.
//!
//! The writer is one thread ([`super::writer`]), and under load it is the ingest path's
//! narrowest part. So everything about a sample that does not need the writer's state
//! or its transaction is done before the sample reaches it, on the sender's thread (the
//! ingest checking threads run one per core): merging the host's labels into the tags,
//! the tag hash, the series key, and both encoded records (the history point and the
//! latest value). The writer is left with the series id, the latest time check and the
//! puts. The samples' own strings are freed on the sender's thread too.
//!
//! One [`Points`] holds one host's samples in a single buffer, whatever their number,
//! with each distinct series key once: a batch has many samples of few series (an
//! agent's 100 samples are typically 10 metrics × 10 tag sets), and the writer looks
//! each series up once per batch.

use std::collections::HashMap;

use vigil_shared::wire::{Sample, Tag};

use super::codec;
use super::keys;
use super::records::{LatestPointRef, StoredPointRef};

/// One host's samples, ready to store.
#[derive(Debug, Clone, Default)]
pub struct Points {
    /// The distinct series keys and every point's encoded records, one after the other.
    bytes: Vec<u8>,
    /// Where each distinct series key is in `bytes`, in the order first seen.
    series: Vec<(u32, u32)>,
    points: Vec<Point>,
}

/// Where one point's parts are in [`Points::bytes`].
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Its series key's place in [`Points::series`].
    series: u32,
    /// Its latest record starts here, its history record at `history`, and the next
    /// part at `end`.
    latest: u32,
    history: u32,
    end: u32,
    tag_hash: u64,
    ts_ms: i64,
}

/// One point as the writer stores it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PointRef<'a> {
    /// Its series key's place among [`Points::series`] (`host \0 metric-name`).
    pub series_slot: usize,
    /// The hash of its merged tags.
    pub tag_hash: u64,
    /// Its time, epoch ms.
    pub ts_ms: i64,
    /// Its record in `latest`.
    pub latest: &'a [u8],
    /// Its record in `history`.
    pub history: &'a [u8],
}

impl Points {
    /// `host`'s `samples`, with `labels` merged into each one's tags (a sample's own tag
    /// wins over a label of the same name; a `host` tag or label is dropped: the host is
    /// the series').
    pub fn new(host: &str, labels: &[Tag], samples: &[Sample]) -> Points {
        let mut bytes = Vec::with_capacity(samples.len() * 80);
        let mut points = Vec::with_capacity(samples.len());
        let mut series = Vec::new();
        // Metric name → its series' place in `series` (the host is the batch's).
        let mut slots: HashMap<&str, u32, ahash::RandomState> = HashMap::default();
        let mut tags: Vec<(&str, &str)> = Vec::new();
        let mut encoded: Vec<u8> = Vec::new();
        let mut key: Vec<u8> = Vec::new();
        for sample in samples {
            merge_tags(labels, &sample.tags, &mut tags);
            let tag_hash = keys::tag_hash_of(tags.iter().copied());
            let slot = *slots.entry(&sample.name).or_insert_with(|| {
                keys::series_into(host, &sample.name, &mut key);
                let start = offset(&bytes);
                bytes.extend_from_slice(&key);
                series.push((start, offset(&bytes)));
                u32::try_from(series.len() - 1).unwrap_or(u32::MAX)
            });
            let latest = offset(&bytes);
            codec::encode_into(
                &LatestPointRef {
                    name: &sample.name,
                    value: sample.value,
                    ts_ms: sample.ts_ms,
                    tags: &tags,
                },
                &mut encoded,
            );
            bytes.extend_from_slice(&encoded);
            let history = offset(&bytes);
            codec::encode_into(
                &StoredPointRef {
                    value: sample.value,
                    tags: &tags,
                },
                &mut encoded,
            );
            bytes.extend_from_slice(&encoded);
            points.push(Point {
                series: slot,
                latest,
                history,
                end: offset(&bytes),
                tag_hash,
                ts_ms: sample.ts_ms,
            });
        }
        Points {
            bytes,
            series,
            points,
        }
    }

    /// How many points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The memory its points take, bytes (what the writer's queue counts).
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
            + self.series.len() * std::mem::size_of::<(u32, u32)>()
            + self.points.len() * std::mem::size_of::<Point>()
    }

    /// The distinct series keys, each once; a point's `series_slot` is its key's place
    /// here.
    pub(crate) fn series(&self) -> impl Iterator<Item = &[u8]> {
        self.series
            .iter()
            .map(|&(from, to)| &self.bytes[from as usize..to as usize])
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The points, in the order of the samples.
    pub(crate) fn iter(&self) -> impl Iterator<Item = PointRef<'_>> {
        self.points.iter().map(|p| {
            let part = |from: u32, to: u32| &self.bytes[from as usize..to as usize];
            PointRef {
                series_slot: p.series as usize,
                tag_hash: p.tag_hash,
                ts_ms: p.ts_ms,
                latest: part(p.latest, p.history),
                history: part(p.history, p.end),
            }
        })
    }
}

/// Where the next part starts. An agent's batch takes at most
/// [`vigil_shared::wire::MAX_BATCH_STORED_BYTES`] with its labels merged in (refused when
/// decoded otherwise), its points about twice that, and an HTTP write is one sample: the
/// offsets fit in `u32` many times over.
fn offset(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

/// The tags a point is stored with: the sample's own, plus the agent's labels where the
/// sample has no tag of that name; sorted by key; never `host` (that is the key). Written
/// into `merged`, borrowing from both.
fn merge_tags<'a>(labels: &'a [Tag], tags: &'a [Tag], merged: &mut Vec<(&'a str, &'a str)>) {
    merged.clear();
    merged.extend(
        tags.iter()
            .filter(|(k, _)| k != "host")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for (k, v) in labels {
        if k != "host" && !merged.iter().any(|(key, _)| key == k) {
            merged.push((k, v));
        }
    }
    merged.sort_unstable();
    merged.dedup_by(|a, b| a.0 == b.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{LatestPoint, StoredPoint};

    fn sample(name: &str, value: f64, ts_ms: i64, tags: &[(&str, &str)]) -> Sample {
        Sample::new(name, value, ts_ms, tags)
    }

    #[test]
    fn each_point_carries_its_series_hash_and_both_records() {
        let labels = vec![
            ("role".to_string(), "web".to_string()),
            ("core".to_string(), "label-loses".to_string()),
            ("host".to_string(), "dropped".to_string()),
        ];
        let samples = [
            sample("cpu_percent", 12.5, 1_000, &[("core", "0"), ("host", "x")]),
            sample("mem_percent", 40.0, 2_000, &[]),
        ];
        let points = Points::new("web-1", &labels, &samples);
        assert_eq!(points.len(), 2);
        let all: Vec<PointRef<'_>> = points.iter().collect();

        let series: Vec<&[u8]> = points.series().collect();
        assert_eq!(series[all[0].series_slot], b"web-1\0cpu_percent");
        assert_eq!(all[0].ts_ms, 1_000);
        let merged = [("core", "0"), ("role", "web")];
        assert_eq!(all[0].tag_hash, keys::tag_hash_of(merged));
        let owned: Vec<(String, String)> = merged
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let latest: LatestPoint = codec::decode("latest", all[0].latest).unwrap();
        assert_eq!(latest.name, "cpu_percent");
        assert_eq!(latest.value, 12.5);
        assert_eq!(latest.ts_ms, 1_000);
        assert_eq!(latest.tags, owned);
        let history: StoredPoint = codec::decode("history", all[0].history).unwrap();
        assert_eq!(history.value, 12.5);
        assert_eq!(history.tags, owned);

        assert_eq!(series[all[1].series_slot], b"web-1\0mem_percent");
        assert_eq!((all[0].series_slot, all[1].series_slot), (0, 1));
        let merged = [("core", "label-loses"), ("role", "web")];
        assert_eq!(all[1].tag_hash, keys::tag_hash_of(merged));
        let history: StoredPoint = codec::decode("history", all[1].history).unwrap();
        assert_eq!(history.value, 40.0);
    }

    #[test]
    fn each_series_key_is_kept_once_and_points_name_theirs() {
        let samples = [
            sample("cpu_percent", 1.0, 1_000, &[("core", "0")]),
            sample("load1", 2.0, 1_000, &[]),
            sample("cpu_percent", 3.0, 1_000, &[("core", "1")]),
        ];
        let points = Points::new("db", &[], &samples);
        let series: Vec<&[u8]> = points.series().collect();
        assert_eq!(series, [&b"db\0cpu_percent"[..], &b"db\0load1"[..]]);
        let slots: Vec<usize> = points.iter().map(|p| p.series_slot).collect();
        assert_eq!(slots, [0, 1, 0]);
    }

    #[test]
    fn no_samples_no_points() {
        let points = Points::new("h", &[], &[]);
        assert!(points.is_empty());
        assert_eq!(points.iter().count(), 0);
    }

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
        let mut merged = vec![("stale", "entry")];
        merge_tags(&labels, &tags, &mut merged);
        assert_eq!(merged, [("env", "prod"), ("role", "db")]);
    }
}
