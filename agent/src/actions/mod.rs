//! The agent's action queue: what turns an `act` decision (or a manual request from the
//! coordinator) into an executor attempt, durably and safely.
//!
//! - [`job`]: one queued action and the [`vigil_shared::wire::ActionEvent`]s it produces.
//! - [`store`]: the agent's LMDB store (jobs, the outbox, counters, the kill switch).
//! - [`breaker`]: a circuit breaker per executor.
//! - [`queue`]: ordering, parallelism, retries with backoff, dead-letter, dry-run, kill
//!   switch, verification.

pub mod breaker;
pub mod job;
pub mod queue;
pub mod store;

pub use job::{Job, Origin};
pub use queue::{ActionQueue, AttemptResult, NewAction, QueueSettings, RunFn};
pub use store::AgentStore;
