//! Alertmanager as a source of actions, with the real parts: Debian's Prometheus
//! evaluates an alert rule over a coordinator metric the test drives (an agent's policy
//! files break), Debian's Alertmanager sends the alert to the coordinator's webhook with
//! an operator token, the routing file maps it to an `exec` action, and the real agent on
//! that host runs it (an allowlisted command that restores the files). Repeats are one
//! action; the end of the alert is recorded against it. The webhook's refusals of what
//! is not Alertmanager's are checked on their own.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use vigil_tests::monitoring::{Alertmanager, Prometheus};
use vigil_tests::{
    create_token, get_json, metric, start_agent_with, start_coordinator, wait_for, TestDir,
};

const WAIT: Duration = Duration::from_secs(90);
const ALERT: &str = "VigilAgentPolicyFilesBroken";

/// POSTs `body` to the webhook with `token`: status and JSON answer.
async fn post_webhook(http: &str, token: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{http}/api/v1/alertmanager"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /api/v1/alertmanager");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn webhook(alerts: Value) -> String {
    json!({
        "version": "4", "receiver": "vigil", "status": "firing", "groupKey": "{}:{}",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager", "truncatedAlerts": 0, "alerts": alerts,
    })
    .to_string()
}

#[tokio::test]
async fn a_prometheus_alert_through_alertmanager_runs_one_action_on_the_agent_and_its_end_is_recorded(
) {
    let dir = TestDir::new();
    let root = dir.path();
    // The agent's policy directory, and a good copy of its file to restore.
    let policies = root.join("agent-policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    let good = root.join("good.yaml");
    write(&good, "policies: []\n");
    write(&policies.join("local.yaml"), "policies: []\n");
    let restored = root.join("restored.log");
    let config = root.join("agent.toml");
    write(
        &config,
        &format!(
            "[allow.commands]\nrestore-policies = [\"/bin/sh\", \"-c\", \"cp {} {} && echo restored >> {}\"]\n",
            good.display(),
            policies.join("local.yaml").display(),
            restored.display()
        ),
    );
    let routes = root.join("alert-routes.yaml");
    write(
        &routes,
        &format!(
            "routes:\n  - alertname: {ALERT}\n    target: policy-files\n    action: exec\n    params: {{command: restore-policies}}\n"
        ),
    );
    let routes_arg = routes.display().to_string();
    let coordinator = start_coordinator(root, None, &["--alert-routes", &routes_arg]).await;
    let http = coordinator.http.clone();
    let operator = create_token(&root.join("data"), "operator", "alertmanager");
    let token_file = root.join("alertmanager.token");
    write(&token_file, &format!("{operator}\n"));

    let (policies_arg, config_arg) = (policies.display().to_string(), config.display().to_string());
    let _agent = start_agent_with(
        "am-agent",
        &coordinator.broker,
        "500ms",
        &["--policies", &policies_arg, "--config", &config_arg],
        root,
    );
    vigil_tests::wait_reporting(&http, "am-agent", WAIT).await;

    // Alertmanager: one receiver, the coordinator's webhook with the operator token;
    // quick grouping, and repeats every 2 s while the alert fires.
    let alertmanager = Alertmanager::start(
        root,
        &format!(
            "route:\n  receiver: vigil\n  group_by: [alertname, host]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 2s\n\
             receivers:\n  - name: vigil\n    webhook_configs:\n      - url: {http}/api/v1/alertmanager\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
            token_file.display()
        ),
    )
    .await;
    // Prometheus: scrapes the coordinator, alerts while an agent's policy load failures
    // changed in the last 15 s.
    let rules = root.join("rules.yml");
    write(
        &rules,
        &format!(
            "groups:\n  - name: vigil\n    interval: 1s\n    rules:\n      - alert: {ALERT}\n        expr: changes(vigil_agent_policy_load_errors[15s]) > 0\n        labels: {{severity: critical}}\n        annotations: {{summary: 'policy files on {{{{ $labels.host }}}} do not load'}}\n"
        ),
    );
    let prometheus = Prometheus::start_with(
        root,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n\
             scrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            alertmanager.url.trim_start_matches("http://"),
            http.trim_start_matches("http://")
        ),
        &["--rules.alert.resend-delay=1s"],
    )
    .await;
    // Prometheus has seen the agent with no load failures before they start.
    wait_for("the load-failure series at 0", WAIT, || async {
        prometheus
            .value(r#"vigil_agent_policy_load_errors{host="am-agent"}"#)
            .await
            .filter(|v| *v == 0.0)
    })
    .await;

    // Break the agent's policy files.
    write(&policies.join("local.yaml"), "policies: [ {name: broken\n");

    // Alertmanager holds the alert; its fingerprint identifies it everywhere.
    let held = wait_for("Alertmanager holds the alert", WAIT, || async {
        alertmanager
            .alerts()
            .await
            .into_iter()
            .find(|a| a["labels"]["alertname"] == ALERT)
    })
    .await;
    let fingerprint = held["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    assert_eq!(held["labels"]["host"], "am-agent", "{held}");

    // The action ran on the agent: the allowlisted command restored the files.
    let policy = format!("alertmanager/{ALERT}");
    let action = wait_for("the alert's action completed", WAIT, || async {
        let (_, body) = get_json(&format!("{http}/api/v1/actions?policy={policy}")).await;
        body["actions"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .filter(|a| a["status"] == "completed")
    })
    .await;
    assert_eq!(action["host"], "am-agent", "{action}");
    assert_eq!(action["target"], "policy-files", "{action}");
    assert_eq!(action["action"], "exec", "{action}");
    assert_eq!(action["executor"], "exec", "{action}");
    assert_eq!(action["source"], "alertmanager", "{action}");
    let origin = action["transitions"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(origin.contains(&fingerprint), "{action}");
    assert!(origin.contains(r#"host="am-agent""#), "{action}");
    let action_id = action["id"].as_str().expect("id").to_string();
    let log = std::fs::read_to_string(&restored).expect("the command ran");
    assert_eq!(log, "restored\n");

    // The audit history holds the alert: labels, fingerprint, the action.
    let (_, acts) = get_json(&format!(
        "{http}/api/v1/violations?policy={policy}&kind=act"
    ))
    .await;
    let acts = acts["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(acts.len(), 1, "{acts:?}");
    let explanation = &acts[0]["explanation"];
    assert_eq!(
        explanation["fingerprint"],
        fingerprint.as_str(),
        "{explanation}"
    );
    assert_eq!(explanation["labels"]["host"], "am-agent", "{explanation}");
    assert_eq!(
        explanation["labels"]["severity"], "critical",
        "{explanation}"
    );
    assert_eq!(
        explanation["action_id"],
        action_id.as_str(),
        "{explanation}"
    );
    assert_eq!(acts[0]["severity"], "critical");

    // Alertmanager repeats the firing alert while it lasts: each is a duplicate.
    wait_for(
        "Alertmanager's repeat counted as a duplicate",
        WAIT,
        || async {
            (metric(
                &http,
                r#"vigil_alertmanager_alerts_total{outcome="duplicate"}"#,
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    // The same firing alert sent again by hand: a duplicate, no second action.
    let starts_at = held["startsAt"].as_str().expect("startsAt");
    let replay = webhook(json!([{
        "status": "firing", "labels": held["labels"], "annotations": held["annotations"],
        "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": held["generatorURL"], "fingerprint": fingerprint,
    }]));
    let (status, answer) = post_webhook(&http, &operator, &replay).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["alerts"][0]["outcome"], "duplicate", "{answer}");
    assert_eq!(
        answer["alerts"][0]["action_id"],
        action_id.as_str(),
        "{answer}"
    );

    // The files load again, so the alert resolves; its end is recorded against the action.
    let resolved = wait_for("the end of the alert recorded", WAIT, || async {
        let (_, body) = get_json(&format!(
            "{http}/api/v1/violations?policy={policy}&kind=resolved"
        ))
        .await;
        body["events"].as_array().and_then(|e| e.first().cloned())
    })
    .await;
    assert_eq!(
        resolved["explanation"]["action_id"],
        action_id.as_str(),
        "{resolved}"
    );
    assert_eq!(resolved["explanation"]["fingerprint"], fingerprint.as_str());
    assert!(resolved["explanation"]["endsAt"].is_string(), "{resolved}");
    assert_eq!(resolved["host"], "am-agent");

    let (_, all) = get_json(&format!("{http}/api/v1/actions?policy={policy}")).await;
    assert_eq!(all["count"], 1, "one action for the alert: {all}");
    assert_eq!(
        std::fs::read_to_string(&restored).expect("log"),
        "restored\n",
        "the command ran once"
    );
    assert_eq!(
        metric(
            &http,
            r#"vigil_alertmanager_alerts_total{outcome="routed"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &http,
            r#"vigil_alertmanager_alerts_total{outcome="resolved"}"#
        )
        .await,
        1.0
    );
    coordinator.proc.stop();
}

#[tokio::test]
async fn the_webhook_needs_an_operator_names_the_bad_field_and_counts_each_outcome() {
    let dir = TestDir::new();
    let routes = dir.path().join("alert-routes.yaml");
    write(
        &routes,
        "routes:\n  - alertname: Known\n    target: app\n    action: restart\n",
    );
    let routes_arg = routes.display().to_string();
    let coordinator = start_coordinator(&dir, None, &["--alert-routes", &routes_arg]).await;
    let http = coordinator.http.clone();
    let data = dir.path().join("data");
    let (viewer, operator) = (
        create_token(&data, "viewer", "v"),
        create_token(&data, "operator", "o"),
    );
    let alert = |name: &str, host: &str, fingerprint: &str| {
        json!({
            "status": "firing", "labels": {"alertname": name, "instance": format!("{host}:9100")},
            "annotations": {}, "startsAt": "2026-01-20T12:34:56.789Z",
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint,
        })
    };
    let body = webhook(json!([
        alert("Known", "nowhere", "aa01"),
        alert("Other", "x", "aa02")
    ]));

    let (status, _) = post_webhook(&http, &viewer, &body).await;
    assert_eq!(status, 403, "a viewer may not cause actions");
    let (status, answer) = post_webhook(&http, &operator, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["alerts"][0]["outcome"], "refused", "{answer}");
    assert!(
        answer["alerts"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nowhere")),
        "{answer}"
    );
    assert_eq!(answer["alerts"][1]["outcome"], "unrouted", "{answer}");
    let resolved = webhook(json!([{
        "status": "resolved", "labels": {"alertname": "Known", "host": "h"}, "annotations": {},
        "startsAt": "2026-01-20T12:34:56Z", "endsAt": "2026-01-20T12:40:00+01:00", "fingerprint": "aa03",
    }]));
    let (_, answer) = post_webhook(&http, &operator, &resolved).await;
    assert_eq!(
        answer["alerts"][0]["outcome"], "resolved_unknown",
        "{answer}"
    );

    for (bad, field) in [
        (
            body.replace(r#""version":"4""#, r#""version":"3""#),
            "version",
        ),
        (
            body.replace("2026-01-20T12:34:56.789Z", "soon"),
            "alerts[0].startsAt",
        ),
        (
            body.replace(r#""fingerprint":"aa01""#, r#""fingerprint":"zz""#),
            "alerts[0].fingerprint",
        ),
        (
            body.replace(r#""alertname":"Other""#, r#""alertname":7"#),
            "alerts[1].labels.alertname",
        ),
    ] {
        let (status, answer) = post_webhook(&http, &operator, &bad).await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    let (status, _) = post_webhook(&http, &operator, "not json").await;
    assert_eq!(status, 400);
    let huge = webhook(json!([alert("Known", &"x".repeat(600 * 1024), "aa04")]));
    let (status, _) = post_webhook(&http, &operator, &huge).await;
    assert_eq!(status, 413, "the body is bounded");

    for (outcome, wanted) in [
        ("refused", 1.0),
        ("unrouted", 1.0),
        ("resolved_unknown", 1.0),
    ] {
        let series = format!(r#"vigil_alertmanager_alerts_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&http, &series).await, wanted, "{series}");
    }
    assert_eq!(
        metric(
            &http,
            r#"vigil_http_requests_rejected_total{field="alerts",route="/api/v1/alertmanager"}"#
        )
        .await,
        3.0
    );
    coordinator.proc.stop();
}
