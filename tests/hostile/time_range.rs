//! Times from outside, against the real coordinator: an enrolled agent sealing a status,
//! a sample or an action in year 10000 is refused (`implausible_time`) and counted, and
//! every fleet-wide read — `/api/v1/hosts`, `/api/v1/hosts/{host}`, `/api/v1/actions`, the
//! event stream and its resumption — keeps answering; REST times and TTLs out of range are
//! refused naming the field (`to`, `timestamp`, `ttl`) and `token list` keeps working; a
//! sealed message older than 5 minutes, left retained on the broker while the coordinator
//! was down, is refused (`stale`) after the restart.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::Signer as _;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use vigil_shared::agent_auth::{Authenticator, Seal, SealedMessage, MAX_CLOCK_SKEW_MS};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    self, ActionEvent, ActionState, AgentState, AgentStatus, MetricBatch, PolicyRunnerStatus,
    QueueStatus, Sample,
};
use vigil_tests::{
    authorized, connected, get_json, metric, post_raw, start_agent, start_coordinator,
    start_mosquitto, token_cli, wait_for, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);
/// 10000-01-01T00:00:00Z, epoch ms: the first time RFC 3339 cannot write.
const YEAR_10000: i64 = 253_402_300_800_000;

/// Connects with `options` and keeps the connection running; panics if refused.
async fn connect(options: MqttOptions) -> AsyncClient {
    connected(options)
        .await
        .unwrap_or_else(|e| panic!("broker refused the raw agent: {e}"))
}

fn status(host: &str, version: &str, started_at_ms: i64) -> AgentStatus {
    AgentStatus {
        host: host.into(),
        state: AgentState::Online,
        agent_version: version.into(),
        started_at_ms,
        sent_at_ms: now_ms(),
        interval_ms: 1000,
        labels: vec![],
        bundles: vec![],
        bundle_error: None,
        remediation_paused: false,
        detail: None,
        policies: PolicyRunnerStatus::default(),
        queue: QueueStatus::default(),
        delivery: None,
    }
}

fn batch(host: &str, seq: u64, ts_ms: i64) -> MetricBatch {
    MetricBatch {
        host: host.into(),
        seq,
        sent_at_ms: now_ms(),
        labels: vec![],
        samples: vec![Sample {
            name: "cpu_percent".into(),
            value: 12.5,
            ts_ms,
            tags: vec![],
        }],
    }
}

fn action(host: &str, id: &str, at_ms: i64) -> ActionEvent {
    ActionEvent {
        id: id.into(),
        host: host.into(),
        policy: None,
        target: "nginx.service".into(),
        action: "restart".into(),
        state: ActionState::Completed,
        attempt: 1,
        dry_run: false,
        detail: None,
        created_at_ms: now_ms(),
        at_ms,
        max_attempts: 1,
        executor: Some("systemd".into()),
        step: None,
        params: None,
    }
}

fn rejected(channel: &str, reason: &str) -> String {
    format!("vigil_mqtt_messages_rejected_total{{channel=\"{channel}\",reason=\"{reason}\"}}")
}

fn http_rejected(route: &str, field: &str) -> String {
    format!("vigil_http_requests_rejected_total{{field=\"{field}\",route=\"{route}\"}}")
}

