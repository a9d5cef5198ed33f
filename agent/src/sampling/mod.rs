//! What the agent observes on its host, every tick or the moment it changes.
//!
//! - [`sampler`]: host metrics with sysinfo; [`netdev`]: network byte counters.
//! - [`textfile`]: metrics other programs leave in `*.prom` files.
//! - [`probes`]: processes and HTTP/TCP checks, every tick.
//! - [`watch`]: systemd units and Docker containers, reported on every change.

pub(crate) mod netdev;
pub(crate) mod probes;
pub(crate) mod sampler;
pub(crate) mod textfile;
pub mod watch;
