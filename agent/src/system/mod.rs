//! How the agent reaches the host it runs on: the one place that connects to Docker and
//! talks to systemd, shared by the watchers ([`crate::sampling::watch`]) and the
//! executors ([`crate::acting::executors`]).
//!
//! - [`names`]: a set of exact names and glob patterns (what a watcher watches, what an
//!   allowlist allows).
//! - [`units`]: systemd unit names: the unit type suffixes, and a bare name as a service.
//! - [`systemd`]: the D-Bus client for systemd on the system bus.
//! - [`docker`]: the connection to Docker's Engine API, and what an inspected container
//!   reads as.
//! - [`retry`]: pacing and logging while a backend (Docker, the system bus) is away.
//! - [`timeline`]: debug timestamps of the steps from a state change to its action.

pub(crate) mod docker;
pub(crate) mod names;
pub(crate) mod retry;
pub(crate) mod systemd;
pub(crate) mod timeline;
pub(crate) mod units;
