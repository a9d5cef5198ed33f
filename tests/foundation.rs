//! End-to-end tests of the foundation: real coordinator and agent processes, the embedded
//! broker and a real Mosquitto, real LMDB files, real HTTP.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, MetricBatch, Sample};
use vigil_tests::{
    free_port, get_json, host_entry, metric, post_raw, start_agent, start_coordinator,
    start_mosquitto, wait_for, CoordinatorOptions, KitError, Launcher, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(20);

/// Waits until `host` is listed with the given online state (online: with its status in,
/// which metrics stored first do not bring), and returns its entry.
async fn wait_online(http: &str, host: &str, online: bool) -> Value {
    wait_for(&format!("{host} online={online}"), WAIT, || async {
        host_entry(http, host)
            .await
            .filter(|h| h["online"] == online && (!online || h["agent_version"].is_string()))
    })
    .await
}

/// The report flow against whichever broker the coordinator uses: the agent's host shows
/// up online with labels and host metrics; SIGKILL (no goodbye) marks it offline through
/// the last will; a restarted agent comes back online and a SIGTERM marks it offline.
async fn agent_reports_and_goes_offline(dir: &TestDir, broker: Option<&str>) {
    let coordinator = start_coordinator(dir, broker, &[]).await;
    let http = &coordinator.http;
    let host = "e2e-web-01";
    let agent = start_agent(
        host,
        &coordinator.broker,
        &["role=web", "env=test"],
        dir.path(),
    );

    let entry = wait_online(http, host, true).await;
    assert_eq!(entry["state"], "online");
    assert_eq!(entry["labels"]["role"], "web");
    assert_eq!(entry["agent_version"], env!("CARGO_PKG_VERSION"));

    let detail = wait_for("host metrics", WAIT, || async {
        let (status, body) = get_json(&format!("{http}/api/v1/hosts/{host}")).await;
        (status == 200 && body["metric_count"].as_u64() >= Some(9)).then_some(body)
    })
    .await;
    let names: Vec<&str> = detail["metrics"]
        .as_array()
        .expect("metrics array")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for name in [
        "cpu_percent",
        "memory_percent",
        "swap_percent",
        "disk_free_percent",
        "load1",
        "load5",
        "load15",
        "process_count",
        "uptime_seconds",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let (_, history) = get_json(&format!(
        "{http}/api/v1/metrics/query?host={host}&name=cpu_percent"
    ))
    .await;
    assert!(history["count"].as_u64() >= Some(1), "{history}");
    assert_eq!(history["points"][0]["tags"]["role"], "web");

    agent.kill();
    let entry = wait_online(http, host, false).await;
    assert_eq!(
        entry["state"], "offline",
        "the last will marks it offline: {entry}"
    );

    let agent = start_agent(host, &coordinator.broker, &["role=web"], dir.path());
    wait_online(http, host, true).await;
    agent.stop();
    wait_online(http, host, false).await;
    coordinator.proc.stop();
}

#[tokio::test]
async fn agent_reports_through_the_embedded_broker() {
    let dir = TestDir::new();
    agent_reports_and_goes_offline(&dir, None).await;
}

#[tokio::test]
async fn agent_reports_through_mosquitto() {
    let dir = TestDir::new();
    let mosquitto = start_mosquitto(dir.path());
    agent_reports_and_goes_offline(&dir, Some(&mosquitto.url)).await;
    mosquitto.proc.stop();
}

#[tokio::test]
async fn hosts_and_history_survive_a_coordinator_restart() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let agent = start_agent("e2e-restart", &coordinator.broker, &[], dir.path());
    wait_online(&coordinator.http, "e2e-restart", true).await;
    wait_for("e2e-restart metrics", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/e2e-restart", coordinator.http)).await;
        (body["metric_count"].as_u64() >= Some(9)).then_some(())
    })
    .await;
    agent.stop();
    let base_ms = vigil_shared::time::now_ms() - 60_000;
    for i in 0..5 {
        let body = format!(
            r#"{{"name":"queue_depth","value":{i},"tags":{{"host":"e2e-http"}},"timestamp":{}}}"#,
            base_ms + i * 1000
        );
        let (status, reply) = post_raw(&format!("{}/api/v1/ingest", coordinator.http), &body).await;
        assert_eq!(status, 201, "{reply}");
    }
    coordinator.proc.stop();

    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = &coordinator.http;
    for host in ["e2e-restart", "e2e-http"] {
        assert!(host_entry(http, host).await.is_some(), "{host} forgotten");
    }
    let (_, detail) = get_json(&format!("{http}/api/v1/hosts/e2e-restart")).await;
    assert!(detail["metric_count"].as_u64() >= Some(9), "{detail}");
    let (_, history) = get_json(&format!(
        "{http}/api/v1/metrics/query?host=e2e-http&name=queue_depth&from={base_ms}"
    ))
    .await;
    let values: Vec<f64> = history["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .collect();
    assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    coordinator.proc.stop();
}

fn batch(host: &str, seq: u64, value: f64) -> MetricBatch {
    let now = vigil_shared::time::now_ms();
    MetricBatch {
        host: host.into(),
        seq,
        sent_at_ms: now,
        labels: vec![],
        samples: vec![Sample {
            name: "good_metric".into(),
            value,
            ts_ms: now - 10_000 + i64::try_from(seq).unwrap_or(0),
            tags: vec![],
        }],
    }
}

#[tokio::test]
async fn garbage_is_rejected_counted_and_good_samples_around_it_are_kept() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();

    // A raw MQTT client logged in as an enrolled agent, publishing on its metrics topic.
    let host = "e2e-garbage";
    let raw = RawAgent::enroll(dir.path(), host, &coordinator.broker);
    // Another enrolled agent, whose seal is good but not `host`'s.
    let other = RawAgent::enroll(dir.path(), "e2e-garbage-other", &coordinator.broker);
    let (client, mut eventloop) = AsyncClient::new(raw.options.clone(), 100);
    let pump = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    let topic = topics::agent(host, AgentChannel::Metrics);
    let good = |seq| raw.seal(AgentChannel::Metrics, &batch(host, seq, seq as f64));
    let mut wrong_version = good(100);
    wrong_version[0] = 99;
    let truncated = {
        let bytes = good(101);
        bytes[..bytes.len() - 4].to_vec()
    };
    // The right version byte, then a host-name length far past the end of the payload.
    let mut random = vec![wire::PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f];
    random.extend((0u32..64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    // Properly sealed by the host, but the batch inside claims another host.
    let mismatch = raw.seal(AgentChannel::Metrics, &batch("someone-else", 102, 1.0));
    // A valid batch as agents sent it before messages were sealed: no seal, refused.
    let unsealed = wire::encode(&batch(host, 103, 1.0));
    // Sealed by another enrolled agent: does not verify with `host`'s key.
    let foreign = other.seal(AgentChannel::Metrics, &batch(host, 104, 1.0));
    // Sealed by the host for its status channel, moved to its metrics topic.
    let moved = raw.seal(AgentChannel::Status, &batch(host, 105, 1.0));
    // A good seal around bytes that are no batch.
    let sealed_garbage = raw.sealer.seal(AgentChannel::Metrics, random.clone());
    let payloads: Vec<Vec<u8>> = vec![
        good(1),
        random,
        good(2),
        wrong_version,
        good(3),
        truncated,
        good(4),
        mismatch,
        good(5),
        Vec::new(),
        good(6),
        unsealed,
        good(7),
        foreign,
        good(8),
        moved,
        good(9),
        sealed_garbage,
        good(10),
    ];
    for payload in payloads {
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    // Bad HTTP bodies, each naming its field, around good ones.
    let ingest = format!("{http}/api/v1/ingest");
    let long_name = "n".repeat(300);
    let bad_bodies = [
        (
            r#"{"value": 1, "tags": {"host": "e2e-http-bad"}}"#.to_string(),
            422,
            Some("name"),
        ),
        (
            format!(r#"{{"name": "{long_name}", "value": 1}}"#),
            422,
            Some("name"),
        ),
        (
            r#"{"name": "x", "value": "high"}"#.to_string(),
            422,
            Some("value"),
        ),
        (r#"{"name": "x", "value": NaN}"#.to_string(), 400, None),
        ("{not json".to_string(), 400, None),
    ];
    for (i, (body, expected, field)) in bad_bodies.iter().enumerate() {
        let good =
            format!(r#"{{"name":"http_good","value":{i},"tags":{{"host":"e2e-http-good"}}}}"#);
        assert_eq!(post_raw(&ingest, &good).await.0, 201);
        let (status, reply) = post_raw(&ingest, body).await;
        assert_eq!(status, *expected, "{body} → {reply}");
        assert_eq!(reply["ok"], false);
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
        if let Some(field) = field {
            assert_eq!(reply["field"], *field, "{reply}");
            assert!(
                reply["error"].as_str().unwrap_or("").contains(field),
                "{reply}"
            );
        }
    }

    // Every good MQTT batch is stored; every bad payload is counted by reason.
    let points = wait_for("ten good batches", WAIT, || async {
        let (_, body) = get_json(&format!(
            "{http}/api/v1/metrics/query?host={host}&name=good_metric"
        ))
        .await;
        let values: Vec<f64> = body["points"]
            .as_array()?
            .iter()
            .filter_map(|p| p["value"].as_f64())
            .collect();
        (values.len() == 10).then_some(values)
    })
    .await;
    assert_eq!(points, (1..=10).map(f64::from).collect::<Vec<_>>());
    let rejected = |reason: &'static str| {
        let http = http.clone();
        async move {
            metric(
                &http,
                &format!(
                    r#"vigil_mqtt_messages_rejected_total{{channel="metrics",reason="{reason}"}}"#
                ),
            )
            .await
        }
    };
    assert_eq!(
        rejected("malformed").await,
        4.0,
        "random bytes, the truncated seal, the unsealed batch and the sealed garbage"
    );
    assert_eq!(rejected("unknown_version").await, 1.0);
    assert_eq!(
        rejected("host_mismatch").await,
        2.0,
        "the batch claiming another host and the seal moved from another channel"
    );
    assert_eq!(
        rejected("bad_signature").await,
        1.0,
        "sealed by another agent"
    );
    assert_eq!(rejected("empty").await, 1.0);
    assert_eq!(
        metric(&http, r#"vigil_mqtt_messages_total{channel="metrics"}"#).await,
        10.0
    );
    assert!(
        host_entry(&http, "someone-else").await.is_none(),
        "a forged host was stored"
    );

    let (_, http_points) = get_json(&format!(
        "{http}/api/v1/metrics/query?host=e2e-http-good&name=http_good"
    ))
    .await;
    assert_eq!(http_points["count"], 5, "{http_points}");
    assert_eq!(
        metric(&http, r#"vigil_http_ingest_rejected_total{field="name"}"#).await,
        2.0
    );
    assert_eq!(
        metric(&http, r#"vigil_http_ingest_rejected_total{field="value"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&http, r#"vigil_http_ingest_rejected_total{field="body"}"#).await,
        2.0
    );
    assert!(
        metric(
            &http,
            r#"vigil_http_requests_total{method="POST",route="/api/v1/ingest",status="422"}"#
        )
        .await
            >= 3.0
    );

    // Still serving.
    let (status, health) = get_json(&format!("{http}/health")).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "vigil");
    let _ = client.disconnect().await;
    let _ = pump.await;
    coordinator.proc.stop();
}

/// A coordinator that exits before it answers `/health` is not waited for: the kit starts it
/// again on new ports (a port taken between picking and binding is the usual cause), and
/// after the last try reports that it exited, naming its log, which says why.
#[tokio::test]
async fn a_coordinator_that_exits_before_it_is_ready_is_tried_again_then_reported() {
    let dir = TestDir::new();
    let options = CoordinatorOptions {
        extra: &["--no-such-flag"],
        ..CoordinatorOptions::default()
    };
    let err = Launcher::Tests
        .start_coordinator(dir.path(), &options)
        .await
        .err()
        .expect("a coordinator with a flag it does not know never becomes ready");
    let KitError::Exited { status, log, .. } = err else {
        panic!("expected the coordinator to be reported as exited, got: {err}");
    };
    assert!(!status.success(), "{status}");
    let text = std::fs::read_to_string(&log).expect("its log is there");
    assert!(text.contains("--no-such-flag"), "{}: {text}", log.display());
    let logs = std::fs::read_dir(dir.path())
        .expect("the test directory lists")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("coordinator-"))
        .count();
    assert_eq!(logs, 3, "one log per try");
}

#[tokio::test]
async fn unknown_routes_and_bad_queries_get_json_errors() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = &coordinator.http;
    let (status, body) = get_json(&format!("{http}/api/v1/nothing-here")).await;
    assert_eq!(status, 404);
    assert_eq!(body["ok"], false);
    let (status, body) = get_json(&format!("{http}/api/v1/metrics/query?name=x&limit=0")).await;
    assert_eq!(status, 422);
    assert_eq!(body["field"], "limit");
    let (status, body) = get_json(&format!("{http}/api/v1/hosts/nobody")).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap_or("").contains("nobody"));
    let (status, body) = get_json(&format!("{http}/api/v1/ingest/health")).await;
    assert_eq!((status, body["service"].as_str()), (200, Some("ingest")));
    let _ = free_port();
    coordinator.proc.stop();
}
