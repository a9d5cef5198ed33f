//! REST tokens with roles, against the real coordinator binary: every route ×
//! {no token, viewer, operator, admin, revoked token} answers 401 / 403 / allowed as the
//! README's role table says; a revocation applies to the next request; failed
//! authentications are counted and rate-limited; the first start writes the admin token
//! to a 0600 file.

use std::os::unix::fs::PermissionsExt;

use reqwest::Method;
use vigil_tests::{create_token, metric, start_coordinator, token_cli, TestDir};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Nobody,
    Revoked,
    Viewer,
    Operator,
    Admin,
}

/// The lowest caller a route lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Open,
    Viewer,
    Operator,
    Admin,
}

impl Needs {
    fn allows(self, caller: Caller) -> bool {
        match self {
            Needs::Open => true,
            Needs::Viewer => caller >= Caller::Viewer,
            Needs::Operator => caller >= Caller::Operator,
            Needs::Admin => caller == Caller::Admin,
        }
    }
}

/// Every route of the REST API, with a body where it takes one.
fn routes() -> Vec<(Method, &'static str, &'static str, Needs)> {
    let policy = r#"{"name":"auth-matrix","condition":{"type":"metric_exceeds","metric":"cpu_percent","threshold":80}}"#;
    let sample = r#"{"name":"x","value":1,"tags":{"host":"auth-http"}}"#;
    vec![
        (Method::GET, "/health", "", Needs::Open),
        (Method::GET, "/metrics", "", Needs::Open),
        // The status page and its assets hold no data; the page sends the token itself.
        (Method::GET, "/", "", Needs::Open),
        (Method::GET, "/assets/status.css", "", Needs::Open),
        (Method::GET, "/assets/status.js", "", Needs::Open),
        (Method::GET, "/api/v1/ingest/health", "", Needs::Viewer),
        (Method::POST, "/api/v1/ingest", sample, Needs::Operator),
        (
            Method::POST,
            "/api/v1/ingest/agent/metrics",
            sample,
            Needs::Operator,
        ),
        (Method::GET, "/api/v1/hosts", "", Needs::Viewer),
        (Method::GET, "/api/v1/hosts/auth-http", "", Needs::Viewer),
        (
            Method::GET,
            "/api/v1/metrics/query?name=x",
            "",
            Needs::Viewer,
        ),
        (Method::GET, "/api/v1/violations", "", Needs::Viewer),
        (Method::GET, "/api/v1/policies", "", Needs::Viewer),
        (Method::POST, "/api/v1/policies", policy, Needs::Admin),
        (
            Method::POST,
            "/api/v1/policies/evaluate",
            r#"{"policy":{}}"#,
            Needs::Viewer,
        ),
        (
            Method::POST,
            "/api/v1/policies/backtest",
            r#"{"since":"1h"}"#,
            Needs::Viewer,
        ),
        (Method::POST, "/api/v1/policies/reload", "", Needs::Admin),
        (
            Method::GET,
            "/api/v1/policies/runner/status",
            "",
            Needs::Viewer,
        ),
        (
            Method::GET,
            "/api/v1/policies/severity/warning",
            "",
            Needs::Viewer,
        ),
        (
            Method::GET,
            "/api/v1/policies/auth-matrix",
            "",
            Needs::Viewer,
        ),
        (
            Method::PUT,
            "/api/v1/policies/auth-matrix",
            policy,
            Needs::Admin,
        ),
        (
            Method::PUT,
            "/api/v1/policies/auth-matrix/disable",
            "",
            Needs::Operator,
        ),
        (
            Method::PUT,
            "/api/v1/policies/auth-matrix/enable",
            "",
            Needs::Operator,
        ),
        (Method::GET, "/api/v1/actions", "", Needs::Viewer),
        (
            Method::POST,
            "/api/v1/actions",
            r#"{"target":"x.service","action":"restart","host":"auth-http"}"#,
            Needs::Operator,
        ),
        (Method::GET, "/api/v1/actions/health", "", Needs::Viewer),
        (
            Method::GET,
            "/api/v1/actions/status/failed",
            "",
            Needs::Viewer,
        ),
        (
            Method::GET,
            "/api/v1/actions/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "",
            Needs::Viewer,
        ),
        (Method::GET, "/api/v1/queue/stats", "", Needs::Viewer),
        (Method::GET, "/api/v1/ui/queue/stats", "", Needs::Viewer),
        (
            Method::POST,
            "/api/v1/hosts/auth-http/remediation/pause",
            "",
            Needs::Operator,
        ),
        (
            Method::POST,
            "/api/v1/hosts/auth-http/remediation/resume",
            "",
            Needs::Operator,
        ),
        (Method::GET, "/api/v1/bundles", "", Needs::Viewer),
        (Method::POST, "/api/v1/bundles/reload", "", Needs::Admin),
        (Method::GET, "/api/v1/bundles/web", "", Needs::Viewer),
        (Method::GET, "/api/v1/drift", "", Needs::Viewer),
        // The join token in the body is the credential: open to all (400 for this body).
        (Method::POST, "/api/v1/agents/enroll", "{}", Needs::Open),
        (Method::GET, "/api/v1/agents", "", Needs::Admin),
        (
            Method::POST,
            "/api/v1/agents/auth-nobody/revoke",
            "",
            Needs::Admin,
        ),
        (Method::GET, "/api/v1/join-tokens", "", Needs::Admin),
        (
            Method::POST,
            "/api/v1/join-tokens",
            r#"{"name":"matrix"}"#,
            Needs::Admin,
        ),
        (
            Method::DELETE,
            "/api/v1/policies/auth-matrix",
            "",
            Needs::Admin,
        ),
    ]
}