/// GETs `url` with `token`: status and JSON body (`Null` for an empty or broken reply).
async fn get_as(url: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An open `GET /api/v1/events` stream: reads SSE `data:` lines as JSON.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(http: &str, last_event_id: Option<u64>) -> Sse {
        let url = format!("{http}/api/v1/events");
        let mut request = authorized(&url, reqwest::Client::new().get(&url));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("GET /api/v1/events");
        assert_eq!(response.status(), 200, "the event stream answers");
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// Reads entries until one satisfies `wanted` (returning it), or panics after `WAIT`
    /// or when the stream ends.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let read = async {
            loop {
                while let Some(end) = self.buffer.find('\n') {
                    let line: String = self.buffer.drain(..=end).collect();
                    if let Some(data) = line.trim_end().strip_prefix("data:") {
                        let entry: Value =
                            serde_json::from_str(data.trim()).expect("SSE data is JSON");
                        if wanted(&entry) {
                            return entry;
                        }
                    }
                }
                match self.response.chunk().await {
                    Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                    Ok(None) => panic!("the event stream ended while waiting for {what}"),
                    Err(e) => panic!("the event stream broke while waiting for {what}: {e}"),
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what} on the event stream"))
    }
}

/// An enrolled agent seals a status, a sample and an action dated year 10000: each is
/// refused and counted, nothing of it is stored, and every reader — host list, one host,
/// actions, the live event stream and a resumed one — keeps answering, for the agent's
/// own host and for a healthy real agent's.
#[tokio::test(flavor = "multi_thread")]
async fn year_10000_from_an_enrolled_agent_is_refused_and_every_read_still_answers() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let (ok, viewer) = token_cli(
        &dir.path().join("data"),
        &["create", "--role", "viewer", "--name", "tr-viewer"],
    );
    assert!(ok, "{viewer}");
    let viewer = viewer
        .lines()
        .find(|l| l.starts_with("vigil_"))
        .expect("the token is printed")
        .to_string();
    let good = start_agent("tr-good", &c.broker, &[], dir.path());
    wait_for("tr-good online", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/tr-good", c.http)).await;
        (body["online"] == true && body["metric_count"].as_u64() > Some(0)).then_some(())
    })
    .await;

    let evil = RawAgent::enroll(dir.path(), "tr-evil", &c.broker);
    let client = connect(evil.options.clone()).await;
    let publish = |channel: AgentChannel, payload: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .publish(
                    topics::agent("tr-evil", channel),
                    QoS::AtLeastOnce,
                    channel == AgentChannel::Status,
                    payload,
                )
                .await
                .expect("publish");
        }
    };
    // First a plausible status and sample, so the host is known.
    publish(
        AgentChannel::Status,
        evil.seal(AgentChannel::Status, &status("tr-evil", "honest", now_ms())),
    )
    .await;
    publish(
        AgentChannel::Metrics,
        evil.seal(AgentChannel::Metrics, &batch("tr-evil", 1, now_ms())),
    )
    .await;
    wait_for("tr-evil known with a metric", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/tr-evil", c.http)).await;
        (body["metric_count"].as_u64() > Some(0)).then_some(())
    })
    .await;

    // A live event stream, open before the attack.
    let mut live = Sse::open(&c.http, None).await;

    // The attack: properly sealed (fresh seal time), but dated year 10000.
    publish(
        AgentChannel::Status,
        evil.seal(
            AgentChannel::Status,
            &status("tr-evil", "poisoned", YEAR_10000),
        ),
    )
    .await;
    publish(
        AgentChannel::Metrics,
        evil.seal(AgentChannel::Metrics, &batch("tr-evil", 2, YEAR_10000)),
    )
    .await;
    let poisoned_id = ulid::Ulid::generate().to_string();
    publish(
        AgentChannel::Actions,
        evil.seal(
            AgentChannel::Actions,
            &action("tr-evil", &poisoned_id, YEAR_10000),
        ),
    )
    .await;
    for channel in ["status", "metrics", "actions"] {
        let series = rejected(channel, "implausible_time");
        wait_for(&series, WAIT, || async {
            (metric(&c.http, &series).await >= 1.0).then_some(())
        })
        .await;
    }

    // A plausible action after it goes through, and reaches the stream opened before.
    let honest_id = ulid::Ulid::generate().to_string();
    publish(
        AgentChannel::Actions,
        evil.seal(
            AgentChannel::Actions,
            &action("tr-evil", &honest_id, now_ms()),
        ),
    )
    .await;
    let seen = live
        .until("the plausible action", |e| e["data"]["id"] == honest_id)
        .await;
    assert!(
        seen["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{seen}"
    );

    // Every read answers, for an admin and for a viewer, and shows nothing of year 10000.
    let admin = c.token.clone().expect("admin token");
    for token in [&admin, &viewer] {
        let (code, hosts) = get_as(&format!("{}/api/v1/hosts", c.http), token).await;
        assert_eq!(code, 200, "{hosts}");
        let list = hosts["hosts"].as_array().expect("hosts listed");
        for host in ["tr-good", "tr-evil"] {
            assert!(list.iter().any(|h| h["host"] == host), "{host}: {hosts}");
        }
        let evil_entry = list
            .iter()
            .find(|h| h["host"] == "tr-evil")
            .expect("tr-evil listed");
        assert_eq!(evil_entry["agent_version"], "honest", "{evil_entry}");
        assert!(!evil_entry.to_string().contains("9999-"), "{evil_entry}");

        let (code, one) = get_as(&format!("{}/api/v1/hosts/tr-evil", c.http), token).await;
        assert_eq!(code, 200, "{one}");
        assert!(!one.to_string().contains("9999-"), "{one}");
        let (code, one) = get_as(&format!("{}/api/v1/hosts/tr-good", c.http), token).await;
        assert_eq!(code, 200, "{one}");

        let (code, actions) = get_as(&format!("{}/api/v1/actions", c.http), token).await;
        assert_eq!(code, 200, "{actions}");
        let ids: Vec<&str> = actions["actions"]
            .as_array()
            .expect("actions listed")
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        assert!(ids.contains(&honest_id.as_str()), "{actions}");
        assert!(!ids.contains(&poisoned_id.as_str()), "{actions}");
    }

    // Resuming the stream from its start replays everything stored, up to the action.
    let mut resumed = Sse::open(&c.http, Some(0)).await;
    resumed
        .until("the plausible action, resumed", |e| {
            e["data"]["id"] == honest_id
        })
        .await;
    good.stop();
}

