//! Delivery from a real agent to a real coordinator through the faults that happen to an
//! agent itself: SIGKILLs while actions are queued and while metric batches flow, a
//! damaged metric buffer, a slow link, and what the agent says about them. (Coordinator,
//! broker and network faults: `tests/faults.rs`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vigil_tests::faults::{not_increasing, stored_timestamps, SpoolOnDisk};
use vigil_tests::slow_link::SlowLink;
use vigil_tests::{
    get_json, metric, post_raw, start_agent_with, start_coordinator, wait_for, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// The agent's data directory in a test.
fn data_dir(dir: &TestDir, host: &str) -> PathBuf {
    dir.path().join(format!("agent-data-{host}"))
}

/// An agent for `host` with `extra` flags, sampling every `interval`.
fn start_agent(dir: &TestDir, host: &str, broker: &str, interval: &str, extra: &[&str]) -> Proc {
    let data = data_dir(dir, host).display().to_string();
    let mut more = vec!["--data-dir", &data];
    more.extend(extra);
    start_agent_with(host, broker, interval, &more, dir.path())
}

/// `vigil-agent status --json` of the agent keeping its data in `data`.
fn agent_status(data: &Path) -> Value {
    let output = std::process::Command::new(vigil_tests::bin("vigil-agent"))
        .args(["status", "--json", "--data-dir"])
        .arg(data)
        .output()
        .expect("run vigil-agent status");
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

fn states(action: &Value) -> Vec<String> {
    action["transitions"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["state"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn actions_queued_through_twenty_agent_sigkills_each_end_exactly_once() {
    let dir = TestDir::new();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[allow.commands]\nslow = [\"/bin/sleep\", \"0.3\"]\n",
    )
    .expect("write agent config");
    let config_arg = config.display().to_string();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let host = "dl-kill";
    let mut agent = start_agent(
        &dir,
        host,
        &coordinator.broker,
        "1s",
        &["--config", &config_arg],
    );
    vigil_tests::wait_reporting(&http, host, WAIT).await;
    let post = || async {
        let (status, reply) = post_raw(
            &format!("{http}/api/v1/actions"),
            &format!(
                r#"{{"host":"{host}","target":"batch-job","action":"exec","params":{{"command":"slow"}},"details":"kill test"}}"#
            ),
        )
        .await;
        assert_eq!(status, 201, "{reply}");
        reply["action_id"].as_str().expect("action id").to_string()
    };
    let mut ids = Vec::new();
    for round in 0..20u64 {
        ids.push(post().await);
        ids.push(post().await);
        // Somewhere between queued and half-way through the next attempt.
        tokio::time::sleep(Duration::from_millis(200 + (round * 137) % 700)).await;
        agent.kill();
        agent = start_agent(
            &dir,
            host,
            &coordinator.broker,
            "1s",
            &["--config", &config_arg],
        );
    }
    let mut interrupted = 0;
    let mut dead_letter = 0;
    for id in &ids {
        let action = wait_for(&format!("{id} final"), Duration::from_secs(120), || async {
            let (_, a) = get_json(&format!("{http}/api/v1/actions/{id}")).await;
            matches!(a["status"].as_str(), Some("completed" | "dead_letter")).then_some(a)
        })
        .await;
        let states = states(&action);
        let finals = states
            .iter()
            .filter(|s| matches!(s.as_str(), "completed" | "dead_letter" | "cancelled"))
            .count();
        assert_eq!(finals, 1, "exactly one final state: {action}");
        // Every attempt killed (three kills in a row landed on it) ends in the dead-letter
        // queue, once; any other ends completed.
        let attempts = states.iter().filter(|s| *s == "running").count();
        let killed = states.iter().filter(|s| *s == "failed").count();
        match action["status"].as_str() {
            Some("completed") => assert_eq!(killed, attempts - 1, "{action}"),
            Some("dead_letter") => assert_eq!(killed, 3, "{action}"),
            other => panic!("unexpected final status {other:?}: {action}"),
        }
        interrupted += killed;
        dead_letter += usize::from(action["status"] == "dead_letter");
    }
    eprintln!(
        "{} actions through 20 SIGKILLs: each ended exactly once ({dead_letter} in the \
         dead-letter queue after three interrupted attempts); {interrupted} attempts were \
         interrupted and recorded as failed",
        ids.len()
    );
    // Everything the agent queued is stored: its outbox empties.
    wait_for("outbox empty", WAIT, || async {
        let status = agent_status(&data_dir(&dir, host));
        (status["outbox_queued"] == 0).then_some(())
    })
    .await;
    drop(agent);
    coordinator.proc.stop();
}

/// Metric batches through three agent SIGKILLs at 10 batches a second: whatever a kill cut
/// short (a batch stored whose acknowledgement had not reached the disk, a batch not yet
/// sent) goes again when the agent starts; the coordinator knows a batch sent again by its
/// place in its window and stores each once; none is lost.
#[tokio::test]
async fn metric_batches_through_agent_sigkills_are_each_stored_once() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let host = "dl-ack-kill";
    let data = data_dir(&dir, host);
    let since_ms = vigil_shared::time::now_ms() - 1_000;
    let duplicates = r#"vigil_delivery_redelivered_total{outcome="duplicate",stream="metrics"}"#;
    for round in 0..3u64 {
        let agent = start_agent(&dir, host, &coordinator.broker, "100ms", &[]);
        vigil_tests::wait_reporting(&http, host, WAIT).await;
        // Somewhere in the stream of batches.
        tokio::time::sleep(Duration::from_millis(1_500 + round * 450)).await;
        agent.kill();
        eprintln!(
            "round {round}: killed; the buffer on disk: {:?}",
            SpoolOnDisk::read(&data)
        );
    }
    // One more start that takes one sample and sends what is held, then a stop in order.
    let agent = start_agent(&dir, host, &coordinator.broker, "1h", &[]);
    wait_for("the buffer delivered", WAIT, || async {
        let disk = SpoolOnDisk::read(&data);
        (disk.held == 0 && disk.acked > 0).then_some(())
    })
    .await;
    agent.stop();
    let disk = SpoolOnDisk::read(&data);
    let token = vigil_tests::token_for(&http);
    let stored = stored_timestamps(
        &http,
        token.as_deref(),
        host,
        "cpu_percent",
        since_ms,
        vigil_shared::time::now_ms() + 60_000,
    )
    .await
    .expect("stored points");
    let sent_again = metric(&http, duplicates).await;
    eprintln!(
        "{} batches made, {} stored, {sent_again} batches sent again and not stored twice",
        disk.generated(),
        stored.len()
    );
    assert_eq!(
        stored.len() as u64,
        disk.generated(),
        "every batch stored once, none lost: {disk:?}"
    );
    assert_eq!(not_increasing(&stored), 0, "no batch stored twice");
    coordinator.proc.stop();
}

#[tokio::test]
async fn a_damaged_metric_buffer_segment_is_set_aside_and_the_agent_starts_and_says_so() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let host = "dl-corrupt";
    let spool = data_dir(&dir, host).join("metrics-spool");
    // A first run with no broker to reach leaves batches in the buffer.
    let dead_broker = format!("mqtt://127.0.0.1:{}", vigil_tests::free_port());
    let agent = start_agent(
        &dir,
        host,
        &dead_broker,
        "100ms",
        &["--metrics-buffer", "4MiB"],
    );
    let segments = wait_for("segments on disk", Duration::from_secs(90), || async {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segments.sort();
        (segments.len() >= 2).then_some(segments)
    })
    .await;
    agent.stop();
    // Damage the middle of the oldest segment (not its torn tail).
    let oldest = &segments[0];
    let mut bytes = std::fs::read(oldest).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(oldest, &bytes).expect("write segment");

    let agent = start_agent(&dir, host, &coordinator.broker, "1s", &[]);
    vigil_tests::wait_reporting(&http, host, WAIT).await;
    let status = wait_for("quarantine reported", WAIT, || async {
        let status = agent_status(&data_dir(&dir, host));
        (status["delivery"]["quarantined_segments_total"].as_u64() >= Some(1)).then_some(status)
    })
    .await;
    assert!(
        oldest.with_extension("seg.corrupt").exists(),
        "the damaged segment is set aside: {status}"
    );
    // The rest of the buffer is delivered: the buffer empties.
    wait_for("buffer delivered", WAIT, || async {
        let status = agent_status(&data_dir(&dir, host));
        (status["delivery"]["metrics_buffered"] == 0).then_some(())
    })
    .await;
    drop(agent);
    coordinator.proc.stop();
}

/// An agent 300 ms from its broker each way (a CONNECT takes 600 ms to be answered, more
/// than the agent's timers between polls): each of its two connections (link and outbox)
/// is made once, and its status and metrics come through.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_on_a_slow_link_connects_once_per_connection_and_reports() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let broker: std::net::SocketAddr = format!("127.0.0.1:{}", vigil_tests::broker_port(&c.broker))
        .parse()
        .expect("broker address");
    let link = SlowLink::start(broker, Duration::from_millis(300)).await;
    let host = "slow-link";
    let agent = start_agent(
        &dir,
        host,
        &format!("mqtt://127.0.0.1:{}", link.port),
        "200ms",
        &[],
    );
    let detail = wait_for("the slow agent's status and metrics", WAIT, || async {
        let (status, body) = get_json(&format!("{}/api/v1/hosts/{host}", c.http)).await;
        (status == 200
            && body["agent_version"].is_string()
            && body["metric_count"].as_u64() > Some(0))
        .then_some(body)
    })
    .await;
    assert_eq!(detail["state"], "online", "{detail}");
    // A few more round trips: nothing reconnects.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("broker connection failed") || l.contains("delivery lost the broker")
        })
        .collect();
    assert!(
        lost.is_empty(),
        "connections lost on the slow link: {lost:#?}"
    );
    assert_eq!(
        link.connections(),
        2,
        "the agent's link and outbox should each connect once"
    );
}
