//! `GET /api/v1/policies/runner/status`: the policy runners, as the agents last reported
//! them in their status (`AgentStatus.policies`). Policies are evaluated on the agents,
//! not here; this is the original runner status built from theirs:
//!
//! ```json
//! {"ok": true, "runner": {"agents": [{"evaluations": 1200, "host": "web-01",
//!     "last_evaluation": "2026-…Z", "load_error": null, "load_errors": 0, "online": true,
//!     "policies_enabled": 2, "policies_loaded": 3, "source": "/etc/vigil/policies"}],
//!   "enabled": true, "interval_seconds": 5.0, "running": true}}
//! ```
//!
//! `running`: some agent is online with policies loaded. `interval_seconds`: the shortest
//! evaluation interval among agents with policies loaded (`null` if none has any).
//! Hosts that never sent an agent status (HTTP ingest only) are not listed.

use std::sync::Arc;

use serde::Serialize;
use vigil_shared::time::{now_ms, to_rfc3339};
use warp::reply::Response;

use crate::http::error::{respond, ApiError};
use crate::http::{task_failed, Api};
use crate::store::HostRecord;

/// `GET /api/v1/policies/runner/status`. Keys on the wire are alphabetical (as the `json!`
/// bodies these structs replaced were), and so are the fields of this module's structs.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunnerStatus<'a> {
    /// Always true.
    ok: bool,
    /// The runners, summed up.
    runner: RunnerJson<'a>,
}

/// The policy runners of every agent that sent a status.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunnerJson<'a> {
    /// One entry per agent.
    agents: Vec<AgentRunnerJson<'a>>,
    /// Always true: policies are evaluated (on the agents).
    enabled: bool,
    /// The shortest evaluation interval among agents with policies loaded, seconds.
    interval_seconds: Option<f64>,
    /// Some agent is online with policies loaded.
    running: bool,
}

/// One agent's policy runner, as it last reported it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AgentRunnerJson<'a> {
    /// Evaluations since the agent started.
    evaluations: u64,
    /// The host.
    host: &'a str,
    /// When it last evaluated, RFC 3339.
    last_evaluation: Option<String>,
    /// Why its last policy load failed, if it did.
    load_error: Option<&'a str>,
    /// How many policy loads failed.
    load_errors: u64,
    /// Whether the agent is online.
    online: bool,
    /// Policies enabled.
    policies_enabled: u32,
    /// Policies loaded.
    policies_loaded: u32,
    /// Where its policies come from.
    source: Option<&'a str>,
}

/// The `runner` object for these hosts at `now_ms`.
pub(crate) fn runner_json(hosts: &[HostRecord], now_ms: i64) -> RunnerJson<'_> {
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
        agents.push(AgentRunnerJson {
            evaluations: runner.evaluations,
            host: &record.host,
            last_evaluation: runner.last_evaluation_ms.map(to_rfc3339),
            load_error: runner.load_error.as_deref(),
            load_errors: runner.load_errors,
            online,
            policies_enabled: runner.enabled,
            policies_loaded: runner.loaded,
            source: runner.source.as_deref(),
        });
    }
    RunnerJson {
        agents,
        enabled: true,
        interval_seconds: interval_ms.map(|ms| ms as f64 / 1000.0),
        running,
    }
}

/// Handles one request.
pub async fn status(api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let result = match tokio::task::spawn_blocking(move || store.hosts()).await {
        Ok(Ok(hosts)) => Ok(warp::reply::json(&RunnerStatus {
            ok: true,
            runner: runner_json(&hosts, now_ms()),
        })),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(task_failed(e)),
    };
    respond(result)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use vigil_shared::wire::{AgentState, AgentStatus, PolicyRunnerStatus};

    use super::*;
    use crate::store::Source;

    const NOW: i64 = 1_768_912_496_000;

    fn host(name: &str, online: bool, runner: Option<PolicyRunnerStatus>) -> HostRecord {
        HostRecord {
            clock_skew_ms: None,
            status_order: None,
            silent_since_ms: None,
            running_policies: None,
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
                delivery: None,
            }),
        }
    }

    /// The runner object as JSON, as it goes on the wire.
    fn as_value(hosts: &[HostRecord]) -> Value {
        serde_json::to_value(runner_json(hosts, NOW)).unwrap()
    }

    #[test]
    fn nothing_runs_without_agents() {
        let runner = as_value(&[host("curl-only", true, None)]);
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
        let runner = as_value(&[
            host("a", true, Some(busy)),
            host("b", false, Some(faster_but_offline)),
            host("c", true, Some(PolicyRunnerStatus::default())),
        ]);
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