async fn call(http: &str, method: &Method, path: &str, body: &str, token: Option<&str>) -> u16 {
    let client = reqwest::Client::new();
    let mut request = client.request(method.clone(), format!("{http}{path}"));
    if !body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_each_role_as_the_role_table_says() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &["--auth-failure-limit", "0"]).await;
    let data = dir.path().join("data");
    // The first start wrote an admin token, readable by its owner only.
    let admin_file = data.join("admin.token");
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();
    let viewer = create_token(&data, "viewer", "matrix-viewer");
    let operator = create_token(&data, "operator", "matrix-operator");
    let revoked = create_token(&data, "admin", "matrix-revoked");
    let (ok, out) = token_cli(&data, &["revoke", "matrix-revoked"]);
    assert!(ok && out.contains("revoked"), "{out}");
    let (ok, out) = token_cli(&data, &["list"]);
    assert!(
        ok && out.contains("matrix-operator") && !out.contains(&operator),
        "{out}"
    );
    let (ok, out) = token_cli(&data, &["create", "--role", "root", "--name", "x"]);
    assert!(!ok && out.contains("root"), "{out}");

    let callers = [
        (Caller::Nobody, None),
        (Caller::Revoked, Some(revoked.as_str())),
        (Caller::Viewer, Some(viewer.as_str())),
        (Caller::Operator, Some(operator.as_str())),
        (Caller::Admin, Some(admin.as_str())),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, path, body, needs) in routes() {
        for (caller, token) in &callers {
            let status = call(&c.http, &method, path, body, *token).await;
            let expected_ok = needs.allows(*caller);
            let fine = if expected_ok {
                status != 401 && status != 403 && status < 500
            } else if *caller <= Caller::Revoked {
                status == 401
            } else {
                status == 403
            };
            checked += 1;
            if !fine {
                failures.push(format!(
                    "{method} {path} as {caller:?}: {status} (allowed: {expected_ok})"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{checked} checks, failures:\n{}",
        failures.join("\n")
    );

    // Revocation applies to the very next request.
    assert_eq!(
        call(&c.http, &Method::GET, "/api/v1/hosts", "", Some(&viewer)).await,
        200
    );
    let (ok, out) = token_cli(&data, &["revoke", "matrix-viewer"]);
    assert!(ok, "{out}");
    assert_eq!(
        call(&c.http, &Method::GET, "/api/v1/hosts", "", Some(&viewer)).await,
        401
    );

    // Every refusal is counted by reason.
    for reason in ["missing", "revoked", "forbidden"] {
        let series = format!("vigil_http_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(
            metric(&c.http, &series).await >= 1.0,
            "{reason} not counted"
        );
    }
    c.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_authentication_is_rate_limited() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &["--auth-failure-limit", "5"]).await;
    for _ in 0..5 {
        let status = call(
            &c.http,
            &Method::GET,
            "/api/v1/hosts",
            "",
            Some("vigil_wrong"),
        )
        .await;
        assert_eq!(status, 401);
    }
    let status = call(
        &c.http,
        &Method::GET,
        "/api/v1/hosts",
        "",
        Some("vigil_wrong"),
    )
    .await;
    assert_eq!(status, 429);
    // /health stays open.
    assert_eq!(call(&c.http, &Method::GET, "/health", "", None).await, 200);
    let counted = |reason: &str| {
        let series = format!("vigil_http_auth_failures_total{{reason=\"{reason}\"}}");
        let http = c.http.clone();
        async move { metric(&http, &series).await }
    };
    assert_eq!(counted("rate_limited").await, 1.0);
    assert_eq!(counted("unknown").await, 5.0);
    c.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_require_a_token() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &["--metrics-auth"]).await;
    assert_eq!(call(&c.http, &Method::GET, "/metrics", "", None).await, 401);
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    assert_eq!(
        call(&c.http, &Method::GET, "/metrics", "", Some(admin.trim())).await,
        200
    );
    c.proc.stop();
}
