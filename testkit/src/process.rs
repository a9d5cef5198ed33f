//! Child processes: the [`Launcher`] finds the workspace's programs and starts them with
//! their output in a log file; a [`Proc`] is killed when dropped. Free loopback ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{or_panic, KitError};

/// Who starts programs, and so how. The test suite and the simulator differ only here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// The end-to-end tests. The workspace's binaries are built once per test run
    /// (`cargo build --bins` of the agent, the coordinator, `vigil`, `vigil-sim` and
    /// `vigilctl`) and run from `target/<profile>/`. A process logs at `info` (tests read
    /// the logs) to `<dir>/<name>-<n>.log` (a test may start the same program twice). An
    /// agent is given
    /// an identity enrolled with the coordinator store in `<dir>/data` unless it enrolls
    /// itself (see [`crate::agent`]), and trusts that coordinator's signing key.
    Tests,
    /// The simulator, a command-line program: binaries are looked up beside its own
    /// executable (never built), and a process logs at `$VIGIL_LOG` or `warn` (benchmarks
    /// measure the programs, not their logging) to `<dir>/<name>.log`.
    Simulator,
}

impl Launcher {
    /// The path of the workspace program `name` (`vigil-coordinator`, `vigil-agent`, …).
    pub fn program(self, name: &str) -> Result<PathBuf, KitError> {
        match self {
            Launcher::Tests => Ok(built_binaries()?.join(name)),
            Launcher::Simulator => beside_this_program(name),
        }
    }

    /// Starts `program` with `args` as `name`, its stdout and stderr in a log file under
    /// `log_dir`, its stdin closed.
    pub fn start(
        self,
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Proc, KitError> {
        self.start_logging(name, program, args, log_dir, None)
    }

    /// [`Launcher::start`], logging at `level` (a `VIGIL_LOG` filter such as
    /// `warn,vigil_agent::timeline=debug`) instead of the launcher's own level when given.
    pub fn start_logging(
        self,
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        level: Option<&str>,
    ) -> Result<Proc, KitError> {
        let log_path = match self {
            Launcher::Tests => {
                static STARTED: AtomicUsize = AtomicUsize::new(0);
                let n = STARTED.fetch_add(1, Ordering::Relaxed);
                log_dir.join(format!("{name}-{n}.log"))
            }
            Launcher::Simulator => log_dir.join(format!("{name}.log")),
        };
        let write_error = |source| KitError::Write {
            path: log_path.clone(),
            source,
        };
        let log = std::fs::File::create(&log_path).map_err(write_error)?;
        let err = log.try_clone().map_err(write_error)?;
        let mut command = Command::new(program);
        let mut args = args.to_vec();
        let level_default = match self {
            Launcher::Tests => {
                if program.ends_with("vigil-agent") {
                    crate::agent::prepare(&mut command, &mut args, log_dir)?;
                }
                "info".to_string()
            }
            Launcher::Simulator => std::env::var("VIGIL_LOG").unwrap_or("warn".into()),
        };
        let level = level.map_or(level_default, str::to_string);
        let child = command
            .args(&args)
            .env("VIGIL_LOG", level)
            .stdout(log)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| KitError::Spawn {
                program: program.to_path_buf(),
                source,
            })?;
        Ok(Proc {
            child,
            name: name.to_string(),
            log: log_path,
        })
    }
}

/// The directory the test suite's binaries are built into, building them on the first
/// call: `target/<profile>/`, above the test binary's `deps/`.
fn built_binaries() -> Result<PathBuf, KitError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--bins",
                "-p",
                "vigil-agent",
                "-p",
                "vigil-coordinator",
                "-p",
                "vigil",
                "-p",
                "vigil-sim",
                "-p",
                "vigilctl",
            ])
            .status()
            .map_err(|e| format!("cargo does not run: {e}"))?;
        if !status.success() {
            return Err("building the binaries failed".to_string());
        }
        // target/<profile>/deps/<test binary> → target/<profile>
        let exe = std::env::current_exe().map_err(|e| format!("test binary path: {e}"))?;
        exe.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| "the test binary does not live in target/<profile>/deps".to_string())
    });
    built.clone().map_err(KitError::Failed)
}

/// Path of a program built beside the running executable (or one level up, for a test
/// binary in `target/<profile>/deps`).
fn beside_this_program(name: &str) -> Result<PathBuf, KitError> {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| KitError::Missing {
            name: name.to_string(),
            path: candidates[0].clone(),
            hint: "build it first: cargo build --release --bins",
        })
}

/// Path of a workspace binary for a test, building the binaries once per test run.
pub fn bin(name: &str) -> PathBuf {
    or_panic(Launcher::Tests.program(name))
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` the test suite's way (see [`Launcher::Tests`]), logging
    /// to a file under `log_dir`.
    pub fn start(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        or_panic(Launcher::Tests.start(name, program, args, log_dir))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGKILL`, …).
    pub fn signal(&self, signal: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit; if it does not, it is
    /// killed (when dropped, on return) and the answer is [`KitError::NotStopped`].
    pub fn try_stop(mut self) -> Result<(), KitError> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(KitError::NotStopped {
            name: self.name.clone(),
        })
    }

    /// [`Proc::try_stop`], panicking if the process did not exit within 10 s.
    pub fn stop(self) {
        or_panic(self.try_stop())
    }

    /// Kills with SIGKILL and reaps.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; another process may take it before
/// it is used, which loopback tests accept).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}
