//! The agent's policy evaluator: it keeps the observations (recent samples, state
//! readings), runs the policy engine on every sample tick and on every state change, and
//! turns decisions into [`PolicyEvent`]s for the coordinator.
//!
//! It also says what must be watched for the loaded policies: units and containers (for
//! the watchers), processes and HTTP/TCP checks (for the probes).

use std::collections::BTreeSet;

use vigil_shared::policy::engine::EngineStats;
use vigil_shared::policy::{
    ActionRequest, Condition, Decision, DecisionKind, Engine, Observations, Policy,
};
use vigil_shared::wire::{PolicyEvent, Sample};

use crate::sampling::probes::{HttpProbe, ProbeSet, TcpProbe};
use crate::sampling::textfile::TARGET_LABEL;
use crate::sampling::watch::StateUpdate;

/// What the loaded policies need watched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSets {
    /// systemd units (names or globs).
    pub units: Vec<String>,
    /// Docker containers (names or globs).
    pub containers: Vec<String>,
    /// Processes and HTTP/TCP checks.
    pub probes: ProbeSet,
}

/// What one evaluation produced.
#[derive(Debug, Default)]
pub struct EvalOutput {
    /// Policy events for the audit trail.
    pub events: Vec<PolicyEvent>,
    /// Actions to queue: the policy, its target, the request, and the action's id (also
    /// named in the matching `act` event).
    pub actions: Vec<PolicyAction>,
    /// Verification results: policy, target, resolved.
    pub verified: Vec<(String, String, bool)>,
}

/// An action a policy asked for.
#[derive(Debug, Clone)]
pub struct PolicyAction {
    /// The action's id.
    pub id: String,
    /// The policy.
    pub policy: String,
    /// What it acts on.
    pub target: String,
    /// The request.
    pub request: ActionRequest,
}

/// The evaluator.
pub struct Evaluator {
    host: String,
    engine: Engine,
    observations: Observations,
    decisions: Vec<Decision>,
    /// Monotonic ULIDs: events of one agent sort in the order they were decided, even
    /// within one millisecond.
    ids: ulid::Generator,
}

impl Evaluator {
    /// An evaluator for `host` with no policies, observing since `started_ms`.
    pub fn new(host: &str, started_ms: i64) -> Evaluator {
        Evaluator {
            host: host.to_string(),
            engine: Engine::new(Vec::new()),
            observations: Observations::new(started_ms),
            decisions: Vec::new(),
            ids: ulid::Generator::new(),
        }
    }

    /// Puts a new policy set in force.
    pub fn set_policies(&mut self, policies: Vec<Policy>) {
        self.engine.replace_policies(policies);
        self.observations.set_lookbacks(&self.engine.lookbacks());
    }

    /// The policies in force.
    pub fn policies(&self) -> &[Policy] {
        self.engine.policies()
    }

    /// Evaluation counters.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// Records a tick's samples (a `target` tag makes a sample belong to that target) and
    /// evaluates every policy.
    pub fn on_samples(&mut self, samples: &[Sample], now_ms: i64) -> EvalOutput {
        for sample in samples {
            let subject = sample
                .tags
                .iter()
                .find(|(k, _)| k == TARGET_LABEL)
                .map_or(self.host.as_str(), |(_, v)| v.as_str());
            self.observations.record(subject, sample);
        }
        self.engine
            .evaluate(&self.observations, now_ms, &mut self.decisions);
        self.drain()
    }

    /// Records a state change and evaluates the policies targeting that object at once.
    pub fn on_state(&mut self, update: StateUpdate, now_ms: i64) -> EvalOutput {
        let name = update.name.clone();
        self.observations
            .record_state(update.kind, &update.name, update.reading);
        self.engine
            .evaluate_subject(&self.observations, &name, now_ms, &mut self.decisions);
        self.drain()
    }

    fn drain(&mut self) -> EvalOutput {
        let mut out = EvalOutput::default();
        let decisions: Vec<Decision> = self.decisions.drain(..).collect();
        for decision in decisions {
            let id = self.next_id();
            match &decision.kind {
                DecisionKind::Act(request) => {
                    let action_id = self.next_id();
                    out.actions.push(PolicyAction {
                        id: action_id.clone(),
                        policy: decision.policy.clone(),
                        target: decision.subject.clone(),
                        request: request.clone(),
                    });
                    let mut event = to_event(&self.host, id, decision);
                    event.detail = Some(format!("action {action_id}"));
                    out.events.push(event);
                }
                DecisionKind::Verified { resolved, .. } => {
                    out.verified.push((
                        decision.policy.clone(),
                        decision.subject.clone(),
                        *resolved,
                    ));
                    out.events.push(to_event(&self.host, id, decision));
                }
                _ => out.events.push(to_event(&self.host, id, decision)),
            }
        }
        out
    }

    fn next_id(&mut self) -> String {
        self.ids
            .generate()
            .unwrap_or_else(|_| ulid::Ulid::generate())
            .to_string()
    }

    /// What must be watched for the policies in force.
    pub fn watch_sets(&self) -> WatchSets {
        let mut units = BTreeSet::new();
        let mut containers = BTreeSet::new();
        let mut probes = ProbeSet::default();
        for policy in self.engine.policies().iter().filter(|p| p.enabled) {
            let target = policy.target.to_string();
            collect(
                &policy.condition,
                &target,
                &mut units,
                &mut containers,
                &mut probes,
            );
        }
        WatchSets {
            units: units.into_iter().collect(),
            containers: containers.into_iter().collect(),
            probes,
        }
    }
}

