//! Executors: the parts of the agent that change things on the host — systemd units
//! (D-Bus), Docker containers (Engine API), allowlisted commands, webhooks — and `notify`,
//! which changes nothing. The action queue ([`crate::acting::queue`]) decides *when* an
//! action runs (order, retries, circuit breakers); an executor only *runs* one attempt and
//! says how it went.
//!
//! Safety lives here too: an executor refuses a target or command that its allowlist (from
//! the agent's local config, never from a policy or bundle) does not name.
//!
//! - [`attempt`]: one attempt as every executor sees it: request, outcome, error.
//! - [`dispatch`]: [`Executors`], which checks the allowlists ([`ExecutorConfig`]) and
//!   hands the attempt to one of
//! - [`systemd`] (units over D-Bus), [`docker`] (containers, and `scale` of Compose
//!   services), [`command`] (allowlisted commands), [`webhook`] (HTTP POSTs).

mod attempt;
mod command;
mod dispatch;
mod docker;
mod systemd;
mod webhook;

pub use attempt::{ExecError, ExecOutcome, ExecRequest};
pub(crate) use dispatch::webhook_allowed;
pub use dispatch::{ExecutorConfig, Executors};
