//! Starting a real `vigil-agent`, and giving it an identity enrolled directly in a
//! coordinator's store (`vigil-coordinator agent add`) the way an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{Launcher, Proc};
use crate::{or_panic, KitError};

impl Launcher {
    /// Starts `vigil-agent` reporting as `host` to `broker` every `interval` (`200ms`,
    /// `1s`, …), with the arguments `more` after those, logging to `agent-<host>…` under
    /// `log_dir`.
    pub fn start_agent_with(
        self,
        host: &str,
        broker: &str,
        interval: &str,
        more: &[&str],
        log_dir: &Path,
    ) -> Result<Proc, KitError> {
        let args: Vec<String> = ["--host", host, "--broker", broker, "--interval", interval]
            .iter()
            .chain(more)
            .map(|s| s.to_string())
            .collect();
        self.start(
            &format!("agent-{host}"),
            &self.program("vigil-agent")?,
            &args,
            log_dir,
        )
    }

    /// Starts `vigil-agent` reporting as `host` to `broker` every 200 ms, with `labels`
    /// (`key=value`), logging under `log_dir`.
    pub fn start_agent(
        self,
        host: &str,
        broker: &str,
        labels: &[&str],
        log_dir: &Path,
    ) -> Result<Proc, KitError> {
        let more: Vec<&str> = labels.iter().flat_map(|l| ["--label", *l]).collect();
        self.start_agent_with(host, broker, "200ms", &more, log_dir)
    }

    /// Enrolls `host` in the coordinator store under `coordinator_data` and writes its
    /// identity into `identity_dir` (`vigil-coordinator agent add`).
    pub fn enroll_directly(
        self,
        host: &str,
        identity_dir: &Path,
        coordinator_data: &Path,
    ) -> Result<(), KitError> {
        let output = Command::new(self.program("vigil-coordinator")?)
            .args(["agent", "add", host, "--identity-dir"])
            .arg(identity_dir)
            .arg("--data-dir")
            .arg(coordinator_data)
            .output()
            .map_err(|e| KitError::Failed(format!("run vigil-coordinator agent add: {e}")))?;
        if !output.status.success() {
            return Err(KitError::Failed(format!(
                "agent add {host}: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }
}

/// Starts `vigil-agent` for a test (see [`Launcher::start_agent`]).
pub fn start_agent(host: &str, broker: &str, labels: &[&str], log_dir: &Path) -> Proc {
    or_panic(Launcher::Tests.start_agent(host, broker, labels, log_dir))
}

/// Starts `vigil-agent` for a test with more arguments (see [`Launcher::start_agent_with`]).
pub fn start_agent_with(
    host: &str,
    broker: &str,
    interval: &str,
    more: &[&str],
    log_dir: &Path,
) -> Proc {
    or_panic(Launcher::Tests.start_agent_with(host, broker, interval, more, log_dir))
}

/// Enrolls `host` for a test (see [`Launcher::enroll_directly`]).
pub fn enroll_directly(host: &str, identity_dir: &Path, coordinator_data: &Path) {
    or_panic(Launcher::Tests.enroll_directly(host, identity_dir, coordinator_data))
}

/// Prepares a test's agent about to start (`command`, its arguments `args`) beside the
/// coordinator the test started in `log_dir`: the agent trusts that coordinator's public
/// key (written at its start-up; commands to agents are signed with it), and gets an
/// identity enrolled with the coordinator store in `<log_dir>/data`, unless it enrolls
/// itself (`--join-token`) or is not a running agent (no `--host`). Adds
/// `--data-dir <log_dir>/agent-data-<host>` when none is given.
pub(crate) fn prepare(
    command: &mut Command,
    args: &mut Vec<String>,
    log_dir: &Path,
) -> Result<(), KitError> {
    let coordinator_key = log_dir.join("data").join("bundle-signing.pub");
    if coordinator_key.is_file() {
        command.env("VIGIL_BUNDLE_KEY", &coordinator_key);
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--join-token") {
        return Ok(());
    }
    let Some(host) = value("--host") else {
        return Ok(());
    };
    let data_dir = match value("--data-dir") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = log_dir.join(format!("agent-data-{host}"));
            args.extend(["--data-dir".to_string(), dir.display().to_string()]);
            dir
        }
    };
    Launcher::Tests.enroll_directly(&host, &data_dir, &log_dir.join("data"))
}
