//! One action in the agent's queue, as it is persisted: what to do, where it stands in its
//! lifecycle (`pending [→ deferred] → running → completed | failed | cancelled`, with
//! retries and a dead-letter state), and the [`ActionEvent`] each transition produces.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_shared::policy::ActionKind;
use vigil_shared::wire::{ActionEvent, ActionState};

/// Who asked for an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// A policy (with its name and the step of its escalation chain).
    Policy {
        /// The policy.
        name: String,
        /// The chain step (0-based).
        step: u32,
    },
    /// A person, through the coordinator (`POST /api/v1/actions`).
    Manual,
}

/// The disruption budget a job takes its leases from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBudget {
    /// The policy whose budget it is (for a manual action, the one it names).
    pub policy: String,
    /// The budget.
    pub budget: vigil_shared::policy::budget::Budget,
}

/// A queued action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (a ULID; for manual actions, the one the coordinator allotted).
    pub id: String,
    /// The agent's host.
    pub host: String,
    /// Who asked.
    pub origin: Origin,
    /// What it acts on.
    pub target: String,
    /// What it does.
    pub kind: ActionKind,
    /// The action name as written (`restart-service`).
    pub written: String,
    /// Executor parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Record only, never act.
    pub dry_run: bool,
    /// Where it stands.
    pub state: ActionState,
    /// Attempts started so far.
    pub attempt: u32,
    /// Most attempts allowed.
    pub max_attempts: u32,
    /// When it was accepted, epoch ms.
    pub created_at_ms: i64,
    /// Not before this time (backoff), epoch ms.
    pub not_before_ms: i64,
    /// The executor that handled the last attempt.
    pub executor: Option<String>,
    /// The last thing that happened, in words.
    pub detail: Option<String>,
    /// Order of acceptance (for per-target FIFO).
    pub seq: u64,
    /// A verification result that arrived before the action completed (the condition can
    /// clear while the executor still waits for the target to settle); applied on
    /// completion.
    #[serde(default)]
    pub early_verification: Option<bool>,
    /// The policy's disruption budget: each attempt runs only with a lease
    /// ([`super::leases`]).
    #[serde(default)]
    pub budget: Option<JobBudget>,
    /// The attempt whose wait for a lease is recorded (`deferred`), so that it is
    /// recorded once per attempt.
    #[serde(default)]
    pub deferred_attempt: Option<u32>,
}

impl Job {
    /// Whether the job will not change any more (verification aside).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            ActionState::Completed
                | ActionState::Cancelled
                | ActionState::DeadLetter
                | ActionState::Resolved
                | ActionState::NotResolved
        )
    }

    /// The event reporting a transition to `state` at `at_ms`.
    pub fn event(&self, state: ActionState, at_ms: i64, detail: Option<String>) -> ActionEvent {
        let (policy, step) = match &self.origin {
            Origin::Policy { name, step } => (Some(name.clone()), Some(*step)),
            Origin::Manual => (None, None),
        };
        ActionEvent {
            id: self.id.clone(),
            host: self.host.clone(),
            policy,
            target: self.target.clone(),
            action: self.written.clone(),
            state,
            attempt: self.attempt,
            dry_run: self.dry_run,
            detail,
            created_at_ms: self.created_at_ms,
            at_ms,
            max_attempts: self.max_attempts,
            executor: self.executor.clone(),
            step,
            params: if self.params.is_empty() {
                None
            } else {
                serde_json::to_string(&self.params).ok()
            },
        }
    }
}
