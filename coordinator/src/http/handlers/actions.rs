//! The action routes over the action audit trail, manual actions sent to
//! agents, the remediation kill switch, and queue stats.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /api/v1/actions` | 201 `{"ok":true,"action_id":…,"message":…}`; a pending action is sent to its host's agent |
//! | `GET /api/v1/actions` | `{"count":N,"actions":[action…]}`, newest first; filters `limit` (1–500, 50), `status`, `target`, `host`, `policy`, `since` |
//! | `GET /api/v1/actions/{id}` | one action; 404 if unknown |
//! | `GET /api/v1/actions/status/{status}` | as the list, filtered; 422 for an unknown status |
//! | `GET /api/v1/actions/health` | `{"status":"healthy","service":"actions"}` |
//! | `GET /api/v1/queue/stats`, `GET /api/v1/ui/queue/stats` | the original queue stats over every agent's queue, plus `"hosts"` |
//! | `POST /api/v1/hosts/{host}/remediation/pause`, `…/resume` | the kill switch: `{"ok":true,"message":…}` |
//!
//! An action shows the original fields first (`id`, `target`, `action`, `status`, `details`,
//! `started_at`), then Vigil's: `host`, `policy`, `source`, `attempts`, `max_attempts`,
//! `dry_run`, `executor`, `step`, `params`, `outcome`, `created_at`, `finished_at` and
//! `transitions` (`[{state, attempt, at, detail}]`, oldest first). `started_at` is when it
//! first ran, or — for an action that has not run yet — when it was created, as in the
//! original. Statuses: `pending`, `running`, `completed`, `failed`, `cancelled`,
//! `resolved`, `not_resolved`, `dead_letter`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use vigil_shared::policy::ActionKind;
use vigil_shared::time::{now_ms, parse_time, to_rfc3339};
use vigil_shared::validate;
use vigil_shared::wire::{ActionEvent, ActionState, Command, CommandKind, QueueStatus, Tag};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::http::error::{respond, ApiError};
use crate::http::{task_failed, Api};
use crate::store::actions::{parse_state, ActionCounts, ActionQuery, ActionRecord, ALL_STATES};
use crate::store::{HostRecord, Write};

/// Most actions one request returns.
pub const MAX_LIMIT: usize = 500;
/// Actions a list returns when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// How long an agent may take to receive a command before refusing it, ms.
pub const COMMAND_TTL_MS: i64 = 5 * 60 * 1000;

/// One transition as JSON.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TransitionJson<'a> {
    /// The state entered.
    pub state: &'static str,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// When, RFC 3339.
    pub at: String,
    /// What happened, in words.
    pub detail: Option<&'a str>,
}

/// One action as JSON: the original fields first, then Vigil's (a struct, so that the keys
/// keep this order on the wire; see the module documentation for their meaning).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionJson<'a> {
    id: &'a str,
    target: &'a str,
    action: &'a str,
    status: &'static str,
    details: Option<&'a str>,
    started_at: String,
    host: Option<&'a str>,
    policy: Option<&'a str>,
    source: &'static str,
    attempts: u32,
    max_attempts: Option<u32>,
    dry_run: bool,
    executor: Option<&'a str>,
    step: Option<u32>,
    #[schema(value_type = Object)]
    params: Value,
    outcome: Option<&'static str>,
    created_at: String,
    finished_at: Option<String>,
    transitions: Vec<TransitionJson<'a>>,
}

/// A page of actions as JSON: `{"count","actions"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionList<'a> {
    count: usize,
    actions: Vec<ActionJson<'a>>,
}

