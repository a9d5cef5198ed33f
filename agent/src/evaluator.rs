//! The agent's policy evaluator: it keeps the observations (recent samples, state
//! readings), runs the policy engine on every sample tick and on every state change, and
//! turns decisions into [`PolicyEvent`]s for the coordinator.
//!
//! It also says what must be watched for the loaded policies: units and containers (for
//! the watchers), processes and HTTP/TCP checks (for the probes).

use std::collections::BTreeSet;

use vigil_shared::policy::engine::EngineStats;
use vigil_shared::policy::{Condition, Decision, DecisionKind, Engine, Observations, Policy};
use vigil_shared::wire::{PolicyEvent, Sample};

use crate::probes::{HttpProbe, ProbeSet, TcpProbe};
use crate::textfile::TARGET_LABEL;
use crate::watch::StateUpdate;

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
    pub fn on_samples(&mut self, samples: &[Sample], now_ms: i64) -> Vec<PolicyEvent> {
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
    pub fn on_state(&mut self, update: StateUpdate, now_ms: i64) -> Vec<PolicyEvent> {
        let name = update.name.clone();
        self.observations
            .record_state(update.kind, &update.name, update.reading);
        self.engine
            .evaluate_subject(&self.observations, &name, now_ms, &mut self.decisions);
        self.drain()
    }

    fn drain(&mut self) -> Vec<PolicyEvent> {
        let mut events = Vec::with_capacity(self.decisions.len());
        for decision in self.decisions.drain(..) {
            let id = self
                .ids
                .generate()
                .unwrap_or_else(|_| ulid::Ulid::generate())
                .to_string();
            events.push(to_event(&self.host, id, decision));
        }
        events
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
        DecisionKind::Deferred { reason } | DecisionKind::Escalated { reason } => {
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
        let events = ev.on_samples(&[sample(None, 99.0), sample(Some("app-1"), 95.0)], 1);
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
        let events = ev.on_state(
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
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["fired", "act"]);
        assert_eq!(events[1].action.as_deref(), Some("restart"));
        assert!(events[1].action_requested);
    }
}
