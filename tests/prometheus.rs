//! A real Prometheus (Debian's `prometheus`) scraping a real coordinator's `/metrics`:
//! open, and behind `--metrics-auth` with a bearer token. `promtool check metrics` finds
//! nothing to complain about in the page, and PromQL over `vigil_*` series returns what
//! the test caused (a real agent online and its samples stored, requests refused).

use std::time::Duration;

use vigil_tests::monitoring::{promtool_check_metrics, Prometheus};
use vigil_tests::{create_token, start_agent, start_coordinator, wait_for, TestDir};

const WAIT: Duration = Duration::from_secs(60);

/// A scrape job for the coordinator at `http` (`http://127.0.0.1:PORT`), every second.
fn job(name: &str, http: &str, extra: &str) -> String {
    let target = http.trim_start_matches("http://");
    format!(
        "  - job_name: {name}\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{target}']\n{extra}"
    )
}

fn config(jobs: &[String]) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}",
        jobs.concat()
    )
}

async fn page(http: &str, token: Option<&str>) -> String {
    let request = reqwest::Client::new().get(format!("{http}/metrics"));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics page")
}

/// Waits until `promql` has one sample equal to `wanted`.
async fn until_equal(prometheus: &Prometheus, promql: &str, wanted: f64) {
    wait_for(&format!("{promql} == {wanted}"), WAIT, || async {
        (prometheus.value(promql).await == Some(wanted)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn prometheus_scrapes_the_coordinator_and_promql_sees_what_the_test_did() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = coordinator.http.clone();
    let _agent = start_agent("prom-agent", &coordinator.broker, &[], dir.path());
    vigil_tests::wait_reporting(&http, "prom-agent", WAIT).await;
    // Three refused requests: a limit out of range.
    for _ in 0..3 {
        let (status, body) = vigil_tests::get_json(&format!("{http}/api/v1/actions?limit=0")).await;
        assert_eq!(status, 422, "{body}");
    }

    let text = page(&http, None).await;
    assert!(
        text.contains("vigil_http_request_duration_seconds_bucket"),
        "{text}"
    );
    let complaints = promtool_check_metrics(&text);
    assert!(
        complaints.is_empty(),
        "promtool check metrics:\n{complaints}"
    );
    // (The check is real: a counter without `_total` is reported.)
    let bad = "# HELP x_count c\n# TYPE x_count counter\nx_count 1\n";
    assert!(promtool_check_metrics(bad).contains("_total"));

    let prometheus = Prometheus::start(dir.path(), &config(&[job("vigil", &http, "")])).await;
    until_equal(&prometheus, r#"up{job="vigil"}"#, 1.0).await;
    until_equal(&prometheus, r#"vigil_hosts_online{job="vigil"}"#, 1.0).await;
    until_equal(
        &prometheus,
        r#"vigil_http_requests_rejected_total{job="vigil",route="/api/v1/actions",field="limit"}"#,
        3.0,
    )
    .await;
    // The agent's samples, stored as they arrive: the counter grows between scrapes.
    wait_for("samples stored and growing", WAIT, || async {
        prometheus
            .value(r#"sum(increase(vigil_samples_stored_total{job="vigil",source="mqtt"}[10s]))"#)
            .await
            .filter(|v| *v > 0.0)
    })
    .await;
    coordinator.proc.stop();
}

#[tokio::test]
async fn with_metrics_auth_prometheus_scrapes_with_a_bearer_token_and_without_one_is_refused() {
    let dir = TestDir::new();
    let coordinator = start_coordinator(&dir, None, &["--metrics-auth"]).await;
    let http = coordinator.http.clone();
    let viewer = create_token(&dir.path().join("data"), "viewer", "prometheus");
    let token_file = dir.path().join("prometheus.token");
    std::fs::write(&token_file, format!("{viewer}\n")).expect("write token file");

    // Without a token the page is refused; with the viewer token it is clean.
    let refused = reqwest::get(format!("{http}/metrics")).await.expect("GET");
    assert_eq!(refused.status(), 401);
    let complaints = promtool_check_metrics(&page(&http, Some(&viewer)).await);
    assert!(
        complaints.is_empty(),
        "promtool check metrics:\n{complaints}"
    );

    // Two requests the viewer may not make.
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(format!("{http}/api/v1/actions"))
            .bearer_auth(&viewer)
            .header("content-type", "application/json")
            .body(r#"{"target":"x","action":"restart","host":"nowhere"}"#)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 403);
    }

    let authorization = format!(
        "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
        token_file.display()
    );
    let prometheus = Prometheus::start(
        dir.path(),
        &config(&[
            job("vigil", &http, &authorization),
            job("anonymous", &http, ""),
        ]),
    )
    .await;
    until_equal(&prometheus, r#"up{job="vigil"}"#, 1.0).await;
    until_equal(
        &prometheus,
        r#"vigil_http_auth_failures_total{job="vigil",reason="forbidden"}"#,
        2.0,
    )
    .await;
    // The job without a token scrapes nothing: 401 (or 429 once it has failed often).
    until_equal(&prometheus, r#"up{job="anonymous"}"#, 0.0).await;
    let anonymous = prometheus
        .targets()
        .await
        .into_iter()
        .find(|t| t["labels"]["job"] == "anonymous")
        .expect("the anonymous target");
    let error = anonymous["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("401") || error.contains("429"),
        "{anonymous}"
    );
    assert_eq!(
        prometheus
            .query(r#"count({job="anonymous",__name__=~"vigil_.*"})"#)
            .await
            .len(),
        0,
        "no vigil_* series without a token"
    );
    coordinator.proc.stop();
}
