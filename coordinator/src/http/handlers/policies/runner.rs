//! `GET /api/v1/policies/runner/status`: the policy runners, as the agents last reported
//! them in their status (`AgentStatus.policies`). Policies are evaluated on the agents,
//! not here; this is the original runner status built from theirs:
//!
//! ```json
//! {"ok": true, "runner": {"enabled": true, "running": true, "interval_seconds": 5,
//!   "agents": [{"host": "web-01", "online": true, "policies_loaded": 3,
//!     "policies_enabled": 2, "last_evaluation": "2026-…Z", "evaluations": 1200,
//!     "source": "/etc/vigil/policies", "load_error": null, "load_errors": 0}]}}
//! ```
//!
//! `running`: some agent is online with policies loaded. `interval_seconds`: the shortest
//! evaluation interval among agents with policies loaded (`null` if none has any).
//! Hosts that never sent an agent status (HTTP ingest only) are not listed.

use std::sync::Arc;

use serde_json::{json, Value};
use vigil_shared::time::{now_ms, to_rfc3339};
use warp::reply::Response;

use crate::http::error::{respond, ApiError};
use crate::http::{task_failed, Api};
use crate::store::HostRecord;

/// The `runner` object for these hosts at `now_ms`.
pub fn runner_json(hosts: &[HostRecord], now_ms: i64) -> Value {
    let mut agents = Vec::new();
    let mut running = false;
    let mut interval_ms: Option<u64> = None;
    for record in hosts {
        let Some(status) = &record.status else {
            continue;
        };
        let online = record.is_online(now_ms);
        let runner = &status.policies;
        if runner.loaded > 0 {
            running |= online;
            if runner.interval_ms > 0 {
                interval_ms =
                    Some(interval_ms.map_or(runner.interval_ms, |m| m.min(runner.interval_ms)));
            }
        }
        agents.push(json!({
            "host": record.host,
            "online": online,
            "policies_loaded": runner.loaded,
            "policies_enabled": runner.enabled,
            "last_evaluation": runner.last_evaluation_ms.map(to_rfc3339),
            "evaluations": runner.evaluations,
            "source": runner.source,
            "load_error": runner.load_error,
            "load_errors": runner.load_errors,
        }));
    }
    json!({
        "enabled": true,
        "running": running,
        "interval_seconds": interval_ms.map(|ms| ms as f64 / 1000.0),
        "agents": agents,
    })
}

/// Handles one request.
pub async fn status(api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let result = match tokio::task::spawn_blocking(move || store.hosts()).await {
        Ok(Ok(hosts)) => Ok(warp::reply::json(&json!({
            "ok": true,
            "runner": runner_json(&hosts, now_ms()),
        }))),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(task_failed(e)),
    };
    respond(result)
}

#[cfg(test)]
mod tests {
    use vigil_shared::wire::{AgentState, AgentStatus, PolicyRunnerStatus};

    use super::*;
    use crate::store::Source;

    const NOW: i64 = 1_768_912_496_000;

    fn host(name: &str, online: bool, runner: Option<PolicyRunnerStatus>) -> HostRecord {
        HostRecord {
            host: name.into(),
            first_seen_ms: NOW - 60_000,
            last_seen_ms: NOW - 1_000,
            source: if runner.is_some() {
                Source::Mqtt
            } else {
                Source::Http
            },
            status: runner.map(|policies| AgentStatus {
                host: name.into(),
                state: if online {
                    AgentState::Online
                } else {
                    AgentState::Offline
                },
                agent_version: "0.1.0".into(),
                started_at_ms: NOW - 60_000,
                sent_at_ms: NOW - 1_000,
                interval_ms: 1_000,
                labels: vec![],
                bundles: Vec::new(),
                bundle_error: None,
                remediation_paused: false,
                detail: None,
                policies,
                queue: Default::default(),
            }),
        }
    }

    #[test]
    fn nothing_runs_without_agents() {
        let runner = runner_json(&[host("curl-only", true, None)], NOW);
        assert_eq!(runner["enabled"], true);
        assert_eq!(runner["running"], false);
        assert_eq!(runner["interval_seconds"], Value::Null);
        assert_eq!(runner["agents"], json!([]));
    }

    #[test]
    fn agents_are_listed_and_summarised() {
        let busy = PolicyRunnerStatus {
            loaded: 3,
            enabled: 2,
            interval_ms: 5_000,
            last_evaluation_ms: Some(NOW - 2_000),
            evaluations: 42,
            source: Some("/etc/vigil/policies".into()),
            load_error: None,
            load_errors: 0,
        };
        let faster_but_offline = PolicyRunnerStatus {
            interval_ms: 2_000,
            load_error: Some("x.yaml: bad".into()),
            load_errors: 1,
            ..busy.clone()
        };
        let runner = runner_json(
            &[
                host("a", true, Some(busy)),
                host("b", false, Some(faster_but_offline)),
                host("c", true, Some(PolicyRunnerStatus::default())),
            ],
            NOW,
        );
        assert_eq!(runner["running"], true);
        assert_eq!(runner["interval_seconds"], 2.0);
        let agents = runner["agents"].as_array().unwrap();
        assert_eq!(agents.len(), 3);
        assert_eq!(agents[0]["policies_loaded"], 3);
        assert_eq!(agents[0]["last_evaluation"], to_rfc3339(NOW - 2_000));
        assert_eq!(agents[1]["online"], false);
        assert_eq!(agents[1]["load_error"], "x.yaml: bad");
        assert_eq!(agents[2]["policies_loaded"], 0);
    }
}
