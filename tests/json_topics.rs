//! JSON topics for integrations, with real parts: a real agent whose policy
//! fires and runs an allowlisted command, the coordinator's embedded broker, and Debian's
//! `mosquitto_sub` subscribed to `vigil/v1/json/#`. Every message it sees must validate
//! against its schema in `schemas/json/` (checked with Debian's python3-jsonschema).

use std::time::Duration;

use serde_json::Value;
use vigil_tests::json_schema::validate_all;
use vigil_tests::{
    broker_token, start_agent_with, start_coordinator, wait_for, MosquittoSub, TestDir,
};

const WAIT: Duration = Duration::from_secs(60);
const HOST: &str = "json-web";

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_sees_metrics_violations_and_action_transitions_that_match_their_schemas() {
    let dir = TestDir::new();
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    std::fs::write(
        textfiles.join("app.prom"),
        "app_errors{target=\"app-x\"} 0\n",
    )
    .expect("write");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(
        policies.join("p.yaml"),
        "policies:\n  - name: app-errors\n    severity: critical\n    target: app-x\n    \
         condition: app_errors > 5\n    auto_remediate: true\n    action: exec\n    \
         params: {command: ok}\n",
    )
    .expect("write policies");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[allow.commands]\nok = [\"/bin/true\"]\n").expect("write config");

    let c = start_coordinator(&dir, None, &[]).await;
    let token = broker_token(&c.broker).expect("the coordinator's admin token");

    // A real mosquitto_sub, logged in as an integration (user `api`, a REST token).
    let sub = MosquittoSub::start(
        &c.broker,
        ("api", &token),
        "vigil/v1/json/#",
        1,
        "json-topics-test",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let _agent = start_agent_with(
        HOST,
        &c.broker,
        "300ms",
        &[
            "--policies",
            &policies.display().to_string(),
            "--textfile-dir",
            &textfiles.display().to_string(),
            "--config",
            &config.display().to_string(),
        ],
        dir.path(),
    );
    let seen = |pred: &dyn Fn(&str, &Value) -> bool| {
        sub.snapshot().iter().any(|(topic, payload)| {
            serde_json::from_str::<Value>(payload).is_ok_and(|v| pred(topic, &v))
        })
    };
    wait_for(
        "the host online and its metrics on the JSON topics",
        WAIT,
        || async {
            (seen(&|t, v| {
                t == format!("vigil/v1/json/hosts/{HOST}") && v["data"]["state"] == "online"
            }) && seen(&|t, v| {
                t == format!("vigil/v1/json/metrics/{HOST}")
                    && v["data"]["samples"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["name"] == "app_errors"))
            }))
            .then_some(())
        },
    )
    .await;

    // The policy fires: a violation, then the exec action's transitions.
    let tmp = textfiles.join(".app.tmp");
    std::fs::write(&tmp, "app_errors{target=\"app-x\"} 9\n").expect("write");
    std::fs::rename(&tmp, textfiles.join("app.prom")).expect("rename");
    wait_for(
        "violation and action transitions on the JSON topics",
        WAIT,
        || async {
            let fired = seen(&|t, v| {
                t == format!("vigil/v1/json/violations/{HOST}")
                    && v["data"]["kind"] == "fired"
                    && v["data"]["policy"] == "app-errors"
            });
            let state = |s: &'static str| {
                seen(&move |t, v| {
                    t == format!("vigil/v1/json/actions/{HOST}")
                        && v["data"]["state"] == s
                        && v["data"]["action"] == "exec"
                })
            };
            (fired && state("pending") && state("running") && state("completed")).then_some(())
        },
    )
    .await;
    let messages = sub.snapshot();
    drop(sub);
    // Feed messages carry the id of the same event on GET /api/v1/events.
    let seqs: Vec<u64> = messages
        .iter()
        .filter(|(t, _)| !t.contains("/metrics/"))
        .filter_map(|(_, p)| serde_json::from_str::<Value>(p).ok()?["seq"].as_u64())
        .collect();
    assert!(!seqs.is_empty());
    let report = validate_all(dir.path(), &messages).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.trim());
    // The check is real: a message off its schema fails it.
    let (topic, online) = messages
        .iter()
        .find(|(t, _)| t.contains("/hosts/"))
        .cloned()
        .expect("a host message");
    let broken = online.replace("\"online\"", "\"sleeping\"");
    let refusal = validate_all(dir.path(), &[(topic, broken)]).expect_err("broken message");
    assert!(refusal.contains("sleeping"), "{refusal}");

    // The mirror counts what it published.
    let text = reqwest::get(format!("{}/metrics", c.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    for stream in ["metrics", "violations", "actions", "hosts"] {
        assert!(
            text.contains(&format!(
                "vigil_json_mirror_messages_total{{stream=\"{stream}\"}}"
            )),
            "no count for {stream}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metric_batches_are_mirrored_on_the_embedded_broker_only_while_someone_listens() {
    const QUIET: &str = "json-quiet";
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let token = broker_token(&c.broker).expect("the coordinator's admin token");
    let metric = |series: &'static str| vigil_tests::metric(&c.http, series);
    let published = r#"vigil_json_mirror_messages_total{stream="metrics"}"#;
    let listeners = "vigil_json_mirror_metrics_listeners";
    let stored = r#"vigil_samples_stored_total{source="mqtt"}"#;
    let _agent = start_agent_with(QUIET, &c.broker, "200ms", &[], dir.path());

    // Nobody listens: the agent's samples are stored, no JSON is made of them. (A
    // subscriber to other streams does not count.)
    let others = MosquittoSub::start(
        &c.broker,
        ("api", &token),
        "vigil/v1/json/hosts/+",
        0,
        "json-others",
    );
    wait_for("samples stored", WAIT, || async {
        (metric(stored).await >= 200.0).then_some(())
    })
    .await;
    let before = metric(stored).await;
    wait_for("more batches stored", WAIT, || async {
        (metric(stored).await >= before + 50.0).then_some(())
    })
    .await;
    assert_eq!(metric(listeners).await, 0.0);
    assert_eq!(metric(published).await, 0.0, "JSON made for nobody");

    // A subscriber to one host's metrics: it is counted and sees them.
    let sub = MosquittoSub::start(
        &c.broker,
        ("api", &token),
        &format!("vigil/v1/json/metrics/{QUIET}"),
        0,
        "json-metrics",
    );
    wait_for("the subscriber counted and sent metrics", WAIT, || async {
        let got = sub
            .snapshot()
            .iter()
            .any(|(topic, _)| *topic == format!("vigil/v1/json/metrics/{QUIET}"));
        (got && metric(listeners).await == 1.0).then_some(())
    })
    .await;
    assert!(metric(published).await >= 1.0);

    // It leaves: no longer counted, and no more JSON made.
    drop(sub);
    wait_for("the subscriber no longer counted", WAIT, || async {
        (metric(listeners).await == 0.0).then_some(())
    })
    .await;
    // (A batch already on its way to the mirror when it left may still go out.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (made, before) = (metric(published).await, metric(stored).await);
    wait_for("more batches stored", WAIT, || async {
        (metric(stored).await >= before + 50.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(published).await,
        made,
        "JSON made after the last listener left"
    );
    drop(others);
}
