//! Starting a real Mosquitto broker (Debian package `mosquitto`) on loopback, with the
//! settings a test or benchmark needs (anonymous access, a password file, an ACL, …);
//! and Mosquitto's own subscriber, `mosquitto_sub` (package `mosquitto-clients`), as an
//! integration listening on a broker.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// What a `mosquitto_sub -v` printed so far: (topic, payload) per message.
pub type Heard = Arc<Mutex<Vec<(String, String)>>>;

/// A running `mosquitto_sub`, killed when dropped, and what it heard.
pub struct MosquittoSub {
    child: Child,
    /// Every message it printed, in order.
    pub heard: Heard,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -v` on `broker` (`mqtt://127.0.0.1:PORT`), logged in as `user`
    /// with `password`, subscribed to `filter` at `qos` (0–2) as client `client_id`.
    /// Panics if it does not start.
    pub fn start(
        broker: &str,
        (user, password): (&str, &str),
        filter: &str,
        qos: u8,
        client_id: &str,
    ) -> MosquittoSub {
        let port = crate::mqtt::broker_port(broker).to_string();
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", password])
            .args(["-t", filter, "-v", "-q", &qos.to_string(), "-i", client_id])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub (Debian mosquitto-clients)");
        let heard = Heard::default();
        let stdout = child.stdout.take().expect("mosquitto_sub's stdout");
        let seen = Arc::clone(&heard);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((topic, payload)) = line.split_once(' ') {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.push((topic.to_string(), payload.to_string()));
                }
            }
        });
        MosquittoSub { child, heard }
    }

    /// What it heard so far.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
