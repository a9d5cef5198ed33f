//! Starting the real programs a benchmark measures: `vigil-coordinator serve`,
//! `vigil-agent` and Mosquitto, each as its own process on loopback, stopped when dropped.
//!
//! Binaries are looked up beside the running `vigil-sim` executable (all three are built
//! into the same `target/<profile>/` directory by `cargo build --release`).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;
use vigil_shared::broker_url::BrokerUrl;

use crate::enroll::{AgentLogin, Enroller};

/// Why a process could not be started or did not come up.
#[derive(Debug, Error)]
pub enum ProcError {
    /// The program is not where it was looked for.
    #[error("cannot find `{name}` (looked at {}); build it first: cargo build --release --bins", path.display())]
    Missing {
        /// The program's name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Spawning failed.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process did not become ready in time.
    #[error("{what} was not ready after {timeout:?} (see its log in {})", log_dir.display())]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
        /// Where its log is.
        log_dir: PathBuf,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Starts `program` with `args`, logging to `<log_dir>/<name>.log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Proc, ProcError> {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|source| ProcError::Write {
            path: log_path.clone(),
            source,
        })?;
        let err = log.try_clone().map_err(|source| ProcError::Write {
            path: log_path,
            source,
        })?;
        let child = Command::new(program)
            .args(args)
            .env(
                "VIGIL_LOG",
                std::env::var("VIGIL_LOG").unwrap_or("warn".into()),
            )
            .stdout(log)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| ProcError::Spawn {
                program: program.to_path_buf(),
                source,
            })?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit, then kills it.
    pub fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            "{} did not exit within 10 s of SIGTERM; killing it",
            self.name
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Path of a program built beside this executable.
pub fn sibling(name: &str) -> Result<PathBuf, ProcError> {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // Test binaries live one level deeper, in target/<profile>/deps.
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ProcError::Missing {
            name: name.to_string(),
            path: candidates[0].clone(),
        })
}

/// A running coordinator process and how to reach it.
pub struct CoordinatorProc {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    /// `mqtt://127.0.0.1:PORT`: the broker agents use.
    pub broker: String,
    /// The admin REST API token the coordinator wrote to `<data dir>/admin.token` on its
    /// first start; `None` for a coordinator that wrote none (one without API tokens).
    pub token: Option<String>,
}

impl CoordinatorProc {
    /// Enrolls `hosts` over REST with this coordinator's admin token (a join token made
    /// for them; earlier identities of the same names revoked) and returns their logins.
    pub async fn enroll(&self, hosts: &[String]) -> Result<HashMap<String, AgentLogin>, String> {
        let mut enroller = Enroller::admin(&self.http, self.token.as_deref());
        enroller.progress = hosts.len() >= 1000;
        enroller.enroll(hosts).await
    }

    /// A join token with `uses` uses, made with this coordinator's admin token.
    pub async fn join_token(&self, uses: usize) -> Result<String, String> {
        Enroller::admin(&self.http, self.token.as_deref())
            .make_join_token(uses)
            .await
    }

    /// `request` with this coordinator's admin token, if it has one.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        with_token(request, self.token.as_deref())
    }
}