fn collect(
    condition: &Condition,
    target: &str,
    units: &mut BTreeSet<String>,
    containers: &mut BTreeSet<String>,
    probes: &mut ProbeSet,
) {
    let name_or_target = |name: &Option<String>| {
        name.clone().unwrap_or_else(|| {
            if target == "all" {
                "*".into()
            } else {
                target.to_string()
            }
        })
    };
    match condition {
        Condition::All(cs) | Condition::Any(cs) => {
            for c in cs {
                collect(c, target, units, containers, probes);
            }
        }
        Condition::UnitState { unit, .. } => {
            units.insert(name_or_target(unit));
        }
        Condition::ContainerState { container, .. } => {
            containers.insert(name_or_target(container));
        }
        Condition::ProcessMissing { process } => {
            probes.processes.insert(process.clone());
        }
        Condition::HttpCheck {
            url,
            expect_status,
            timeout,
            ..
        } => {
            probes.http.insert(HttpProbe {
                url: url.clone(),
                expect_status: *expect_status,
                timeout: *timeout,
            });
        }
        Condition::TcpCheck {
            address, timeout, ..
        } => {
            probes.tcp.insert(TcpProbe {
                address: address.clone(),
                timeout: *timeout,
            });
        }
        _ => {}
    }
}

/// Turns an engine decision into the event the agent publishes, with id `id`.
pub fn to_event(host: &str, id: String, decision: Decision) -> PolicyEvent {
    let summary = decision
        .explanation
        .as_ref()
        .map(|e| e.summary())
        .unwrap_or_default();
    let explanation = decision
        .explanation
        .as_ref()
        .and_then(|e| serde_json::to_string(e).ok());
    let kind = decision.kind.as_str().to_string();
    let (action, step, action_requested, dry_run, detail) = match decision.kind {
        DecisionKind::Act(request) => (
            Some(request.written),
            u32::try_from(request.step).ok(),
            true,
            request.dry_run,
            None,
        ),
        DecisionKind::Verified { step, resolved } => (
            None,
            u32::try_from(step).ok(),
            false,
            false,
            Some(if resolved { "resolved" } else { "not_resolved" }.to_string()),
        ),
        DecisionKind::Deferred { reason } | DecisionKind::Escalated { reason, .. } => {
            (None, None, false, false, Some(reason))
        }
        DecisionKind::Fired | DecisionKind::Resolved => (None, None, false, false, None),
    };
    PolicyEvent {
        id,
        host: host.to_string(),
        policy: decision.policy,
        target: decision.subject,
        severity: decision.severity.as_str().to_string(),
        kind,
        summary,
        explanation,
        action,
        step,
        action_requested,
        dry_run,
        detail,
        at_ms: decision.at_ms,
    }
}

#[cfg(test)]
mod tests {
    use vigil_shared::policy::load::load_text;
    use vigil_shared::policy::{StateKind, StateReading};

    use super::*;

    #[test]
    fn samples_with_a_target_tag_belong_to_that_target() {
        let mut ev = Evaluator::new("h", 0);
        ev.set_policies(
            load_text(
                "policies:\n  - name: app\n    target: app-1\n    condition: cpu_percent > 80\n",
                "t",
            )
            .unwrap(),
        );
        let sample = |target: Option<&str>, v| Sample {
            name: "cpu_percent".into(),
            value: v,
            ts_ms: 1,
            tags: target
                .map(|t| vec![("target".to_string(), t.to_string())])
                .unwrap_or_default(),
        };
        let events = ev
            .on_samples(&[sample(None, 99.0), sample(Some("app-1"), 95.0)], 1)
            .events;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].target, "app-1");
        assert_eq!(events[0].kind, "fired");
        assert_eq!(
            events[0].summary,
            "cpu_percent > 80 (observed 95) [target=app-1]"
        );
        assert!(events[0]
            .explanation
            .as_deref()
            .is_some_and(|e| e.contains("\"held\":true")));
    }

    #[test]
    fn state_changes_are_evaluated_at_once_and_watch_sets_follow_policies() {
        let mut ev = Evaluator::new("h", 0);
        ev.set_policies(
            load_text(
                "policies:\n  - name: web\n    target: web\n    condition: {type: container_state}\n    auto_remediate: true\n    action: restart\n  - name: nginx\n    condition: {type: process_missing, process: nginx}\n  - name: api\n    condition: {type: http_check, url: \"http://127.0.0.1:9/\"}\n",
                "t",
            )
            .unwrap(),
        );
        let sets = ev.watch_sets();
        assert_eq!(sets.containers, vec!["web".to_string()]);
        assert!(sets.units.is_empty());
        assert!(sets.probes.processes.contains("nginx"));
        assert_eq!(sets.probes.http.len(), 1);
        let out = ev.on_state(
            StateUpdate {
                kind: StateKind::Container,
                name: "web".into(),
                reading: StateReading {
                    state: "exited".into(),
                    health: None,
                    consecutive_failures: 0,
                    detail: None,
                    at_ms: 5,
                },
            },
            5,
        );
        let kinds: Vec<&str> = out.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["fired", "act"]);
        assert_eq!(out.events[1].action.as_deref(), Some("restart"));
        assert!(out.events[1].action_requested);
        assert_eq!(out.actions.len(), 1);
        assert_eq!(out.actions[0].target, "web");
        assert_eq!(
            out.events[1].detail.as_deref(),
            Some(format!("action {}", out.actions[0].id).as_str())
        );
    }
}
