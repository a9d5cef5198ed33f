//! The deadman, with real parts: a coordinator on its embedded broker, real agent
//! processes reporting every second, `kill -STOP` / `-CONT` / `-TERM` / `-KILL`, the
//! event stream over real HTTP, Debian's `mosquitto_sub` on the JSON topics (every host
//! message checked against its schema), `/metrics`, and a webhook receiver on a real
//! socket.
//!
//! A stopped (SIGSTOP) agent, its connection still up, is `silent` within three
//! intervals (and, once the broker's keep-alive gives up on it, `offline` by its last
//! will) and `online` again after SIGCONT; an agent labelled `ephemeral=true` stopped
//! the same way is never silent; a clean stop (SIGTERM) is `offline`, and so is a lost
//! connection (SIGKILL: the broker sends the last will) — neither is ever silent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{AgentState, AgentStatus};
use vigil_tests::json_schema::validate_all;
use vigil_tests::{
    authorized, broker_token, connected, get_json, metric, start_agent_with, start_coordinator,
    wait_for, MosquittoSub, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);
const WEB: &str = "deadman-web";
const CI: &str = "deadman-ci";
const KILLED: &str = "deadman-killed";
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

/// Everything seen so far, appended by background readers.
type Seen<T> = Arc<Mutex<Vec<T>>>;

fn snapshot<T: Clone>(seen: &Seen<T>) -> Vec<T> {
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Reads the host events of `GET /api/v1/events?kind=host` into a list (the entries'
/// JSON), in order.
async fn event_stream(http: &str) -> Seen<Value> {
    let url = format!("{http}/api/v1/events?kind=host");
    let mut response = authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("GET /api/v1/events");
    assert_eq!(response.status(), 200);
    let seen: Seen<Value> = Arc::default();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(value) = serde_json::from_str(data.trim()) {
                            out.lock().unwrap_or_else(|e| e.into_inner()).push(value);
                        }
                    }
                }
            }
        }
    });
    seen
}

/// A webhook receiver: answers every request 200 and keeps the JSON bodies.
async fn webhook_receiver() -> (String, Seen<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen: Seen<Value> = Arc::default();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let out = Arc::clone(&out);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    if let Ok(value) = serde_json::from_str(body) {
                        out.lock().unwrap_or_else(|e| e.into_inner()).push(value);
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (url, seen)
}

/// The states of `host`'s host events, in feed order.
fn states(events: &[Value], host: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["host"] == host)
        .filter_map(|e| e["data"]["state"].as_str().map(str::to_string))
        .collect()
}

/// Waits until `host`'s host events, after the first `from`, include `state`; returns
/// that event.
async fn wait_state(events: &Seen<Value>, host: &str, from: usize, state: &str) -> Value {
    wait_for(
        &format!("{host} `{state}` on the event stream"),
        WAIT,
        || async {
            snapshot(events)
                .into_iter()
                .filter(|e| e["host"] == host)
                .skip(from)
                .find(|e| e["data"]["state"] == state)
        },
    )
    .await
}

