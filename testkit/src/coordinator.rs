//! Starting `vigil-coordinator serve` on loopback and adopting the admin token it writes
//! on its first start.

use std::path::Path;
use std::time::Duration;

use crate::process::{free_port, Launcher, Proc};
use crate::rest::{adopt_admin_token, with_token};
use crate::wait::try_wait_for;
use crate::{or_panic, KitError};

/// How long a coordinator may take to answer `/health` after it is started.
const HEALTH_WAIT: Duration = Duration::from_secs(30);

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
    /// `<dir>/data/admin.token` (see [`adopt_admin_token`]).
    pub async fn start_coordinator(
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
        let proc = match options.open_files {
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
        try_wait_for(&url, HEALTH_WAIT, || async {
            client
                .get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await
        .map_err(|_| KitError::NotReady {
            what: format!("the coordinator's {url}"),
            timeout: HEALTH_WAIT,
            log_dir: dir.to_path_buf(),
        })?;
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
