//! `vigil-agent`: the program that runs on every host.
//!
//! It samples the host ([`sampler`]), and reports samples and its own status to the
//! coordinator over MQTT ([`link`]). [`runner::run`] ties them together; [`config`] says
//! where settings come from (flags, `VIGIL_…` environment variables, a TOML file).
//! The coordinator's `up` command runs this same code in-process as its local agent.

pub mod cli;
pub mod config;
pub mod link;
pub mod runner;
pub mod sampler;
pub mod signal;
pub mod watch;

pub use config::AgentConfig;
pub use runner::run;
