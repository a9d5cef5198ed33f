//! Telling the coordinator, and the machine, what the agent sees and does.
//!
//! - [`enrollment`]: the agent's identity (its key and MQTT login), enrolled once with a
//!   join token; every message the agent publishes is sealed with that key
//!   ([`vigil_shared::agent_auth`]).
//! - [`link`]: the MQTT connection (status, last will, commands, bundles), with
//!   [`command_guard`] checking every command's signature, expiry and freshness.
//! - [`delivery`]: the durable queues (the outbox of policy events and action
//!   transitions, and the metric [`spool`]) sent on their own connection and forgotten
//!   only when the coordinator acknowledges that it stored them.
//! - [`status_file`]: what the agent is doing, for `vigil-agent status`;
//!   [`service_report`]: readiness, status and watchdog pings for systemd
//!   ([`vigil_service::ServiceManager`]), and the status file kept current.
//! - [`spool`]: the bounded buffer on disk that keeps metric batches until the coordinator
//!   acknowledges them.

pub(crate) mod command_guard;
pub(crate) mod delivery;
pub(crate) mod enrollment;
pub(crate) mod link;
pub(crate) mod service_report;
pub(crate) mod spool;
pub(crate) mod status_file;
