//! End-to-end tests of the action audit trail and the actions API (and the queue
//! stats) against the real `vigil-coordinator` binary: action events
//! published by a raw MQTT client (with redeliveries and out-of-order transitions) become
//! one record per action, every route and filter reads them back, a manual action and the
//! kill switch arrive at the agent's command topic as signed commands, and bad requests
//! name the field at fault.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use vigil_shared::bundle::PublicKey;
use vigil_shared::command_auth::{self, SignedCommand};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    self, ActionEvent, ActionState, AgentState, AgentStatus, Command, CommandKind,
    PolicyRunnerStatus, QueueStatus,
};
use vigil_tests::{
    authorized, get_json, host_entry, metric, post_raw, start_coordinator, wait_for, RawAgent,
    TestDir,
};

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "e2e-act";
const OTHER: &str = "e2e-act-2";

/// A raw MQTT client: publishes, and hands every incoming publish to `rx`.
struct Mqtt {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Packet>,
}

impl Mqtt {
    /// Connects with `options` (an enrolled agent's login: [`RawAgent::options`]).
    async fn connect(options: MqttOptions) -> Mqtt {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(packet).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                }
            }
        });
        Mqtt { client, rx }
    }

    async fn subscribe(&mut self, topic: &str) {
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(WAIT, async {
            while let Some(packet) = self.rx.recv().await {
                if matches!(packet, Packet::SubAck(_)) {
                    return;
                }
            }
        })
        .await
        .expect("SUBACK");
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("publish");
    }

    /// The next command published on a subscribed topic, decoded and its signature
    /// checked with the coordinator's `key`.
    async fn next_command(&mut self, key: &PublicKey) -> (String, Command) {
        tokio::time::timeout(WAIT, async {
            while let Some(packet) = self.rx.recv().await {
                if let Packet::Publish(publish) = packet {
                    let signed = wire::decode::<SignedCommand>(&publish.payload)
                        .unwrap_or_else(|e| panic!("command on {}: {e}", publish.topic));
                    let command = command_auth::verify(&signed, key, &signed.host, now_ms(), 0)
                        .unwrap_or_else(|e| panic!("command on {}: {e}", publish.topic));
                    return (publish.topic, command);
                }
            }
            panic!("MQTT client stopped");
        })
        .await
        .expect("a command within the deadline")
    }

    /// Asserts no publish arrives within `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        let got = tokio::time::timeout(quiet, async {
            while let Some(packet) = self.rx.recv().await {
                if let Packet::Publish(publish) = packet {
                    return publish;
                }
            }
            std::future::pending().await
        })
        .await;
        assert!(got.is_err(), "unexpected publish: {got:?}");
    }
}

