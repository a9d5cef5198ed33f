//! `vigil-agent`: the program that runs on every host.
//!
//! The folders follow the data, from the host to the coordinator:
//!
//! - [`config`]: the agent's settings (flags, `VIGIL_…` variables, the TOML file).
//! - [`system`]: how the agent reaches the host: one way to connect to Docker, one
//!   D-Bus client for systemd, the rules for unit names and for watched names.
//! - [`sampling`]: what the agent observes: host metrics, `*.prom` textfiles, probes
//!   (processes, HTTP/TCP checks) and the watchers of systemd units and Docker containers.
//! - [`policy`]: what the agent should do about it: the local policy directory, signed
//!   policy bundles for the host's groups, how both combine, and the evaluator that turns
//!   observations into policy events.
//! - [`acting`]: doing it: the durable action queue (retries, circuit breakers,
//!   dead-letter, kill switch) and the executors (systemd, Docker, exec, webhook).
//! - [`reporting`]: telling the coordinator and the machine: the enrollment that gives
//!   the agent its key and MQTT login, the MQTT link (with the guard on incoming
//!   commands), the durable outbox, the status file and what systemd is told.
//! - [`runner::run`] ties them together into the main loop.
//! - [`cli`]: the `vigil-agent` command line: run the agent, `install|uninstall` it as a
//!   systemd service, `status`, and the offline `policy check|test`.
//!
//! `vigil up` runs this same code in-process as its local agent.

// The crate is documented for the people who work on it (`cargo doc
// --document-private-items`): its public docs link the private layers they describe.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod config;

mod acting;
mod policy;
mod reporting;
mod runner;
mod sampling;
mod system;

pub use config::AgentConfig;
pub use runner::{run, AgentError};

// What the end-to-end tests, the examples and the fuzz targets reach into.
pub use acting::executors;
pub use acting::{job, store};
pub use sampling::watch;
