//! `GET /api/v1/hosts` and `GET /api/v1/hosts/{host}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use vigil_shared::time::{now_ms, to_rfc3339};
use vigil_shared::wire::{AgentState, Tag};
use warp::reply::Response;

use super::error::{respond, ApiError};
use super::Api;
use crate::store::{HostRecord, LatestPoint};

/// Tags as a JSON object.
pub fn tags_json(tags: &[Tag]) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// One host as the API shows it.
pub fn host_json(record: &HostRecord, now_ms: i64) -> Value {
    let online = record.is_online(now_ms);
    let state = match (&record.status, online) {
        (_, true) => "online",
        (Some(status), false) if status.state == AgentState::Online => "stale",
        _ => "offline",
    };
    let status = record.status.as_ref();
    json!({
        "host": record.host,
        "online": online,
        "state": state,
        "last_seen": to_rfc3339(record.last_seen_ms),
        "first_seen": to_rfc3339(record.first_seen_ms),
        "source": record.source.as_str(),
        "agent_version": status.map(|s| s.agent_version.clone()),
        "agent_started_at": status.map(|s| to_rfc3339(s.started_at_ms)),
        "interval_seconds": status.map(|s| s.interval_ms as f64 / 1000.0),
        "labels": tags_json(record.labels()),
        "bundles": status.map(|s| s.bundles.iter().map(|b| json!({
            "group": b.group,
            "version": b.version,
            "hash": b.hash,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "bundle_error": status.and_then(|s| s.bundle_error.clone()),
        "remediation_paused": status.map(|s| s.remediation_paused),
        "detail": status.and_then(|s| s.detail.clone()),
    })
}

fn latest_json(point: &LatestPoint) -> Value {
    json!({
        "name": point.name,
        "value": point.value,
        "tags": tags_json(&point.tags),
        "timestamp": to_rfc3339(point.ts_ms),
    })
}

/// `GET /api/v1/hosts`: every host, with online state, last seen, agent version and labels.
pub async fn list(api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let result = match tokio::task::spawn_blocking(move || store.hosts()).await {
        Ok(Ok(hosts)) => {
            let now = now_ms();
            let online = hosts.iter().filter(|h| h.is_online(now)).count();
            Ok(warp::reply::json(&json!({
                "count": hosts.len(),
                "online_count": online,
                "hosts": hosts.iter().map(|h| host_json(h, now)).collect::<Vec<_>>(),
            })))
        }
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(super::task_failed(e)),
    };
    respond(result)
}

/// `GET /api/v1/hosts/{host}`: one host and the latest value of every metric it reports.
pub async fn one(host: String, api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let name = host.clone();
    let result = match tokio::task::spawn_blocking(move || store.host(&name)).await {
        Ok(Ok(Some((record, latest)))) => {
            let mut body = host_json(&record, now_ms());
            let metrics: Vec<Value> = latest.iter().map(latest_json).collect();
            let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
            for point in &latest {
                *by_name.entry(point.name.as_str()).or_default() += 1;
            }
            body["metric_count"] = json!(by_name.len());
            body["metrics"] = Value::Array(metrics);
            Ok(warp::reply::json(&body))
        }
        Ok(Ok(None)) => Err(ApiError::not_found(format!("host `{host}` is not known"))),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(super::task_failed(e)),
    };
    respond(result)
}
