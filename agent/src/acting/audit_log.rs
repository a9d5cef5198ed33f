//! The log lines of the audit trail: one per policy event (`fired`, `act`, `verified`,
//! `escalated`, `resolved`, …) and one per action transition (`pending`, `running`,
//! `completed`, `failed`, `dead_letter`, …), written when the event is stored for the
//! coordinator. Each carries what it is about as fields, not only in words: `host`,
//! `policy` (none for a manual action), `action_id`, `target`, `action`, and the `kind`
//! or `state`; under systemd they are the journal fields `VIGIL_HOST`, `VIGIL_POLICY`,
//! `VIGIL_ACTION_ID`, … ([`vigil_service::logging`]).
//!
//! Levels: a policy that fires or escalates, and a failed or not-resolved action, are
//! warnings; a dead-lettered action is an error; the rest is information.

use vigil_shared::wire::{ActionEvent, ActionState, PolicyEvent};

/// Logs a policy event; `action_id` is the action an `act` event asked for.
pub(crate) fn policy_event(event: &PolicyEvent, action_id: Option<&str>) {
    let detail = event.detail.as_deref().unwrap_or("");
    let separator = if detail.is_empty() { "" } else { ": " };
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                host = %event.host,
                policy = %event.policy,
                target = %event.target,
                kind = %event.kind,
                severity = %event.severity,
                action_id,
                action = event.action.as_deref(),
                dry_run = event.dry_run,
                "policy {} {} on {} ({}){separator}{detail}",
                event.policy,
                event.kind,
                event.target,
                event.summary,
            )
        };
    }
    match event.kind.as_str() {
        "fired" | "escalated" => log!(warn),
        _ => log!(info),
    }
}

/// Logs an action's transition.
pub(crate) fn action_event(event: &ActionEvent) {
    let detail = event.detail.as_deref().unwrap_or("");
    let separator = if detail.is_empty() { "" } else { ": " };
    let state = event.state.as_str();
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                host = %event.host,
                policy = event.policy.as_deref(),
                action_id = %event.id,
                target = %event.target,
                action = %event.action,
                state,
                attempt = event.attempt,
                executor = event.executor.as_deref(),
                dry_run = event.dry_run,
                "action {} ({} {}) {state}{separator}{detail}",
                event.id,
                event.action,
                event.target,
            )
        };
    }
    match event.state {
        ActionState::DeadLetter => log!(error),
        ActionState::Failed | ActionState::NotResolved => log!(warn),
        _ => log!(info),
    }
}
