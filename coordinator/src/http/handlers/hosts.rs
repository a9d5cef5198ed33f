//! `GET /api/v1/hosts` and `GET /api/v1/hosts/{host}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use vigil_shared::time::{now_ms, to_rfc3339};
use vigil_shared::wire::AgentState;
use warp::reply::Response;

use crate::events::json::{tags, TagsJson};
use crate::http::error::{respond, ApiError};
use crate::http::Api;
use crate::store::{HostRecord, LatestPoint};

/// One host as the API shows it (keys in this order; `metric_count` and `metrics` only
/// on `GET /api/v1/hosts/{host}`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct HostJson<'a> {
    /// When its agent process started, RFC 3339 (null without an agent status).
    pub agent_started_at: Option<String>,
    /// Its agent's version.
    pub agent_version: Option<&'a str>,
    /// Why its agent refused the last bundle.
    pub bundle_error: Option<&'a str>,
    /// The bundles its agent applied.
    pub bundles: Vec<BundleJson<'a>>,
    /// Anything its agent wants an operator to read.
    pub detail: Option<&'a str>,
    /// When it was first seen, RFC 3339.
    pub first_seen: String,
    /// Its name.
    pub host: &'a str,
    /// Its agent's sampling interval, seconds.
    pub interval_seconds: Option<f64>,
    /// Its labels.
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: TagsJson<'a>,
    /// When it was last seen, RFC 3339.
    pub last_seen: String,
    /// How many metric names it reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_count: Option<usize>,
    /// The latest value of every metric it reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<LatestJson<'a>>>,
    /// Whether it reported recently.
    pub online: bool,
    /// Whether remediation is paused on it (kill switch).
    pub remediation_paused: Option<bool>,
    /// The policies its agent last said it runs (null: an agent that does not say, or
    /// none).
    pub running_policies: Option<RunningJson<'a>>,
    /// How its data arrives.
    pub source: &'static str,
    /// `online`; `silent` (its agent said online, but nothing came from it for
    /// `--silent-after` intervals); `stale` (the same, for a host the deadman does not
    /// watch, after three intervals and 10 s); or `offline` (stopped, or its connection
    /// lost).
    pub state: &'static str,
}

/// A bundle a host applied.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BundleJson<'a> {
    /// The group.
    pub group: &'a str,
    /// The bundle's content hash.
    pub hash: &'a str,
    /// The bundle's version.
    pub version: u64,
}

/// The policies an agent runs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunningJson<'a> {
    /// Up to 256 of them, local ones first, then each bundle's.
    pub policies: Vec<RunningPolicyJson<'a>>,
    /// How many are in force, listed or not.
    pub total: u32,
}

/// A policy an agent runs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunningPolicyJson<'a> {
    /// Its name.
    pub name: &'a str,
    /// `local` (the agent's policy directory) or `bundle:GROUP@VERSION`.
    pub source: String,
    /// The bundle's group (null for a local policy).
    pub group: Option<&'a str>,
    /// The bundle's version (null for a local policy).
    pub version: Option<u64>,
}

/// The latest value of one metric.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LatestJson<'a> {
    /// The metric name.
    pub name: &'a str,
    /// Its tags.
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: TagsJson<'a>,
    /// When, RFC 3339.
    pub timestamp: String,
    /// The value.
    pub value: f64,
}

/// `GET /api/v1/hosts`: `{"count","hosts","online_count"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HostList<'a> {
    /// How many hosts.
    pub count: usize,
    /// Every host.
    pub hosts: Vec<HostJson<'a>>,
    /// How many of them are online.
    pub online_count: usize,
}

