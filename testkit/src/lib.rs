//! Vigil's test kit: runs the workspace's real programs (`vigil-coordinator`,
//! `vigil-agent`) and Mosquitto as processes on loopback, for the end-to-end tests
//! (`tests/`) and the simulator's benchmarks (`sim/`). It links neither the agent nor the
//! coordinator: it only starts their binaries and talks to them over HTTP and MQTT.
//!
//! Modules, in the order a test uses them:
//! - [`dir`]: a temporary directory for data and process logs;
//! - [`process`]: a child process killed when dropped, the [`Launcher`] (the test suite's
//!   or the simulator's way of finding and starting programs), free ports;
//! - [`coordinator`], [`agent`], [`mosquitto`]: starting each program;
//! - [`wait`]: polling a condition until a deadline;
//! - [`rest`]: the coordinators' admin tokens, REST tokens and JSON requests;
//! - [`mqtt`]: client logins and subscriptions;
//! - [`prometheus`]: reading a `/metrics` page;
//! - [`docker`]: the `docker` command, a local busybox image, containers removed when
//!   their guard drops.
//!
//! One error style: each fallible step returns [`KitError`], which the simulator prints:
//! the [`Launcher`]'s methods, [`try_wait_for`], [`Proc::try_stop`]. The test suite calls
//! their thin panicking forms (the free functions of the same name, [`wait_for`],
//! [`Proc::stop`]), which start programs the test suite's way ([`Launcher::Tests`]) and
//! panic with the error's message.

pub mod agent;
pub mod coordinator;
pub mod dir;
pub mod docker;
pub mod mosquitto;
pub mod mqtt;
pub mod process;
pub mod prometheus;
pub mod rest;
pub mod wait;

use std::path::PathBuf;
use std::time::Duration;

pub use agent::{enroll_directly, start_agent, start_agent_with};
pub use coordinator::{
    start_coordinator, start_coordinator_limited, CoordinatorOptions, CoordinatorProc,
};
pub use dir::TestDir;
pub use mosquitto::{
    start_mosquitto, start_mosquitto_on, start_mosquitto_with, Heard, Mosquitto, MosquittoSub,
};
pub use mqtt::{
    broker_port, broker_token, bundle_subscriber, client_options, connected, login, subscriber,
};
pub use process::{bin, free_port, Launcher, Proc};
pub use prometheus::prometheus_value;
pub use rest::{
    adopt_admin_token, authorized, create_token, delete, get_json, host_entry, metric, post_raw,
    put_raw, read_admin_token, register_token, send_raw, token_cli, token_for, wait_reporting,
    with_token, ADMIN_TOKEN_WAIT,
};
pub use wait::{try_wait_for, wait_for};

/// Why a program could not be found, started or reached.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The program is not where it was looked for.
    #[error("cannot find `{name}` (looked at {}); {hint}", path.display())]
    Missing {
        /// The program's name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// Spawning failed.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {timeout:?} waiting for {what}")]
    TimedOut {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// A started process did not become ready in time.
    #[error("{what} was not ready after {timeout:?} (see its log in {})", log_dir.display())]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
        /// Where its log is.
        log_dir: PathBuf,
    },
    /// A started process exited before it was ready.
    #[error("{what} exited ({status}) before it was ready (see its log {})", log.display())]
    Exited {
        /// What was started.
        what: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// A process did not exit after SIGTERM (it is killed).
    #[error("{name} did not exit within 10 s of SIGTERM")]
    NotStopped {
        /// The process's name.
        name: String,
    },
    /// Something else failed; the message says what (a helper command's output, the
    /// broker's refusal, …).
    #[error("{0}")]
    Failed(String),
}

/// The value of `result`, or a panic with its error's message: the test suite's form of
/// every `try_` step.
pub fn or_panic<T>(result: Result<T, KitError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}
