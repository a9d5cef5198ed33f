//! Starting a real Mosquitto broker (Debian package `mosquitto`) on loopback, with the
//! settings a test or benchmark needs (anonymous access, a password file, an ACL, …).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{free_port, Launcher, Proc};
use crate::{or_panic, KitError};

/// How long Mosquitto may take to listen after it is started.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// A running Mosquitto.
pub struct Mosquitto {
    /// The process.
    pub proc: Proc,
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
}

impl Launcher {
    /// Starts Mosquitto listening on `port` of 127.0.0.1, without persistence, with the
    /// queue settings Vigil's README recommends (the coordinator acknowledges deliveries
    /// only once stored, so it wants a wide in-flight window, and a persistent session
    /// that holds what arrives while it restarts) and `settings` (`mosquitto.conf` lines,
    /// each ending in a newline) added; its config and log go to `dir`. Returns once the
    /// port accepts connections.
    pub fn start_mosquitto(
        self,
        dir: &Path,
        port: u16,
        settings: &str,
    ) -> Result<Mosquitto, KitError> {
        let candidates = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"];
        let program = candidates
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| KitError::Missing {
                name: "mosquitto".into(),
                path: PathBuf::from(candidates[0]),
                hint: "install it: apt-get install mosquitto (see .ci/run)",
            })?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\npersistence false\n\
                 max_inflight_messages 1000\nmax_queued_messages 100000\n{settings}"
            ),
        )
        .map_err(|source| KitError::Write {
            path: conf.clone(),
            source,
        })?;
        let proc = self.start(
            "mosquitto",
            &program,
            &["-c".into(), conf.display().to_string()],
            dir,
        )?;
        let deadline = Instant::now() + LISTEN_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(KitError::NotReady {
                    what: format!("mosquitto on port {port}"),
                    timeout: LISTEN_WAIT,
                    log_dir: dir.to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mosquitto {
            proc,
            url: format!("mqtt://127.0.0.1:{port}"),
        })
    }
}

/// Starts Mosquitto for a test on a free port, anonymous access allowed.
pub fn start_mosquitto(dir: &Path) -> Mosquitto {
    start_mosquitto_with(dir, "allow_anonymous true\n")
}

/// Starts Mosquitto for a test on a free port with `settings` (mosquitto.conf lines).
pub fn start_mosquitto_with(dir: &Path, settings: &str) -> Mosquitto {
    start_mosquitto_on(dir, free_port(), settings)
}

/// [`start_mosquitto_with`] on a given port of 127.0.0.1.
pub fn start_mosquitto_on(dir: &Path, port: u16, settings: &str) -> Mosquitto {
    or_panic(Launcher::Tests.start_mosquitto(dir, port, settings))
}
