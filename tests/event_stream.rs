//! The live event stream, with a real coordinator and real HTTP:
//! `GET /api/v1/events` streams action transitions and violations as Server-Sent Events,
//! filters by host and kind, and a client that was disconnected while events happened
//! reconnects with `Last-Event-ID` and gets each missed event exactly once.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{ActionEvent, ActionState, PolicyEvent};
use vigil_tests::{authorized, start_coordinator, RawAgent, TestDir};

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "sse-web";

/// One SSE event as received.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: u64,
    kind: String,
    data: Value,
}

/// An open event stream.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(http: &str, query: &str, last_event_id: Option<u64>) -> Stream {
        let url = format!("{http}/api/v1/events{query}");
        let mut request = authorized(&url, reqwest::Client::new().get(&url));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("GET /api/v1/events");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap_or("");
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` after `wait` of silence.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(id) = id {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(SseEvent { id, kind, data });
                }
                continue;
            }
            match tokio::time::timeout(wait, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until `n` are collected (or `WAIT` passes).
    async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while events.len() < n {
            match self.next(WAIT).await {
                Some(event) => events.push(event),
                None => break,
            }
        }
        events
    }
}

fn action(id: &str, state: ActionState, attempt: u32) -> ActionEvent {
    ActionEvent {
        id: id.into(),
        host: HOST.into(),
        policy: Some("svc-down".into()),
        target: "nginx.service".into(),
        action: "restart".into(),
        state,
        attempt,
        dry_run: false,
        detail: None,
        created_at_ms: now_ms(),
        at_ms: now_ms(),
        max_attempts: 3,
        executor: Some("systemd".into()),
        step: Some(0),
        params: None,
    }
}

fn violation(id: &str) -> PolicyEvent {
    PolicyEvent {
        id: id.into(),
        host: HOST.into(),
        policy: "svc-down".into(),
        target: "nginx.service".into(),
        severity: "critical".into(),
        kind: "fired".into(),
        summary: "unit_active == 0 (observed 0)".into(),
        explanation: None,
        action: Some("restart".into()),
        step: Some(0),
        action_requested: true,
        dry_run: false,
        detail: None,
        at_ms: now_ms(),
    }
}

/// An enrolled agent played by hand.
struct Agent {
    raw: RawAgent,
    client: AsyncClient,
}

impl Agent {
    async fn connect(raw: RawAgent) -> Agent {
        let (client, mut eventloop) = AsyncClient::new(raw.options.clone(), 100);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, connected)
            .await
            .expect("agent connects")
            .expect("connection task");
        Agent { raw, client }
    }

    async fn action(&self, event: &ActionEvent) {
        let payload = self.raw.seal(AgentChannel::Actions, event);
        self.client
            .publish(
                topics::agent(HOST, AgentChannel::Actions),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish action");
    }

    async fn violation(&self, event: &PolicyEvent) {
        let payload = self.raw.seal(AgentChannel::Events, event);
        self.client
            .publish(
                topics::agent(HOST, AgentChannel::Events),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish violation");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reconnects_with_last_event_id_gets_each_missed_event_once() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let agent = Agent::connect(RawAgent::enroll(dir.path(), HOST, &c.broker)).await;

    // A bad filter is refused, naming the problem.
    let url = format!("{}/api/v1/events?kind=metrics", c.http);
    let bad = authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap_or_default().contains("metrics"));

    // Live: a stream of everything, and one of violations only.
    let mut all = Stream::open(&c.http, "", None).await;
    let mut violations_only =
        Stream::open(&c.http, &format!("?kind=violation&host={HOST}"), None).await;
    agent.violation(&violation("V1")).await;
    agent.action(&action("A1", ActionState::Pending, 0)).await;
    agent.action(&action("A1", ActionState::Running, 1)).await;
    // (The broker keeps order within a topic; violations and actions are two topics.)
    let first = all.take(3).await;
    let mut kinds: Vec<_> = first.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["action", "action", "violation"], "{first:?}");
    let fired = first
        .iter()
        .find(|e| e.kind == "violation")
        .expect("violation");
    assert_eq!(fired.data["data"]["policy"], "svc-down");
    assert_eq!(fired.data["version"], 1);
    let actions: Vec<_> = first.iter().filter(|e| e.kind == "action").collect();
    assert_eq!(actions[1].data["data"]["state"], "running");
    assert!(
        first.windows(2).all(|w| w[1].id == w[0].id + 1),
        "{first:?}"
    );
    let only = violations_only.take(1).await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, fired.id);
    assert_eq!(violations_only.next(Duration::from_millis(500)).await, None);

    // Disconnected while five events happen (one of them redelivered: stored once).
    let last_seen = first[2].id;
    drop(all);
    let missed_events = [
        action("A1", ActionState::Completed, 1),
        action("A2", ActionState::Pending, 0),
        action("A2", ActionState::Running, 1),
        action("A2", ActionState::Running, 1),
    ];
    for event in &missed_events {
        agent.action(event).await;
    }
    agent.violation(&violation("V2")).await;
    // Wait until the coordinator has stored them (the violation stream sees V2).
    let v2 = violations_only.take(1).await;
    assert_eq!(v2.len(), 1, "V2 never arrived");

    // Reconnect: exactly the four missed events, in order, then live ones.
    let mut resumed = Stream::open(&c.http, "", Some(last_seen)).await;
    let missed = resumed.take(4).await;
    let ids: Vec<u64> = missed.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (last_seen + 1..=last_seen + 4).collect::<Vec<_>>(),
        "{missed:?}"
    );
    let mut states: Vec<_> = missed
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e.kind,
                e.data["data"]["state"].as_str().unwrap_or("fired")
            )
        })
        .collect();
    // Actions keep their order; the violation may fall anywhere among them.
    let violation_at = states.iter().position(|s| s == "violation:fired");
    assert!(violation_at.is_some(), "{states:?}");
    states.retain(|s| s != "violation:fired");
    assert_eq!(
        states,
        ["action:completed", "action:pending", "action:running"]
    );
    agent.action(&action("A2", ActionState::Completed, 1)).await;
    let live = resumed.take(1).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, last_seen + 5);
    assert_eq!(live[0].data["data"]["id"], "A2");
    assert_eq!(resumed.next(Duration::from_millis(500)).await, None);

    // The same resume through the query parameter, filtered to one kind.
    let mut by_query = Stream::open(
        &c.http,
        &format!("?last_event_id={last_seen}&kind=violation"),
        None,
    )
    .await;
    let again = by_query.take(1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].data["data"]["id"], "V2");
}
