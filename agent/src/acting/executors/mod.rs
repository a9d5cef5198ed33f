//! Executors: the parts of the agent that change things on the host — systemd units
//! (D-Bus), Docker containers (Engine API), allowlisted commands, webhooks — and `notify`,
//! which changes nothing. The action queue ([`crate::acting`]) decides *when* an action
//! runs (order, retries, circuit breakers); an executor only *runs* one attempt and says
//! how it went.
//!
//! Safety lives here too: an executor refuses a target or command that its allowlist (from
//! the agent's local config, never from a policy or bundle) does not name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use vigil_shared::policy::ActionKind;

mod command;
mod dispatch;
mod docker;
mod params;
mod systemd;
mod webhook;

pub use dispatch::Executors;

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

/// What the agent's local config allows executors to touch (`[remediation]` in
/// `agent.toml`). Everything is denied unless listed. Globs (`web-*`, `*.service`) work in
/// the unit and container lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// systemd units that may be restarted/started/stopped/reloaded.
    #[serde(default)]
    pub units: Vec<String>,
    /// Docker containers (and Compose services, for `scale`) that may be acted on.
    #[serde(default)]
    pub containers: Vec<String>,
    /// Commands `exec` may run, by name: `restart-api = ["/usr/local/bin/restart-api", "--now"]`.
    /// A policy names the command (`params.command: restart-api`); it cannot supply argv.
    #[serde(default)]
    pub commands: BTreeMap<String, Vec<String>>,
    /// URL prefixes `webhook` may POST to (`http://alerts.internal:9000/`).
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Docker's socket (default: `DOCKER_HOST` or `/var/run/docker.sock`).
    #[serde(default)]
    pub docker_socket: Option<PathBuf>,
}
