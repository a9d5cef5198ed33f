//! The one JSON form of the fleet's events, shared by the REST API, the Server-Sent Events
//! stream and the MQTT JSON topics. Every feed entry is
//! `{"data","host","kind","seq","timestamp","version"}`; `data` is the event's own shape.
//!
//! The shapes are structs (their OpenAPI schemas derive from them); their fields are in
//! alphabetical order, the order the keys have always had on the wire.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use vigil_shared::time::to_rfc3339;
use vigil_shared::wire::{MetricBatch, PolicyEvent, Sample, Tag};

use crate::store::feed::{FeedEntry, FeedEvent};

/// The version of the feed's JSON shapes (the `version` field of every message).
pub const JSON_VERSION: u32 = 1;

/// Tags (or labels) as a JSON object, keys sorted; a repeated key keeps its last value.
pub type TagsJson<'a> = BTreeMap<&'a str, &'a str>;

/// A feed entry as integrations see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EntryJson<'a> {
    /// The event's own shape (by `kind`).
    pub data: DataJson<'a>,
    /// The host it concerns.
    pub host: &'a str,
    /// `violation`, `action`, `host`, `bundle` or `drift`.
    pub kind: &'static str,
    /// Its place in the feed.
    pub seq: u64,
    /// When it happened, RFC 3339.
    pub timestamp: String,
    /// The version of these shapes.
    pub version: u32,
}

/// One policy event (a policy decision).
#[derive(Serialize, utoipa::ToSchema)]
pub struct PolicyEventJson<'a> {
    /// The action the policy asks for.
    pub action: Option<&'a str>,
    /// Whether an action was requested.
    pub action_requested: bool,
    /// Words about the decision.
    pub detail: Option<&'a str>,
    /// Whether the action is recorded only.
    pub dry_run: bool,
    /// The evaluator's explanation (JSON), when it gave one that parses.
    #[schema(value_type = Option<Object>)]
    pub explanation: Option<Value>,
    /// The host.
    pub host: &'a str,
    /// The event's id.
    pub id: &'a str,
    /// `fired`, `act`, `verified`, `deferred`, `escalated` or `resolved`.
    pub kind: &'a str,
    /// The policy's name.
    pub policy: &'a str,
    /// The policy's severity.
    pub severity: &'a str,
    /// The step of a multi-step action.
    pub step: Option<u32>,
    /// One line.
    pub summary: &'a str,
    /// What it is about.
    pub target: &'a str,
    /// When, RFC 3339.
    pub timestamp: String,
}

/// The `data` of a feed entry: the shape depends on its `kind`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum DataJson<'a> {
    /// `violation`.
    Violation(PolicyEventJson<'a>),
    /// `action`.
    Action(ActionEventJson<'a>),
    /// `host`.
    Host(HostEventJson<'a>),
    /// `bundle`.
    Bundle(BundleEventJson<'a>),
    /// `drift`.
    Drift(DriftEventJson<'a>),
}

/// An action's state change.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionEventJson<'a> {
    /// What to do.
    pub action: &'a str,
    /// The attempt.
    pub attempt: u32,
    /// When the action was created, RFC 3339.
    pub created_at: String,
    /// Words.
    pub detail: Option<&'a str>,
    /// Recorded only.
    pub dry_run: bool,
    /// The executor that runs it.
    pub executor: Option<&'a str>,
    /// The action's id.
    pub id: &'a str,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The policy that asked for it.
    pub policy: Option<&'a str>,
    /// The new state.
    pub state: &'static str,
    /// The step of a multi-step action.
    pub step: Option<u32>,
    /// What it acts on.
    pub target: &'a str,
}

/// A host came online, went offline, or went silent.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HostEventJson<'a> {
    /// The agent's version.
    pub agent_version: &'a str,
    /// The host's labels.
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: TagsJson<'a>,
    /// When it was last heard from, RFC 3339 (only on going silent and coming back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Why it is offline: `stopped` (a clean stop) or `connection_lost` (the last will).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `online`, `offline` (stopped, or its connection lost: the last will) or `silent`
    /// (its agent said online, but nothing came from it for too long).
    pub state: &'static str,
}

/// A host applied a bundle.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BundleEventJson<'a> {
    /// The bundle's version.
    pub bundle_version: u64,
    /// The group.
    pub group: &'a str,
    /// The bundle's content hash.
    pub hash: &'a str,
}

/// A host's drift against its group's bundle.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DriftEventJson<'a> {
    /// The version the host applied.
    pub applied_version: Option<u64>,
    /// The version the group wants.
    pub desired_version: Option<u64>,
    /// The group.
    pub group: &'a str,
    /// Whether they agree.
    pub in_sync: bool,
}