/// `request` with `Authorization: Bearer <token>` when a token is given.
pub fn with_token(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// How long [`read_admin_token`] waits for the file after the coordinator answers
/// `/health`.
pub const ADMIN_TOKEN_WAIT: Duration = Duration::from_secs(3);

/// The admin token a coordinator writes to `<data_dir>/admin.token` (the token and a
/// newline) when it first starts on an empty store, waiting up to `wait` for the file;
/// `None` if it does not appear (a coordinator without API tokens) or stays empty.
pub async fn read_admin_token(data_dir: &Path, wait: Duration) -> Option<String> {
    let path = data_dir.join("admin.token");
    let deadline = Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let token = text.trim();
        // The newline ends the file; before it the write may still be under way.
        let complete = text.ends_with('\n') && !token.is_empty();
        if complete || (Instant::now() >= deadline && !token.is_empty()) {
            return Some(token.to_string());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `vigil-coordinator serve` with its data in `<dir>/data`, using `external_broker`
/// or else the embedded broker on a free port, waits for `/health`, and then (up to
/// [`ADMIN_TOKEN_WAIT`]) for the admin token it writes to `<dir>/data/admin.token`.
pub async fn start_coordinator(
    dir: &Path,
    external_broker: Option<&str>,
    extra: &[&str],
) -> Result<CoordinatorProc, ProcError> {
    let program = sibling("vigil-coordinator")?;
    let http_port = free_port();
    let mut args = vec![
        "serve".to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{http_port}"),
    ];
    let broker = match external_broker {
        Some(url) => {
            args.extend(["--broker".into(), url.to_string()]);
            url.to_string()
        }
        None => {
            let mqtt_port = free_port();
            args.extend(["--mqtt-listen".into(), format!("127.0.0.1:{mqtt_port}")]);
            format!("mqtt://127.0.0.1:{mqtt_port}")
        }
    };
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::start("coordinator", &program, &args, dir)?;
    let http = format!("http://127.0.0.1:{http_port}");
    wait_http(&format!("{http}/health"), Duration::from_secs(30), dir).await?;
    let token = read_admin_token(&dir.join("data"), ADMIN_TOKEN_WAIT).await;
    Ok(CoordinatorProc {
        proc,
        http,
        broker,
        token,
    })
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
    /// Creates `dir` and starts Mosquitto (if `via_mosquitto`) and a coordinator in it.
    pub async fn start(dir: &Path, via_mosquitto: bool) -> Result<Stack, ProcError> {
        std::fs::create_dir_all(dir).map_err(|source| ProcError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mosquitto = if via_mosquitto {
            Some(start_mosquitto(dir)?)
        } else {
            None
        };
        let coordinator =
            start_coordinator(dir, mosquitto.as_ref().map(|m| m.url.as_str()), &[]).await?;
        let broker = coordinator
            .broker
            .parse()
            .map_err(|e| ProcError::NotReady {
                what: format!("a broker URL (`{}`: {e})", coordinator.broker),
                timeout: Duration::ZERO,
                log_dir: dir.to_path_buf(),
            })?;
        Ok(Stack {
            coordinator,
            mosquitto,
            broker,
        })
    }

    /// Stops the coordinator, then the broker.
    pub fn stop(self) {
        self.coordinator.proc.stop();
        if let Some(m) = self.mosquitto {
            m.proc.stop();
        }
    }
}

/// Waits until `url` answers 2xx.
pub async fn wait_http(url: &str, timeout: Duration, log_dir: &Path) -> Result<(), ProcError> {
    let deadline = Instant::now() + timeout;
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ProcError::NotReady {
        what: url.to_string(),
        timeout,
        log_dir: log_dir.to_path_buf(),
    })
}

/// A real Mosquitto broker on a free loopback port, anonymous access allowed (agents
/// still log in with their enrolled credentials, which it ignores, and seal everything:
/// the coordinator behind it checks the seals).
pub struct Mosquitto {
    /// The process.
    pub proc: Proc,
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
}

/// Starts Mosquitto (Debian package `mosquitto`) with a config in `dir`.
pub fn start_mosquitto(dir: &Path) -> Result<Mosquitto, ProcError> {
    let candidates = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"];
    let program = candidates
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| ProcError::Missing {
            name: "mosquitto (apt-get install mosquitto)".into(),
            path: PathBuf::from(candidates[0]),
        })?;
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nlog_type error\n"
        ),
    )
    .map_err(|source| ProcError::Write {
        path: conf.clone(),
        source,
    })?;
    let proc = Proc::start(
        "mosquitto",
        &program,
        &["-c".into(), conf.display().to_string()],
        dir,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(ProcError::NotReady {
                what: format!("mosquitto on port {port}"),
                timeout: Duration::from_secs(10),
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

/// Reads one series' value from a Prometheus text page (`name{labels}` exactly as
/// printed, or `name` alone for the sum of every series of that name).
pub fn prometheus_value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series
                || (!series.contains('{')
                    && name
                        .strip_prefix(series)
                        .is_some_and(|r| r.starts_with('{')))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::prometheus_value;

    #[test]
    fn reads_one_series_or_the_sum_of_a_name() {
        let page = "# HELP x\nvigil_a_total{c=\"m\"} 3\nvigil_a_total{c=\"s\"} 4\nvigil_ab 9\n";
        assert_eq!(prometheus_value(page, "vigil_a_total{c=\"m\"}"), 3.0);
        assert_eq!(prometheus_value(page, "vigil_a_total"), 7.0);
        assert_eq!(prometheus_value(page, "vigil_ab"), 9.0);
        assert_eq!(prometheus_value(page, "missing"), 0.0);
    }
}
