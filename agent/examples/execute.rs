//! Runs one remediation action with the agent's executors and prints the outcome as one
//! JSON line, for trying the executors out by hand and for the end-to-end tests (which
//! run it inside a container with systemd as PID 1).
//!
//! ```text
//! execute <executor-config.toml|-> <action> <target> [key=value params...]
//! ```
//!
//! The config is an `ExecutorConfig` (`units`, `containers`, `commands`, `webhooks`,
//! `docker_socket`), at the top level or under `[remediation]` as in `agent.toml`; `-`
//! reads it from stdin. A param's value is taken as JSON when it parses (`replicas=3`,
//! `body={"text":"hi"}`), else as a string (`by=+1`, `settle=500ms`). `timeout=10s`
//! (default 30 s) also bounds the attempt.
//!
//! Prints `{"ok":true,"executor":"systemd","detail":"…","elapsed_ms":412}` and exits 0,
//! or `{"ok":false,"error":"failed","executor":"systemd","message":"…","retryable":true,
//! "elapsed_ms":…}` and exits 1 (2 for a usage error). Logs go to stderr; `VIGIL_LOG`
//! sets the level (default `warn`).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;
use vigil_agent::executors::{ExecError, ExecRequest, ExecutorConfig, Executors};
use vigil_shared::policy::ActionKind;
use vigil_shared::time::parse_duration;

/// How to use this program.
const USAGE: &str = "usage: execute <executor-config.toml|-> <action> <target> [key=value...]";

/// The attempt's timeout unless `timeout=` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the executor config from a file, or stdin for `-`.
fn read_config(path: &str) -> Result<ExecutorConfig, String> {
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the config from stdin: {e}"))?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?
    };
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{path} is not TOML: {e}"))?;
    let section = match table.remove("remediation") {
        Some(toml::Value::Table(section)) => section,
        Some(_) => return Err(format!("{path}: [remediation] must be a table")),
        None => table,
    };
    section
        .try_into()
        .map_err(|e| format!("{path} is not an executor config: {e}"))
}

/// Reads the command line into a config and a request.
fn parse(args: &[String]) -> Result<(ExecutorConfig, ExecRequest), String> {
    let [config, action, target, params @ ..] = args else {
        return Err(String::new());
    };
    let kind = ActionKind::parse(action)?;
    let mut map = BTreeMap::new();
    for param in params {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| format!("`{param}` is not key=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        map.insert(key.to_string(), value);
    }
    let timeout = match map.get("timeout") {
        Some(Value::String(text)) => parse_duration(text)?,
        Some(other) => return Err(format!("timeout must be a duration like 10s, not {other}")),
        None => DEFAULT_TIMEOUT,
    };
    let request = ExecRequest {
        decided_at_ms: None,
        action_id: format!("manual-{}", std::process::id()),
        kind,
        target: target.clone(),
        params: map,
        timeout,
    };
    Ok((read_config(config)?, request))
}

/// The result as one JSON object.
fn json_line(
    result: &Result<vigil_agent::executors::ExecOutcome, ExecError>,
    elapsed: Duration,
) -> Value {
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(outcome) => json!({
            "ok": true,
            "executor": outcome.executor,
            "detail": outcome.detail,
            "elapsed_ms": elapsed_ms,
        }),
        Err(error) => {
            let kind = match error {
                ExecError::NotAllowed(_) => "not_allowed",
                ExecError::Invalid(_) => "invalid",
                ExecError::Unavailable { .. } => "unavailable",
                ExecError::Failed { .. } => "failed",
                ExecError::Timeout { .. } => "timeout",
            };
            json!({
                "ok": false,
                "error": kind,
                "executor": error.executor(),
                "message": error.to_string(),
                "retryable": error.retryable(),
                "elapsed_ms": elapsed_ms,
            })
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, request) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("execute: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let executors = Executors::new(config);
    let started = Instant::now();
    let result = executors.run(&request).await;
    println!("{}", json_line(&result, started.elapsed()));
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
