//! The one JSON form of the fleet's events, shared by the REST API, the Server-Sent Events
//! stream and the MQTT JSON topics. Every feed entry is
//! `{"version","seq","kind","host","timestamp","data"}`; `data` is the event's own shape.

use serde_json::{json, Value};
use vigil_shared::time::to_rfc3339;
use vigil_shared::wire::{PolicyEvent, Tag};

use crate::store::feed::{FeedEntry, FeedEvent};

/// The version of the feed's JSON shapes (the `version` field of every message).
pub const JSON_VERSION: u32 = 1;

/// A feed entry as integrations see it:
/// `{"version","seq","kind","host","timestamp","data"}`.
pub fn entry_json(entry: &FeedEntry) -> Value {
    json!({
        "version": JSON_VERSION,
        "seq": entry.seq,
        "kind": entry.event.kind(),
        "host": entry.event.host(),
        "timestamp": to_rfc3339(entry.at_ms),
        "data": data_json(&entry.event),
    })
}

/// Tags as a JSON object.
pub fn tags_json(tags: &[Tag]) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// One policy event (a policy decision) as JSON.
pub fn event_json(event: &PolicyEvent) -> Value {
    json!({
        "id": event.id,
        "host": event.host,
        "policy": event.policy,
        "target": event.target,
        "severity": event.severity,
        "kind": event.kind,
        "summary": event.summary,
        "explanation": event
            .explanation
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok()),
        "action": event.action,
        "step": event.step,
        "action_requested": event.action_requested,
        "dry_run": event.dry_run,
        "detail": event.detail,
        "timestamp": to_rfc3339(event.at_ms),
    })
}

fn data_json(event: &FeedEvent) -> Value {
    match event {
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
}
