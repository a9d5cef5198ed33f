//! The policy engine: runs every policy against every subject it targets, and turns
//! conditions that hold into decisions — fire, act, verify, escalate, resolve — with
//! `for`, cooldowns, flap protection, escalation chains and dry-run.
//!
//! Per policy and subject it keeps a small [`Track`]:
//!
//! ```text
//!   ok ──holds──► pending ──held for `for`──► firing ──► Act(step 0)
//!    ▲              │ clears                    │ verify window passes, still holds
//!    └──────────────┘                           ▼
//!                               Verified{resolved:false} ─► Act(step 1) … ─► Escalated
//!   firing ──clears──► Verified{resolved:true} (if an action ran) ─► Resolved
//! ```
//!
//! Flap protection counts actions per policy and subject: at `max_actions` within
//! `within`, the engine stops acting and escalates (severity critical) instead; the count
//! resets once the subject has stayed healthy for `reset_after`. Cooldown is the least
//! time between two actions. Time comes in as `now_ms`; the engine reads no clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::eval::{self, Explanation};
use super::model::{ActionKind, Condition, Hold, Policy, Severity};
use super::observations::Observations;

/// An action the engine asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    /// Which step of the chain (0-based).
    pub step: usize,
    /// What to do.
    pub kind: ActionKind,
    /// The name as the policy wrote it.
    pub written: String,
    /// Executor parameters.
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    /// Record only.
    pub dry_run: bool,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionKind {
    /// The condition has held long enough: a violation.
    Fired,
    /// Run this action (auto_remediate is on).
    Act(ActionRequest),
    /// The verify window after step `step` ended: did the condition clear?
    Verified {
        /// The step judged.
        step: usize,
        /// Whether the condition cleared.
        resolved: bool,
    },
    /// An action is due but waits (cooldown).
    Deferred {
        /// Why.
        reason: String,
    },
    /// The engine stopped acting on this subject (flap limit, or the chain ran out);
    /// reported as critical.
    Escalated {
        /// Why.
        reason: String,
        /// Which of the two.
        cause: EscalationCause,
    },
    /// The condition cleared.
    Resolved,
}

impl DecisionKind {
    /// A short name (`fired`, `act`, `verified`, `deferred`, `escalated`, `resolved`).
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionKind::Fired => "fired",
            DecisionKind::Act(_) => "act",
            DecisionKind::Verified { .. } => "verified",
            DecisionKind::Deferred { .. } => "deferred",
            DecisionKind::Escalated { .. } => "escalated",
            DecisionKind::Resolved => "resolved",
        }
    }
}

/// Why the engine escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscalationCause {
    /// Every action of the chain ran and the condition still holds.
    ChainExhausted,
    /// Flap protection: too many actions within the window.
    FlapLimit,
}

/// One decision about one policy and subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The policy.
    pub policy: String,
    /// The subject (what an action acts on).
    pub subject: String,
    /// The policy's severity (critical for escalations).
    pub severity: Severity,
    /// What happened.
    pub kind: DecisionKind,
    /// When, epoch ms.
    pub at_ms: i64,
    /// Why, for fired, act and escalated decisions.
    pub explanation: Option<Explanation>,
}

/// What the engine remembers per policy and subject.
#[derive(Debug, Clone, Default)]
struct Track {
    pending_since: Option<i64>,
    consecutive: u32,
    firing: bool,
    next_step: usize,
    last_action_ms: Option<i64>,
    awaiting_verify: bool,
    deferred_reported: bool,
    actions: VecDeque<i64>,
    suppressed: bool,
    exhausted_reported: bool,
    healthy_since: Option<i64>,
}

/// Counters for the runner status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Policy × subject evaluations so far.
    pub evaluations: u64,
    /// When the last evaluation pass ran, epoch ms.
    pub last_evaluation_ms: Option<i64>,
}

/// The engine.
#[derive(Debug, Default)]
pub struct Engine {
    policies: Vec<Policy>,
    /// Policy name → subject → track (nested so lookups need no allocation).
    tracks: HashMap<String, HashMap<String, Track>>,
    stats: EngineStats,
}