/// One host as the API shows it, typed.
pub fn host(record: &HostRecord, now_ms: i64) -> HostJson<'_> {
    let online = record.is_online(now_ms);
    let state = match (&record.status, online) {
        (_, true) => "online",
        (Some(status), false)
            if status.state == AgentState::Online && record.silent_since_ms.is_some() =>
        {
            "silent"
        }
        (Some(status), false) if status.state == AgentState::Online => "stale",
        _ => "offline",
    };
    let status = record.status.as_ref();
    HostJson {
        agent_started_at: status.map(|s| to_rfc3339(s.started_at_ms)),
        agent_version: status.map(|s| s.agent_version.as_str()),
        bundle_error: status.and_then(|s| s.bundle_error.as_deref()),
        bundles: status
            .map(|s| {
                s.bundles
                    .iter()
                    .map(|b| BundleJson {
                        group: &b.group,
                        hash: &b.hash,
                        version: b.version,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        detail: status.and_then(|s| s.detail.as_deref()),
        first_seen: to_rfc3339(record.first_seen_ms),
        host: &record.host,
        interval_seconds: status.map(|s| s.interval_ms as f64 / 1000.0),
        labels: tags(record.labels()),
        last_seen: to_rfc3339(record.last_seen_ms),
        metric_count: None,
        metrics: None,
        online,
        remediation_paused: status.map(|s| s.remediation_paused),
        running_policies: record.running_policies.as_ref().map(|r| RunningJson {
            policies: r
                .policies
                .iter()
                .map(|p| RunningPolicyJson {
                    name: &p.name,
                    source: p.source(),
                    group: p.bundle.as_ref().map(|b| b.group.as_str()),
                    version: p.bundle.as_ref().map(|b| b.version),
                })
                .collect(),
            total: r.total,
        }),
        source: record.source.as_str(),
        state,
    }
}

/// One host as a JSON value.
pub fn host_json(record: &HostRecord, now_ms: i64) -> Value {
    serde_json::to_value(host(record, now_ms)).unwrap_or(Value::Null)
}

fn latest(point: &LatestPoint) -> LatestJson<'_> {
    LatestJson {
        name: &point.name,
        tags: tags(&point.tags),
        timestamp: to_rfc3339(point.ts_ms),
        value: point.value,
    }
}

#[cfg(test)]
fn latest_json(point: &LatestPoint) -> Value {
    serde_json::to_value(latest(point)).unwrap_or(Value::Null)
}

/// `GET /api/v1/hosts`: every host, with online state, last seen, agent version and labels.
pub async fn list(api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let result = match tokio::task::spawn_blocking(move || store.hosts()).await {
        Ok(Ok(hosts)) => {
            let now = now_ms();
            let online = hosts.iter().filter(|h| h.is_online(now)).count();
            Ok(warp::reply::json(&HostList {
                count: hosts.len(),
                hosts: hosts.iter().map(|h| host(h, now)).collect(),
                online_count: online,
            }))
        }
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(crate::http::task_failed(e)),
    };
    respond(result)
}

/// `GET /api/v1/hosts/{host}`: one host and the latest value of every metric it reports.
pub async fn one(host: String, api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let name = host.clone();
    let result = match tokio::task::spawn_blocking(move || store.host(&name)).await {
        Ok(Ok(Some((record, latest_points)))) => {
            let mut body = self::host(&record, now_ms());
            let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
            for point in &latest_points {
                *by_name.entry(point.name.as_str()).or_default() += 1;
            }
            body.metric_count = Some(by_name.len());
            body.metrics = Some(latest_points.iter().map(latest).collect());
            Ok(warp::reply::json(&body))
        }
        Ok(Ok(None)) => Err(ApiError::not_found(format!("host `{host}` is not known"))),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(crate::http::task_failed(e)),
    };
    respond(result)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vigil_shared::wire::{
        ActionEvent, ActionState, AgentStatus, PolicyEvent, PolicyRunnerStatus, QueueStatus, Sample,
    };

    use super::*;
    use crate::events::json::event_json;
    use crate::http::handlers::actions::action_json;
    use crate::store::reader::{EventQuery, HistoryQuery};
    use crate::store::{MapSize, Points, Source, Store, StoreWriter, Write};
    use crate::telemetry::Telemetry;

    /// Year 10000, the first time RFC 3339 cannot write.
    const YEAR_10000: i64 = 253_402_300_800_000;
    const LAST_WRITABLE: &str = "9999-12-31T23:59:59.999Z";
    const EPOCH: &str = "1970-01-01T00:00:00.000Z";

    fn status(host: &str) -> AgentStatus {
        AgentStatus {
            host: host.into(),
            state: AgentState::Online,
            agent_version: "0.1.0".into(),
            started_at_ms: YEAR_10000,
            sent_at_ms: i64::MAX,
            interval_ms: u64::MAX,
            labels: vec![],
            bundles: vec![],
            bundle_error: None,
            remediation_paused: false,
            detail: None,
            policies: PolicyRunnerStatus {
                last_evaluation_ms: Some(i64::MIN),
                ..PolicyRunnerStatus::default()
            },
            queue: QueueStatus::default(),
            delivery: None,
        }
    }

    fn action(id: &str, at_ms: i64) -> ActionEvent {
        ActionEvent {
            id: id.into(),
            host: "poisoned".into(),
            policy: None,
            target: "nginx.service".into(),
            action: "restart".into(),
            state: ActionState::Completed,
            attempt: 1,
            dry_run: false,
            detail: None,
            created_at_ms: i64::MIN,
            at_ms,
            max_attempts: 1,
            executor: None,
            step: None,
            params: None,
        }
    }

    /// Records written before times were range-checked where they enter (or damaged in
    /// any other way) hold times RFC 3339 cannot write: everything that renders them
    /// — host list, one host, history, actions, violations, the event feed — serves them
    /// clamped instead of panicking.
    #[tokio::test]
    async fn stored_implausible_times_are_served_not_crashed_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(
            dir.path(),
            MapSize {
                initial: 1 << 20,
                max: 1 << 30,
            },
        )
        .expect("open store");
        let (writer, thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        writer
            .send(Write::Status {
                running: None,
                clock_skew_ms: None,
                order: None,
                status: status("poisoned"),
                received_ms: YEAR_10000,
            })
            .await
            .expect("queue status");
        writer
            .send_and_wait(|reply| Write::Samples {
                host: "poisoned".into(),
                points: Points::new(
                    "poisoned",
                    &[],
                    &[
                        Sample {
                            name: "cpu_percent".into(),
                            value: 1.0,
                            ts_ms: YEAR_10000,
                            tags: vec![],
                        },
                        Sample {
                            name: "load1".into(),
                            value: 2.0,
                            ts_ms: i64::MIN,
                            tags: vec![],
                        },
                    ],
                ),
                source: Source::Mqtt,
                received_ms: i64::MIN,
                reply: Some(reply),
            })
            .await
            .expect("samples stored");
        for (id, at_ms) in [("A1", YEAR_10000), ("A2", i64::MAX)] {
            writer
                .send(Write::Action {
                    event: action(id, at_ms),
                })
                .await
                .expect("queue action");
        }
        writer
            .send(Write::Event {
                event: PolicyEvent {
                    id: "E1".into(),
                    host: "poisoned".into(),
                    policy: "p".into(),
                    target: "poisoned".into(),
                    severity: "critical".into(),
                    kind: "fired".into(),
                    summary: "s".into(),
                    explanation: None,
                    action: None,
                    step: None,
                    action_requested: false,
                    dry_run: false,
                    detail: None,
                    at_ms: YEAR_10000,
                },
            })
            .await
            .expect("queue event");
        writer.flush().await.expect("flush");

        let now = vigil_shared::time::now_ms();
        let hosts = store.hosts().expect("hosts");
        assert_eq!(hosts.len(), 1);
        let listed = host_json(&hosts[0], now);
        assert_eq!(listed["agent_started_at"], LAST_WRITABLE);
        assert_eq!(listed["last_seen"], LAST_WRITABLE);
        assert_eq!(listed["host"], "poisoned");

        let (record, latest) = store.host("poisoned").expect("read").expect("known");
        assert_eq!(host_json(&record, now)["state"], "online");
        let stamps: Vec<Value> = latest
            .iter()
            .map(|p| latest_json(p)["timestamp"].clone())
            .collect();
        assert_eq!(
            stamps,
            vec![serde_json::json!(LAST_WRITABLE), serde_json::json!(EPOCH)]
        );

        let history = store
            .query(&HistoryQuery {
                host: None,
                name: "cpu_percent".into(),
                from_ms: i64::MIN,
                to_ms: i64::MAX,
                limit: 10,
            })
            .expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(to_rfc3339(history[0].ts_ms), LAST_WRITABLE);

        let actions = store
            .actions(&crate::store::actions::ActionQuery {
                limit: 10,
                ..Default::default()
            })
            .expect("actions");
        assert_eq!(actions.len(), 2);
        for record in &actions {
            let shown = serde_json::to_value(action_json(record)).expect("action as JSON");
            assert_eq!(shown["created_at"], EPOCH);
            assert_eq!(shown["transitions"][0]["at"], LAST_WRITABLE);
        }

        let events = store
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .expect("events");
        assert_eq!(event_json(&events[0])["timestamp"], LAST_WRITABLE);

        // The event feed (SSE and the JSON mirror render these): every entry renders.
        let feed = store.feed_after(0, 100).expect("feed");
        assert!(feed.len() >= 3, "{feed:?}");
        for entry in &feed {
            let shown = crate::events::json::entry_json(entry);
            let stamp = shown["timestamp"].as_str().expect("timestamp").to_string();
            assert!(
                stamp == LAST_WRITABLE || stamp == EPOCH || stamp.starts_with("20"),
                "{shown}"
            );
        }

        // The agent's next real run replaces the poisoned status.
        let real = AgentStatus {
            agent_version: "0.2.0".into(),
            started_at_ms: now,
            sent_at_ms: now,
            interval_ms: 5_000,
            policies: PolicyRunnerStatus::default(),
            ..status("poisoned")
        };
        writer
            .send(Write::Status {
                running: None,
                clock_skew_ms: None,
                order: None,
                status: real,
                received_ms: now,
            })
            .await
            .expect("queue status");
        writer.flush().await.expect("flush");
        let hosts = store.hosts().expect("hosts");
        let listed = host_json(&hosts[0], now);
        assert_eq!(listed["agent_version"], "0.2.0");
        assert_eq!(listed["agent_started_at"], to_rfc3339(now));
        drop(writer);
        thread.join().expect("writer thread");
    }
}