/// REST: a metrics query ending in year 10000 (viewer), an ingest dated year 10000
/// (operator's right, here admin) and a join token valid for 9000 years are refused
/// naming the field and counted; the host stays readable and `token list` keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn rest_times_and_ttls_out_of_range_are_refused_naming_the_field() {
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let c = start_coordinator(&dir, None, &[]).await;
    let (ok, viewer) = token_cli(
        &data,
        &["create", "--role", "viewer", "--name", "tr-viewer"],
    );
    assert!(ok, "{viewer}");
    let viewer = viewer
        .lines()
        .find(|l| l.starts_with("vigil_"))
        .expect("the token is printed")
        .to_string();

    // History query ending in year 10000.
    let (code, body) = get_as(
        &format!(
            "{}/api/v1/metrics/query?name=cpu_usage&host=tr-http&to={YEAR_10000}",
            c.http
        ),
        &viewer,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["field"], "to", "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("plausible"),
        "{body}"
    );
    let series = http_rejected("/api/v1/metrics/query", "to");
    assert_eq!(metric(&c.http, &series).await, 1.0, "{series}");
    // The same query within range answers.
    let (code, body) = get_as(
        &format!(
            "{}/api/v1/metrics/query?name=cpu_usage&host=tr-http",
            c.http
        ),
        &viewer,
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // Ingest: a plausible sample, then one dated year 10000.
    let ingest = format!("{}/api/v1/ingest", c.http);
    let (code, body) = post_raw(
        &ingest,
        r#"{"name":"cpu_usage","value":1.5,"tags":{"host":"tr-http"}}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    for timestamp in [
        YEAR_10000.to_string(),
        "\"9999-12-31T23:59:59Z\"".to_string(),
    ] {
        let (code, body) = post_raw(
            &ingest,
            &format!(
                r#"{{"name":"cpu_usage","value":2.5,"tags":{{"host":"tr-http"}},"timestamp":{timestamp}}}"#
            ),
        )
        .await;
        assert_eq!(code, 422, "{timestamp}: {body}");
        assert_eq!(body["field"], "timestamp", "{body}");
    }
    let series = http_rejected("/api/v1/ingest", "timestamp");
    assert_eq!(metric(&c.http, &series).await, 2.0, "{series}");
    assert_eq!(
        metric(
            &c.http,
            "vigil_http_ingest_rejected_total{field=\"timestamp\"}"
        )
        .await,
        2.0
    );
    let (code, host) = get_json(&format!("{}/api/v1/hosts/tr-http", c.http)).await;
    assert_eq!(code, 200, "{host}");
    let metrics = host["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 1, "{host}");
    assert_eq!(metrics[0]["value"], 1.5, "{host}");

    // A join token for 9000 years, over REST and on the command line.
    let (code, body) = post_raw(
        &format!("{}/api/v1/join-tokens", c.http),
        r#"{"name":"forever","ttl":"9000y"}"#,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["field"], "ttl", "{body}");
    let series = http_rejected("/api/v1/join-tokens", "ttl");
    assert_eq!(metric(&c.http, &series).await, 1.0, "{series}");
    let (ok, out) = token_cli(
        &data,
        &["create", "--join", "--name", "forever", "--ttl", "9000y"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("--ttl"), "{out}");
    // Ten years is allowed.
    let (code, body) = post_raw(
        &format!("{}/api/v1/join-tokens", c.http),
        r#"{"name":"decade","ttl":"3650days"}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");

    let (ok, out) = token_cli(&data, &["list"]);
    assert!(ok, "token list: {out}");
    assert!(out.contains("decade") && !out.contains("forever"), "{out}");
    let (code, body) = get_json(&format!("{}/api/v1/join-tokens", c.http)).await;
    assert_eq!(code, 200, "{body}");
}

/// Signs `seal` with the private key in `identity_dir` (what the agent's own sealer would
/// do, but with a seal time of the test's choosing) and returns the payload to publish.
fn seal_with_key(identity_dir: &Path, seal: &Seal) -> Vec<u8> {
    let identity = vigil_shared::enrollment::Identity::load(identity_dir)
        .expect("read identity")
        .expect("identity written");
    let private: [u8; 32] = hex::decode(&identity.private_key)
        .expect("hex key")
        .try_into()
        .expect("32-byte key");
    let key = ed25519_dalek::SigningKey::from_bytes(&private);
    let signed = postcard::to_stdvec(seal).expect("encode seal");
    let signature = key.sign(&signed).to_bytes().to_vec();
    wire::encode(&SealedMessage {
        host: seal.host.clone(),
        signed,
        auth: Authenticator::Signature(signature),
    })
}

/// A status of an earlier agent session, left retained on the broker while the
/// coordinator is down, is delivered first after the restart: the coordinator takes the
/// message (its seal is good) but not the status, since the host's stored status is newer
/// by session (kept in the store, not in memory); the host keeps the status it had.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_retained_message_does_not_undo_a_newer_status_after_a_coordinator_restart() {
    let dir = TestDir::new();
    let mosquitto = start_mosquitto(dir.path());
    let c = start_coordinator(&dir, Some(&mosquitto.url), &[]).await;
    let agent = RawAgent::enroll(dir.path(), "tr-retained", &c.broker);
    let client = connect(agent.options.clone()).await;
    let topic = topics::agent("tr-retained", AgentChannel::Status);
    client
        .publish(
            &topic,
            QoS::AtLeastOnce,
            true,
            agent.seal(
                AgentChannel::Status,
                &status("tr-retained", "fresh", now_ms()),
            ),
        )
        .await
        .expect("publish");
    wait_for("tr-retained known", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/tr-retained", c.http)).await;
        (body["agent_version"] == "fresh").then_some(())
    })
    .await;
    c.proc.stop();

    // While the coordinator is down, an old copy replaces the retained status.
    let sealed_at_ms = now_ms() - 2 * MAX_CLOCK_SKEW_MS;
    let old = Seal {
        domain: "vigil/agent-message/v1".into(),
        host: "tr-retained".into(),
        channel: AgentChannel::Status.as_str().into(),
        session: 1,
        rekey: 0,
        seq: 1,
        sealed_at_ms,
        will: false,
        armed_will: 0,
        delivery: None,
        body: wire::encode(&status("tr-retained", "old-retained", sealed_at_ms)),
    };
    let payload = seal_with_key(&dir.path().join("raw-identity-tr-retained"), &old);
    client
        .publish(&topic, QoS::AtLeastOnce, true, payload)
        .await
        .expect("publish retained");
    // The broker has it once a fresh subscriber gets it as retained.
    let (_watcher, mut retained) = vigil_tests::subscriber(
        vigil_tests::client_options(&mosquitto.url, "tr-watch"),
        &topic,
    )
    .await;
    tokio::time::timeout(WAIT, async {
        while let Some((_, bytes)) = retained.recv().await {
            let sealed: SealedMessage = wire::decode(&bytes).expect("sealed");
            let seal: Seal = postcard::from_bytes(&sealed.signed).expect("seal");
            if seal.sealed_at_ms == sealed_at_ms {
                return;
            }
        }
    })
    .await
    .expect("the broker holds the old retained status");

    let c = start_coordinator(&dir, Some(&mosquitto.url), &[]).await;
    let series = "vigil_mqtt_messages_total{channel=\"status\"}";
    wait_for(series, WAIT, || async {
        (metric(&c.http, series).await >= 1.0).then_some(())
    })
    .await;
    // The writer takes it right after ingest counts it: watch the host for a while.
    for _ in 0..10 {
        let (code, body) = get_json(&format!("{}/api/v1/hosts/tr-retained", c.http)).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["agent_version"], "fresh", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