/// One action as the API shows it.
pub fn action_json(record: &ActionRecord) -> ActionJson<'_> {
    ActionJson {
        id: &record.id,
        target: &record.target,
        action: &record.action,
        status: record.status.as_str(),
        details: record.details(),
        started_at: to_rfc3339(record.started_at_ms.unwrap_or(record.created_at_ms)),
        host: (!record.host.is_empty()).then_some(record.host.as_str()),
        policy: record.policy.as_deref(),
        source: record.source.as_str(),
        attempts: record.attempts,
        max_attempts: (record.max_attempts > 0).then_some(record.max_attempts),
        dry_run: record.dry_run,
        executor: record.executor.as_deref(),
        step: record.step,
        params: record
            .params
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| json!({})),
        outcome: record.outcome.map(ActionState::as_str),
        created_at: to_rfc3339(record.created_at_ms),
        finished_at: record.finished_at_ms.map(to_rfc3339),
        transitions: record
            .transitions
            .iter()
            .map(|t| TransitionJson {
                state: t.state.as_str(),
                attempt: t.attempt,
                at: to_rfc3339(t.at_ms),
                detail: t.detail.as_deref(),
            })
            .collect(),
    }
}

fn state_names() -> String {
    ALL_STATES
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_field(field: &str, text: &str) -> Result<ActionState, ApiError> {
    parse_state(text).ok_or_else(|| {
        ApiError::invalid_field(
            field,
            format!(
                "`{field}` `{text}` is not an action status; expected one of {}",
                state_names()
            ),
        )
    })
}

/// Reads a list's query string (and the status from the path, if the route has one).
pub fn parse_query(
    params: &HashMap<String, String>,
    path_status: Option<&str>,
) -> Result<ActionQuery, ApiError> {
    let limit = crate::http::params::limit(params, DEFAULT_LIMIT, MAX_LIMIT)?;
    let since_ms = params
        .get("since")
        .map(|t| {
            let ms = parse_time(t).map_err(|e| {
                ApiError::invalid_field("since", format!("query parameter `since`: {e}"))
            })?;
            validate::timestamp("since", ms)
                .map_err(|e| ApiError::invalid_field("since", format!("query parameter {e}")))?;
            Ok::<i64, ApiError>(ms)
        })
        .transpose()?;
    let status = path_status
        .or(params.get("status").map(String::as_str))
        .map(|text| status_field("status", text))
        .transpose()?;
    Ok(ActionQuery {
        host: params.get("host").cloned(),
        policy: params.get("policy").cloned(),
        target: params.get("target").cloned(),
        status,
        since_ms,
        limit,
    })
}

/// `GET /api/v1/actions` and (with the status from the path) `…/status/{status}`;
/// refusals are counted under `route`.
pub(crate) async fn list(
    params: HashMap<String, String>,
    path_status: Option<String>,
    route: &'static str,
    api: Arc<Api>,
) -> Response {
    let result = async {
        let query = parse_query(&params, path_status.as_deref())
            .map_err(|e| crate::http::error::counted(&api.telemetry, route, e))?;
        let store = api.store.clone();
        let actions = tokio::task::spawn_blocking(move || store.actions(&query))
            .await
            .map_err(task_failed)??;
        Ok(warp::reply::json(&ActionList {
            count: actions.len(),
            actions: actions.iter().map(action_json).collect(),
        }))
    }
    .await;
    respond(result)
}

/// `GET /api/v1/actions/{id}`.
pub(crate) async fn one(id: String, api: Arc<Api>) -> Response {
    let result = async {
        let store = api.store.clone();
        let wanted = id.clone();
        match tokio::task::spawn_blocking(move || store.action(&wanted))
            .await
            .map_err(task_failed)??
        {
            Some(record) => Ok(warp::reply::json(&action_json(&record))),
            None => Err(ApiError::not_found(format!("action `{id}` is not known"))),
        }
    }
    .await;
    respond(result)
}

/// A checked `POST /api/v1/actions` body.
pub(crate) struct NewAction {
    target: String,
    action: String,
    status: ActionState,
    details: Option<String>,
    host: Option<String>,
    params: Map<String, Value>,
    dry_run: bool,
    /// The policy whose disruption budget the action takes a lease from.
    policy: Option<String>,
}

const CREATE_FIELDS: [&str; 8] = [
    "target", "action", "status", "details", "host", "params", "dry_run", "policy",
];

pub(crate) fn parse_new_action(body: &[u8]) -> Result<NewAction, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(
            r#"request body must be a JSON object like {"target":"nginx.service","action":"restart","host":"web-01"}"#,
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !CREATE_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            unknown.clone(),
            format!(
                "unknown field `{unknown}`; expected {}",
                CREATE_FIELDS.join(", ")
            ),
        ));
    }
    let text = |fields: &mut Map<String, Value>, name: &str| match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid_field(
            name,
            format!("`{name}` must be a string, got {other}"),
        )),
    };
    let target = text(&mut fields, "target")?
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_field("target", "`target` is required: what the action acts on")
        })?;
    let action = text(&mut fields, "action")?
        .ok_or_else(|| ApiError::invalid_field("action", "`action` is required"))?;
    ActionKind::parse(&action).map_err(|e| ApiError::invalid_field("action", e))?;
    let status = match text(&mut fields, "status")? {
        Some(s) => status_field("status", &s)?,
        None => ActionState::Pending,
    };
    let details = text(&mut fields, "details")?;
    let host = text(&mut fields, "host")?;
    if let Some(host) = &host {
        validate::host_name(host)
            .map_err(|e| ApiError::invalid_field("host", format!("`host` {}", e.problem)))?;
    }
    let params = match fields.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "params",
                format!("`params` must be an object of executor parameters, got {other}"),
            ))
        }
    };
    let dry_run = match fields.remove("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "dry_run",
                format!("`dry_run` must be true or false, got {other}"),
            ))
        }
    };
    let policy = text(&mut fields, "policy")?;
    if let Some(policy) = &policy {
        vigil_shared::policy::spec::check_policy_name(policy)
            .map_err(|e| ApiError::invalid_field("policy", format!("`policy` {e}")))?;
    }
    Ok(NewAction {
        target,
        action: action.trim().to_string(),
        status,
        details,
        host,
        params,
        dry_run,
        policy,
    })
}

