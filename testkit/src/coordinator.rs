//! Starting `vigil-coordinator serve` on loopback and adopting the admin token it writes
//! on its first start.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::process::{free_port, Launcher, Proc};
use crate::rest::{adopt_admin_token, with_token};
use crate::{or_panic, KitError};

/// How long a coordinator may take to answer `/health` after it is started.
const HEALTH_WAIT: Duration = Duration::from_secs(30);

/// How many times a coordinator that exits before it is ready is started (on new ports).
const START_ATTEMPTS: u32 = 3;

/// How to start a coordinator; the default is on its embedded broker, with no more flags.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoordinatorOptions<'a> {
    /// The broker to use (`mqtt://…`) instead of the embedded one on a free port.
    pub external_broker: Option<&'a str>,
    /// More `serve` flags.
    pub extra: &'a [&'a str],
    /// The soft open-file limit (`ulimit -Sn`) of the coordinator process, if one is set.
    pub open_files: Option<u64>,
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
    /// first start; `None` for a coordinator that wrote none (one without API tokens). The
    /// kit's HTTP helpers send it by themselves (see [`crate::rest::authorized`]).
    pub token: Option<String>,
}

impl CoordinatorProc {
    /// `request` with this coordinator's admin token, if it has one.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        with_token(request, self.token.as_deref())
    }
}

impl Launcher {
    /// Starts `vigil-coordinator serve` with its data in `<dir>/data` and its log in `dir`,
    /// waits for `/health`, and then adopts the admin token it writes to
    /// `<dir>/data/admin.token` (see [`adopt_admin_token`]). Its ports are picked free
    /// just before it starts, so another process can take one first: a coordinator that
    /// exits before it answers is started again on new ports, [`START_ATTEMPTS`] times in
    /// all ([`KitError::Exited`] after the last).
    pub async fn start_coordinator(
        self,
        dir: &Path,
        options: &CoordinatorOptions<'_>,
    ) -> Result<CoordinatorProc, KitError> {
        let mut attempt = 1;
        loop {
            match self.start_coordinator_once(dir, options).await {
                Err(KitError::Exited { what, status, log }) if attempt < START_ATTEMPTS => {
                    // Most likely a port taken between `free_port` and the bind: try again
                    // on new ones, and say so with the end of its log (the simulator's
                    // next try writes the same file).
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
                    eprintln!(
                        "vigil-testkit: {what} exited ({status}) before it was ready; starting it again on new ports. The end of {}:\n{tail}",
                        log.display()
                    );
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    /// One try of [`Launcher::start_coordinator`], on ports free a moment ago.
    async fn start_coordinator_once(
        self,
        dir: &Path,
        options: &CoordinatorOptions<'_>,
    ) -> Result<CoordinatorProc, KitError> {
        let program = self.program("vigil-coordinator")?;
        let data_dir = dir.join("data");
        let http_port = free_port();
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{http_port}"),
        ];
        let broker = match options.external_broker {
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
        args.extend(options.extra.iter().map(|s| s.to_string()));
        let mut proc = match options.open_files {
            None => self.start("coordinator", &program, &args, dir)?,
            Some(limit) => {
                let mut shell = vec![
                    "-c".to_string(),
                    format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""),
                    program.display().to_string(),
                ];
                shell.extend(args);
                self.start("coordinator", Path::new("/bin/sh"), &shell, dir)?
            }
        };
        let http = format!("http://127.0.0.1:{http_port}");
        let url = format!("{http}/health");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + HEALTH_WAIT;
        loop {
            let healthy = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                break;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(KitError::Exited {
                    what: format!("the coordinator for {url}"),
                    status,
                    log: proc.log.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(KitError::NotReady {
                    what: format!("the coordinator's {url}"),
                    timeout: HEALTH_WAIT,
                    log_dir: dir.to_path_buf(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = adopt_admin_token(&data_dir, &http).await;
        if let (None, Some(token)) = (options.external_broker, &token) {
            crate::mqtt::register_broker_token(&broker, token);
        }
        Ok(CoordinatorProc {
            proc,
            http,
            broker,
            token,
        })
    }
}

/// Starts a coordinator for a test (see [`Launcher::start_coordinator`]): on
/// `external_broker` if given, with `extra` flags.
pub async fn start_coordinator(
    dir: impl AsRef<Path>,
    external_broker: Option<&str>,
    extra: &[&str],
) -> CoordinatorProc {
    start_coordinator_limited(dir, external_broker, extra, None).await
}

/// [`start_coordinator`] with the soft open-file limit (`ulimit -Sn`) set to
/// `open_files` for the coordinator process, when given.
pub async fn start_coordinator_limited(
    dir: impl AsRef<Path>,
    external_broker: Option<&str>,
    extra: &[&str],
    open_files: Option<u64>,
) -> CoordinatorProc {
    let options = CoordinatorOptions {
        external_broker,
        extra,
        open_files,
    };
    or_panic(
        Launcher::Tests
            .start_coordinator(dir.as_ref(), &options)
            .await,
    )
}
