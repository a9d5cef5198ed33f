//! End-to-end remediation with real parts: a real coordinator, a real agent with its
//! durable queue, the machine's real Docker engine (containers from a locally built
//! busybox image), allowlisted commands, and the audit trail over REST.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::docker::{busybox_image, docker, unique_name, Container};
use vigil_tests::{
    get_json, post_raw, start_agent_with, start_coordinator, wait_for, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// Docker's RFC 3339 (nanoseconds) as epoch ms.
fn docker_time_ms(text: &str) -> i64 {
    vigil_shared::time::parse_time(text).unwrap_or_else(|e| panic!("docker time `{text}`: {e}"))
}

/// An agent for `host`, evaluating `policies`, with `extra` flags, every 500 ms.
fn start_agent(dir: &TestDir, host: &str, broker: &str, policies: &Path, extra: &[&str]) -> Proc {
    let data = dir.path().join(format!("agent-data-{host}"));
    let (policies, data) = (policies.display().to_string(), data.display().to_string());
    let mut more = vec!["--policies", &policies, "--data-dir", &data];
    more.extend(extra);
    start_agent_with(host, broker, "500ms", &more, dir.path())
}

fn write_policies(dir: &TestDir, yaml: &str) -> PathBuf {
    let path = dir.path().join("policies");
    std::fs::create_dir_all(&path).expect("mkdir");
    std::fs::write(path.join("p.yaml"), yaml).expect("write policies");
    path
}

async fn actions(http: &str, query: &str) -> Vec<Value> {
    let (_, body) = get_json(&format!("{http}/api/v1/actions?limit=500&{query}")).await;
    body["actions"].as_array().cloned().unwrap_or_default()
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

fn transition_ms(action: &Value, state: &str) -> Option<i64> {
    action["transitions"]
        .as_array()?
        .iter()
        .find(|t| t["state"] == state)
        .and_then(|t| t["at"].as_str())
        .map(docker_time_ms)
}

#[tokio::test]
async fn a_killed_container_is_restarted_and_the_audit_shows_the_lifecycle() {
    let dir = TestDir::new();
    let image = busybox_image();
    let name = unique_name("web");
    let web = Container::run_named(&name, &[image]);
    let policies = write_policies(
        &dir,
        &format!(
            "policies:\n  - name: web-running\n    target: {name}\n    condition: {{type: container_state}}\n    auto_remediate: true\n    action: restart\n    verify: 2s\n"
        ),
    );
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let _agent = start_agent(
        &dir,
        "e2e-docker",
        &coordinator.broker,
        &policies,
        &["--allow-container", &name],
    );
    vigil_tests::wait_reporting(&http, "e2e-docker", WAIT).await;
    // Let the watcher report the container as running first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_started = web.inspect("{{.State.StartedAt}}");

    let killed = Instant::now();
    docker(&["kill", "--signal", "KILL", &name]);
    let restarted = wait_for("container running again", WAIT, || async {
        let started = web.inspect("{{.State.StartedAt}}");
        (started != old_started && web.inspect("{{.State.Running}}") == "true").then_some(started)
    })
    .await;
    let died_ms = docker_time_ms(&web.inspect("{{.State.FinishedAt}}"));
    let back_ms = docker_time_ms(&restarted);
    println!(
        "container death → running again via Vigil: {} ms (Docker's own timestamps; observed by the test after {:?})",
        back_ms - died_ms,
        killed.elapsed()
    );

    let action = wait_for("a resolved restart in the audit trail", WAIT, || async {
        actions(&http, &format!("target={name}"))
            .await
            .into_iter()
            .find(|a| a["status"] == "resolved")
    })
    .await;
    assert_eq!(
        states(&action),
        vec!["pending", "running", "completed", "resolved"],
        "{action}"
    );
    assert_eq!(action["policy"], "web-running");
    assert_eq!(action["executor"], "docker");
    let pending = transition_ms(&action, "pending").expect("pending time");
    let running = transition_ms(&action, "running").expect("running time");
    let completed = transition_ms(&action, "completed").expect("completed time");
    assert!(pending <= running && running <= completed);
    println!(
        "death → action pending: {} ms; pending → executor running: {} ms; running → completed: {} ms",
        pending - died_ms,
        running - pending,
        completed - running
    );
    coordinator.proc.stop();
}

#[tokio::test]
async fn a_container_that_dies_at_once_goes_through_retries_dead_letter_and_flap_protection() {
    let dir = TestDir::new();
    let image = busybox_image();
    let name = unique_name("crashy");
    let _crashy = Container::run_named(&name, &[image, "sh", "-c", "exit 3"]);
    let policies = write_policies(
        &dir,
        &format!(
            "policies:\n  - name: crashy-running\n    target: {name}\n    condition: {{type: container_state}}\n    auto_remediate: true\n    verify: 500ms\n    actions: [restart, restart, restart]\n    params: {{timeout: 2s, max_attempts: 2}}\n    flap: {{max_actions: 2, within: 10m}}\n"
        ),
    );
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let _agent = start_agent(
        &dir,
        "e2e-crashy",
        &coordinator.broker,
        &policies,
        &["--allow-container", &name],
    );
    // Two actions (flap limit 2), each tried twice with backoff, both dead-lettered.
    let dead = wait_for(
        "two dead-lettered actions",
        Duration::from_secs(60),
        || async {
            let all = actions(&http, &format!("target={name}")).await;
            let dead: Vec<Value> = all
                .into_iter()
                .filter(|a| a["status"] == "dead_letter")
                .collect();
            (dead.len() == 2).then_some(dead)
        },
    )
    .await;
    for action in &dead {
        assert_eq!(
            states(action),
            vec![
                "pending",
                "running",
                "failed",
                "running",
                "failed",
                "dead_letter"
            ],
            "{action}"
        );
        let failed: Vec<&Value> = action["transitions"]
            .as_array()
            .map(|t| t.iter().filter(|t| t["state"] == "failed").collect())
            .unwrap_or_default();
        assert!(
            failed[0]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("retrying in"),
            "{action}"
        );
    }
    let (_, escalations) = get_json(&format!(
        "{http}/api/v1/violations?policy=crashy-running&kind=escalated"
    ))
    .await;
    let escalation = wait_for("flap escalation", WAIT, || async {
        let (_, body) = get_json(&format!(
            "{http}/api/v1/violations?policy=crashy-running&kind=escalated"
        ))
        .await;
        body["events"].as_array().and_then(|e| e.first().cloned())
    })
    .await;
    let _ = escalations;
    assert_eq!(escalation["severity"], "critical");
    assert!(
        escalation["detail"]
            .as_str()
            .unwrap_or("")
            .contains("flap protection"),
        "{escalation}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        actions(&http, &format!("target={name}")).await.len(),
        2,
        "no third action"
    );
    coordinator.proc.stop();
}

#[tokio::test]
async fn manual_actions_survive_an_agent_sigkill_and_each_ends_exactly_once() {
    let dir = TestDir::new();
    let policies = write_policies(&dir, "policies: []\n");
    // An allowlisted command that takes a while, so actions queue up behind it.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[allow.commands]\nslow = [\"/bin/sleep\", \"1.5\"]\n",
    )
    .expect("write agent config");
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let config_arg = config.display().to_string();
    let agent = start_agent(
        &dir,
        "e2e-crash",
        &coordinator.broker,
        &policies,
        &["--config", &config_arg],
    );
    vigil_tests::wait_reporting(&http, "e2e-crash", WAIT).await;
    let post = || async {
        let (status, reply) = post_raw(
            &format!("{http}/api/v1/actions"),
            r#"{"host":"e2e-crash","target":"batch-job","action":"exec","params":{"command":"slow"},"details":"e2e"}"#,
        )
        .await;
        assert_eq!(status, 201, "{reply}");
        reply["action_id"].as_str().expect("action id").to_string()
    };
    let mut ids = vec![post().await, post().await];
    // Wait until the first runs, then kill the agent without warning.
    wait_for("first action running", WAIT, || async {
        let (_, a) = get_json(&format!("{http}/api/v1/actions/{}", ids[0])).await;
        (a["status"] == "running").then_some(())
    })
    .await;
    agent.kill();
    // Two more while the agent is down: they wait at the broker (persistent session).
    ids.push(post().await);
    ids.push(post().await);
    let _agent = start_agent(
        &dir,
        "e2e-crash",
        &coordinator.broker,
        &policies,
        &["--config", &config_arg],
    );
    for id in &ids {
        let action = wait_for(&format!("{id} final"), Duration::from_secs(60), || async {
            let (_, a) = get_json(&format!("{http}/api/v1/actions/{id}")).await;
            matches!(a["status"].as_str(), Some("completed" | "dead_letter")).then_some(a)
        })
        .await;
        let finals = states(&action)
            .iter()
            .filter(|s| matches!(s.as_str(), "completed" | "dead_letter" | "cancelled"))
            .count();
        assert_eq!(finals, 1, "exactly one final state: {action}");
        assert_eq!(action["status"], "completed", "{action}");
    }
    let (_, first) = get_json(&format!("{http}/api/v1/actions/{}", ids[0])).await;
    assert!(
        states(&first).contains(&"failed".to_string()),
        "the interrupted attempt is recorded as failed, then retried: {first}"
    );
    coordinator.proc.stop();
}

#[tokio::test]
async fn from_threshold_crossing_to_executor_start_and_a_manual_action_result() {
    let dir = TestDir::new();
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    std::fs::write(
        textfiles.join("app.prom"),
        "cpu_percent{target=\"app-x\"} 10\n",
    )
    .expect("write");
    let policies = write_policies(
        &dir,
        "policies:\n  - name: app-hot\n    target: app-x\n    condition: cpu_percent > 90 for 1s\n    auto_remediate: true\n    action: exec\n    params: {command: ok}\n",
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[allow.commands]\nok = [\"/bin/true\"]\n").expect("write config");
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let textfile_arg = textfiles.display().to_string();
    let config_arg = config.display().to_string();
    let _agent = start_agent(
        &dir,
        "e2e-latency",
        &coordinator.broker,
        &policies,
        &["--config", &config_arg, "--textfile-dir", &textfile_arg],
    );
    vigil_tests::wait_reporting(&http, "e2e-latency", WAIT).await;
    let tmp = textfiles.join(".app.tmp");
    std::fs::write(&tmp, "cpu_percent{target=\"app-x\"} 99\n").expect("write");
    std::fs::rename(&tmp, textfiles.join("app.prom")).expect("rename");

    let action = wait_for("completed exec action", WAIT, || async {
        actions(&http, "target=app-x")
            .await
            .into_iter()
            .find(|a| a["status"] == "completed")
    })
    .await;
    let (_, fired) = get_json(&format!(
        "{http}/api/v1/violations?policy=app-hot&kind=fired"
    ))
    .await;
    let fired_ms = fired["events"][0]["timestamp"]
        .as_str()
        .map(docker_time_ms)
        .expect("fired event");
    let running_ms = transition_ms(&action, "running").expect("running");
    println!(
        "policy fired (after its `for: 1s`) → executor started: {} ms",
        running_ms - fired_ms
    );
    assert!(running_ms >= fired_ms);
    assert!(
        action["details"].as_str().unwrap_or("").contains("exit"),
        "{action}"
    );

    // A manual action through the coordinator: the result is visible by id.
    let (status, reply) = post_raw(
        &format!("{http}/api/v1/actions"),
        r#"{"host":"e2e-latency","target":"app-x","action":"notify","details":"operator check"}"#,
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    let id = reply["action_id"].as_str().expect("id").to_string();
    let manual = wait_for("manual action completed", WAIT, || async {
        let (_, a) = get_json(&format!("{http}/api/v1/actions/{id}")).await;
        (a["status"] == "completed").then_some(a)
    })
    .await;
    assert_eq!(manual["id"], id.as_str());
    assert_eq!(manual["target"], "app-x");
    assert_eq!(manual["action"], "notify");
    assert_eq!(
        states(&manual),
        vec!["pending", "running", "completed"],
        "{manual}"
    );
    coordinator.proc.stop();
}

/// Every log file in `dir` whose name starts with `prefix`, joined.
fn logs(dir: &Path, prefix: &str) -> String {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

#[tokio::test]
async fn the_originals_drain_pod_runs_where_it_is_mapped_and_is_recorded_not_runnable_elsewhere() {
    let dir = TestDir::new();
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    std::fs::write(
        textfiles.join("app.prom"),
        "cpu_percent{target=\"app-d\"} 99\n",
    )
    .expect("write");
    // The original system's policy, unchanged.
    let policies = write_policies(
        &dir,
        "policies:\n  - name: drain-hot\n    target: app-d\n    severity: critical\n    enabled: true\n    auto_remediate: true\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 90}\n    action: drain-pod\n",
    );
    let drained = dir.path().join("drained");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[allow.commands]\ndrain-node = [\"/bin/sh\", \"-c\", \"echo drained >> {}\"]\n\
             [actions]\ndrain-pod = {{ exec = \"drain-node\" }}\n",
            drained.display()
        ),
    )
    .expect("write config");
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let textfile_arg = textfiles.display().to_string();
    let config_arg = config.display().to_string();
    let _mapped = start_agent(
        &dir,
        "e2e-mapped",
        &coordinator.broker,
        &policies,
        &["--config", &config_arg, "--textfile-dir", &textfile_arg],
    );
    let _unmapped = start_agent(
        &dir,
        "e2e-unmapped",
        &coordinator.broker,
        &policies,
        &["--textfile-dir", &textfile_arg],
    );

    let ran = wait_for("mapped drain-pod completed", WAIT, || async {
        actions(&http, "host=e2e-mapped&target=app-d")
            .await
            .into_iter()
            .find(|a| a["status"] == "completed")
    })
    .await;
    assert_eq!(ran["action"], "drain-pod", "{ran}");
    assert_eq!(ran["executor"], "exec", "{ran}");
    assert_eq!(
        states(&ran)[..3],
        ["pending", "running", "completed"],
        "{ran}"
    );
    let written = std::fs::read_to_string(&drained).expect("the mapped command ran");
    assert!(written.starts_with("drained"), "{written}");

    let refused = wait_for("unmapped drain-pod recorded", WAIT, || async {
        actions(&http, "host=e2e-unmapped&target=app-d")
            .await
            .into_iter()
            .find(|a| a["status"] == "dead_letter")
    })
    .await;
    assert_eq!(refused["action"], "drain-pod", "{refused}");
    assert_eq!(
        refused["details"],
        "not_runnable: no mapping for drain-pod on this host ([actions] in agent.toml)",
        "{refused}"
    );
    assert_eq!(states(&refused), ["pending", "dead_letter"], "{refused}");
    // Both agents loaded the policy; the one without a mapping said so at load.
    let warning = "action `drain-pod` has no built-in meaning on a host";
    let log = logs(dir.path(), "agent-e2e-unmapped");
    assert!(log.contains(warning), "{log}");
    let log = logs(dir.path(), "agent-e2e-mapped");
    assert!(!log.contains(warning), "{log}");
    coordinator.proc.stop();
}
