//! Agents speak only for their own host, with real processes and brokers:
//! - the embedded broker refuses clients without credentials, with a wrong password, or
//!   with another agent's client id;
//! - an agent enrolls with a one-time join token and reports with the token's labels;
//! - with host A's credentials, metrics, status and action events published as host B are
//!   refused by the coordinator and counted, and B's data is unchanged — on the embedded
//!   broker and on Mosquitto;
//! - a revoked agent's messages are refused within 5 s;
//! - `vigil up` enrolls its own local agent.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    ActionEvent, ActionState, AgentState, AgentStatus, MetricBatch, PolicyRunnerStatus,
    QueueStatus, Sample,
};
use vigil_tests::{
    bin, connected, free_port, get_json, host_entry, metric, post_raw, start_agent,
    start_agent_with, start_coordinator, start_mosquitto, wait_for, Proc, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

fn batch(host: &str, seq: u64, name: &str) -> MetricBatch {
    MetricBatch {
        host: host.into(),
        seq,
        sent_at_ms: now_ms(),
        labels: vec![],
        samples: vec![Sample {
            name: name.into(),
            value: 42.0,
            ts_ms: now_ms(),
            tags: vec![],
        }],
    }
}

fn online_status(host: &str) -> AgentStatus {
    AgentStatus {
        host: host.into(),
        state: AgentState::Online,
        agent_version: "forged".into(),
        started_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        interval_ms: 1000,
        labels: vec![("forged".into(), "yes".into())],
        bundles: vec![],
        bundle_error: None,
        remediation_paused: true,
        detail: Some("forged".into()),
        policies: PolicyRunnerStatus::default(),
        queue: QueueStatus::default(),
        delivery: None,
    }
}

fn action(host: &str) -> ActionEvent {
    ActionEvent {
        id: ulid::Ulid::generate().to_string(),
        host: host.into(),
        policy: None,
        target: "nginx.service".into(),
        action: "restart".into(),
        state: ActionState::Completed,
        attempt: 1,
        dry_run: false,
        detail: Some("forged".into()),
        created_at_ms: now_ms(),
        at_ms: now_ms(),
        max_attempts: 1,
        executor: Some("systemd".into()),
        step: None,
        params: None,
    }
}

/// `GET /api/v1/hosts/{host}` (with `metric_count` and the latest values), if known.
async fn host_detail(http: &str, host: &str) -> Option<Value> {
    let (status, body) = get_json(&format!("{http}/api/v1/hosts/{host}")).await;
    (status == 200).then_some(body)
}

/// Waits until `host` is online with its status in (metrics stored first do not bring
/// it) and at least one metric stored.
async fn wait_reporting(http: &str, host: &str) -> Value {
    wait_for(&format!("{host} online and reporting"), WAIT, || async {
        host_detail(http, host).await.filter(|h| {
            h["online"] == true
                && h["agent_version"].is_string()
                && h["metric_count"].as_u64() > Some(0)
        })
    })
    .await
}

fn rejected(channel: &str, reason: &str) -> String {
    format!("vigil_mqtt_messages_rejected_total{{channel=\"{channel}\",reason=\"{reason}\"}}")
}

async fn actions_of(http: &str, host: &str) -> Vec<Value> {
    let (_, body) = get_json(&format!("{http}/api/v1/actions?host={host}")).await;
    body["actions"].as_array().cloned().unwrap_or_default()
}

/// The parts of a host entry an impostor must not be able to change.
fn fingerprint(entry: &Value) -> Value {
    serde_json::json!({
        "state": entry["state"],
        "last_seen": entry["last_seen"],
        "labels": entry["labels"],
        "agent_version": entry["agent_version"],
        "remediation_paused": entry["remediation_paused"],
        "detail": entry["detail"],
    })
}

/// Host A (a raw client with A's real credentials) publishes as host B, a real agent
/// that has stopped: every forgery is refused and counted, B's data stays as it was.
async fn impersonation_is_refused(external_broker: Option<&str>) {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, external_broker, &[]).await;
    let b = start_agent("idt-b", &c.broker, &[], dir.path());
    wait_reporting(&c.http, "idt-b").await;
    b.stop();
    let before = wait_for("idt-b offline", WAIT, || async {
        host_entry(&c.http, "idt-b")
            .await
            .filter(|h| h["state"] == "offline")
    })
    .await;
    let before_detail = host_detail(&c.http, "idt-b").await.expect("idt-b known");

    let a = RawAgent::enroll(dir.path(), "idt-a", &c.broker);
    let client = connected(a.options.clone())
        .await
        .expect("A's own credentials are accepted");
    // A speaking for itself works.
    client
        .publish(
            topics::agent("idt-a", AgentChannel::Metrics),
            QoS::AtLeastOnce,
            false,
            a.seal(AgentChannel::Metrics, &batch("idt-a", 1, "own_metric")),
        )
        .await
        .expect("publish");
    wait_for("idt-a's own metric stored", WAIT, || async {
        host_detail(&c.http, "idt-a")
            .await
            .filter(|h| h["metric_count"].as_u64() > Some(0))
    })
    .await;

    // On its own topic, a message whose content claims B.
    client
        .publish(
            topics::agent("idt-a", AgentChannel::Status),
            QoS::AtLeastOnce,
            false,
            a.seal(AgentChannel::Status, &online_status("idt-b")),
        )
        .await
        .expect("publish");
    let series = rejected("status", "host_mismatch");
    wait_for(&series, WAIT, || async {
        (metric(&c.http, &series).await >= 1.0).then_some(())
    })
    .await;

    // A publishes as B: on B's topics, with B in the message, sealed with A's key.
    let forgeries = [
        (
            AgentChannel::Metrics,
            a.seal(AgentChannel::Metrics, &batch("idt-b", 99, "forged_metric")),
        ),
        (
            AgentChannel::Status,
            a.seal(AgentChannel::Status, &online_status("idt-b")),
        ),
        (
            AgentChannel::Actions,
            a.seal(AgentChannel::Actions, &action("idt-b")),
        ),
    ];
    for (channel, payload) in &forgeries {
        client
            .publish(
                topics::agent("idt-b", *channel),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .expect("publish");
    }
    if external_broker.is_some() {
        // Mosquitto without an ACL relays them; the coordinator's seal check refuses them.
        for channel in ["metrics", "status", "actions"] {
            let series = rejected(channel, "bad_signature");
            wait_for(&series, WAIT, || async {
                (metric(&c.http, &series).await >= 1.0).then_some(())
            })
            .await;
        }
    } else {
        // The embedded broker's front closes the connection at the first one.
        let series = r#"vigil_mqtt_acl_refusals_total{reason="foreign_topic",role="agent"}"#;
        wait_for(series, WAIT, || async {
            (metric(&c.http, series).await >= 1.0).then_some(())
        })
        .await;
    }
    // Give anything that got through time to be written, then compare.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = host_entry(&c.http, "idt-b").await.expect("idt-b known");
    let after_detail = host_detail(&c.http, "idt-b").await.expect("idt-b known");
    assert_eq!(
        fingerprint(&after),
        fingerprint(&before),
        "B's entry changed"
    );
    assert_eq!(after_detail["metric_count"], before_detail["metric_count"]);
    assert!(
        !after_detail.to_string().contains("forged_metric"),
        "a forged sample was stored for B: {after_detail}"
    );
    assert!(actions_of(&c.http, "idt-b").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_hosts_credentials_cannot_speak_for_it_on_the_embedded_broker() {
    impersonation_is_refused(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_hosts_credentials_cannot_speak_for_it_on_mosquitto() {
    let dir = TestDir::new();
    let mosquitto = start_mosquitto(dir.path());
    impersonation_is_refused(Some(&mosquitto.url)).await;
    mosquitto.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_refuses_anonymous_wrong_and_borrowed_logins() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let a = RawAgent::enroll(dir.path(), "idt-login", &c.broker);
    let port = vigil_tests::broker_port(&c.broker);

    let anonymous = MqttOptions::new("someone", "127.0.0.1", port);
    assert!(
        connected(anonymous).await.is_err(),
        "anonymous client admitted"
    );

    let mut wrong = a.options.clone();
    wrong.set_credentials("idt-login", "not-the-password");
    assert!(connected(wrong).await.is_err(), "wrong password admitted");

    // A's real login, but B's client id (which would push B off the broker).
    let mut borrowed = a.options.clone();
    borrowed.set_client_id("vigil-agent-someone-else".into());
    assert!(
        connected(borrowed).await.is_err(),
        "borrowed client id admitted"
    );

    let mut unknown = a.options.clone();
    unknown.set_client_id("vigil-agent-ghost".into());
    unknown.set_credentials("ghost", "whatever");
    assert!(connected(unknown).await.is_err(), "unknown user admitted");

    connected(a.options.clone())
        .await
        .expect("the real login is admitted");
    for reason in ["bad_password", "client_id", "unknown_user"] {
        let series = format!("vigil_mqtt_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(
            metric(&c.http, &series).await >= 1.0,
            "{series} not counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_enrolls_with_a_one_time_join_token() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let data = dir.path().join("data");
    let output = Command::new(bin("vigil-coordinator"))
        .args([
            "token",
            "create",
            "--join",
            "--label",
            "role=web",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("token create --join");
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(token.starts_with("vigil_join_"), "{token}");

    let agent_data = dir.path().join("agent-joined");
    let _agent = start_agent_with(
        "idt-joined",
        &c.broker,
        "200ms",
        &[
            "--data-dir",
            &agent_data.display().to_string(),
            "--coordinator",
            &c.http,
            "--join-token",
            &token,
        ],
        dir.path(),
    );
    let entry = wait_reporting(&c.http, "idt-joined").await;
    assert_eq!(entry["labels"]["role"], "web", "{entry}");
    let identity = agent_data.join("identity.json");
    let mode = std::fs::metadata(&identity)
        .expect("identity file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");

    // The token is spent: a second enrollment with it is refused.
    let body = serde_json::json!({
        "join_token": token,
        "host": "idt-second",
        "public_key": vigil_shared::agent_auth::AgentKey::generate().public_hex(),
    });
    let (status, answer) = post_raw(
        &format!("{}/api/v1/agents/enroll", c.http),
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        metric(
            &c.http,
            "vigil_agent_enrollments_total{result=\"bad_token\"}"
        )
        .await
            >= 1.0
    );
    let (_, agents) = get_json(&format!("{}/api/v1/agents", c.http)).await;
    assert!(
        agents["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["host"] == "idt-joined")),
        "{agents}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_refused_within_five_seconds() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let a = RawAgent::enroll(dir.path(), "idt-revoked", &c.broker);
    let client = connected(a.options.clone()).await.expect("connect");
    let topic = topics::agent("idt-revoked", AgentChannel::Metrics);
    let sealer = std::sync::Arc::new(a);
    let publisher = {
        let (client, sealer, topic) = (client.clone(), sealer.clone(), topic.clone());
        tokio::spawn(async move {
            for seq in 1.. {
                let payload =
                    sealer.seal(AgentChannel::Metrics, &batch("idt-revoked", seq, "beat"));
                if client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_for("idt-revoked reporting", WAIT, || async {
        host_detail(&c.http, "idt-revoked")
            .await
            .filter(|h| h["metric_count"].as_u64() > Some(0))
    })
    .await;

    let output = Command::new(bin("vigil-coordinator"))
        .args(["agent", "revoke", "idt-revoked", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("agent revoke");
    assert!(output.status.success(), "{output:?}");
    let revoked_at = Instant::now();
    let series = rejected("metrics", "revoked");
    wait_for(
        "messages refused as revoked",
        Duration::from_secs(5),
        || async { (metric(&c.http, &series).await >= 1.0).then_some(()) },
    )
    .await;
    let took = revoked_at.elapsed();
    println!("revocation → first message refused: {took:?}");
    assert!(took < Duration::from_secs(5));
    // The refused message ends the revoked agent's connection (its publishing stops), from
    // then on nothing more is stored, and a new login is refused. A message checked just
    // before the revocation may still be in the store writer's queue: let it land before
    // taking the reference point.
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the revoked agent's connection ends")
        .expect("publisher");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = host_entry(&c.http, "idt-revoked").await.expect("known")["last_seen"].clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        host_entry(&c.http, "idt-revoked").await.expect("known")["last_seen"],
        seen
    );
    let mut again = sealer.options.clone();
    again.set_client_id("vigil-agent-idt-revoked-again".into());
    assert!(connected(again).await.is_err(), "revoked login admitted");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_enrolls_its_own_agent() {
    let dir = TestDir::new();
    let http_port = free_port();
    let mqtt_port = free_port();
    let data = dir.path().join("up-data");
    let _up = Proc::start(
        "up",
        &bin("vigil"),
        &[
            "up".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--mqtt-listen".into(),
            format!("127.0.0.1:{mqtt_port}"),
            "--agent-host".into(),
            "idt-up".into(),
            "--agent-interval".into(),
            "200ms".into(),
        ],
        dir.path(),
    );
    let http = format!("http://127.0.0.1:{http_port}");
    wait_for("up's admin token", WAIT, || async {
        vigil_tests::adopt_admin_token(&data, &http).await
    })
    .await;
    wait_reporting(&http, "idt-up").await;
    let mode = std::fs::metadata(data.join("identity.json"))
        .expect("identity file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Connects as `user` (password `pw-{user}`) to Mosquitto at `port`, subscribes to
/// `filter`, and returns the client and a receiver of `(topic, payload)`.
async fn mosquitto_client(
    port: u16,
    id: &str,
    user: &str,
    filter: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(user, format!("pw-{user}"));
    vigil_tests::subscriber(options, filter).await
}

/// Everything that arrives on `rx` within `quiet`.
async fn drain(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    quiet: Duration,
) -> Vec<String> {
    let mut topics = Vec::new();
    while let Ok(Some((topic, _))) = tokio::time::timeout(quiet, rx.recv()).await {
        topics.push(topic);
    }
    topics
}

/// The shipped Mosquitto ACL (`contrib/mosquitto/vigil.acl`) on a real Mosquitto with a
/// password file: an agent's writes outside its own topics and its reads of another
/// host's commands are dropped; integrations read but cannot write.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_mosquitto_acl_confines_agents_to_their_own_topics() {
    let dir = TestDir::new();
    let passwords = dir.path().join("vigil.passwd");
    for user in ["acl-a", "acl-b", "vigil-coordinator", "integrations"] {
        let mut command = Command::new("mosquitto_passwd");
        if !passwords.exists() {
            command.arg("-c");
        }
        let status = command
            .args(["-b"])
            .arg(&passwords)
            .args([user, &format!("pw-{user}")])
            .status()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(status.success());
    }
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("contrib/mosquitto/vigil.acl");
    assert!(acl.is_file(), "{}", acl.display());
    let mosquitto = vigil_tests::start_mosquitto_with(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            passwords.display(),
            acl.display()
        ),
    );
    let port = vigil_tests::broker_port(&mosquitto.url);

    let (watcher, mut seen) =
        mosquitto_client(port, "acl-watcher", "integrations", "vigil/v1/#").await;
    let (a, mut a_inbox) = mosquitto_client(
        port,
        "vigil-agent-acl-a",
        "acl-a",
        &topics::agent("acl-b", AgentChannel::Commands),
    )
    .await;
    // (Subscribed to a topic nobody writes: the client only publishes here.)
    let (coordinator, _coordinator_inbox) = mosquitto_client(
        port,
        "vigil-coordinator-acl",
        "vigil-coordinator",
        &topics::agent("acl-nobody", AgentChannel::Metrics),
    )
    .await;

    // A writes its own metrics (allowed) and B's metrics and status (dropped).
    for (host, channel) in [
        ("acl-a", AgentChannel::Metrics),
        ("acl-b", AgentChannel::Metrics),
        ("acl-b", AgentChannel::Status),
    ] {
        a.publish(
            topics::agent(host, channel),
            QoS::AtLeastOnce,
            false,
            vec![1],
        )
        .await
        .expect("publish");
    }
    // The coordinator sends B a command: A, subscribed to it, must not get it.
    coordinator
        .publish(
            topics::agent("acl-b", AgentChannel::Commands),
            QoS::AtLeastOnce,
            false,
            vec![2],
        )
        .await
        .expect("publish");
    // An integration user cannot write.
    watcher
        .publish(
            topics::agent("acl-b", AgentChannel::Metrics),
            QoS::AtLeastOnce,
            false,
            vec![3],
        )
        .await
        .expect("publish");

    let mut seen = drain(&mut seen, Duration::from_secs(2)).await;
    seen.sort();
    assert_eq!(
        seen,
        vec![
            topics::agent("acl-a", AgentChannel::Metrics),
            topics::agent("acl-b", AgentChannel::Commands),
        ],
        "what the integration user saw"
    );
    assert!(
        drain(&mut a_inbox, Duration::from_millis(500))
            .await
            .is_empty(),
        "A read B's commands"
    );
    mosquitto.proc.stop();
}