pub(crate) async fn known_hosts(api: &Api) -> Result<Vec<HostRecord>, ApiError> {
    let store = api.store.clone();
    Ok(tokio::task::spawn_blocking(move || store.hosts())
        .await
        .map_err(task_failed)??)
}

/// The host named `name`, if it is known and (when `need_agent`) has an agent that could
/// receive a command.
pub(crate) fn agent_host<'a>(
    hosts: &'a [HostRecord],
    name: &str,
    field: Option<&str>,
    need_agent: bool,
) -> Result<&'a HostRecord, ApiError> {
    let Some(record) = hosts.iter().find(|h| h.host == name) else {
        return Err(ApiError {
            field: field.map(str::to_string),
            ..ApiError::not_found(format!("host `{name}` is not known (never seen)"))
        });
    };
    if need_agent && record.status.is_none() {
        let message = format!(
            "host `{name}` is known only through HTTP ingest; it has no agent to send a command to"
        );
        return Err(match field {
            Some(field) => ApiError::invalid_field(field, message),
            None => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message),
        });
    }
    Ok(record)
}

/// Executor parameters as a command carries them: strings as they are, anything else as
/// JSON text.
pub(crate) fn params_as_tags(params: &Map<String, Value>) -> Vec<Tag> {
    params
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

async fn store_manual(api: &Api, event: ActionEvent) -> Result<(), ApiError> {
    api.writer
        .send_and_wait(|reply| Write::ManualAction {
            event,
            reply: Some(reply),
        })
        .await
        .map(|_| ())
        .map_err(|e| ApiError::from(&*e))
}

/// `POST /api/v1/actions`.
pub(crate) async fn create(api: Arc<Api>, body: Bytes) -> Response {
    let result = async {
        let new = parse_new_action(&body)?;
        let hosts = known_hosts(&api).await?;
        let run = new.status == ActionState::Pending;
        let host = match (&new.host, run) {
            (Some(host), _) => Some(agent_host(&hosts, host, Some("host"), run)?),
            (None, _) if hosts.iter().any(|h| h.host == new.target) => {
                Some(agent_host(&hosts, &new.target, Some("host"), run)?)
            }
            (None, true) => {
                return Err(ApiError::invalid_field(
                    "host",
                    format!(
                        "`host` is required: which agent should run the action (`target` \
                         `{}` is not a known host)",
                        new.target
                    ),
                ))
            }
            (None, false) => None,
        };
        // A named policy lends its disruption budget: the agent waits for a lease.
        let budget = match &new.policy {
            None => None,
            Some(name) => {
                let registered = api.policies.get(name).ok_or_else(|| {
                    ApiError::invalid_field("policy", format!("no policy `{name}` is in force"))
                })?;
                let budget = registered.policy.budget.clone().ok_or_else(|| {
                    ApiError::invalid_field(
                        "policy",
                        format!("policy `{name}` has no budget to run the action under"),
                    )
                })?;
                Some((name.clone(), budget))
            }
        };
        let now = now_ms();
        let action_id = ulid::Ulid::generate().to_string();
        let host_name = host.map(|h| h.host.clone()).unwrap_or_default();
        let event = ActionEvent {
            id: action_id.clone(),
            host: host_name.clone(),
            policy: None,
            target: new.target.clone(),
            action: new.action.clone(),
            state: new.status,
            attempt: u32::from(!run),
            dry_run: new.dry_run,
            detail: new.details.clone().or_else(|| {
                Some(if let (true, Some((policy, _))) = (run, &budget) {
                    format!(
                        "manual action under the disruption budget of policy `{policy}`, sent \
                         to the agent on `{host_name}`"
                    )
                } else if run {
                    format!("manual action, sent to the agent on `{host_name}`")
                } else {
                    format!("recorded over REST as {}", new.status.as_str())
                })
            }),
            created_at_ms: now,
            at_ms: now,
            max_attempts: u32::from(!run),
            executor: None,
            step: None,
            params: (!new.params.is_empty()).then(|| Value::Object(new.params.clone()).to_string()),
        };
        store_manual(&api, event.clone()).await?;
        if !run {
            return Ok(created(&ActionCreated {
                action_id,
                command_id: None,
                host: None,
                host_online: None,
                message: format!(
                    "Action recorded with status `{}`; nothing was sent to an agent (only a \
                     pending action is run)",
                    new.status.as_str()
                ),
                ok: true,
            }));
        }
        let Some(host) = host else {
            return Err(ApiError::invalid_field("host", "`host` is required"));
        };
        let command_id = dispatch(&api, &event, &new.params, budget).await?;
        let online = host.is_online(now);
        let mut message = "Action created successfully".to_string();
        if !online {
            message.push_str(&format!(
                "; host `{}` is offline: its agent must reconnect within {} s to run it",
                host.host,
                COMMAND_TTL_MS / 1000
            ));
        }
        Ok(created(&ActionCreated {
            action_id,
            command_id: Some(command_id),
            host: Some(host.host.clone()),
            host_online: Some(online),
            message,
            ok: true,
        }))
    }
    .await;
    respond(result)
}

/// Sends the pending action `event` (stored already) to its host's agent as a signed
/// command with executor parameters `params` (under the disruption budget of the named
/// policy, if `budget`); answers the command's id. If it cannot be
/// sent, the record is withdrawn (cancelled, so the audit trail shows the attempt) and the
/// answer is 503.
pub(crate) async fn dispatch(
    api: &Api,
    event: &ActionEvent,
    params: &Map<String, Value>,
    budget: Option<(String, vigil_shared::policy::budget::Budget)>,
) -> Result<String, ApiError> {
    let now = now_ms();
    let (action_id, target, action) =
        (event.id.clone(), event.target.clone(), event.action.clone());
    let (params, dry_run) = (params_as_tags(params), event.dry_run);
    let command = Command {
        id: ulid::Ulid::generate().to_string(),
        host: event.host.clone(),
        issued_at_ms: now,
        expires_at_ms: now.saturating_add(COMMAND_TTL_MS),
        kind: match budget {
            None => CommandKind::RunAction {
                action_id,
                target,
                action,
                params,
                dry_run,
            },
            Some((policy, budget)) => CommandKind::RunBudgetedAction {
                action_id,
                target,
                action,
                params,
                dry_run,
                policy,
                budget,
            },
        },
    };
    if let Err(e) = api.publisher.command(&command).await {
        let cancelled = ActionEvent {
            state: ActionState::Cancelled,
            detail: Some(format!("could not be sent to the agent: {e}")),
            at_ms: now.max(event.at_ms),
            ..event.clone()
        };
        store_manual(api, cancelled).await?;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("action `{}` was recorded but not sent: {e}", event.id),
        ));
    }
    Ok(command.id)
}