impl Engine {
    /// An engine running `policies`.
    pub fn new(policies: Vec<Policy>) -> Engine {
        Engine {
            policies,
            ..Engine::default()
        }
    }

    /// Swaps in a new policy set. Tracks of policies that keep their name and definition
    /// carry over (a reload does not reset `for` timers or flap counters); others go.
    pub fn replace_policies(&mut self, policies: Vec<Policy>) {
        let unchanged: Vec<&str> = policies
            .iter()
            .filter(|p| self.policies.iter().any(|old| old == *p))
            .map(|p| p.name.as_str())
            .collect();
        self.tracks
            .retain(|policy, _| unchanged.contains(&policy.as_str()));
        self.policies = policies;
    }

    /// The policies in force.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Evaluation counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// How far back each metric must be kept for the loaded policies.
    pub fn lookbacks(&self) -> HashMap<String, Duration> {
        let mut out: HashMap<String, Duration> = HashMap::new();
        fn walk(c: &Condition, out: &mut HashMap<String, Duration>) {
            match c {
                Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| walk(c, out)),
                Condition::Rate { metric, over, .. } | Condition::Trend { metric, over, .. } => {
                    let e = out.entry(metric.clone()).or_default();
                    *e = (*e).max(*over);
                }
                _ => {}
            }
        }
        for p in &self.policies {
            walk(&p.condition, &mut out);
        }
        out
    }

    /// Evaluates every enabled policy on every subject it targets.
    pub fn evaluate(&mut self, obs: &Observations, now_ms: i64, out: &mut Vec<Decision>) {
        self.stats.last_evaluation_ms = Some(now_ms);
        let subjects: Vec<&str> = obs.subjects().collect();
        for index in 0..self.policies.len() {
            if !self.policies[index].enabled {
                continue;
            }
            let mut evaluated_exact = false;
            for subject in &subjects {
                if self.policies[index].target.matches(subject) {
                    evaluated_exact |= self.policies[index].target.exact() == Some(*subject);
                    self.step(index, subject, obs, now_ms, out);
                }
            }
            if !evaluated_exact {
                if let Some(exact) = self.policies[index].target.exact().map(str::to_string) {
                    self.step(index, &exact, obs, now_ms, out);
                }
            }
        }
    }

    /// Evaluates the policies that target `subject`, on it alone (for state changes that
    /// should not wait for the next tick).
    pub fn evaluate_subject(
        &mut self,
        obs: &Observations,
        subject: &str,
        now_ms: i64,
        out: &mut Vec<Decision>,
    ) {
        for index in 0..self.policies.len() {
            let p = &self.policies[index];
            if p.enabled && p.target.matches(subject) {
                self.step(index, subject, obs, now_ms, out);
            }
        }
    }

    fn step(
        &mut self,
        index: usize,
        subject: &str,
        obs: &Observations,
        now_ms: i64,
        out: &mut Vec<Decision>,
    ) {
        self.stats.evaluations += 1;
        let policy = &self.policies[index];
        let held = eval::holds(&policy.condition, obs, subject, now_ms);
        let known = self
            .tracks
            .get(&policy.name)
            .is_some_and(|t| t.contains_key(subject));
        if !held && !known {
            return;
        }
        let track = match self
            .tracks
            .get_mut(&policy.name)
            .and_then(|t| t.get_mut(subject))
        {
            Some(track) => track,
            None => self
                .tracks
                .entry(policy.name.clone())
                .or_default()
                .entry(subject.to_string())
                .or_default(),
        };
        let decide = |kind: DecisionKind, severity: Severity, explain: bool| Decision {
            policy: policy.name.clone(),
            subject: subject.to_string(),
            severity,
            kind,
            at_ms: now_ms,
            explanation: explain.then(|| eval::explain(&policy.condition, obs, subject, now_ms)),
        };

        if !held {
            track.pending_since = None;
            track.consecutive = 0;
            if track.firing {
                if track.awaiting_verify {
                    let step = track.next_step.saturating_sub(1);
                    out.push(decide(
                        DecisionKind::Verified {
                            step,
                            resolved: true,
                        },
                        policy.severity,
                        false,
                    ));
                }
                out.push(decide(DecisionKind::Resolved, policy.severity, false));
                track.firing = false;
                track.next_step = 0;
                track.awaiting_verify = false;
                track.exhausted_reported = false;
                track.deferred_reported = false;
            }
            let healthy_since = *track.healthy_since.get_or_insert(now_ms);
            if now_ms - healthy_since >= millis(policy.flap.reset_after) {
                track.actions.clear();
                track.suppressed = false;
            }
            return;
        }

        track.healthy_since = None;
        track.consecutive = track.consecutive.saturating_add(1);
        let pending_since = *track.pending_since.get_or_insert(now_ms);
        let hold_met = match policy.hold {
            None => true,
            Some(Hold::Duration(d)) => now_ms - pending_since >= millis(d),
            Some(Hold::Evaluations(n)) => track.consecutive >= n,
        };
        if !hold_met {
            return;
        }
        if !track.firing {
            track.firing = true;
            track.next_step = 0;
            track.awaiting_verify = false;
            out.push(decide(DecisionKind::Fired, policy.severity, true));
        }
        if !policy.auto_remediate || policy.actions.is_empty() || track.suppressed {
            return;
        }

        // Wait out the verify window of the last action before judging it.
        if track.awaiting_verify {
            let last = track.last_action_ms.unwrap_or(now_ms);
            if now_ms - last < millis(policy.verify) {
                return;
            }
            track.awaiting_verify = false;
            out.push(decide(
                DecisionKind::Verified {
                    step: track.next_step.saturating_sub(1),
                    resolved: false,
                },
                policy.severity,
                false,
            ));
        }

        if track.next_step >= policy.actions.len() {
            if !track.exhausted_reported {
                track.exhausted_reported = true;
                out.push(decide(
                    DecisionKind::Escalated {
                        reason: format!(
                            "all {} action(s) ran and the condition still holds",
                            policy.actions.len()
                        ),
                        cause: EscalationCause::ChainExhausted,
                    },
                    Severity::Critical,
                    true,
                ));
            }
            return;
        }

        if let Some(last) = track.last_action_ms {
            let wait = millis(policy.cooldown) - (now_ms - last);
            if wait > 0 {
                if !track.deferred_reported {
                    track.deferred_reported = true;
                    out.push(decide(
                        DecisionKind::Deferred {
                            reason: format!(
                                "cooldown: next action allowed in {}",
                                crate::time::format_duration(Duration::from_millis(
                                    u64::try_from(wait).unwrap_or(0)
                                ))
                            ),
                        },
                        policy.severity,
                        false,
                    ));
                }
                return;
            }
        }

        let within = millis(policy.flap.within);
        while track.actions.front().is_some_and(|t| now_ms - *t >= within) {
            track.actions.pop_front();
        }
        if track.actions.len() >= policy.flap.max_actions as usize {
            track.suppressed = true;
            out.push(decide(
                DecisionKind::Escalated {
                    reason: format!(
                        "flap protection: {} actions within {}; not acting on {subject} until it \
                         stays healthy for {}",
                        track.actions.len(),
                        crate::time::format_duration(policy.flap.within),
                        crate::time::format_duration(policy.flap.reset_after),
                    ),
                    cause: EscalationCause::FlapLimit,
                },
                Severity::Critical,
                true,
            ));
            return;
        }

        let step = &policy.actions[track.next_step];
        let request = ActionRequest {
            step: track.next_step,
            kind: step.kind,
            written: step.written.clone(),
            params: step.params.clone(),
            dry_run: policy.dry_run,
        };
        track.next_step += 1;
        track.last_action_ms = Some(now_ms);
        track.awaiting_verify = true;
        track.deferred_reported = false;
        track.actions.push_back(now_ms);
        out.push(decide(DecisionKind::Act(request), policy.severity, true));
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
