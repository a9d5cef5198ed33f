//! End-to-end tests of the policy engine with real processes: a real coordinator (embedded
//! broker, LMDB), a real agent evaluating policies from a directory on metrics the test
//! drives through the agent's textfile collector.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{
    bin, get_json, metric, start_agent_with, start_coordinator, wait_for, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(20);

/// Starts an agent evaluating `policies` every 200 ms, with a textfile directory.
fn start_policy_agent(
    dir: &TestDir,
    host: &str,
    broker: &str,
    policies: &Path,
    textfiles: &Path,
) -> Proc {
    start_agent_with(
        host,
        broker,
        "200ms",
        &[
            "--policies",
            &policies.display().to_string(),
            "--textfile-dir",
            &textfiles.display().to_string(),
        ],
        dir.path(),
    )
}

/// Sets the value the agent will read for `cpu_percent{target=…}` (atomic rename).
fn set_cpu(textfiles: &Path, target: &str, value: f64) {
    let tmp = textfiles.join(format!(".{target}.tmp"));
    std::fs::write(
        &tmp,
        format!("cpu_percent{{target=\"{target}\"}} {value}\n"),
    )
    .expect("write");
    std::fs::rename(&tmp, textfiles.join(format!("{target}.prom"))).expect("rename");
}

async fn events(http: &str, query: &str) -> Vec<Value> {
    let (_, body) = get_json(&format!("{http}/api/v1/violations?limit=1000&{query}")).await;
    let mut events = body["events"].as_array().cloned().unwrap_or_default();
    events.reverse(); // oldest first
    events
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

async fn wait_kinds(http: &str, policy: &str, expected: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = events(http, &format!("policy={policy}")).await;
        if kinds(&all) == expected {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {policy} events {expected:?}; have {:?}",
            kinds(&all)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const POLICIES: &str = r#"
policies:
  - name: app-cpu-hot
    description: CPU of app-1 above 90 for 3 s
    severity: warning
    target: app-1
    condition: cpu_percent > 90 for 3s
    auto_remediate: true
    action: notify
    cooldown: 1h
    verify: 1s
  - name: app-flappy
    severity: info
    target: app-2
    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 90}
    auto_remediate: true
    action: notify
    verify: 100ms
    flap: {max_actions: 2, within: 10m, reset_after: 1h}
"#;

#[tokio::test]
async fn a_held_condition_fires_once_respects_cooldown_and_flap_protection() {
    let dir = TestDir::new();
    let policies = dir.path().join("policies");
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    std::fs::write(policies.join("apps.yaml"), POLICIES).expect("write policies");
    set_cpu(&textfiles, "app-1", 10.0);
    set_cpu(&textfiles, "app-2", 10.0);

    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let _agent = start_policy_agent(
        &dir,
        "e2e-policy",
        &coordinator.broker,
        &policies,
        &textfiles,
    );
    wait_for("agent runner status", WAIT, || async {
        let (_, host) = get_json(&format!("{http}/api/v1/hosts/e2e-policy")).await;
        (host["metric_count"].as_u64() >= Some(1)).then_some(())
    })
    .await;

    // `for: 3s`: fires once, no sooner than 3 s after the value went up.
    let raised = Instant::now();
    let raised_ms = vigil_shared::time::now_ms();
    set_cpu(&textfiles, "app-1", 95.0);
    let fired = wait_kinds(
        &http,
        "app-cpu-hot",
        &["fired", "act", "verified", "escalated"],
    )
    .await;
    let took = raised.elapsed();
    let fired_at = vigil_shared::time::parse_time(fired[0]["timestamp"].as_str().unwrap_or(""))
        .expect("timestamp");
    assert!(
        fired_at - raised_ms >= 2_800,
        "fired {} ms after the raise",
        fired_at - raised_ms
    );
    println!("fired {} ms after the value rose (for: 3s, interval 200 ms); seen over REST after {took:?}", fired_at - raised_ms);
    assert_eq!(fired[0]["target"], "app-1");
    assert_eq!(fired[0]["severity"], "warning");
    assert_eq!(
        fired[0]["summary"],
        "cpu_percent > 90 (observed 95) [target=app-1]"
    );
    assert_eq!(fired[0]["explanation"]["held"], true);
    assert_eq!(fired[1]["action"], "notify");
    assert_eq!(fired[1]["action_requested"], true);
    assert_eq!(fired[2]["detail"], "not_resolved");
    assert_eq!(fired[3]["severity"], "critical");
    // Still holding: nothing more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kinds(&events(&http, "policy=app-cpu-hot").await).len(), 4);

    // Clears, then holds again: a new violation, but the 1 h cooldown defers the action.
    set_cpu(&textfiles, "app-1", 10.0);
    wait_kinds(
        &http,
        "app-cpu-hot",
        &["fired", "act", "verified", "escalated", "resolved"],
    )
    .await;
    set_cpu(&textfiles, "app-1", 97.0);
    let again = wait_kinds(
        &http,
        "app-cpu-hot",
        &[
            "fired",
            "act",
            "verified",
            "escalated",
            "resolved",
            "fired",
            "deferred",
        ],
    )
    .await;
    assert!(
        again[6]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("cooldown"),
        "{}",
        again[6]
    );

    // Flap protection: two actions, then an escalation instead of a third.
    let mut expected: Vec<&str> = Vec::new();
    for round in 0..3 {
        set_cpu(&textfiles, "app-2", 99.0);
        expected.extend(if round < 2 {
            vec!["fired", "act"]
        } else {
            vec!["fired", "escalated"]
        });
        wait_kinds(&http, "app-flappy", &expected).await;
        set_cpu(&textfiles, "app-2", 10.0);
        // After the escalation no action ran, so there is nothing to verify.
        expected.extend(if round < 2 {
            vec!["verified", "resolved"]
        } else {
            vec!["resolved"]
        });
        wait_kinds(&http, "app-flappy", &expected).await;
    }
    let flappy = events(&http, "policy=app-flappy&kind=escalated").await;
    assert_eq!(flappy.len(), 1);
    assert_eq!(flappy[0]["severity"], "critical");
    assert!(flappy[0]["detail"]
        .as_str()
        .unwrap_or("")
        .contains("flap protection"));
    coordinator.proc.stop();
}

#[tokio::test]
async fn a_bad_policy_file_leaves_the_previous_policies_running() {
    let dir = TestDir::new();
    let policies = dir.path().join("policies");
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    std::fs::write(policies.join("apps.yaml"), POLICIES).expect("write policies");
    set_cpu(&textfiles, "app-2", 10.0);
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let _agent = start_policy_agent(
        &dir,
        "e2e-badfile",
        &coordinator.broker,
        &policies,
        &textfiles,
    );
    wait_for("policies loaded", WAIT, || async {
        let (_, host) = get_json(&format!("{http}/api/v1/hosts/e2e-badfile")).await;
        (host["metric_count"].as_u64() >= Some(1)).then_some(())
    })
    .await;

    // Break the file: a field with the wrong type, in a second policy file.
    let bad = "policies:\n  - name: broken\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: high}\n";
    std::fs::write(policies.join("zz-broken.yaml"), bad).expect("write bad file");

    // The CLI names file, policy field and exits 1.
    let output = Command::new(bin("vigil-agent"))
        .args(["policy", "check", &policies.display().to_string()])
        .output()
        .expect("run policy check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("zz-broken.yaml") && stderr.contains("threshold"),
        "{stderr}"
    );

    // The agent logs it and keeps evaluating the previous set.
    let log_dir = dir.path().to_path_buf();
    wait_for("rejection in the agent log", WAIT, || {
        let log_dir = log_dir.clone();
        async move {
            let logs: String = std::fs::read_dir(&log_dir)
                .ok()?
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("agent-e2e-badfile")
                })
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect();
            (logs.contains("policy files rejected") && logs.contains("zz-broken.yaml"))
                .then_some(())
        }
    })
    .await;
    // …and reports it: in its status, counted in the coordinator's /metrics.
    wait_for("load error in /metrics", WAIT, || async {
        let errors = metric(
            &http,
            r#"vigil_agent_policy_load_errors{host="e2e-badfile"}"#,
        )
        .await;
        (errors >= 1.0).then_some(())
    })
    .await;
    let (_, runner) = get_json(&format!("{http}/api/v1/policies/runner/status")).await;
    let agent = runner["runner"]["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["host"] == "e2e-badfile").cloned())
        .expect("agent in runner status");
    assert!(
        agent["load_error"]
            .as_str()
            .unwrap_or("")
            .contains("zz-broken.yaml"),
        "{agent}"
    );
    assert_eq!(
        agent["policies_loaded"], 2,
        "the previous set is still loaded"
    );
    set_cpu(&textfiles, "app-2", 99.0);
    wait_kinds(&http, "app-flappy", &["fired", "act"]).await;
    coordinator.proc.stop();
}

#[test]
fn policy_test_cli_explains_and_exits_3_when_something_fires() {
    let dir = TestDir::new();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, POLICIES).expect("write");
    let run = |metric: &str| {
        Command::new(bin("vigil-agent"))
            .args([
                "policy",
                "test",
                &file.display().to_string(),
                "--target",
                "app-1",
                "--metric",
                metric,
            ])
            .output()
            .expect("run policy test")
    };
    let hot = run("cpu_percent=95");
    let out = String::from_utf8_lossy(&hot.stdout);
    assert_eq!(hot.status.code(), Some(3), "{out}");
    assert!(out.contains("FIRES app-cpu-hot [warning] once held for 3s: cpu_percent > 90 (observed 95) -> notify"), "{out}");
    let cool = run("cpu_percent=50");
    assert_eq!(cool.status.code(), Some(0));
    let bad = run("cpu_percent=lots");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_example_policies_in_the_repository_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("policies");
    for dir in ["examples", "local"] {
        let output = Command::new(bin("vigil-agent"))
            .args(["policy", "check", &root.join(dir).display().to_string()])
            .output()
            .expect("run policy check");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{dir}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn policy_check_loads_the_originals_drain_pod_with_a_warning() {
    let dir = TestDir::new();
    let file = dir.path().join("original.yaml");
    std::fs::write(
        &file,
        "policies:\n  - name: drain\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 80}\n    action: drain-pod\n  - name: grow\n    condition: cpu_percent > 90\n    action: scale-up\n",
    )
    .expect("write");
    let output = Command::new(bin("vigil-agent"))
        .args(["policy", "check", &file.display().to_string()])
        .output()
        .expect("run policy check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("ok: ") && stdout.contains("(2 policies)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: ")
            && stdout.contains("policy `drain`: action `drain-pod`")
            && stdout.contains("not_runnable"),
        "{stdout}"
    );
    assert!(!stdout.contains("policy `grow`"), "{stdout}");
}
