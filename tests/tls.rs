//! TLS, with real processes: after `vigil-coordinator certs init` the
//! coordinator serves HTTPS and MQTT over TLS only:
//! - plaintext HTTP and MQTT clients cannot connect (and are counted), clients that trust
//!   the CA can;
//! - an agent given the CA enrolls over HTTPS and reports over `mqtts://`;
//! - an agent given another CA refuses the coordinator: its enrollment stops with a clear
//!   error, and an enrolled agent never connects to the broker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::MqttOptions;
use serde_json::Value;
use vigil_shared::broker_url::BrokerUrl;
use vigil_shared::tls::ClientTls;
use vigil_tests::{bin, free_port, wait_for, KitError, Proc, TestDir};

const WAIT: Duration = Duration::from_secs(30);

/// A coordinator serving TLS, and how to reach it.
struct TlsCoordinator {
    _proc: Proc,
    /// `https://127.0.0.1:PORT`.
    https: String,
    /// The plaintext-scheme URL of the same port.
    http: String,
    /// `mqtts://127.0.0.1:PORT`.
    broker: BrokerUrl,
    /// The CA its certificate chains to.
    ca: PathBuf,
    /// The admin REST token.
    token: String,
    /// A client trusting `ca`.
    client: reqwest::Client,
}

/// `vigil-coordinator certs init` in `data_dir`; returns the CA certificate's path.
fn certs_init(data_dir: &Path) -> PathBuf {
    let output = Command::new(bin("vigil-coordinator"))
        .args(["certs", "init", "--name", "coordinator.test", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run certs init");
    assert!(output.status.success(), "certs init: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("coordinator.test"), "{stdout}");
    let ca = data_dir.join("tls/ca.pem");
    assert!(ca.is_file());
    ca
}

fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn start(dir: &TestDir) -> TlsCoordinator {
    let data = dir.path().join("data");
    let ca = certs_init(&data);
    let (http_port, mqtt_port) = (free_port(), free_port());
    let proc = Proc::start(
        "coordinator",
        &bin("vigil-coordinator"),
        &[
            "serve".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--mqtt-listen".into(),
            format!("127.0.0.1:{mqtt_port}"),
        ],
        dir.path(),
    );
    let client = client_trusting(&ca);
    let https = format!("https://127.0.0.1:{http_port}");
    wait_for("coordinator /health over HTTPS", WAIT, || {
        let (client, url) = (client.clone(), format!("{https}/health"));
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    let token = vigil_tests::read_admin_token(&data, vigil_tests::ADMIN_TOKEN_WAIT)
        .await
        .expect("admin token");
    TlsCoordinator {
        _proc: proc,
        http: format!("http://127.0.0.1:{http_port}"),
        https,
        broker: format!("mqtts://127.0.0.1:{mqtt_port}")
            .parse()
            .expect("broker URL"),
        ca,
        token,
        client,
    }
}

impl TlsCoordinator {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.https))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("HTTPS request");
        assert!(response.status().is_success(), "{path}: {response:?}");
        response.json().await.unwrap_or(Value::Null)
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.https))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn online(&self, host: &str) -> bool {
        let hosts = self.get("/api/v1/hosts").await;
        hosts["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["host"] == host && h["online"] == true)
    }

    fn join_token(&self, dir: &TestDir) -> String {
        let output = Command::new(bin("vigil-coordinator"))
            .args(["token", "create", "--join", "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .expect("token create --join");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

/// Connects with `options`: `Ok` once the broker sends CONNACK, `Err` with the failure.
async fn mqtt_connect(options: MqttOptions) -> Result<(), KitError> {
    vigil_tests::login(options).await.map(drop)
}

fn tls_failures(listener: &str) -> String {
    format!("vigil_tls_handshake_failures_total{{listener=\"{listener}\",reason=\"handshake\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_on_plaintext_clients_cannot_connect() {
    let dir = TestDir::new();
    let c = start(&dir).await;

    // HTTPS with the CA works; plain HTTP on the same port and HTTPS without the CA fail.
    assert_eq!(c.get("/health").await["status"], "healthy");
    let plain = reqwest::Client::new()
        .get(format!("{}/health", c.http))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    let untrusting = reqwest::Client::builder()
        .build()
        .expect("client")
        .get(format!("{}/health", c.https))
        .send()
        .await;
    let error = format!("{:?}", untrusting.expect_err("HTTPS without the CA"));
    assert!(error.contains("UnknownIssuer"), "{error}");

    // MQTT: the same valid login, in plaintext and over TLS.
    let plain_url = c.broker.without_tls();
    let login = |url: &BrokerUrl, tls: Option<&ClientTls>| {
        vigil_shared::mqtt::client_options(
            &format!("tls-test-{}", url.tls),
            url,
            Some("api"),
            Some(&c.token),
            tls,
        )
        .expect("options")
    };
    let refused = mqtt_connect(login(&plain_url, None)).await;
    assert!(refused.is_err(), "plaintext MQTT was accepted");
    let trusted = ClientTls::pinned(&c.ca).expect("CA");
    mqtt_connect(login(&c.broker, Some(&trusted)))
        .await
        .expect("MQTT over TLS with the CA");

    wait_for("handshake failures counted", WAIT, || async {
        (c.metric(&tls_failures("http")).await >= 2.0
            && c.metric(&tls_failures("mqtt")).await >= 1.0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_pin_the_coordinators_ca() {
    let dir = TestDir::new();
    let c = start(&dir).await;
    let other_ca = certs_init(&dir.path().join("other"));
    let agent = |host: &str, ca: &Path, extra: &[String]| {
        let mut args = vec![
            "--host".to_string(),
            host.to_string(),
            "--broker".into(),
            c.broker.to_string(),
            "--interval".into(),
            "200ms".into(),
            "--data-dir".into(),
            dir.path()
                .join(format!("agent-{host}"))
                .display()
                .to_string(),
            "--ca".into(),
            ca.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        Proc::start(host, &bin("vigil-agent"), &args, dir.path())
    };

    // The right CA: enrollment over HTTPS, reports over mqtts://.
    let join = |token: String| {
        vec![
            "--coordinator".to_string(),
            c.https.clone(),
            "--join-token".into(),
            token,
        ]
    };
    let _good = agent("tls-good", &c.ca, &join(c.join_token(&dir)));
    wait_for("tls-good online over mqtts://", WAIT, || async {
        c.online("tls-good").await.then_some(())
    })
    .await;

    // Another CA: enrollment stops at once, naming the certificate problem.
    let mut wrong_join = agent("tls-wrong-join", &other_ca, &join(c.join_token(&dir)));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = wrong_join.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "agent with the wrong CA kept running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = agent_log(dir.path(), "tls-wrong-join");
    assert!(
        log.contains("refusing the coordinator") && log.contains("not trusted"),
        "{log}"
    );

    // An enrolled agent with another CA never connects to the broker.
    let before = c.metric(&tls_failures("mqtt")).await;
    // (Proc::start enrolls it with `vigil-coordinator agent add`.)
    let _wrong = agent("tls-wrong-broker", &other_ca, &[]);
    wait_for("the agent refusing the broker", WAIT, || async {
        agent_log(dir.path(), "tls-wrong-broker")
            .contains("refusing the broker")
            .then_some(())
    })
    .await;
    wait_for("the refused handshake counted", WAIT, || async {
        (c.metric(&tls_failures("mqtt")).await > before).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!c.online("tls-wrong-broker").await);
    let hosts = c.get("/api/v1/hosts").await;
    assert!(
        !hosts.to_string().contains("tls-wrong-broker"),
        "an agent that refused the broker has data: {hosts}"
    );
}

/// Everything agent `host` logged so far (its `Proc` log files).
fn agent_log(dir: &Path, host: &str) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("test dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&format!("{host}-")) && name.ends_with(".log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}