/// A metric batch as integrations see it (the `metrics` JSON topic): like a feed entry,
/// without `seq`.
#[derive(Serialize)]
pub struct MetricsJson<'a> {
    /// The batch.
    pub data: MetricBatchJson<'a>,
    /// The host that sent it.
    pub host: &'a str,
    /// `metrics`.
    pub kind: &'static str,
    /// When the coordinator received it, RFC 3339.
    pub timestamp: String,
    /// The version of these shapes.
    pub version: u32,
}

/// A metric batch's contents.
#[derive(Serialize)]
pub struct MetricBatchJson<'a> {
    /// The agent's labels.
    pub labels: TagsJson<'a>,
    /// The samples.
    pub samples: Vec<SampleJson<'a>>,
    /// The batch's sequence number.
    pub seq: u64,
}

/// One sample.
#[derive(Serialize)]
pub struct SampleJson<'a> {
    /// The metric's name.
    pub name: &'a str,
    /// Its tags.
    pub tags: TagsJson<'a>,
    /// When it was taken, RFC 3339.
    pub timestamp: String,
    /// The value; `null` if not finite.
    pub value: Option<f64>,
}

/// A metric batch, typed.
pub fn metrics(batch: &MetricBatch, received_ms: i64) -> MetricsJson<'_> {
    MetricsJson {
        data: MetricBatchJson {
            labels: tags(&batch.labels),
            samples: batch.samples.iter().map(sample).collect(),
            seq: batch.seq,
        },
        host: &batch.host,
        kind: "metrics",
        timestamp: to_rfc3339(received_ms),
        version: JSON_VERSION,
    }
}

/// One sample, typed.
fn sample(s: &Sample) -> SampleJson<'_> {
    SampleJson {
        name: &s.name,
        tags: tags(&s.tags),
        timestamp: to_rfc3339(s.ts_ms),
        value: s.value.is_finite().then_some(s.value),
    }
}

/// A feed entry, typed.
pub fn entry(entry: &FeedEntry) -> EntryJson<'_> {
    EntryJson {
        data: data(&entry.event),
        host: entry.event.host(),
        kind: entry.event.kind(),
        seq: entry.seq,
        timestamp: to_rfc3339(entry.at_ms),
        version: JSON_VERSION,
    }
}

/// A feed entry as a JSON value.
pub fn entry_json(entry: &FeedEntry) -> Value {
    to_value(&self::entry(entry))
}

/// Tags, typed.
pub fn tags(tags: &[Tag]) -> TagsJson<'_> {
    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Tags as a JSON object.
pub fn tags_json(tags: &[Tag]) -> Value {
    to_value(&self::tags(tags))
}

/// One policy event, typed.
pub fn event(event: &PolicyEvent) -> PolicyEventJson<'_> {
    PolicyEventJson {
        action: event.action.as_deref(),
        action_requested: event.action_requested,
        detail: event.detail.as_deref(),
        dry_run: event.dry_run,
        explanation: event
            .explanation
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok()),
        host: &event.host,
        id: &event.id,
        kind: &event.kind,
        policy: &event.policy,
        severity: &event.severity,
        step: event.step,
        summary: &event.summary,
        target: &event.target,
        timestamp: to_rfc3339(event.at_ms),
    }
}

/// One policy event as a JSON value.
pub fn event_json(event: &PolicyEvent) -> Value {
    to_value(&self::event(event))
}

/// A shape as a JSON value (it has only string keys, so this cannot fail).
fn to_value<T: Serialize>(shape: &T) -> Value {
    serde_json::to_value(shape).unwrap_or(Value::Null)
}