async fn api_state(http: &str, host: &str) -> Value {
    let (status, body) = get_json(&format!("{http}/api/v1/hosts/{host}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_agent_is_silent_within_three_intervals_and_a_clean_stop_is_offline() {
    let dir = TestDir::new();
    let (hook, hooked) = webhook_receiver().await;
    let c = start_coordinator(
        &dir,
        None,
        &["--silent-after", "3", "--silent-webhook", &hook],
    )
    .await;
    let events = event_stream(&c.http).await;
    // Debian's `mosquitto_sub` on the host topics, logged in as an integration.
    let token = broker_token(&c.broker).expect("the coordinator's admin token");
    let sub = MosquittoSub::start(
        &c.broker,
        ("api", &token),
        "vigil/v1/json/hosts/#",
        1,
        "deadman-test",
    );

    let web = start_agent_with(WEB, &c.broker, "1s", &[], dir.path());
    let ci = start_agent_with(
        CI,
        &c.broker,
        "1s",
        &["--label", "ephemeral=true"],
        dir.path(),
    );
    let killed = start_agent_with(KILLED, &c.broker, "1s", &[], dir.path());
    for host in [WEB, CI, KILLED] {
        wait_for(&format!("{host} online"), WAIT, || async {
            let (_, body) = get_json(&format!("{}/api/v1/hosts/{host}", c.http)).await;
            (body["state"] == "online" && body["agent_version"].is_string()).then_some(())
        })
        .await;
    }

    // SIGSTOP: the process holds its connection but says nothing.
    web.signal(SIGSTOP);
    ci.signal(SIGSTOP);
    let silent = wait_state(&events, WEB, 0, "silent").await;
    let at = chrono_ms(&silent["timestamp"]);
    let last_seen = chrono_ms(&silent["data"]["last_seen"]);
    println!(
        "{WEB} silent {} ms after it was last heard from",
        at - last_seen
    );
    assert!(
        at - last_seen >= 3000,
        "silent before three 1 s intervals passed: {silent}"
    );
    let body = api_state(&c.http, WEB).await;
    assert_eq!(body["state"], "silent", "{body}");
    assert_eq!(body["online"], false, "{body}");
    assert!(metric(&c.http, "vigil_hosts_silent_total").await >= 1.0);
    wait_for("the silence on the JSON topic", WAIT, || async {
        sub.snapshot()
            .iter()
            .any(|(t, p)| {
                t == &format!("vigil/v1/json/hosts/{WEB}")
                    && serde_json::from_str::<Value>(p)
                        .is_ok_and(|v| v["data"]["state"] == "silent")
            })
            .then_some(())
    })
    .await;
    wait_for("the silence at the webhook", WAIT, || async {
        snapshot(&hooked)
            .iter()
            .any(|v| v["host"] == WEB && v["data"]["state"] == "silent")
            .then_some(())
    })
    .await;

    // SIGCONT: it reports again and is online.
    let before = states(&snapshot(&events), WEB).len();
    web.signal(SIGCONT);
    wait_state(&events, WEB, before, "online").await;
    wait_for(&format!("{WEB} online in the API"), WAIT, || async {
        (api_state(&c.http, WEB).await["state"] == "online").then_some(())
    })
    .await;

    // SIGKILL: the connection is lost and the broker sends the last will: offline.
    let before = states(&snapshot(&events), KILLED).len();
    killed.signal(SIGKILL);
    let lost = wait_state(&events, KILLED, before, "offline").await;
    assert_eq!(lost["data"]["reason"], "connection_lost", "{lost}");

    // SIGTERM: a clean stop publishes the offline status: offline.
    let before = states(&snapshot(&events), WEB).len();
    web.signal(SIGTERM);
    let stopped = wait_state(&events, WEB, before, "offline").await;
    assert_eq!(stopped["data"]["reason"], "stopped", "{stopped}");

    // Well past three intervals: the stopped hosts stayed offline, and the ephemeral
    // one (stopped since the start) was never called silent.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let all = snapshot(&events);
    assert_eq!(
        states(&all, WEB).last().map(String::as_str),
        Some("offline")
    );
    assert_eq!(
        states(&all, KILLED),
        ["online", "offline"],
        "a lost connection is offline, never silent"
    );
    // (Stopped, it stops answering the broker's keep-alive too: after 7.5 s the broker
    // sends its last will, and it is offline like any lost connection.)
    assert!(
        !states(&all, CI).iter().any(|s| s == "silent"),
        "an ephemeral host is never silent: {:?}",
        states(&all, CI)
    );
    for host in [WEB, KILLED] {
        let body = api_state(&c.http, host).await;
        assert_eq!(body["state"], "offline", "{body}");
    }
    assert_eq!(metric(&c.http, "vigil_hosts_silent").await, 0.0);
    assert!(metric(&c.http, r#"vigil_deadman_webhooks_total{result="sent"}"#).await >= 2.0);
    // Going silent and coming back, both at the webhook.
    let hooked = snapshot(&hooked);
    assert!(
        hooked
            .iter()
            .any(|v| v["host"] == WEB && v["data"]["state"] == "online"),
        "{hooked:?}"
    );

    ci.signal(SIGCONT);
    drop(ci);
    let messages = sub.snapshot();
    drop(sub);
    assert!(messages
        .iter()
        .any(|(_, p)| p.contains("\"silent\"") && p.contains("last_seen")));
    let report = validate_all(dir.path(), &messages).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.trim());
}

/// An enrolled agent sealing statuses whose sampling interval is 0 or `u64::MAX`: each is
/// refused where it enters (`invalid`, counted, the log naming `interval_ms`), and the
/// same agent with a sane interval is online.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_intervals_are_refused_at_entry_naming_the_field() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &["--silent-after", "3"]).await;
    let raw = RawAgent::enroll(dir.path(), "deadman-evil", &c.broker);
    let client = connected(raw.options.clone())
        .await
        .unwrap_or_else(|e| panic!("broker refused the raw agent: {e}"));
    let status = |interval_ms: u64| AgentStatus {
        host: "deadman-evil".into(),
        state: AgentState::Online,
        agent_version: "evil".into(),
        started_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        interval_ms,
        labels: vec![],
        bundles: vec![],
        bundle_error: None,
        remediation_paused: false,
        detail: None,
        policies: Default::default(),
        queue: Default::default(),
        delivery: None,
    };
    let series = r#"vigil_mqtt_messages_rejected_total{channel="status",reason="invalid"}"#;
    let before = metric(&c.http, series).await;
    for interval_ms in [0, u64::MAX, 1000] {
        client
            .publish(
                topics::agent("deadman-evil", AgentChannel::Status),
                rumqttc::QoS::AtLeastOnce,
                false,
                raw.seal(AgentChannel::Status, &status(interval_ms)),
            )
            .await
            .expect("publish");
    }
    wait_for("the sane status stored", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/deadman-evil", c.http)).await;
        (body["state"] == "online").then_some(body)
    })
    .await;
    assert_eq!(metric(&c.http, series).await - before, 2.0);
    let body = api_state(&c.http, "deadman-evil").await;
    assert_eq!(body["interval_seconds"], 1.0, "{body}");
    let logs: String = std::fs::read_dir(dir.path())
        .expect("read the test dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("coordinator"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    assert!(
        logs.contains("interval_ms"),
        "the refusal names the field in the log"
    );
    // Silent in three intervals, like any agent that says nothing more.
    wait_for("the raw agent silent", WAIT, || async {
        (api_state(&c.http, "deadman-evil").await["state"] == "silent").then_some(())
    })
    .await;
}

/// An RFC 3339 time from an event, as epoch ms.
fn chrono_ms(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    vigil_shared::time::parse_time(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}