/// The answer to `POST /api/v1/actions` (keys in alphabetical order, as always on the wire;
/// the host fields only when the action was sent to an agent).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionCreated {
    action_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_online: Option<bool>,
    message: String,
    ok: bool,
}

/// The answer to `POST /api/v1/hosts/{host}/remediation/pause` and `…/resume`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RemediationSent {
    command_id: String,
    host: String,
    message: String,
    ok: bool,
    paused: bool,
}

fn created(body: &ActionCreated) -> Response {
    warp::reply::with_status(warp::reply::json(body), StatusCode::CREATED).into_response()
}

/// `POST /api/v1/hosts/{host}/remediation/pause` and `…/resume`.
pub(crate) async fn set_paused(host: String, api: Arc<Api>, paused: bool) -> Response {
    let result = async {
        let hosts = known_hosts(&api).await?;
        let record = agent_host(&hosts, &host, None, true)?;
        let now = now_ms();
        let command = Command {
            id: ulid::Ulid::generate().to_string(),
            host: record.host.clone(),
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(COMMAND_TTL_MS),
            kind: CommandKind::PauseRemediation(paused),
        };
        api.publisher
            .command(&command)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let verb = if paused { "pause" } else { "resume" };
        let mut message = format!("Remediation {verb} sent to `{host}`");
        if !record.is_online(now) {
            message.push_str(&format!(
                "; the host is offline: its agent must reconnect within {} s to receive it",
                COMMAND_TTL_MS / 1000
            ));
        }
        Ok(warp::reply::json(&RemediationSent {
            command_id: command.id,
            host,
            message,
            ok: true,
            paused,
        }))
    }
    .await;
    respond(result)
}

