//! Policies: the model, how they are written and read, and how they are evaluated.
//!
//! - [`spec`]: what users write (YAML files, REST bodies): the original format plus
//!   Vigil's extensions; [`spec::PolicySpec::check`] validates it into a [`Policy`].
//! - [`expr`]: one-line conditions such as `cpu_usage > 80% for 5m`.
//! - [`model`]: checked policies, conditions, actions.
//! - [`target`]: exact / glob / `all` targets.
//! - [`load`]: policy files and directories, rejected whole on any error.
//! - [`observations`]: the recent samples and state readings policies look at.
//! - [`eval`]: condition evaluation, with explanations.
//! - [`budget`]: fleet-wide disruption budgets (how many hosts act at once).
//! - [`engine`]: the per-target state machine (`for`, cooldown, flap protection,
//!   escalation chains, dry-run) that turns evaluations into decisions.

pub mod budget;
pub mod engine;
pub mod eval;
pub mod expr;
pub mod load;
pub mod model;
pub mod observations;
pub mod spec;
pub mod target;

pub use engine::{ActionRequest, Decision, DecisionKind, Engine, EscalationCause};
pub use eval::Explanation;
pub use load::LoadError;
pub use model::{ActionKind, Condition, Policy, Severity};
pub use observations::{Observations, StateKind, StateReading, TARGET_TAG};
pub use spec::{PolicyError, PolicySpec};

#[cfg(test)]
mod tests;
