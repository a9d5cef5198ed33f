//! End-to-end tests of the coordinator's policy API against the real
//! `vigil-coordinator` binary: CRUD over REST persisted in LMDB across a restart, the
//! `--policies` directory (file policies REST cannot touch, reload, a bad file), the
//! sandbox on the original API's example, and the runner status.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vigil_tests::{
    bin, delete, free_port, get_json, metric, post_raw, put_raw, start_coordinator, TestDir,
};

/// The original API's example policy (`POST /api/v1/policies`).
fn seed_policy() -> Value {
    json!({
        "name": "high-cpu-alert",
        "description": "Alert when CPU exceeds 80%",
        "severity": "warning",
        "target": "web-*",
        "enabled": true,
        "auto_remediate": false,
        "condition": {"type": "metric_exceeds", "metric": "cpu_percent", "threshold": 80},
        "action": "restart",
        "params": {"cooldown_seconds": 300}
    })
}

/// Asserts a 422 naming `field`.
fn assert_invalid(what: &str, (status, body): (u16, Value), field: &str) {
    assert_eq!(status, 422, "{what}: {body}");
    assert_eq!(body["ok"], false, "{what}: {body}");
    assert_eq!(body["field"], field, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn policies_are_managed_over_rest_and_survive_a_restart() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let api = format!("{}/api/v1/policies", coordinator.http);

    let (status, body) = get_json(&api).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ok": true, "policies": {}, "total": 0, "enabled_count": 0})
    );

    let (status, body) = post_raw(&api, &seed_policy().to_string()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["policy"]["name"], "high-cpu-alert");
    assert_eq!(body["policy"]["source"], "api");

    let (status, body) = post_raw(&api, &seed_policy().to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap_or("")
        .contains("high-cpu-alert"));

    let mut bad = seed_policy();
    bad["name"] = json!("bad");
    bad["severity"] = json!("urgent");
    assert_invalid(
        "severity",
        post_raw(&api, &bad.to_string()).await,
        "severity",
    );
    let mut bad = seed_policy();
    bad["name"] = json!("bad");
    bad["target"] = json!("web-[");
    assert_invalid("target", post_raw(&api, &bad.to_string()).await, "target");
    let mut bad = seed_policy();
    bad["name"] = json!("bad");
    bad["condition"]["threshold"] = json!("eighty");
    assert_invalid(
        "threshold",
        post_raw(&api, &bad.to_string()).await,
        "condition",
    );
    let mut bad = seed_policy();
    bad["name"] = json!("bad");
    bad["colour"] = json!("red");
    assert_invalid(
        "unknown key",
        post_raw(&api, &bad.to_string()).await,
        "colour",
    );
    let mut bad = seed_policy();
    bad["name"] = json!("bad");
    bad["action"] = json!("drain-nodes");
    assert_invalid("action", post_raw(&api, &bad.to_string()).await, "action");
    let (status, body) = post_raw(&api, "this is not json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["ok"], false);

    let (status, body) = get_json(&api).await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["enabled_count"], 1);
    let listed = &body["policies"]["high-cpu-alert"];
    assert_eq!(listed["description"], "Alert when CPU exceeds 80%");
    assert_eq!(listed["target"], "web-*");
    assert_eq!(listed["auto_remediate"], false);
    assert_eq!(listed["params"]["cooldown_seconds"], 300);
    assert_eq!(listed["source"], "api");

    let (status, body) = get_json(&format!("{api}/high-cpu-alert")).await;
    assert_eq!(status, 200);
    assert_eq!(body["policy"]["severity"], "warning");
    let (status, body) = get_json(&format!("{api}/no-such-policy")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["ok"], false);

    // A partial update, as the original API takes it.
    let (status, body) = put_raw(
        &format!("{api}/high-cpu-alert"),
        r#"{"description": "Updated description", "severity": "critical", "enabled": false}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let policy = &body["policy"];
    assert_eq!(policy["description"], "Updated description");
    assert_eq!(policy["severity"], "critical");
    assert_eq!(policy["enabled"], false);
    assert_eq!(policy["target"], "web-*", "untouched keys stay");
    assert_eq!(policy["condition"]["threshold"], 80.0);
    assert_invalid(
        "update severity",
        put_raw(
            &format!("{api}/high-cpu-alert"),
            r#"{"severity": "urgent"}"#,
        )
        .await,
        "severity",
    );
    assert_invalid(
        "rename",
        put_raw(&format!("{api}/high-cpu-alert"), r#"{"name": "other"}"#).await,
        "name",
    );
    let (status, _) = put_raw(&format!("{api}/nope"), r#"{"enabled": true}"#).await;
    assert_eq!(status, 404);

    let (status, body) = put_raw(&format!("{api}/high-cpu-alert/enable"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["enabled"], true);
    assert_eq!(get_json(&api).await.1["enabled_count"], 1);
    let (status, body) = put_raw(&format!("{api}/high-cpu-alert/disable"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["enabled"], false);
    assert_eq!(get_json(&api).await.1["enabled_count"], 0);

    let (status, body) = get_json(&format!("{api}/severity/critical")).await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1);
    assert!(body["policies"]["high-cpu-alert"].is_object(), "{body}");
    let (_, body) = get_json(&format!("{api}/severity/info")).await;
    assert_eq!(body["total"], 0);
    assert_invalid(
        "severity filter",
        get_json(&format!("{api}/severity/urgent")).await,
        "severity",
    );

    let mut disk = seed_policy();
    disk["name"] = json!("disk-low");
    disk["condition"] = json!("disk_free_percent < 10");
    let (status, body) = post_raw(&api, &disk.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = delete(&format!("{api}/disk-low")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ok": true, "message": "Policy 'disk-low' deleted"})
    );
    let (status, _) = delete(&format!("{api}/disk-low")).await;
    assert_eq!(status, 404);

    let (status, body) = post_raw(&format!("{api}/reload"), "").await;
    assert_eq!(status, 409, "no directory configured: {body}");
    assert!(body["error"].as_str().unwrap_or("").contains("--policies"));

    let (status, body) = get_json(&format!("{api}/runner/status")).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert_eq!(body["runner"]["enabled"], true);
    assert_eq!(body["runner"]["running"], false);
    assert_eq!(body["runner"]["agents"], json!([]));

    // Same data directory, new process: the API policy is still there, as last changed.
    coordinator.proc.stop();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let api = format!("{}/api/v1/policies", coordinator.http);
    let (_, body) = get_json(&api).await;
    assert_eq!(body["total"], 1, "{body}");
    let policy = &body["policies"]["high-cpu-alert"];
    assert_eq!(policy["severity"], "critical");
    assert_eq!(policy["enabled"], false);
    assert_eq!(policy["description"], "Updated description");
    assert_eq!(policy["source"], "api");
    assert!(body["policies"]["disk-low"].is_null());
}

#[tokio::test]
async fn the_sandbox_explains_the_seed_example() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let api = format!("{}/api/v1/policies", coordinator.http);
    let (status, body) = post_raw(&api, &seed_policy().to_string()).await;
    assert_eq!(status, 201, "{body}");

    let request = json!({
        "metrics": {"cpu_percent": 95, "memory_percent": 88},
        "target": "web-server-01"
    });
    let (status, body) = post_raw(&format!("{api}/evaluate"), &request.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    let violations = body["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 1, "{body}");
    let v = &violations[0];
    assert_eq!(v["policy_name"], "high-cpu-alert");
    assert_eq!(v["severity"], "warning");
    assert_eq!(v["description"], "Alert when CPU exceeds 80%");
    assert_eq!(v["target"], "web-server-01");
    assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(v["explanation"]["condition"], "cpu_percent > 80");
    assert_eq!(v["explanation"]["held"], true);
    assert_eq!(v["explanation"]["observed"], 95.0);
    assert_eq!(v["summary"], "cpu_percent > 80 (observed 95)");
    let actions = body["actions_triggered"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{body}");
    assert_eq!(actions[0]["action"], "restart");
    assert_eq!(actions[0]["target"], "web-server-01");
    assert_eq!(actions[0]["status"], "not_auto_remediated");
    assert!(body["timestamp"].is_string());

    // A target the policy does not match: nothing fires.
    let (_, body) = post_raw(
        &format!("{api}/evaluate"),
        r#"{"metrics": {"cpu_percent": 95}, "target": "db-01"}"#,
    )
    .await;
    assert_eq!(body["violations"], json!([]), "{body}");

    // Policies given in the request replace the registry's.
    let mut memory = seed_policy();
    memory["name"] = json!("memory-high");
    memory["condition"] = json!("memory_percent > 85 for 2m");
    memory["auto_remediate"] = json!(true);
    let request = json!({
        "metrics": {"cpu_percent": 95, "memory_percent": 88},
        "target": "web-server-01",
        "policies": [memory]
    });
    let (status, body) = post_raw(&format!("{api}/evaluate"), &request.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let violations = body["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 1, "{body}");
    assert_eq!(violations[0]["policy_name"], "memory-high");
    assert_eq!(violations[0]["holds_for"], "2m");
    assert_eq!(body["actions_triggered"][0]["status"], "triggered");

    assert_invalid(
        "metric value",
        post_raw(
            &format!("{api}/evaluate"),
            r#"{"metrics": {"cpu_percent": "very high"}, "target": "web-01"}"#,
        )
        .await,
        "metrics.cpu_percent",
    );
    assert_invalid(
        "given policy",
        post_raw(
            &format!("{api}/evaluate"),
            r#"{"metrics": {}, "policies": [{"name": "x", "condition": "cpu_percent > 1", "severity": "loud"}]}"#,
        )
        .await,
        "policies[0].severity",
    );
    let (status, _) = post_raw(&format!("{api}/evaluate"), "{").await;
    assert_eq!(status, 400);
}

const FILE_POLICIES: &str = "\
policies:
  - name: disk-low
    description: Root file system almost full
    severity: critical
    target: all
    condition: {type: metric_below, metric: disk_free_percent, threshold: 10}
";

#[tokio::test]
async fn file_policies_are_served_reloaded_and_protected() {
    let dir = TestDir::new();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    std::fs::write(policy_dir.join("disk.yaml"), FILE_POLICIES).expect("write policy");
    let policy_arg = policy_dir.display().to_string();
    let coordinator = start_coordinator(&dir, None, &["--policies", &policy_arg]).await;
    let http = &coordinator.http;
    let api = format!("{http}/api/v1/policies");
    let errors = "vigil_policy_load_errors_total{source=\"coordinator\"}";

    let (_, body) = get_json(&api).await;
    assert_eq!(body["total"], 1, "{body}");
    let disk = &body["policies"]["disk-low"];
    assert_eq!(disk["source"], "file");
    assert!(disk["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("disk.yaml")));
    assert_eq!(disk["severity"], "critical");

    // REST cannot create, change or delete a name a file defines.
    let mut clash = seed_policy();
    clash["name"] = json!("disk-low");
    let refusals = [
        post_raw(&api, &clash.to_string()).await,
        put_raw(&format!("{api}/disk-low"), r#"{"severity": "info"}"#).await,
        put_raw(&format!("{api}/disk-low/disable"), "").await,
        delete(&format!("{api}/disk-low")).await,
    ];
    for (status, body) in refusals {
        assert_eq!(status, 409, "{body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("disk.yaml"),
            "{body}"
        );
    }

    // An API policy beside the file ones.
    let (status, body) = post_raw(&api, &seed_policy().to_string()).await;
    assert_eq!(status, 201, "{body}");

    std::fs::write(
        policy_dir.join("memory.yml"),
        "- name: memory-high\n  condition: \"memory_percent > 90 for 1m\"\n",
    )
    .expect("write policy");
    let (status, body) = post_raw(&format!("{api}/reload"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"ok": true, "message": "Policies reloaded successfully (3 policies)"})
    );
    assert_eq!(get_json(&format!("{api}/memory-high")).await.0, 200);
    assert_eq!(metric(http, errors).await, 0.0);

    // A bad file: refused whole, named, counted; the previous set stays in force.
    std::fs::write(
        policy_dir.join("zz-bad.yaml"),
        "- name: broken\n  target: web-[\n  condition: \"cpu_percent > 90\"\n",
    )
    .expect("write policy");
    let (status, body) = post_raw(&format!("{api}/reload"), "").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["ok"], false);
    assert!(
        body["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("zz-bad.yaml")),
        "{body}"
    );
    assert_eq!(body["policy"], "broken");
    assert_eq!(body["field"], "target");
    let error = body["error"].as_str().unwrap_or("");
    assert!(
        error.contains("zz-bad.yaml") && error.contains("broken") && error.contains("target"),
        "{error}"
    );
    assert_eq!(metric(http, errors).await, 1.0);
    let (_, body) = get_json(&api).await;
    assert_eq!(body["total"], 3, "{body}");
    assert!(body["policies"]["broken"].is_null());
    assert_eq!(body["policies"]["disk-low"]["source"], "file");
    assert_eq!(body["policies"]["high-cpu-alert"]["source"], "api");
}

#[test]
fn a_bad_policy_directory_stops_the_start_with_a_precise_message() {
    let dir = TestDir::new();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    std::fs::write(
        policy_dir.join("cpu.yaml"),
        "policies:\n  - name: cpu\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 80}\n    action: drain-nodes\n",
    )
    .expect("write policy");
    let output = run_to_exit(
        &[
            "serve",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--mqtt-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--policies",
            &policy_dir.display().to_string(),
        ],
        dir.path(),
    );
    assert!(
        output.contains("cpu.yaml") && output.contains("`cpu`") && output.contains("action"),
        "{output}"
    );
}

/// Runs the coordinator, expecting it to exit with an error within 20 s; returns stderr.
fn run_to_exit(args: &[&str], cwd: &Path) -> String {
    let mut child = Command::new(bin("vigil-coordinator"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vigil-coordinator");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait for vigil-coordinator") {
            assert!(!status.success(), "the coordinator should refuse to start");
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("read stderr");
            }
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the coordinator did not exit within 20 s despite a bad policy directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn every_action_of_the_original_format_loads_from_a_policy_directory() {
    let dir = TestDir::new();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    let mut yaml = String::from("policies:\n");
    for action in ["drain-pod", "rebalance", "snapshot", "scale-up", "restart"] {
        yaml.push_str(&format!(
            "  - name: p-{action}\n    condition: {{type: metric_exceeds, metric: cpu_percent, threshold: 80}}\n    auto_remediate: true\n    action: {action}\n"
        ));
    }
    std::fs::write(policy_dir.join("original.yaml"), yaml).expect("write policy");
    let policy_arg = policy_dir.display().to_string();
    let coordinator = start_coordinator(&dir, None, &["--policies", &policy_arg]).await;
    let (status, body) = get_json(&format!("{}/api/v1/policies", coordinator.http)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 5, "{body}");
    assert_eq!(
        body["policies"]["p-drain-pod"]["action"], "drain-pod",
        "{body}"
    );
    // A warning in the log for each action that runs only where an agent maps it.
    let log: String = std::fs::read_dir(dir.path())
        .expect("log dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("coordinator"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    for action in ["drain-pod", "rebalance", "snapshot"] {
        assert!(
            log.contains(&format!(
                "policy `p-{action}`: action `{action}` has no built-in meaning"
            )),
            "{log}"
        );
    }
    assert!(!log.contains("policy `p-scale-up`: action"), "{log}");
    coordinator.proc.stop();
}
