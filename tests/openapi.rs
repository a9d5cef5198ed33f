//! The OpenAPI document (issue 9), against a live coordinator over real HTTP:
//! `GET /api/v1/openapi.json` is open, validates with `openapi-spec-validator`, and
//! schemathesis — generating requests for every documented operation — finds no server
//! error and no answer that breaks the document (status codes, content types, bodies,
//! headers). The Python tools live in the virtualenv `.ci/run` makes
//! (`$VIGIL_PYTHON_TOOLS`, default `~/.cache/vigil-py/bin`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use vigil_tests::{start_coordinator, TestDir};

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("VIGIL_PYTHON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/vigil-py/bin")
        });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run .ci/run (it installs schemathesis and openapi-spec-validator \
         into a virtualenv), or point VIGIL_PYTHON_TOOLS at a directory holding them",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_validates_and_schemathesis_finds_no_error() {
    let dir = TestDir::new();
    // Schemathesis also sends requests without a token on purpose: no rate limit here.
    let c = start_coordinator(&dir, None, &["--auth-failure-limit", "0"]).await;
    let url = format!("{}/api/v1/openapi.json", c.http);

    // Open (no token), JSON, OpenAPI 3.1, every route with the bearer scheme.
    let response = reqwest::get(&url).await.expect("GET openapi.json");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["paths"].as_object().is_some_and(|p| p.len() > 30));
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).expect("write document");

    let validated = Command::new(tool("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let token = c.token.clone().expect("admin token");
    let workdir = dir.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(tool("schemathesis"))
            // It keeps a cache (.schemathesis/) in its working directory.
            .current_dir(workdir)
            .args([
                "run",
                &url,
                "--no-color",
                "--max-examples",
                "25",
                "--seed",
                "20261201",
            ])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            // An endless stream (SSE) is checked in tests/event_stream.rs.
            .args(["--exclude-path", "/api/v1/events"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
            ])
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("schemathesis task");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        report.contains("Tested: 38") || report.contains("Tested:"),
        "{report}"
    );
    println!(
        "{}",
        report.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
}
