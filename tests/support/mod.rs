//! Helpers for the end-to-end tests: build and start the real binaries, pick free ports,
//! start a real Mosquitto, talk HTTP, and wait for conditions with a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod docker;
pub mod packaging;
pub mod systemd;

/// A temporary directory for one test: data dirs and process logs. If the test fails,
/// the logs are printed, so a CI failure shows what the processes said.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// A fresh directory.
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("----- {} (last 60 lines) -----", path.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

/// Path of a workspace binary, building the binaries once per test run.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
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
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/<test binary> → target/<profile>
        let exe = std::env::current_exe().expect("test binary path");
        exe.parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf()
    });
    dir.join(name)
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Starts `program` with `args`, logging to a file under `log_dir`.
    pub fn start(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = std::fs::File::create(log_dir.join(format!("{name}-{n}.log"))).expect("log file");
        let mut command = Command::new(program);
        let mut args = args.to_vec();
        if program.ends_with("vigil-agent") {
            // Agents trust the coordinator the test started in the same directory (its
            // public key, written at start-up): commands to agents are signed with it.
            let coordinator_key = log_dir.join("data").join("bundle-signing.pub");
            if coordinator_key.is_file() {
                command.env("VIGIL_BUNDLE_KEY", &coordinator_key);
            }
            provision_agent(&mut args, log_dir);
        }
        let child = command
            .args(&args)
            .env("VIGIL_LOG", "info")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGKILL`, …).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within 10 s of SIGTERM", self.name);
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

/// A running coordinator process and how to reach it.
pub struct CoordinatorProc {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    /// `mqtt://127.0.0.1:PORT`: the broker agents should use.
    pub broker: String,
    /// The admin REST API token the coordinator wrote to `<dir>/data/admin.token`, if it
    /// wrote one (a coordinator without API tokens writes none). The HTTP helpers here
    /// send it by themselves; see [`authorized`] for requests built elsewhere.
    pub token: Option<String>,
}

/// Gives an agent about to start (its arguments `args`) an identity enrolled with the
/// coordinator store in `<log_dir>/data` (`vigil-coordinator agent add`), unless it
/// enrolls itself (`--join-token`) or is not a running agent (no `--host`). Adds
/// `--data-dir <log_dir>/agent-data-<host>` when none is given.
fn provision_agent(args: &mut Vec<String>, log_dir: &Path) {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--join-token") {
        return;
    }
    let Some(host) = value("--host") else {
        return;
    };
    let data_dir = match value("--data-dir") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = log_dir.join(format!("agent-data-{host}"));
            args.extend(["--data-dir".to_string(), dir.display().to_string()]);
            dir
        }
    };
    enroll_directly(&host, &data_dir, &log_dir.join("data"));
}

