//! The records the store keeps, and the shapes reads return.

use serde::{Deserialize, Serialize};
use vigil_shared::wire::{AgentState, AgentStatus, RunningPolicies, Tag};

/// How a host's data reached the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// From an agent over MQTT.
    Mqtt,
    /// From `POST /api/v1/ingest`.
    Http,
}

impl Source {
    /// Lowercase name for JSON and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mqtt => "mqtt",
            Source::Http => "http",
        }
    }
}

/// What the coordinator knows about one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host name.
    pub host: String,
    /// When anything was first heard from it, epoch ms.
    pub first_seen_ms: i64,
    /// When anything was last heard from it, epoch ms.
    pub last_seen_ms: i64,
    /// How its data arrives (the latest source seen).
    pub source: Source,
    /// The last status its agent published, if it has an agent.
    pub status: Option<AgentStatus>,
    /// The agent's clock minus the coordinator's, ms, as last measured from a message's
    /// seal time.
    pub clock_skew_ms: Option<i64>,
    /// The session and sequence number of the status applied last: an earlier one
    /// (replayed, or delivered late) is not applied over it.
    pub status_order: Option<(u64, u64)>,
    /// Since when (epoch ms) the host is silent: its agent said it was online, but
    /// nothing came from it for too long (see the coordinator's deadman). Cleared by the
    /// next status or sample.
    pub silent_since_ms: Option<i64>,
    /// The policies its agent last said it runs (`None`: it never said).
    pub running_policies: Option<RunningPolicies>,
}

/// How long an HTTP-only host counts as online after its last sample.
pub const HTTP_HOST_ONLINE_MS: i64 = 60_000;

impl HostRecord {
    /// Reads a stored record. A record written before the last fields were added is
    /// their prefix (each added field is last, and an absent `Option` is one zero byte):
    /// it is read with those fields `None`.
    pub fn decode(bytes: &[u8]) -> Result<HostRecord, super::StoreError> {
        let first = super::codec::decode::<HostRecord>("hosts", bytes);
        if first.is_ok() {
            return first;
        }
        for zeros in 1..=5 {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len() + zeros, 0);
            if let Ok(record) = super::codec::decode::<HostRecord>("hosts", &padded) {
                return Ok(record);
            }
        }
        first
    }

    /// Whether the host counts as online at `now_ms`.
    ///
    /// A host with an agent is online while its last status says so and it has been heard
    /// from within three sampling intervals (plus 10 s of slack); a host known only through
    /// HTTP ingest is online for [`HTTP_HOST_ONLINE_MS`] after its last sample. A silent
    /// host is not online.
    pub fn is_online(&self, now_ms: i64) -> bool {
        if self.silent_since_ms.is_some() {
            return false;
        }
        match &self.status {
            Some(status) => {
                let window = i64::try_from(status.interval_ms.saturating_mul(3))
                    .unwrap_or(i64::MAX)
                    .saturating_add(10_000);
                status.state == AgentState::Online
                    && now_ms.saturating_sub(self.last_seen_ms) <= window
            }
            None => now_ms.saturating_sub(self.last_seen_ms) <= HTTP_HOST_ONLINE_MS,
        }
    }

    /// The host's labels (from its agent's status; none for HTTP-only hosts).
    pub fn labels(&self) -> &[Tag] {
        self.status.as_ref().map_or(&[], |s| &s.labels)
    }
}

/// One stored point of history (the key carries series and time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPoint {
    /// The value.
    pub value: f64,
    /// Tags (the sample's, merged with the agent's labels).
    pub tags: Vec<Tag>,
}

/// The latest value of one tagged variant of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestPoint {
    /// Metric name.
    pub name: String,
    /// The value.
    pub value: f64,
    /// When it was measured, epoch ms.
    pub ts_ms: i64,
    /// Tags.
    pub tags: Vec<Tag>,
}

/// [`StoredPoint`] as the store writer encodes it, from the batch it stores without
/// copying: postcard lays out a slice of `(&str, &str)` exactly as a `Vec<Tag>`.
#[derive(Serialize)]
pub(crate) struct StoredPointRef<'a> {
    pub value: f64,
    pub tags: &'a [(&'a str, &'a str)],
}

/// [`LatestPoint`] as the store writer encodes it (see [`StoredPointRef`]).
#[derive(Serialize)]
pub(crate) struct LatestPointRef<'a> {
    pub name: &'a str,
    pub value: f64,
    pub ts_ms: i64,
    pub tags: &'a [(&'a str, &'a str)],
}

/// A point of history as queries return it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The host.
    pub host: String,
    /// Metric name.
    pub name: String,
    /// The value.
    pub value: f64,
    /// When it was measured, epoch ms.
    pub ts_ms: i64,
    /// Tags.
    pub tags: Vec<Tag>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    #[test]
    fn borrowed_points_encode_exactly_as_the_records_they_stand_for() {
        let tags = vec![
            ("core".to_string(), "1".to_string()),
            ("role".into(), "web".into()),
        ];
        let pairs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut buf = vec![9, 9, 9];
        codec::encode_into(
            &StoredPointRef {
                value: 1.5,
                tags: &pairs,
            },
            &mut buf,
        );
        assert_eq!(
            buf,
            codec::encode(&StoredPoint {
                value: 1.5,
                tags: tags.clone()
            })
        );
        codec::encode_into(
            &LatestPointRef {
                name: "cpu",
                value: 2.5,
                ts_ms: -7,
                tags: &pairs,
            },
            &mut buf,
        );
        let latest: LatestPoint = codec::decode("latest", &buf).unwrap();
        assert_eq!(
            latest,
            LatestPoint {
                name: "cpu".into(),
                value: 2.5,
                ts_ms: -7,
                tags
            }
        );
    }

    #[test]
    fn a_last_seen_time_at_the_end_of_i64_is_offline_not_a_panic() {
        let record = HostRecord {
            clock_skew_ms: None,
            status_order: None,
            silent_since_ms: None,
            running_policies: None,
            host: "web-01".into(),
            first_seen_ms: 0,
            last_seen_ms: i64::MIN,
            source: Source::Http,
            status: None,
        };
        assert!(!record.is_online(1_800_000_000_000));
    }

    #[test]
    fn a_record_stored_before_the_delivery_fields_still_reads() {
        let status = AgentStatus {
            host: "web-01".into(),
            state: AgentState::Online,
            agent_version: "0.1.0".into(),
            started_at_ms: 1_700_000_000_000,
            sent_at_ms: 1_700_000_000_000,
            interval_ms: 1000,
            labels: vec![("role".into(), "web".into())],
            bundles: Vec::new(),
            bundle_error: None,
            remediation_paused: false,
            detail: None,
            policies: Default::default(),
            queue: Default::default(),
            delivery: None,
        };
        for status in [Some(status), None] {
            let record = HostRecord {
                host: "web-01".into(),
                first_seen_ms: 1,
                last_seen_ms: 2,
                source: Source::Mqtt,
                status,
                clock_skew_ms: None,
                status_order: None,
                silent_since_ms: None,
                running_policies: None,
            };
            let now = super::super::codec::encode(&record);
            // The old layout: without the four trailing `None`s of the record and, with
            // a status, the trailing `None` of the status.
            let dropped = if record.status.is_some() { 5 } else { 4 };
            let old = &now[..now.len() - dropped];
            assert_eq!(HostRecord::decode(old).unwrap(), record);
            assert_eq!(HostRecord::decode(&now).unwrap(), record);
        }
        assert!(HostRecord::decode(&[1, 0xff]).is_err());
    }
}
