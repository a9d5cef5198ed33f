//! Drift: per host, which bundles it should run (groups whose selector its labels match),
//! which it reports running (`AgentStatus.bundles`), and which desired-state checks
//! (`manifest:` policies) are failing on it now.

use std::collections::BTreeMap;

use serde::Serialize;
use vigil_shared::bundle_manifest::MANIFEST_POLICY_PREFIX;
use vigil_shared::wire::PolicyEvent;

use super::service::Published;
use crate::store::HostRecord;

/// One group's state on one host (fields in key order on the wire: alphabetical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GroupDrift {
    /// The version the agent reports applied (`None`: not applied).
    pub applied_version: Option<u64>,
    /// The version published for it (`None`: the host runs a bundle of a group it is not
    /// selected by, or that no longer exists).
    pub desired_version: Option<u64>,
    /// The group.
    pub group: String,
    /// Applied version and hash equal the desired ones.
    pub in_sync: bool,
}

/// A desired-state check failing on a host (fields in key order on the wire: alphabetical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FailingCheck {
    /// When, epoch ms.
    pub at_ms: i64,
    /// The latest event (`fired`, `act`, `escalated`).
    pub kind: String,
    /// The `manifest:` policy.
    pub policy: String,
    /// Its summary.
    pub summary: String,
    /// The unit or container.
    pub target: String,
}

/// One host's drift (fields in key order on the wire: alphabetical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HostDrift {
    /// Why the agent refused its last offered bundle, if it did.
    pub bundle_error: Option<String>,
    /// Desired-state checks failing now.
    pub failing_checks: Vec<FailingCheck>,
    /// Desired and applied groups.
    pub groups: Vec<GroupDrift>,
    /// The host.
    pub host: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it is online.
    pub online: bool,
}

pub use vigil_shared::bundle::selects;

/// The drift of one host, given the published bundles and its events (newest first).
pub fn host_drift(
    host: &HostRecord,
    published: &[Published],
    events: &[PolicyEvent],
    now_ms: i64,
) -> HostDrift {
    let labels = host.labels();
    let applied = host
        .status
        .as_ref()
        .map(|s| s.bundles.clone())
        .unwrap_or_default();
    let mut groups = Vec::new();
    for p in published {
        if !selects(&p.record.selector, labels) {
            continue;
        }
        let mine = applied.iter().find(|a| a.group == p.record.group);
        groups.push(GroupDrift {
            group: p.record.group.clone(),
            desired_version: Some(p.record.version),
            applied_version: mine.map(|a| a.version),
            in_sync: mine.is_some_and(|a| a.version == p.record.version && a.hash == p.signed.hash),
        });
    }
    for a in &applied {
        if !groups.iter().any(|g| g.group == a.group) {
            groups.push(GroupDrift {
                group: a.group.clone(),
                desired_version: None,
                applied_version: Some(a.version),
                in_sync: false,
            });
        }
    }
    HostDrift {
        host: host.host.clone(),
        online: host.is_online(now_ms),
        labels: labels.iter().cloned().collect(),
        groups,
        bundle_error: host.status.as_ref().and_then(|s| s.bundle_error.clone()),
        failing_checks: failing_checks(events),
    }
}

/// The `manifest:` checks whose latest event per (policy, target) is `fired`, `act` or
/// `escalated`. `events` must be newest first.
pub fn failing_checks(events: &[PolicyEvent]) -> Vec<FailingCheck> {
    let mut latest: BTreeMap<(&str, &str), &PolicyEvent> = BTreeMap::new();
    for event in events {
        if event.policy.starts_with(MANIFEST_POLICY_PREFIX) {
            latest
                .entry((event.policy.as_str(), event.target.as_str()))
                .or_insert(event);
        }
    }
    latest
        .into_values()
        .filter(|e| matches!(e.kind.as_str(), "fired" | "act" | "escalated"))
        .map(|e| FailingCheck {
            policy: e.policy.clone(),
            target: e.target.clone(),
            kind: e.kind.clone(),
            summary: e.summary.clone(),
            at_ms: e.at_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(policy: &str, target: &str, kind: &str, at_ms: i64) -> PolicyEvent {
        serde_json::from_value(serde_json::json!({
            "id": format!("{policy}{target}{at_ms}"), "host": "h", "policy": policy,
            "target": target, "severity": "critical", "kind": kind, "summary": "s",
            "explanation": null, "action": null, "step": null, "action_requested": false,
            "dry_run": false, "detail": null, "at_ms": at_ms,
        }))
        .unwrap()
    }

    #[test]
    fn selectors_need_every_label() {
        let web = vec![("role".to_string(), "web".to_string())];
        assert!(selects(&[], &[]));
        assert!(selects(
            &web,
            &[("env".into(), "prod".into()), ("role".into(), "web".into())]
        ));
        assert!(!selects(&web, &[("role".into(), "db".into())]));
    }

    #[test]
    fn a_check_fails_until_its_latest_event_is_resolved() {
        // Newest first.
        let events = vec![
            event("manifest:web:unit:nginx.service", "nginx.service", "act", 5),
            event("manifest:web:container:web-1", "web-1", "resolved", 4),
            event("manifest:web:container:web-1", "web-1", "fired", 3),
            event("cpu-high", "h", "fired", 2),
        ];
        let failing = failing_checks(&events);
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].policy, "manifest:web:unit:nginx.service");
        assert_eq!(failing[0].kind, "act");
    }
}
