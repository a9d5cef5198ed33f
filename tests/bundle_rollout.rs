//! The whole bundle path with real processes: a coordinator watching a bundle directory,
//! signing and publishing per group, and three real agents with different labels that
//! verify, apply and report — checked through `GET /api/v1/drift`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{get_json, start_agent_with, start_coordinator, wait_for, write, Proc, TestDir};

const WAIT: Duration = Duration::from_secs(30);

fn policy(name: &str, threshold: u32) -> String {
    format!("policies:\n  - name: {name}\n    condition: cpu_percent > {threshold} for 1m\n")
}

fn start_agent(dir: &TestDir, host: &str, broker: &str, labels: &[&str], key: &Path) -> Proc {
    let data = dir.path().join(format!("agent-data-{host}"));
    let (data, key) = (data.display().to_string(), key.display().to_string());
    let mut more = vec!["--data-dir", &data, "--bundle-key", &key];
    for label in labels {
        more.extend(["--label", label]);
    }
    start_agent_with(host, broker, "500ms", &more, dir.path())
}

/// `host → {group → applied version}` from the drift report.
async fn applied(http: &str) -> Vec<(String, String, Option<u64>, Option<u64>)> {
    let (_, drift) = get_json(&format!("{http}/api/v1/drift")).await;
    let mut out = Vec::new();
    for host in drift["hosts"].as_array().cloned().unwrap_or_default() {
        for group in host["groups"].as_array().cloned().unwrap_or_default() {
            out.push((
                host["host"].as_str().unwrap_or("").to_string(),
                group["group"].as_str().unwrap_or("").to_string(),
                group["desired_version"].as_u64(),
                group["applied_version"].as_u64(),
            ));
        }
    }
    out.sort();
    out
}

fn expected(versions: &[(&str, &str, u64)]) -> Vec<(String, String, Option<u64>, Option<u64>)> {
    let mut out: Vec<_> = versions
        .iter()
        .map(|(h, g, v)| (h.to_string(), g.to_string(), Some(*v), Some(*v)))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_change_reaches_exactly_the_right_agents_and_an_invalid_edit_none() {
    let dir = TestDir::new();
    let bundles = dir.path().join("bundles");
    write(&bundles, "web/group.yaml", "selector: {role: web}\n");
    write(&bundles, "web/web.yaml", &policy("web-cpu", 90));
    write(&bundles, "db/group.yaml", "selector: {tier: db}\n");
    write(&bundles, "db/db.yaml", &policy("db-cpu", 95));
    let coordinator =
        start_coordinator(&dir, None, &["--bundles", &bundles.display().to_string()]).await;
    let http = coordinator.http.clone();
    let key = dir.path().join("data").join("bundle-signing.pub");
    let _web = start_agent(&dir, "r-web", &coordinator.broker, &["role=web"], &key);
    let _db = start_agent(&dir, "r-db", &coordinator.broker, &["tier=db"], &key);
    let _both = start_agent(
        &dir,
        "r-both",
        &coordinator.broker,
        &["role=web", "tier=db"],
        &key,
    );

    let first = expected(&[
        ("r-web", "web", 1),
        ("r-db", "db", 1),
        ("r-both", "web", 1),
        ("r-both", "db", 1),
    ]);
    wait_for(
        "every agent on version 1 of exactly its groups",
        WAIT,
        || async { (applied(&http).await == first).then_some(()) },
    )
    .await;
    let (_, host) = get_json(&format!("{http}/api/v1/policies/runner/status")).await;
    let loaded: Vec<(String, u64)> = host["runner"]["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                a["host"].as_str().unwrap_or("").to_string(),
                a["policies_loaded"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for (agent, count) in [("r-web", 1), ("r-db", 1), ("r-both", 2)] {
        let found = wait_for(&format!("{agent} runs {count} policies"), WAIT, || async {
            let (_, runner) = get_json(&format!("{http}/api/v1/policies/runner/status")).await;
            runner["runner"]["agents"]
                .as_array()?
                .iter()
                .find(|a| a["host"] == agent && a["policies_loaded"] == count)
                .cloned()
        })
        .await;
        assert_eq!(found["policies_loaded"], count, "{loaded:?}");
    }

    // A change to the web group reaches both web hosts, reported applied within 2 s.
    let changed = Instant::now();
    write(&bundles, "web/web.yaml", &policy("web-cpu", 80));
    let second = expected(&[
        ("r-web", "web", 2),
        ("r-db", "db", 1),
        ("r-both", "web", 2),
        ("r-both", "db", 1),
    ]);
    wait_for("web version 2 applied", WAIT, || async {
        (applied(&http).await == second).then_some(())
    })
    .await;
    let took = changed.elapsed();
    println!("file changed → both web agents report version 2 applied: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // An invalid edit publishes nothing: every agent stays on version 2 / 1, and the
    // coordinator says why.
    write(
        &bundles,
        "web/web.yaml",
        "policies:\n  - name: web-cpu\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: lots}\n",
    );
    let error = wait_for("bundle error reported", WAIT, || async {
        let (_, body) = get_json(&format!("{http}/api/v1/bundles")).await;
        body["error"].as_str().map(str::to_string)
    })
    .await;
    assert!(
        error.contains("web.yaml") && error.contains("threshold"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        applied(&http).await,
        second,
        "the invalid edit reached no agent"
    );
    let (_, drift) = get_json(&format!("{http}/api/v1/drift")).await;
    assert!(drift["hosts"]
        .as_array()
        .is_some_and(|h| h.iter().all(|h| h["bundle_error"] == Value::Null)));
    coordinator.proc.stop();
}