fn status(host: &str, queue: QueueStatus) -> AgentStatus {
    let now = now_ms();
    AgentStatus {
        host: host.into(),
        state: AgentState::Online,
        agent_version: "e2e".into(),
        started_at_ms: now,
        sent_at_ms: now,
        interval_ms: 60_000,
        labels: vec![],
        bundles: Vec::new(),
        bundle_error: None,
        remediation_paused: false,
        detail: None,
        policies: PolicyRunnerStatus::default(),
        queue,
        delivery: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn event(
    host: &str,
    id: &str,
    policy: Option<&str>,
    target: &str,
    state: ActionState,
    attempt: u32,
    created_at_ms: i64,
    at_ms: i64,
) -> ActionEvent {
    ActionEvent {
        id: id.into(),
        host: host.into(),
        policy: policy.map(str::to_string),
        target: target.into(),
        action: "restart".into(),
        state,
        attempt,
        dry_run: false,
        detail: Some(format!("{} (attempt {attempt})", state.as_str())),
        created_at_ms,
        at_ms,
        max_attempts: 3,
        executor: Some("systemd".into()),
        step: policy.map(|_| 0),
        params: Some(r#"{"timeout":"10s"}"#.into()),
    }
}

fn ids(body: &Value) -> Vec<String> {
    body["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("no actions in {body}"))
        .iter()
        .map(|a| a["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asserts an error status naming `field` (when given) in `field` and in the message.
fn assert_error(what: &str, (status, body): (u16, Value), expected: u16, field: Option<&str>) {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(body["ok"], false, "{what}: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{what}: {body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{what}: {body}");
        assert!(error.contains(field), "{what}: {body}");
    }
}

#[tokio::test]
async fn action_events_become_one_record_each_and_every_route_reads_them() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let api = format!("{http}/api/v1");
    // Each host played by hand: its own login, its messages sealed with its own key.
    let raw_host = RawAgent::enroll(dir.path(), HOST, &coordinator.broker);
    let raw_other = RawAgent::enroll(dir.path(), OTHER, &coordinator.broker);
    let host_agent = Mqtt::connect(raw_host.options.clone()).await;
    let other_agent = Mqtt::connect(raw_other.options.clone()).await;
    let agent_of = |host: &str| {
        if host == HOST {
            (&raw_host, &host_agent)
        } else {
            (&raw_other, &other_agent)
        }
    };

    // Two agents with queues; the first one's last processed task is the newer.
    let t0 = now_ms() - 60_000;
    let queue = |pending, done, last: i64| QueueStatus {
        pending,
        running: 1,
        dead_letter: 1,
        enqueued_total: 10 + u64::from(pending),
        dequeued_total: 9,
        completed_total: done,
        failed_total: 2,
        last_processed: Some((format!("LAST-{last}"), "nginx.service".into(), last)),
        open_circuits: vec!["docker".into()],
    };
    for (host, q) in [
        (HOST, queue(2, 7, t0 + 500)),
        (OTHER, queue(1, 3, t0 + 100)),
    ] {
        let (raw, agent) = agent_of(host);
        agent
            .publish(
                &topics::agent(host, AgentChannel::Status),
                raw.seal(AgentChannel::Status, &status(host, q)),
                true,
            )
            .await;
    }
    for host in [HOST, OTHER] {
        wait_for(&format!("{host} known"), WAIT, || host_entry(&http, host)).await;
    }

    // A1: a policy action on HOST, delivered out of order and with redeliveries.
    // A2: a dead-lettered action on OTHER. A3: a manual one on HOST, still pending.
    let a1 = |state, attempt, at| {
        event(
            HOST,
            "A1",
            Some("svc-down"),
            "nginx.service",
            state,
            attempt,
            t0,
            t0 + at,
        )
    };
    let a2 = |state, attempt, at| {
        event(
            OTHER,
            "A2",
            Some("disk"),
            "app",
            state,
            attempt,
            t0 + 10,
            t0 + at,
        )
    };
    let events = vec![
        a1(ActionState::Pending, 0, 0),
        a1(ActionState::Completed, 1, 300),
        a1(ActionState::Running, 1, 100),
        a1(ActionState::Running, 1, 100),
        a2(ActionState::Pending, 0, 10),
        a2(ActionState::Running, 1, 20),
        a2(ActionState::Failed, 1, 30),
        a2(ActionState::DeadLetter, 3, 90),
        a2(ActionState::Failed, 1, 30),
        a1(ActionState::Resolved, 1, 900),
        a1(ActionState::Completed, 1, 300),
        event(
            HOST,
            "A3",
            None,
            "cron.service",
            ActionState::Pending,
            0,
            t0 + 20,
            t0 + 20,
        ),
        event(
            HOST,
            "A3",
            None,
            "cron.service",
            ActionState::Pending,
            0,
            t0 + 20,
            t0 + 20,
        ),
    ];
    // Each redelivery is sealed anew, as an agent's outbox does: the coordinator itself
    // must see that it already holds the transition.
    for e in &events {
        let topic = topics::agent(&e.host, AgentChannel::Actions);
        let (raw, agent) = agent_of(&e.host);
        agent
            .publish(&topic, raw.seal(AgentChannel::Actions, e), false)
            .await;
    }
    // A spoofed event (topic host ≠ payload host), sealed by the topic's host, is refused.
    other_agent
        .publish(
            &topics::agent(OTHER, AgentChannel::Actions),
            raw_other.seal(AgentChannel::Actions, &a1(ActionState::Failed, 2, 950)),
            false,
        )
        .await;
    // So is HOST's own event published on OTHER's topic: the broker's front closes HOST's
    // connection (it is not HOST's topic), and OTHER's key would not verify it either.
    host_agent
        .publish(
            &topics::agent(OTHER, AgentChannel::Actions),
            raw_host.seal(AgentChannel::Actions, &a1(ActionState::Failed, 2, 960)),
            false,
        )
        .await;
    wait_for("9 unique transitions stored", WAIT, || async {
        let (_, a1) = get_json(&format!("{api}/actions/A1")).await;
        let (_, a2) = get_json(&format!("{api}/actions/A2")).await;
        let (_, a3) = get_json(&format!("{api}/actions/A3")).await;
        let n = |v: &Value| v["transitions"].as_array().map_or(0, Vec::len);
        (n(&a1) == 4 && n(&a2) == 4 && n(&a3) == 1).then_some(())
    })
    .await;
    // The spoofs came over two connections: wait until ingest has seen both.
    let refused = |reason: &'static str| {
        let http = http.clone();
        async move {
            metric(
                &http,
                &format!(
                    "vigil_mqtt_messages_rejected_total{{channel=\"actions\",reason=\"{reason}\"}}"
                ),
            )
            .await
        }
    };
    let foreign_topic = r#"vigil_mqtt_acl_refusals_total{reason="foreign_topic",role="agent"}"#;
    wait_for("both spoofed events refused", WAIT, || async {
        (refused("host_mismatch").await >= 1.0 && metric(&http, foreign_topic).await >= 1.0)
            .then_some(())
    })
    .await;
    let mut stored = 0.0;
    for state in [
        "pending",
        "running",
        "completed",
        "resolved",
        "failed",
        "dead_letter",
    ] {
        stored += metric(&http, &format!("vigil_actions_total{{state=\"{state}\"}}")).await;
    }
    assert_eq!(stored, 9.0, "redeliveries are not counted");
    assert_eq!(refused("host_mismatch").await, 1.0);
    assert_eq!(
        refused("bad_signature").await,
        0.0,
        "it never reached ingest"
    );
    assert_eq!(
        metric(
            &http,
            "vigil_mqtt_messages_duplicate_total{channel=\"actions\"}"
        )
        .await,
        0.0,
        "every redelivery was sealed anew"
    );

    // One record per action, newest created first, the original API's fields first.
    let (status, all) = get_json(&format!("{api}/actions")).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["count"], 3, "{all}");
    assert_eq!(ids(&all), vec!["A3", "A2", "A1"]);
    let url = format!("{api}/actions/A1");
    let text = authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    let at = |key: &str| {
        text.find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    let order: Vec<usize> = [
        "id",
        "target",
        "action",
        "status",
        "details",
        "started_at",
        "host",
        "policy",
        "attempts",
        "transitions",
    ]
    .iter()
    .map(|k| at(k))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

    let (_, a1) = get_json(&format!("{api}/actions/A1")).await;
    assert_eq!(a1["status"], "resolved", "{a1}");
    assert_eq!(a1["outcome"], "resolved", "{a1}");
    assert_eq!(a1["host"], HOST);
    assert_eq!(a1["policy"], "svc-down");
    assert_eq!(a1["source"], "agent");
    assert_eq!(a1["attempts"], 1);
    assert_eq!(a1["max_attempts"], 3);
    assert_eq!(a1["executor"], "systemd");
    assert_eq!(a1["step"], 0);
    assert_eq!(a1["params"]["timeout"], "10s");
    assert_eq!(a1["details"], "resolved (attempt 1)");
    assert_eq!(a1["started_at"], vigil_shared::time::to_rfc3339(t0 + 100));
    assert_eq!(a1["finished_at"], vigil_shared::time::to_rfc3339(t0 + 300));
    assert_eq!(a1["created_at"], vigil_shared::time::to_rfc3339(t0));
    let states: Vec<&str> = a1["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, vec!["pending", "running", "completed", "resolved"]);
    let (_, a2) = get_json(&format!("{api}/actions/A2")).await;
    assert_eq!(a2["status"], "dead_letter", "{a2}");
    assert_eq!(a2["attempts"], 3);
    assert_eq!(a2["finished_at"], vigil_shared::time::to_rfc3339(t0 + 90));
    assert_eq!(a2["outcome"], Value::Null);
    let (_, a3) = get_json(&format!("{api}/actions/A3")).await;
    assert_eq!(a3["status"], "pending");
    assert_eq!(a3["policy"], Value::Null);
    assert_eq!(
        a3["started_at"], a3["created_at"],
        "not run yet: created time"
    );
    assert_eq!(a3["finished_at"], Value::Null);

    // Every filter, alone and combined.
    let since = vigil_shared::time::to_rfc3339(t0 + 5);
    for (query, expected) in [
        ("status=dead_letter", vec!["A2"]),
        ("status=resolved", vec!["A1"]),
        ("target=nginx.service", vec!["A1"]),
        ("host=e2e-act", vec!["A3", "A1"]),
        ("policy=disk", vec!["A2"]),
        (&format!("since={since}") as &str, vec!["A3", "A2"]),
        (&format!("since={}", t0 + 15) as &str, vec!["A3"]),
        ("limit=1", vec!["A3"]),
        ("limit=2&host=e2e-act", vec!["A3", "A1"]),
        ("host=e2e-act&status=pending", vec!["A3"]),
        ("host=e2e-act&status=dead_letter", vec![]),
        (
            "host=e2e-act&policy=svc-down&target=nginx.service&status=resolved",
            vec!["A1"],
        ),
        ("target=nobody", vec![]),
    ] {
        let (status, body) = get_json(&format!("{api}/actions?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(ids(&body), expected, "{query}: {body}");
        assert_eq!(body["count"], expected.len(), "{query}");
    }
    let (status, body) = get_json(&format!("{api}/actions/status/running")).await;
    assert_eq!((status, ids(&body)), (200, vec![]), "{body}");
    let (_, body) = get_json(&format!("{api}/actions/status/pending?host=e2e-act")).await;
    assert_eq!(ids(&body), vec!["A3"]);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("status=exploded", "status"),
        ("since=yesterday", "since"),
    ] {
        let reply = get_json(&format!("{api}/actions?{query}")).await;
        assert_error(query, reply, 422, Some(field));
    }
    assert_error(
        "status route",
        get_json(&format!("{api}/actions/status/exploded")).await,
        422,
        Some("status"),
    );
    let (status, body) = get_json(&format!("{api}/actions/NOPE")).await;
    assert_error("unknown id", (status, body.clone()), 404, None);
    assert!(
        body["error"].as_str().unwrap_or("").contains("NOPE"),
        "{body}"
    );
    let (status, body) = get_json(&format!("{api}/actions/health")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "healthy", "service": "actions"})
    );

    // Queue stats: the original shape summed over the agents' queues, plus per host.
    let (status, stats) = get_json(&format!("{api}/queue/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["queue_length"], 3, "{stats}");
    assert_eq!(stats["tasks_enqueued"], 23);
    assert_eq!(stats["tasks_dequeued"], 18);
    assert_eq!(stats["tasks_failed"], 4);
    assert_eq!(stats["tasks_completed"], 10);
    let last = &stats["last_processed_task"];
    assert_eq!(last["task_id"], format!("LAST-{}", t0 + 500), "{stats}");
    assert_eq!(last["action_id"], last["task_id"]);
    assert_eq!(last["target"], "nginx.service");
    assert_eq!(last["host"], HOST);
    assert_eq!(last["timestamp"], vigil_shared::time::to_rfc3339(t0 + 500));
    let one = &stats["hosts"][HOST];
    assert_eq!(one["queue_length"], 2, "{stats}");
    assert_eq!(one["tasks_completed"], 7);
    assert_eq!(one["dead_letter"], 1);
    assert_eq!(one["open_circuits"], serde_json::json!(["docker"]));
    assert_eq!(one["online"], true);
    assert_eq!(stats["hosts"][OTHER]["queue_length"], 1);
    assert_eq!(stats["actions"]["total"], 3);
    assert_eq!(stats["actions"]["by_status"]["dead_letter"], 1);
    let (status, ui) = get_json(&format!("{api}/ui/queue/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(ui["tasks_enqueued"], stats["tasks_enqueued"]);
    assert_eq!(ui["hosts"][HOST], stats["hosts"][HOST]);
    coordinator.proc.stop();
}

#[tokio::test]
async fn manual_actions_and_the_kill_switch_reach_the_agent_as_commands() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let key_file = dir.path().join("data/bundle-signing.pub");
    let key = PublicKey::load(&key_file.display().to_string()).unwrap();
    let http = coordinator.http.clone();
    let api = format!("{http}/api/v1");
    let raw = RawAgent::enroll(dir.path(), HOST, &coordinator.broker);
    let mut agent = Mqtt::connect(raw.options.clone()).await;
    agent
        .subscribe(&topics::agent(HOST, AgentChannel::Commands))
        .await;
    agent
        .publish(
            &topics::agent(HOST, AgentChannel::Status),
            raw.seal(AgentChannel::Status, &status(HOST, QueueStatus::default())),
            true,
        )
        .await;
    let (code, _) = post_raw(
        &format!("{api}/ingest"),
        r#"{"name":"x","value":1,"tags":{"host":"e2e-http-only"}}"#,
    )
    .await;
    assert_eq!(code, 201);
    for host in [HOST, "e2e-http-only"] {
        wait_for(&format!("{host} known"), WAIT, || host_entry(&http, host)).await;
    }
    let actions = format!("{api}/actions");

    // A pending manual action: stored, then sent to the agent with the allotted id.
    let (code, reply) = post_raw(
        &actions,
        &format!(
            r#"{{"target":"nginx.service","action":"restart-service","host":"{HOST}",
                "details":"by hand","params":{{"timeout":"5s","force":true}},"dry_run":true}}"#
        ),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["message"], "Action created successfully", "{reply}");
    let id = reply["action_id"].as_str().expect("action_id").to_string();
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let (topic, command) = agent.next_command(&key).await;
    assert_eq!(topic, topics::agent(HOST, AgentChannel::Commands));
    assert_eq!(command.host, HOST);
    assert_eq!(command.expires_at_ms - command.issued_at_ms, 5 * 60 * 1000);
    match &command.kind {
        CommandKind::RunAction {
            action_id,
            target,
            action,
            params,
            dry_run,
        } => {
            assert_eq!(action_id, &id);
            assert_eq!(target, "nginx.service");
            assert_eq!(action, "restart-service");
            assert!(*dry_run);
            assert!(
                params.contains(&("timeout".into(), "5s".into())),
                "{params:?}"
            );
            assert!(
                params.contains(&("force".into(), "true".into())),
                "{params:?}"
            );
        }
        other => panic!("expected RunAction, got {other:?}"),
    }
    let (code, record) = get_json(&format!("{actions}/{id}")).await;
    assert_eq!(code, 200, "{record}");
    assert_eq!(record["status"], "pending");
    assert_eq!(record["source"], "api");
    assert_eq!(record["host"], HOST);
    assert_eq!(record["dry_run"], true);
    assert_eq!(record["details"], "by hand");
    assert_eq!(record["params"]["force"], true);

    // The agent reports its transitions with that id: they join the same record (its own
    // pending report is the one the coordinator already holds).
    let created = command.issued_at_ms;
    for (state, attempt, at) in [
        (ActionState::Pending, 0, created),
        (ActionState::Running, 1, created + 5),
        (ActionState::Completed, 1, created + 9),
    ] {
        let mut e = event(
            HOST,
            &id,
            None,
            "nginx.service",
            state,
            attempt,
            created,
            at,
        );
        e.action = "restart-service".into();
        e.dry_run = true;
        agent
            .publish(
                &topics::agent(HOST, AgentChannel::Actions),
                raw.seal(AgentChannel::Actions, &e),
                false,
            )
            .await;
    }
    let record = wait_for("manual action completed", WAIT, || async {
        let (_, record) = get_json(&format!("{actions}/{id}")).await;
        (record["status"] == "completed").then_some(record)
    })
    .await;
    let states: Vec<&str> = record["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, vec!["pending", "running", "completed"], "{record}");
    assert_eq!(record["source"], "api");

    // No `host`, but the target is a known host: the action runs there.
    let (code, reply) = post_raw(
        &actions,
        &format!(r#"{{"target":"{HOST}","action":"notify"}}"#),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    let (_, command) = agent.next_command(&key).await;
    assert!(
        matches!(&command.kind, CommandKind::RunAction { action_id, target, .. }
            if Some(action_id.as_str()) == reply["action_id"].as_str() && target == HOST),
        "{command:?}"
    );

    // The original's record of an action that already happened: stored, nothing sent.
    let (code, reply) = post_raw(
        &actions,
        r#"{"target":"web-service","action":"restart","status":"completed","details":"Service restarted successfully"}"#,
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or("")
            .contains("nothing was sent"),
        "{reply}"
    );
    let recorded = reply["action_id"].as_str().expect("action_id").to_string();
    let (_, record) = get_json(&format!("{actions}/{recorded}")).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["host"], Value::Null);
    assert_eq!(record["details"], "Service restarted successfully");
    assert!(record["finished_at"].is_string(), "{record}");
    let (_, completed) = get_json(&format!("{actions}/status/completed")).await;
    assert_eq!(completed["count"], 2, "{completed}");

    // Bad requests name the field, and send nothing.
    let bad: [(&str, String, u16, Option<&str>); 10] = [
        (
            "misspelt action",
            format!(r#"{{"target":"x","action":"drain-nodes","host":"{HOST}"}}"#),
            422,
            Some("action"),
        ),
        (
            "unknown action",
            format!(r#"{{"target":"x","action":"explode","host":"{HOST}"}}"#),
            422,
            Some("action"),
        ),
        (
            "unknown host",
            r#"{"target":"x","action":"restart","host":"ghost-host"}"#.into(),
            404,
            Some("host"),
        ),
        (
            "no host",
            r#"{"target":"x","action":"restart"}"#.into(),
            422,
            Some("host"),
        ),
        (
            "no agent",
            r#"{"target":"x","action":"restart","host":"e2e-http-only"}"#.into(),
            422,
            Some("host"),
        ),
        (
            "no target",
            format!(r#"{{"action":"restart","host":"{HOST}"}}"#),
            422,
            Some("target"),
        ),
        (
            "bad status",
            format!(r#"{{"target":"x","action":"restart","host":"{HOST}","status":"done"}}"#),
            422,
            Some("status"),
        ),
        (
            "bad params",
            format!(r#"{{"target":"x","action":"restart","host":"{HOST}","params":[1]}}"#),
            422,
            Some("params"),
        ),
        (
            "bad dry_run",
            format!(r#"{{"target":"x","action":"restart","host":"{HOST}","dry_run":"yes"}}"#),
            422,
            Some("dry_run"),
        ),
        ("not JSON", "{not json".into(), 400, None),
    ];
    for (what, body, expected, field) in bad {
        let reply = post_raw(&actions, &body).await;
        if what == "unknown host" {
            assert!(reply.1["error"]
                .as_str()
                .unwrap_or("")
                .contains("ghost-host"));
        }
        assert_error(what, reply, expected, field);
    }
    agent.assert_quiet(Duration::from_millis(500)).await;

    // The kill switch.
    for (verb, paused) in [("pause", true), ("resume", false)] {
        let (code, reply) = post_raw(&format!("{api}/hosts/{HOST}/remediation/{verb}"), "").await;
        assert_eq!(code, 200, "{reply}");
        assert_eq!(reply["ok"], true);
        assert!(
            reply["message"].as_str().unwrap_or("").contains(verb),
            "{reply}"
        );
        let (topic, command) = agent.next_command(&key).await;
        assert_eq!(topic, topics::agent(HOST, AgentChannel::Commands));
        assert_eq!(command.kind, CommandKind::PauseRemediation(paused));
        assert_eq!(reply["command_id"], command.id.as_str());
    }
    let (code, reply) = post_raw(&format!("{api}/hosts/ghost-host/remediation/pause"), "").await;
    assert_eq!(code, 404, "{reply}");
    assert!(reply["error"].as_str().unwrap_or("").contains("ghost-host"));
    assert_eq!(
        metric(&http, "vigil_actions_total{state=\"pending\"}").await,
        2.0
    );
    coordinator.proc.stop();
}

#[tokio::test]
async fn a_running_coordinator_removes_actions_older_than_the_audit_retention() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &["--audit-retention", "2s"]).await;
    let http = coordinator.http.clone();
    let actions = format!("{http}/api/v1/actions");
    let (code, reply) = post_raw(
        &actions,
        r#"{"target":"web-service","action":"restart","status":"completed","details":"done by hand"}"#,
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    let id = reply["action_id"].as_str().expect("action_id").to_string();
    let (code, _) = get_json(&format!("{actions}/{id}")).await;
    assert_eq!(code, 200);
    // Within a couple of passes after it is 2 s old, the record is gone from every route.
    wait_for("the action pruned", WAIT, || async {
        let (code, _) = get_json(&format!("{actions}/{id}")).await;
        (code == 404).then_some(())
    })
    .await;
    let (_, list) = get_json(&actions).await;
    assert_eq!(list["count"], 0, "{list}");
    let (_, stats) = get_json(&format!("{http}/api/v1/ui/queue/stats")).await;
    assert_eq!(stats["actions"]["total"], 0, "{stats}");
    assert_eq!(stats["actions"]["by_status"]["completed"], 0, "{stats}");
    assert!(metric(&http, r#"vigil_audit_pruned_total{kind="action"}"#).await >= 1.0);
    assert!(metric(&http, r#"vigil_audit_pruned_total{kind="feed"}"#).await >= 1.0);
    coordinator.proc.stop();
}
