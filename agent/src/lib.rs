//! `vigil-agent`: the program that runs on every host.
//!
//! - [`sampler`]: host metrics with sysinfo; [`textfile`]: metrics from `*.prom` files.
//! - [`watch`]: systemd units and Docker containers, reported on every change;
//!   [`probes`]: processes and HTTP/TCP checks, every tick.
//! - [`policy_source`]: the policy directory; [`bundles`]: signed policy bundles for the
//!   host's groups, kept by [`bundle_store`]; [`policy_set`]: how both combine;
//!   [`evaluator`]: the policy engine fed with all of the above, producing policy events.
//! - [`actions`]: the durable action queue (retries, circuit breakers, dead-letter,
//!   kill switch); [`execute`]: the executors (systemd, Docker, exec, webhook).
//! - [`identity`]: the agent's key and MQTT login, enrolled once with a join token and
//!   kept in the data directory; every message the agent publishes is sealed with that
//!   key ([`vigil_shared::agent_auth`]).
//! - [`link`]: the MQTT connection (status, last will, metrics, commands), with
//!   [`command_guard`] checking every command's signature, expiry and freshness;
//!   [`outbox`]: durable, acknowledged delivery of policy events and action transitions.
//! - [`runner::run`] ties them together; [`config`] and [`cli`] say where settings come
//!   from; [`policy_cli`] is `vigil-agent policy check|test`.
//! - As a systemd service: [`install`] is `vigil-agent install|uninstall`; the runner
//!   tells systemd when it is ready and pings its watchdog from the main loop
//!   ([`vigil_service::ServiceManager`]) and keeps [`status_file`] current for
//!   `vigil-agent status` ([`status_cli`]).
//!
//! `vigil up` runs this same code in-process as its local agent.

pub mod actions;
pub mod bundle_store;
pub mod bundles;
pub mod cli;
pub mod command_guard;
pub mod config;
pub mod evaluator;
pub mod execute;
pub mod identity;
pub mod install;
pub mod link;
pub mod outbox;
pub mod policy_cli;
pub mod policy_set;
pub mod policy_source;
pub mod probes;
pub mod runner;
pub mod sampler;
pub mod service_report;
pub mod status_cli;
pub mod status_file;
pub mod textfile;
pub mod watch;

pub use config::AgentConfig;
pub use runner::run;
