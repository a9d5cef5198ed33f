//! The coordinators' REST API: their admin tokens (read from the file a coordinator writes
//! on its first start, and remembered by base URL so every request sends the right one),
//! REST tokens made with the coordinator's CLI, and JSON requests for tests.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::bin;
use crate::prometheus::prometheus_value;

/// `request` with `Authorization: Bearer <token>` when a token is given.
pub fn with_token(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// How long [`read_admin_token`] waits for the file after the coordinator answers
/// `/health`.
pub const ADMIN_TOKEN_WAIT: Duration = Duration::from_secs(3);

/// The admin token a coordinator writes to `<data_dir>/admin.token` (the token and a
/// newline) when it first starts on an empty store, waiting up to `wait` for the file;
/// `None` if it does not appear (a coordinator without API tokens) or stays empty.
pub async fn read_admin_token(data_dir: &Path, wait: Duration) -> Option<String> {
    let path = data_dir.join("admin.token");
    let deadline = Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let token = text.trim();
        // The newline ends the file; before it the write may still be under way.
        let complete = text.ends_with('\n') && !token.is_empty();
        if complete || (Instant::now() >= deadline && !token.is_empty()) {
            return Some(token.to_string());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The coordinators' admin tokens, by base URL (`http://127.0.0.1:PORT`): every HTTP
/// helper sends the token of the coordinator its URL points at.
static TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Remembers `token` as the one to send to URLs under `http` (`http://127.0.0.1:PORT`).
pub fn register_token(http: &str, token: &str) {
    let base = http.trim_end_matches('/').to_string();
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.retain(|(b, _)| *b != base);
    tokens.push((base, token.to_string()));
}

/// The registered token for `url`, if it lies under a registered base URL.
pub fn token_for(url: &str) -> Option<String> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens
        .iter()
        .find(|(base, _)| {
            url.strip_prefix(base.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
        })
        .map(|(_, token)| token.clone())
}

/// `request` (to `url`) with `Authorization: Bearer <token>` when a coordinator's token
/// is registered for `url`, else unchanged.
pub fn authorized(url: &str, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    with_token(request, token_for(url).as_deref())
}

/// Waits up to [`ADMIN_TOKEN_WAIT`] for the admin token a coordinator with its data in
/// `data_dir` writes to `admin.token` on its first start, and registers it for `http`.
/// `None` when the file does not appear (a coordinator without API tokens): requests then
/// carry none.
pub async fn adopt_admin_token(data_dir: &Path, http: &str) -> Option<String> {
    let token = read_admin_token(data_dir, ADMIN_TOKEN_WAIT).await;
    if let Some(token) = &token {
        register_token(http, token);
    }
    token
}

/// Runs `vigil-coordinator token ARGS --data-dir DIR`: success, and stdout then stderr.
pub fn token_cli(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(bin("vigil-coordinator"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run vigil-coordinator token");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Makes a REST token with role `role` named `name` with the coordinator's CLI (`token
/// create`) on the store in `data_dir`; returns it.
pub fn create_token(data_dir: &Path, role: &str, name: &str) -> String {
    let (ok, out) = token_cli(data_dir, &["create", "--role", role, "--name", name]);
    assert!(ok, "{out}");
    // stdout (the token alone) comes first, then stderr's note.
    out.lines().next().unwrap_or_default().trim().to_string()
}

/// GETs a URL and returns status and JSON body.
pub async fn get_json(url: &str) -> (u16, Value) {
    let response = authorized(url, reqwest::Client::new().get(url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// POSTs a raw body as JSON and returns status and JSON body.
pub async fn post_raw(url: &str, body: &str) -> (u16, Value) {
    let response = authorized(url, reqwest::Client::new().post(url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Sends `method` (`PUT`, `DELETE`, …) to a URL with a raw JSON body (empty for none), and
/// returns status and JSON body.
pub async fn send_raw(method: &str, url: &str, body: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .unwrap_or_else(|e| panic!("bad method {method}: {e}"));
    let response = authorized(url, reqwest::Client::new().request(method.clone(), url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// PUTs a raw body as JSON and returns status and JSON body.
pub async fn put_raw(url: &str, body: &str) -> (u16, Value) {
    send_raw("PUT", url, body).await
}

/// DELETEs a URL and returns status and JSON body.
pub async fn delete(url: &str) -> (u16, Value) {
    send_raw("DELETE", url, "").await
}

/// GETs `/metrics` and returns the value of one sample line (`name{labels}`), 0 if absent.
pub async fn metric(http: &str, series: &str) -> f64 {
    let url = format!("{http}/metrics");
    let text = authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    prometheus_value(&text, series)
}

/// The host entry from `/api/v1/hosts`, if the host is known.
pub async fn host_entry(http: &str, host: &str) -> Option<Value> {
    let (_, body) = get_json(&format!("{http}/api/v1/hosts")).await;
    body["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
}

/// Waits up to `timeout` until `host` is online in `/api/v1/hosts` with its status in
/// (`agent_version` set: metrics stored first make a host online without it); its entry.
pub async fn wait_reporting(http: &str, host: &str, timeout: Duration) -> Value {
    crate::wait::wait_for(&format!("{host} online and reporting"), timeout, || async {
        host_entry(http, host)
            .await
            .filter(|h| h["online"] == true && h["agent_version"].is_string())
    })
    .await
}