/// The last task an agent's queue finished, in the original queue stats shape.
#[derive(Serialize, Clone, utoipa::ToSchema)]
pub struct LastTask {
    task_id: String,
    action_id: String,
    target: String,
    timestamp: String,
    host: String,
    #[serde(skip)]
    at_ms: i64,
}

/// Queue stats in the original shape (plus Vigil's fields after them).
#[derive(Serialize, Default, utoipa::ToSchema)]
pub struct QueueJson {
    queue_length: u64,
    tasks_enqueued: u64,
    tasks_dequeued: u64,
    tasks_failed: u64,
    tasks_completed: u64,
    last_processed_task: Option<LastTask>,
    running: u64,
    dead_letter: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_circuits: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation_paused: Option<bool>,
}

impl QueueJson {
    fn of(host: &str, queue: &QueueStatus) -> QueueJson {
        QueueJson {
            queue_length: u64::from(queue.pending),
            tasks_enqueued: queue.enqueued_total,
            tasks_dequeued: queue.dequeued_total,
            tasks_failed: queue.failed_total,
            tasks_completed: queue.completed_total,
            last_processed_task: queue
                .last_processed
                .as_ref()
                .map(|(id, target, at)| LastTask {
                    task_id: id.clone(),
                    action_id: id.clone(),
                    target: target.clone(),
                    timestamp: to_rfc3339(*at),
                    host: host.to_string(),
                    at_ms: *at,
                }),
            running: u64::from(queue.running),
            dead_letter: u64::from(queue.dead_letter),
            ..QueueJson::default()
        }
    }

    fn add(&mut self, other: &QueueJson) {
        self.queue_length += other.queue_length;
        self.tasks_enqueued += other.tasks_enqueued;
        self.tasks_dequeued += other.tasks_dequeued;
        self.tasks_failed += other.tasks_failed;
        self.tasks_completed += other.tasks_completed;
        self.running += other.running;
        self.dead_letter += other.dead_letter;
        if let Some(last) = &other.last_processed_task {
            if self
                .last_processed_task
                .as_ref()
                .is_none_or(|mine| last.at_ms > mine.at_ms)
            {
                self.last_processed_task = Some(last.clone());
            }
        }
    }
}

