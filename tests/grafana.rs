//! The Grafana dashboard `contrib/grafana/vigil.json`, against real parts: a real
//! coordinator with one real agent reporting to its embedded broker. Every metric name a
//! panel queries must be one the live coordinator exposes on `GET /metrics`, so a renamed
//! or removed metric breaks this test instead of silently emptying a panel.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{authorized, host_entry, start_agent, start_coordinator, wait_for, TestDir};

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "grafana-web-01";

/// The dashboard, as shipped.
const DASHBOARD: &str = include_str!("../contrib/grafana/vigil.json");

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD)
        .unwrap_or_else(|e| panic!("contrib/grafana/vigil.json is not valid JSON: {e}"))
}

/// Every panel that shows data (rows left out, panels inside collapsed rows included).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("`panels` is an array")
    {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// The PromQL of every panel target, with the panel's title.
fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// The `vigil_…` metric names in a PromQL expression: `vigil_` where no identifier
/// character precedes it, then `[a-z0-9_]*`.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("vigil_") {
        let start = i + found;
        let mut end = start + "vigil_".len();
        if start > 0 && is_ident(bytes[start - 1]) {
            i = end;
            continue;
        }
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        names.push(expr[start..end].to_string());
        i = end;
    }
    names
}

/// The names a Prometheus text page exposes: every `# HELP`/`# TYPE` family (a histogram
/// or summary also as `_bucket`/`_sum`/`_count`) and every sample's name.
fn exposed_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let mut words = rest.split_whitespace();
            let Some(name) = words.next() else { continue };
            names.insert(name.to_string());
            if line.starts_with("# TYPE ") {
                if let Some("histogram" | "summary") = words.next() {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

async fn fetch_metrics(http: &str) -> String {
    let url = format!("{http}/metrics");
    let response = authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("GET /metrics");
    assert!(response.status().is_success(), "GET /metrics: {response:?}");
    response.text().await.expect("metrics body")
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_for_an_imported_prometheus() {
    let dashboard = dashboard();
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "no title"
    );
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "no uid"
    );
    assert!(dashboard["id"].is_null(), "an imported dashboard has no id");

    // The Prometheus data source is asked for on import and is a variable afterwards.
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    assert_eq!(datasource["current"]["value"], "${DS_PROMETHEUS}");
    let uses_variable = |ds: &Value| {
        ds["type"] == "prometheus"
            && ds["uid"] == format!("${{{}}}", datasource["name"].as_str().unwrap_or("?"))
    };

    let panels = panels(&dashboard);
    assert!(panels.len() >= 8, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(!title.is_empty() && title != "?", "a panel without a title");
        assert!(
            ids.insert(panel["id"].to_string()),
            "panel id {} twice",
            panel["id"]
        );
        assert!(
            uses_variable(&panel["datasource"]),
            "{title}: {}",
            panel["datasource"]
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no target");
        for target in targets {
            assert!(uses_variable(&target["datasource"]), "{title}: {target}");
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(
                !metric_names(expr).is_empty(),
                "{title}: no vigil_ metric in `{expr}`"
            );
        }
    }
}

#[test]
fn metric_names_are_scanned_from_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (le) (rate(vigil_http_request_duration_seconds_bucket{instance=~"$i"}[5m])))"#
        ),
        ["vigil_http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names("sum(vigil_hosts_known) - sum(vigil_hosts_online)+my_vigil_x"),
        ["vigil_hosts_known", "vigil_hosts_online"]
    );
    let page = "# HELP vigil_d_seconds d\n# TYPE vigil_d_seconds histogram\n\
                # HELP vigil_c_total c\n# TYPE vigil_c_total counter\nvigil_g 3\n";
    let names = exposed_names(page);
    for name in [
        "vigil_d_seconds_bucket",
        "vigil_d_seconds_count",
        "vigil_c_total",
        "vigil_g",
    ] {
        assert!(names.contains(name), "{name}");
    }
    assert!(!names.contains("vigil_c_total_bucket"));
}

/// Every metric the dashboard queries exists on a live coordinator with one agent
/// reporting.
#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exposed_by_a_live_coordinator() {
    let dashboard = dashboard();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (title, expr) in exprs(&dashboard) {
        for name in metric_names(&expr) {
            used.insert((name, title.clone()));
        }
    }
    // Variable queries too (`label_values(vigil_…, instance)`).
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            Value::String(q) => q.clone(),
            other => other["query"].as_str().unwrap_or_default().to_string(),
        };
        for name in metric_names(&query) {
            used.insert((name, format!("variable {}", variable["name"])));
        }
    }
    assert!(used.len() >= 10, "{used:?}");

    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = &coordinator.http;
    let agent = start_agent(HOST, &coordinator.broker, &["role=web"], dir.path());
    wait_for(&format!("{HOST} online"), WAIT, || async {
        host_entry(http, HOST).await.filter(|h| h["online"] == true)
    })
    .await;

    // The agent reports every 200 ms; a series created on first use gets a few rounds.
    let deadline = Instant::now() + WAIT;
    let (page, missing) = loop {
        let page = fetch_metrics(http).await;
        let exposed = exposed_names(&page);
        let missing: Vec<String> = used
            .iter()
            .filter(|(name, _)| !exposed.contains(name))
            .map(|(name, title)| format!("{name} (in {title})"))
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break (page, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the coordinator does not expose:\n{}\n\n/metrics:\n{page}",
        missing.join("\n")
    );
    // The agent's reports really went through: the panels have data, not just names.
    assert!(
        vigil_tests::prometheus_value(&page, r#"vigil_mqtt_messages_total{channel="metrics"}"#)
            >= 1.0,
        "{page}"
    );
    assert!(
        vigil_tests::prometheus_value(&page, "vigil_hosts_online") >= 1.0,
        "{page}"
    );

    agent.stop();
    coordinator.proc.stop();
}
