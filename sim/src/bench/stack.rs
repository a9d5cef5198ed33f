//! What the benchmarks start on top of the test kit: a coordinator for one run, on its
//! embedded broker or behind a Mosquitto of its own (the same-run baseline), and virtual
//! agents enrolled at it with its admin token.
//!
//! Programs are started the simulator's way ([`Launcher::Simulator`]): the binaries are
//! looked up beside the running `vigil-sim` executable (all are built into the same
//! `target/<profile>/` directory by `cargo build --release`).

use std::collections::HashMap;
use std::path::Path;

use vigil_shared::broker_url::BrokerUrl;
use vigil_testkit::{CoordinatorOptions, CoordinatorProc, KitError, Launcher, Mosquitto};

use crate::enroll::{AgentLogin, Enroller};

/// The settings of the benchmarks' Mosquitto: anonymous access (agents still log in with
/// their enrolled credentials, which it ignores, and seal everything: the coordinator
/// behind it checks the seals), deep queues, only errors logged.
const MOSQUITTO_SETTINGS: &str =
    "allow_anonymous true\nmax_queued_messages 100000\nlog_type error\n";

/// Starts a coordinator the simulator's way with its data and log in `dir`, on its
/// embedded broker.
pub async fn start_coordinator(dir: &Path) -> Result<CoordinatorProc, KitError> {
    Launcher::Simulator
        .start_coordinator(dir, &CoordinatorOptions::default())
        .await
}

/// Enrolls `hosts` over REST with `coordinator`'s admin token (a join token made for
/// them; earlier identities of the same names revoked) and returns their logins.
pub async fn enroll(
    coordinator: &CoordinatorProc,
    hosts: &[String],
) -> Result<HashMap<String, AgentLogin>, String> {
    let mut enroller = Enroller::admin(&coordinator.http, coordinator.token.as_deref());
    enroller.progress = hosts.len() >= 1000;
    enroller.enroll(hosts).await
}

/// A join token with `uses` uses, made with `coordinator`'s admin token.
pub async fn join_token(coordinator: &CoordinatorProc, uses: usize) -> Result<String, String> {
    Enroller::admin(&coordinator.http, coordinator.token.as_deref())
        .make_join_token(uses)
        .await
}

/// A coordinator for one benchmark run: on its embedded broker, or behind a Mosquitto of
/// its own (the same-run baseline), with data and logs in one directory.
pub struct Stack {
    /// The coordinator.
    pub coordinator: CoordinatorProc,
    /// The external broker, if the run uses one.
    pub mosquitto: Option<Mosquitto>,
    /// The broker agents connect to.
    pub broker: BrokerUrl,
}

impl Stack {
    /// Creates `dir` and starts Mosquitto (if `via_mosquitto`) and a coordinator in it,
    /// with `extra` `serve` flags.
    pub async fn start(dir: &Path, via_mosquitto: bool, extra: &[&str]) -> Result<Stack, KitError> {
        std::fs::create_dir_all(dir).map_err(|source| KitError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let launcher = Launcher::Simulator;
        let mosquitto = if via_mosquitto {
            Some(launcher.start_mosquitto(dir, vigil_testkit::free_port(), MOSQUITTO_SETTINGS)?)
        } else {
            None
        };
        let options = CoordinatorOptions {
            external_broker: mosquitto.as_ref().map(|m| m.url.as_str()),
            extra,
            ..CoordinatorOptions::default()
        };
        let coordinator = launcher.start_coordinator(dir, &options).await?;
        let broker = coordinator.broker.parse().map_err(|e| {
            KitError::Failed(format!(
                "the coordinator's broker `{}` is not a broker URL: {e}",
                coordinator.broker
            ))
        })?;
        Ok(Stack {
            coordinator,
            mosquitto,
            broker,
        })
    }

    /// Stops the coordinator, then the broker; one that does not stop within 10 s of
    /// SIGTERM is killed.
    pub fn stop(self) {
        stop(self.coordinator.proc);
        if let Some(m) = self.mosquitto {
            stop(m.proc);
        }
    }
}

/// Fails benchmark `part` if `proc` has exited (its log named), or cannot be checked on.
pub fn check_alive(part: &str, proc: &mut vigil_testkit::Proc) -> Result<(), super::BenchError> {
    match proc.child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(super::BenchError::Failed(format!(
            "{part}: {} exited ({status}); see {}",
            proc.name,
            proc.log.display()
        ))),
        Err(e) => Err(super::BenchError::Failed(format!(
            "{part}: cannot check on {}: {e}",
            proc.name
        ))),
    }
}

/// Stops `proc`, warning if it had to be killed.
pub fn stop(proc: vigil_testkit::Proc) {
    if let Err(e) = proc.try_stop() {
        tracing::warn!("{e}; killed it");
    }
}

/// A process's anonymous resident memory (`RssAnon`), MiB; 0 if unreadable.
pub fn anon_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| status_kib(&text, "RssAnon"))
        .map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// One `Name:   123 kB` field of `/proc/<pid>/status`, in KiB.
pub(crate) fn status_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
}