/// The whole answer of the queue stats routes: the totals (the original fields first), then
/// each host's queue and the audit trail's counts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsJson {
    #[serde(flatten)]
    total: QueueJson,
    hosts: BTreeMap<String, QueueJson>,
    #[schema(value_type = Object)]
    actions: ActionCounts,
}

/// `GET /api/v1/queue/stats` and `GET /api/v1/ui/queue/stats`.
pub(crate) async fn queue_stats(api: Arc<Api>) -> Response {
    let result = async {
        let store = api.store.clone();
        let (hosts, counts) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((store.hosts()?, store.action_counts()?))
        })
        .await
        .map_err(task_failed)??;
        let now = now_ms();
        let mut stats = StatsJson {
            total: QueueJson::default(),
            hosts: BTreeMap::new(),
            actions: counts,
        };
        for record in &hosts {
            let Some(status) = &record.status else {
                continue;
            };
            let mut queue = QueueJson::of(&record.host, &status.queue);
            stats.total.add(&queue);
            queue.open_circuits = Some(status.queue.open_circuits.clone());
            queue.online = Some(record.is_online(now));
            queue.remediation_paused = Some(status.remediation_paused);
            stats.hosts.insert(record.host.clone(), queue);
        }
        Ok(warp::reply::json(&stats))
    }
    .await;
    respond(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        parse_new_action(body.as_bytes())
            .err()
            .and_then(|e| e.field)
    }

    #[test]
    fn a_create_body_names_the_field_at_fault() {
        assert_eq!(
            field_of(r#"{"action":"restart"}"#).as_deref(),
            Some("target")
        );
        assert_eq!(field_of(r#"{"target":"x"}"#).as_deref(), Some("action"));
        assert_eq!(
            field_of(r#"{"target":"x","action":"drain-nodes"}"#).as_deref(),
            Some("action")
        );
        assert_eq!(
            field_of(r#"{"target":"x","action":"restart","status":"done"}"#).as_deref(),
            Some("status")
        );
        assert_eq!(
            field_of(r#"{"target":"x","action":"restart","params":[1]}"#).as_deref(),
            Some("params")
        );
        assert_eq!(
            field_of(r#"{"target":"x","action":"restart","dry_run":"yes"}"#).as_deref(),
            Some("dry_run")
        );
        assert_eq!(
            field_of(r#"{"target":"x","action":"restart","host":"a/b"}"#).as_deref(),
            Some("host")
        );
        assert_eq!(
            field_of(r#"{"target":"x","action":"restart","hostname":"a"}"#).as_deref(),
            Some("hostname")
        );
        let ok = parse_new_action(
            br#"{"target":"web","action":"scale-up","details":"d","params":{"replicas":3}}"#,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ok.status, ActionState::Pending);
        assert_eq!(
            params_as_tags(&ok.params),
            vec![("replicas".into(), "3".into())]
        );
        assert!(parse_new_action(b"[1]").is_err());
    }

    #[test]
    fn list_queries_check_limit_status_and_since() {
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let q = parse_query(&params(&[]), None).unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(q.limit, DEFAULT_LIMIT);
        for bad in ["0", "501", "x"] {
            let err = parse_query(&params(&[("limit", bad)]), None).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("limit"));
        }
        let err = parse_query(&params(&[]), Some("exploded")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("status"));
        assert!(err.message.contains("dead_letter"), "{}", err.message);
        let q = parse_query(
            &params(&[("status", "not_resolved"), ("since", "1700000000005")]),
            None,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(q.status, Some(ActionState::NotResolved));
        assert_eq!(q.since_ms, Some(1_700_000_000_005));
        for bad in ["5", "253402300800000", "-1"] {
            let err = parse_query(&params(&[("since", bad)]), None).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("since"), "{bad}");
        }
    }
}
