//! One attempt, as every executor sees it: the request ([`ExecRequest`]), what a
//! successful attempt did ([`ExecOutcome`]) and why one failed ([`ExecError`]); the
//! parameters several executors read (`params.settle`, durations such as
//! `params.stop_timeout`, given as `"500ms"` or a number of seconds), and how often they
//! look at a target while waiting for it.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;
use vigil_shared::policy::ActionKind;
use vigil_shared::time::parse_duration;

/// One attempt to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRequest {
    /// The action's id (for logs and idempotency keys).
    pub action_id: String,
    /// What to do.
    pub kind: ActionKind,
    /// What to act on: a unit (`nginx.service`), a container (`web-1`), a Compose service
    /// (for `scale`), or, for `exec`/`webhook`/`notify`, the policy's target.
    pub target: String,
    /// Executor parameters from the policy or the manual request (`executor`, `command`,
    /// `url`, `replicas`, `timeout`, …).
    pub params: BTreeMap<String, serde_json::Value>,
    /// How long the attempt may take, including waiting for the result (running, healthy).
    pub timeout: Duration,
    /// When a policy decided this action, epoch ms, on its first attempt (`None` for
    /// retries and manual actions): a container that has started since is already running
    /// again, and a `restart` leaves it alone rather than kill it again.
    pub decided_at_ms: Option<i64>,
}

/// What a successful attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Which executor ran it (`systemd`, `docker`, `exec`, `webhook`, `notify`).
    pub executor: &'static str,
    /// The observed result, for the audit trail: `nginx.service active (running)`,
    /// `container web-1 running, healthy`, `exit 0: <last output line>`, `HTTP 200`.
    pub detail: String,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExecError {
    /// The allowlist does not name the target, command or URL. Never retried.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The request cannot work as given (unknown executor, missing parameter, no such
    /// Compose service). Never retried.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend (systemd bus, Docker socket, webhook host) cannot be reached. Retried,
    /// and counted by the executor's circuit breaker.
    #[error("{executor} unavailable: {message}")]
    Unavailable {
        /// The executor.
        executor: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The backend ran the action and it failed (unit failed to start, container exited,
    /// command exited non-zero, HTTP 5xx). Retried.
    #[error("{executor} failed: {message}")]
    Failed {
        /// The executor.
        executor: &'static str,
        /// What went wrong.
        message: String,
    },
    /// No result within the timeout. Retried.
    #[error("{executor} timed out after {after:?}")]
    Timeout {
        /// The executor.
        executor: &'static str,
        /// The timeout.
        after: Duration,
    },
}

impl ExecError {
    /// Whether another attempt could succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, ExecError::NotAllowed(_) | ExecError::Invalid(_))
    }

    /// The executor at fault, for circuit breaking (`None` for refusals).
    pub fn executor(&self) -> Option<&'static str> {
        match self {
            ExecError::Unavailable { executor, .. }
            | ExecError::Failed { executor, .. }
            | ExecError::Timeout { executor, .. } => Some(executor),
            ExecError::NotAllowed(_) | ExecError::Invalid(_) => None,
        }
    }
}

/// How long a started container, or a started `simple` service, must stay up to count
/// as up, unless `params.settle` says otherwise: a target that dies at once fails the
/// attempt instead of passing it.
pub(crate) const DEFAULT_SETTLE: Duration = Duration::from_millis(250);

/// How often an executor looks at its target again while waiting for it to come up.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// An optional duration parameter: a string such as `"500ms"`, or a number of seconds.
pub(crate) fn duration_param(
    request: &ExecRequest,
    key: &str,
) -> Result<Option<Duration>, ExecError> {
    let invalid = |why: String| ExecError::Invalid(format!("params.{key}: {why}"));
    match request.params.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => parse_duration(text).map(Some).map_err(invalid),
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Some)
            .ok_or_else(|| invalid(format!("{n} is not a number of seconds"))),
        Some(other) => Err(invalid(format!("{other} is not a duration"))),
    }
}

/// `params.settle`, or [`DEFAULT_SETTLE`].
pub(crate) fn settle(request: &ExecRequest) -> Result<Duration, ExecError> {
    Ok(duration_param(request, "settle")?.unwrap_or(DEFAULT_SETTLE))
}