/// Enrolls `host` in the coordinator store under `coordinator_data` and writes its
/// identity into `identity_dir` (`vigil-coordinator agent add`).
pub fn enroll_directly(host: &str, identity_dir: &Path, coordinator_data: &Path) {
    let output = Command::new(bin("vigil-coordinator"))
        .args(["agent", "add", host, "--identity-dir"])
        .arg(identity_dir)
        .arg("--data-dir")
        .arg(coordinator_data)
        .output()
        .expect("run vigil-coordinator agent add");
    assert!(
        output.status.success(),
        "agent add {host}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test's stand-in for an agent: an enrolled identity, its MQTT login and its sealer,
/// for publishing agent messages by hand.
pub struct RawAgent {
    /// Seals messages as this host.
    pub sealer: vigil_shared::agent_auth::Sealer,
    /// MQTT options for `broker` with the host's login and its agent's client id
    /// (`vigil-agent-{host}`: the only other id the embedded broker admits for the host
    /// is its outbox's).
    pub options: rumqttc::MqttOptions,
}

impl RawAgent {
    /// Enrolls `host` with the coordinator store in `<dir>/data` and prepares its login to
    /// `broker` (`mqtt://127.0.0.1:PORT`).
    pub fn enroll(dir: &Path, host: &str, broker: &str) -> RawAgent {
        let identity_dir = dir.join(format!("raw-identity-{host}"));
        enroll_directly(host, &identity_dir, &dir.join("data"));
        let identity = vigil_shared::enrollment::Identity::load(&identity_dir)
            .expect("read identity")
            .expect("identity written");
        let sealer = vigil_shared::agent_auth::Sealer::new(host, identity.key().expect("key"));
        let mut options = rumqttc::MqttOptions::new(
            vigil_shared::mqtt::agent_client_id(host),
            "127.0.0.1",
            broker_port(broker),
        );
        options.set_credentials(identity.mqtt_username, identity.mqtt_password);
        options.set_max_packet_size(2 << 20, 2 << 20);
        RawAgent { sealer, options }
    }

    /// `message` encoded and sealed for `channel`: the payload to publish.
    pub fn seal<T: vigil_shared::wire::WireMessage>(
        &self,
        channel: vigil_shared::topics::AgentChannel,
        message: &T,
    ) -> Vec<u8> {
        self.sealer
            .seal(channel, vigil_shared::wire::encode(message))
    }
}

/// The port of `mqtt://127.0.0.1:PORT`.
pub fn broker_port(broker: &str) -> u16 {
    broker
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("broker port")
}

/// MQTT options for an integration client of `broker`: on a coordinator's embedded
/// broker it logs in as `api` with the coordinator's admin token (registered by
/// [`start_coordinator`]); on Mosquitto, anonymously.
pub fn client_options(broker: &str, id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", broker_port(broker));
    if let Some(token) = broker_token(broker) {
        options.set_credentials("api", token);
    }
    options.set_max_packet_size(2 << 20, 2 << 20);
    options
}

/// Admin tokens by embedded broker URL.
static BROKER_TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The admin token of the coordinator whose embedded broker is `broker`.
pub fn broker_token(broker: &str) -> Option<String> {
    let tokens = BROKER_TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens
        .iter()
        .find(|(b, _)| b == broker)
        .map(|(_, t)| t.clone())
}

/// The coordinators' admin tokens, by base URL (`http://127.0.0.1:PORT`): every HTTP
/// helper sends the token of the coordinator its URL points at.
static TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Remembers `token` as the one to send to URLs under `http` (`http://127.0.0.1:PORT`).
pub fn register_token(http: &str, token: &str) {
    let base = http.trim_end_matches('/').to_string();
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.retain(|(b, _)| *b != base);
    tokens.push((base, token.to_string()));
}

/// The registered token for `url`, if it lies under a registered base URL.
pub fn token_for(url: &str) -> Option<String> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens
        .iter()
        .find(|(base, _)| {
            url.strip_prefix(base.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
        })
        .map(|(_, token)| token.clone())
}

/// `request` (to `url`) with `Authorization: Bearer <token>` when a coordinator's token
/// is registered for `url`, else unchanged.
pub fn authorized(url: &str, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match token_for(url) {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Waits up to 3 s for the admin token a coordinator with its data in `data_dir` writes
/// to `admin.token` on its first start, and registers it for `http`. `None` when the
/// file does not appear (a coordinator without API tokens): requests then carry none.
pub async fn adopt_admin_token(data_dir: &Path, http: &str) -> Option<String> {
    let token =
        vigil_sim::procs::read_admin_token(data_dir, vigil_sim::procs::ADMIN_TOKEN_WAIT).await;
    if let Some(token) = &token {
        register_token(http, token);
    }
    token
}

/// Starts `vigil-coordinator serve` on `<dir>/data`, with the embedded broker on a free
/// port unless `external_broker` is given, waits for `/health`, and then adopts its admin
/// token (see [`adopt_admin_token`]).
pub async fn start_coordinator(
    dir: &TestDir,
    external_broker: Option<&str>,
    extra: &[&str],
) -> CoordinatorProc {
    start_coordinator_limited(dir, external_broker, extra, None).await
}

/// [`start_coordinator`] with the soft open-file limit (`ulimit -Sn`) set to
/// `open_files` for the coordinator process, when given.
pub async fn start_coordinator_limited(
    dir: &TestDir,
    external_broker: Option<&str>,
    extra: &[&str],
    open_files: Option<u64>,
) -> CoordinatorProc {
    let data_dir = dir.path().join("data");
    let http_port = free_port();
    let mut args = vec![
        "serve".to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
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
    let proc = match open_files {
        None => Proc::start("coordinator", &bin("vigil-coordinator"), &args, dir.path()),
        Some(limit) => {
            let mut shell = vec![
                "-c".to_string(),
                format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""),
                bin("vigil-coordinator").display().to_string(),
            ];
            shell.extend(args);
            Proc::start("coordinator", Path::new("/bin/sh"), &shell, dir.path())
        }
    };
    let http = format!("http://127.0.0.1:{http_port}");
    let url = format!("{http}/health");
    wait_for("coordinator /health", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    let token = adopt_admin_token(&data_dir, &http).await;
    if let (None, Some(token)) = (external_broker, &token) {
        let mut tokens = BROKER_TOKENS.lock().unwrap_or_else(|e| e.into_inner());
        tokens.push((broker.clone(), token.clone()));
    }
    CoordinatorProc {
        proc,
        http,
        broker,
        token,
    }
}

/// Starts `vigil-agent` reporting as `host` to `broker` every 200 ms.
pub fn start_agent(host: &str, broker: &str, labels: &[&str], log_dir: &Path) -> Proc {
    let mut args = vec![
        "--host".to_string(),
        host.to_string(),
        "--broker".into(),
        broker.to_string(),
        "--interval".into(),
        "200ms".into(),
    ];
    for label in labels {
        args.extend(["--label".to_string(), label.to_string()]);
    }
    Proc::start(
        &format!("agent-{host}"),
        &bin("vigil-agent"),
        &args,
        log_dir,
    )
}

/// A real Mosquitto broker on a free port, anonymous access allowed on loopback.
pub struct Mosquitto {
    /// The process.
    pub proc: Proc,
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
}

/// Starts Mosquitto (Debian package `mosquitto`; `.ci/run` installs it), anonymous access
/// allowed.
pub fn start_mosquitto(dir: &Path) -> Mosquitto {
    start_mosquitto_with(dir, "allow_anonymous true\n")
}

/// Starts Mosquitto on a free loopback port with `settings` (mosquitto.conf lines) added.
pub fn start_mosquitto_with(dir: &Path, settings: &str) -> Mosquitto {
    start_mosquitto_on(dir, free_port(), settings)
}

/// [`start_mosquitto_with`] on a given port of 127.0.0.1.
pub fn start_mosquitto_on(dir: &Path, port: u16, settings: &str) -> Mosquitto {
    let program = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is not installed: apt-get install mosquitto (see .ci/run)");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\npersistence false\n{settings}"),
    )
    .expect("write mosquitto.conf");
    let proc = Proc::start(
        "mosquitto",
        &program,
        &["-c".into(), conf.display().to_string()],
        dir,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Mosquitto {
        proc,
        url: format!("mqtt://127.0.0.1:{port}"),
    }
}

/// Polls `probe` every 50 ms until it yields `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs a URL and returns status and JSON body.
pub async fn get_json(url: &str) -> (u16, Value) {
    let response = authorized(url, reqwest::Client::new().get(url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// POSTs a raw body as JSON and returns status and JSON body.
pub async fn post_raw(url: &str, body: &str) -> (u16, Value) {
    let response = authorized(url, reqwest::Client::new().post(url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// GETs `/metrics` and returns the value of one sample line (`name{labels}`), 0 if absent.
pub async fn metric(http: &str, series: &str) -> f64 {
    let url = format!("{http}/metrics");
    let text = authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    vigil_sim::procs::prometheus_value(&text, series)
}

/// The host entry from `/api/v1/hosts`, if the host is known.
pub async fn host_entry(http: &str, host: &str) -> Option<Value> {
    let (_, body) = get_json(&format!("{http}/api/v1/hosts")).await;
    body["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
}

/// Sends `method` (`PUT`, `DELETE`, …) to a URL with a raw JSON body (empty for none), and
/// returns status and JSON body.
pub async fn send_raw(method: &str, url: &str, body: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .unwrap_or_else(|e| panic!("bad method {method}: {e}"));
    let response = authorized(url, reqwest::Client::new().request(method.clone(), url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// PUTs a raw body as JSON and returns status and JSON body.
pub async fn put_raw(url: &str, body: &str) -> (u16, Value) {
    send_raw("PUT", url, body).await
}

/// DELETEs a URL and returns status and JSON body.
pub async fn delete(url: &str) -> (u16, Value) {
    send_raw("DELETE", url, "").await
}

/// A raw MQTT client for the bundle tests: connects to `broker` (`mqtt://127.0.0.1:PORT`)
/// as `id`, subscribes to `filter` (waiting for the SUBACK), and forwards every incoming
/// publish as `(topic, payload)`.
pub async fn bundle_subscriber(
    broker: &str,
    id: &str,
    filter: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let mut options = client_options(broker, id);
    options.set_keep_alive(Duration::from_secs(30));
    subscriber(options, filter).await
}

/// Connects with `options`, subscribes to `filter` (waiting for the SUBACK), and forwards
/// every incoming publish as `(topic, payload)`.
pub async fn subscriber(
    options: rumqttc::MqttOptions,
    filter: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
    let mut subacked_tx = Some(subacked_tx);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subacked_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect)) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), subacked)
        .await
        .expect("SUBACK in time")
        .expect("event loop alive");
    (client, rx)
}
