//! What the agent should do about what it observes: which policies are in force, and
//! their verdicts.
//!
//! - [`source`]: the local policy directory (looked at again when
//!   [`vigil_service::dir_watch`] says it may have changed).
//! - [`bundle_store`]: the agent's copy of its groups' signed policy bundles;
//!   [`bundles`]: how an offered bundle is verified and put in force.
//! - [`set`]: how the directory's policies and the bundles' combine.
//! - [`evaluator`]: the policy engine fed with the observations, producing policy events
//!   and the actions they ask for.

pub(crate) mod bundle_store;
pub(crate) mod bundles;
pub(crate) mod evaluator;
pub(crate) mod set;
pub(crate) mod source;
