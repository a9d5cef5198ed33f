//! Acting on the policies' decisions: what turns an `act` decision (or a manual request
//! from the coordinator) into a change on the host, durably and safely.
//!
//! - [`job`]: one queued action and the [`vigil_shared::wire::ActionEvent`]s it produces.
//! - [`store`]: the agent's LMDB store (jobs, the outbox, counters, the kill switch).
//! - [`breaker`]: a circuit breaker per executor.
//! - [`mapping`]: the original system's `drain-pod`, `rebalance` and `snapshot`, mapped
//!   onto an allowlisted command or webhook (`[actions]`), or recorded as not runnable.
//! - [`leases`]: disruption-budget leases from the coordinator, which budgeted actions
//!   wait for (`deferred: budget`).
//! - [`queue`]: ordering, parallelism, retries with backoff, dead-letter, dry-run, kill
//!   switch, verification; it hands each attempt to
//! - [`executors`]: the parts that change things on the host (systemd units, Docker
//!   containers, allowlisted commands, webhooks), behind their allowlists.
//! - [`audit_log`]: a log line per policy event and action transition, with the host,
//!   policy and action id as fields.

pub(crate) mod audit_log;
pub(crate) mod breaker;
pub mod executors;
pub mod job;
pub mod leases;
pub mod mapping;
pub(crate) mod queue;
pub mod store;

pub(crate) use job::{Job, JobBudget, Origin};
pub(crate) use queue::{ActionQueue, NewAction, QueueSettings, RunFn};
pub(crate) use store::AgentStore;