fn data(event: &FeedEvent) -> DataJson<'_> {
    match event {
        FeedEvent::Violation(e) => DataJson::Violation(self::event(e)),
        FeedEvent::Action(e) => DataJson::Action(ActionEventJson {
            action: &e.action,
            attempt: e.attempt,
            created_at: to_rfc3339(e.created_at_ms),
            detail: e.detail.as_deref(),
            dry_run: e.dry_run,
            executor: e.executor.as_deref(),
            id: &e.id,
            max_attempts: e.max_attempts,
            policy: e.policy.as_deref(),
            state: e.state.as_str(),
            step: e.step,
            target: &e.target,
        }),
        FeedEvent::Host {
            online,
            agent_version,
            labels,
            ..
        } => DataJson::Host(HostEventJson {
            agent_version,
            labels: tags(labels),
            last_seen: None,
            reason: None,
            state: if *online { "online" } else { "offline" },
        }),
        FeedEvent::Offline {
            connection_lost,
            agent_version,
            labels,
            ..
        } => DataJson::Host(HostEventJson {
            agent_version,
            labels: tags(labels),
            last_seen: None,
            reason: Some(if *connection_lost {
                "connection_lost"
            } else {
                "stopped"
            }),
            state: "offline",
        }),
        FeedEvent::Silence {
            silent,
            last_seen_ms,
            agent_version,
            labels,
            ..
        } => DataJson::Host(HostEventJson {
            agent_version,
            labels: tags(labels),
            last_seen: Some(to_rfc3339(*last_seen_ms)),
            reason: None,
            state: if *silent { "silent" } else { "online" },
        }),
        FeedEvent::Bundle {
            group,
            version,
            hash,
            ..
        } => DataJson::Bundle(BundleEventJson {
            bundle_version: *version,
            group,
            hash,
        }),
        FeedEvent::Drift {
            group,
            desired_version,
            applied_version,
            in_sync,
            ..
        } => DataJson::Drift(DriftEventJson {
            applied_version: *applied_version,
            desired_version: *desired_version,
            group,
            in_sync: *in_sync,
        }),
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
        let json = entry_json(&entry);
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

    /// The typed shapes write their keys in the order a JSON object (sorted keys) always
    /// had, for every kind of event.
    #[test]
    fn typed_shapes_keep_the_sorted_key_order() {
        use vigil_shared::wire::{ActionEvent, ActionState};
        let violation = PolicyEvent {
            id: "e1".into(),
            host: "web-01".into(),
            policy: "cpu".into(),
            target: "host".into(),
            severity: "warning".into(),
            kind: "fired".into(),
            summary: "hot".into(),
            explanation: Some(r#"{"z":1,"a":[2]}"#.into()),
            action: Some("restart".into()),
            step: Some(1),
            action_requested: true,
            dry_run: false,
            detail: None,
            at_ms: 1_700_000_000_000,
        };
        let action = ActionEvent {
            id: "a1".into(),
            host: "web-01".into(),
            policy: None,
            target: "nginx".into(),
            action: "restart".into(),
            state: ActionState::Running,
            attempt: 1,
            dry_run: false,
            detail: Some("go".into()),
            created_at_ms: 1_700_000_000_000,
            at_ms: 1_700_000_000_000,
            max_attempts: 3,
            executor: None,
            step: None,
            params: None,
        };
        let events = [
            FeedEvent::Violation(violation),
            FeedEvent::Action(action),
            FeedEvent::Host {
                host: "web-01".into(),
                online: true,
                agent_version: "1".into(),
                labels: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
            },
            FeedEvent::Bundle {
                host: "web-01".into(),
                group: "web".into(),
                version: 3,
                hash: "ab".into(),
            },
            FeedEvent::Drift {
                host: "web-01".into(),
                group: "web".into(),
                desired_version: Some(2),
                applied_version: None,
                in_sync: false,
            },
        ];
        for event in events {
            let entry = FeedEntry {
                seq: 1,
                stored_ms: 1_700_000_000_500,
                at_ms: 1_700_000_000_000,
                event,
            };
            let typed = serde_json::to_string(&self::entry(&entry)).unwrap();
            assert_eq!(typed, entry_json(&entry).to_string(), "{typed}");
        }
    }
}
