//! `POST /api/v1/alertmanager`: Alertmanager's webhook receiver (operator token). Each
//! alert of the notification is looked up in the routing file (`--alert-routes`, see
//! [`crate::alerts::routing`]):
//!
//! - a **firing** alert that a route maps to a host, target and action becomes an action
//!   through the manual-action pipeline: stored (source `alertmanager`, policy
//!   `alertmanager/<alertname>`, its first transition naming the alert, its fingerprint
//!   and labels), then sent to the host's agent as a signed command, where the agent's
//!   own allowlists, cooldown and verification apply. Its `act` event in the policy audit
//!   history (`GET /api/v1/violations`) carries the alert as JSON (`explanation`:
//!   fingerprint, startsAt, labels, annotations, action id);
//! - a repeat of the same firing alert (same fingerprint and `startsAt`: Alertmanager
//!   re-sends on every group interval) is a `duplicate`: the action's id is derived from
//!   both ([`crate::alerts::alert_ids`]), so the store itself says it has it, across
//!   restarts;
//! - a **resolved** alert is recorded against its action as a `resolved` event in the
//!   policy audit history (once).
//!
//! The answer is 200 with each alert's outcome, counted in
//! `vigil_alertmanager_alerts_total{outcome}`; a payload that is not Alertmanager's
//! (version 4) is a 422 naming the field, counted in
//! `vigil_http_requests_rejected_total`. A store failure is a 5xx, so Alertmanager sends
//! the notification again (repeats are harmless).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use vigil_shared::time::{now_ms, to_rfc3339};
use vigil_shared::wire::{ActionEvent, ActionState, PolicyEvent};
use warp::http::StatusCode;
use warp::reply::Response;

use super::actions::{agent_host, dispatch, known_hosts};
use crate::alerts::webhook::{self, labels_json, labels_text, Alert, AlertStatus};
use crate::alerts::{alert_ids, AlertIds};
use crate::http::error::{counted, respond, ApiError};
use crate::http::{task_failed, Api};
use crate::store::{HostRecord, Write};

/// The largest notification accepted.
pub const MAX_BODY_BYTES: u64 = 512 * 1024;

/// What became of one alert.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertOutcome {
    /// The alert's fingerprint.
    fingerprint: String,
    /// `firing` or `resolved`.
    status: &'static str,
    /// One of `vigil_alertmanager_alerts_total`'s outcomes.
    outcome: &'static str,
    /// The action it caused (or would have), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    action_id: Option<String>,
    /// The host the action runs on, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    /// In words.
    message: String,
}

/// The answer: every alert's outcome, in the notification's order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertmanagerReceived {
    alerts: Vec<AlertOutcome>,
    ok: bool,
    receiver: String,
}

/// `POST /api/v1/alertmanager`; refusals are counted under `route`.
pub(crate) async fn receive(api: Arc<Api>, route: &'static str, body: Bytes) -> Response {
    let result = async {
        let notification = webhook::parse(&body).map_err(|e| {
            let error = if e.field.is_empty() {
                ApiError::bad_request(e.to_string())
            } else {
                ApiError::invalid_field(e.field.clone(), e.to_string())
            };
            counted(&api.telemetry, route, error)
        })?;
        if api.alert_routes.len() == 0 && !notification.alerts.is_empty() {
            tracing::warn!(
                alerts = notification.alerts.len(),
                "Alertmanager sent alerts, but no --alert-routes file is configured: none is routed"
            );
        }
        let hosts = known_hosts(&api).await?;
        let mut alerts = Vec::with_capacity(notification.alerts.len());
        for alert in &notification.alerts {
            let outcome = handle(&api, &hosts, alert).await?;
            api.telemetry
                .alertmanager_alerts
                .with_label_values(&[outcome.outcome])
                .inc();
            alerts.push(outcome);
        }
        Ok(warp::reply::json(&AlertmanagerReceived {
            alerts,
            ok: true,
            receiver: notification.receiver,
        }))
    }
    .await;
    respond(result)
}

fn status_name(status: AlertStatus) -> &'static str {
    match status {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    }
}

/// The severity of the alert's audit events: its `severity` label when Vigil knows it.
fn severity(labels: &BTreeMap<String, String>) -> String {
    match labels.get("severity").map(|s| s.to_ascii_lowercase()) {
        Some(s) if matches!(s.as_str(), "info" | "warning" | "critical") => s,
        _ => "warning".into(),
    }
}

/// The alert as its audit records carry it (JSON).
fn origin(alert: &Alert, action_id: &str) -> String {
    json!({
        "source": "alertmanager",
        "fingerprint": alert.fingerprint,
        "startsAt": to_rfc3339(alert.starts_at_ms),
        "endsAt": alert.ends_at_ms.map(to_rfc3339),
        "labels": labels_json(&alert.labels),
        "annotations": labels_json(&alert.annotations),
        "action_id": action_id,
    })
    .to_string()
}

async fn handle(api: &Api, hosts: &[HostRecord], alert: &Alert) -> Result<AlertOutcome, ApiError> {
    let alertname = alert.labels.get("alertname").cloned().unwrap_or_default();
    let answer = |outcome: &'static str, message: String| AlertOutcome {
        fingerprint: alert.fingerprint.clone(),
        status: status_name(alert.status),
        outcome,
        action_id: None,
        host: None,
        message,
    };
    let Some(route) = api.alert_routes.find(&alert.labels) else {
        return Ok(answer(
            "unrouted",
            format!("no alert route matches alert `{alertname}` and its labels"),
        ));
    };
    let ids = alert_ids(&alert.fingerprint, alert.starts_at_ms);
    match alert.status {
        AlertStatus::Firing => fire(api, hosts, alert, route, &alertname, ids, answer).await,
        AlertStatus::Resolved => resolve(api, alert, &alertname, ids, answer).await,
    }
}

async fn fire(
    api: &Api,
    hosts: &[HostRecord],
    alert: &Alert,
    route: &crate::alerts::routing::AlertRoute,
    alertname: &str,
    ids: AlertIds,
    answer: impl Fn(&'static str, String) -> AlertOutcome,
) -> Result<AlertOutcome, ApiError> {
    let with_action = |outcome: AlertOutcome, host: &str| AlertOutcome {
        action_id: Some(ids.action.clone()),
        host: Some(host.to_string()),
        ..outcome
    };
    let routed = match route.apply(&alert.labels) {
        Ok(routed) => routed,
        Err(why) => return Ok(answer("refused", format!("alert `{alertname}`: {why}"))),
    };
    let host = match agent_host(hosts, &routed.host, None, true) {
        Ok(host) => host.host.clone(),
        Err(e) => return Ok(answer("refused", e.message)),
    };
    let now = now_ms();
    let policy = format!("alertmanager/{alertname}");
    let event = ActionEvent {
        id: ids.action.clone(),
        host: host.clone(),
        policy: Some(policy.clone()),
        target: routed.target.clone(),
        action: routed.action.clone(),
        state: ActionState::Pending,
        attempt: 0,
        dry_run: routed.dry_run,
        detail: Some(format!(
            "Alertmanager alert `{alertname}` (fingerprint {}, started {}) {}; sent to the \
             agent on `{host}`",
            alert.fingerprint,
            to_rfc3339(alert.starts_at_ms),
            labels_text(&alert.labels)
        )),
        created_at_ms: now,
        at_ms: now,
        max_attempts: 0,
        executor: None,
        step: None,
        params: (!routed.params.is_empty())
            .then(|| serde_json::Value::Object(routed.params.clone()).to_string()),
    };
    let note = PolicyEvent {
        id: ids.fired.clone(),
        host: host.clone(),
        policy,
        target: routed.target.clone(),
        severity: severity(&alert.labels),
        kind: "act".into(),
        summary: format!(
            "Alertmanager alert `{alertname}` firing: {} {}",
            routed.action, routed.target
        ),
        explanation: Some(origin(alert, &ids.action)),
        action: Some(routed.action.clone()),
        step: None,
        action_requested: true,
        dry_run: routed.dry_run,
        detail: Some(format!("action {}", ids.action)),
        at_ms: now,
    };
    let action = event.clone();
    let stored = api
        .writer
        .send_and_wait(|reply| Write::Alert {
            action: Some(action),
            event: note,
            reply: Some(reply),
        })
        .await
        .map_err(|e| ApiError::from(&*e))?;
    if stored == 0 {
        return Ok(with_action(
            answer(
                "duplicate",
                format!("alert `{alertname}` already caused action {}", ids.action),
            ),
            &host,
        ));
    }
    match dispatch(api, &event, &routed.params, None).await {
        Ok(command_id) => Ok(with_action(
            answer(
                "routed",
                format!(
                    "{} {} sent to the agent on `{host}` (command {command_id})",
                    routed.action, routed.target
                ),
            ),
            &host,
        )),
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
            Ok(with_action(answer("refused", e.message), &host))
        }
        Err(e) => Err(e),
    }
}

async fn resolve(
    api: &Api,
    alert: &Alert,
    alertname: &str,
    ids: AlertIds,
    answer: impl Fn(&'static str, String) -> AlertOutcome,
) -> Result<AlertOutcome, ApiError> {
    let store = api.store.clone();
    let id = ids.action.clone();
    let Some(action) = tokio::task::spawn_blocking(move || store.action(&id))
        .await
        .map_err(task_failed)??
    else {
        return Ok(answer(
            "resolved_unknown",
            format!("alert `{alertname}` resolved; no action was run for it"),
        ));
    };
    let ended = alert.ends_at_ms.map_or("now".to_string(), to_rfc3339);
    let note = PolicyEvent {
        id: ids.resolved,
        host: action.host.clone(),
        policy: format!("alertmanager/{alertname}"),
        target: action.target.clone(),
        severity: severity(&alert.labels),
        kind: "resolved".into(),
        summary: format!("Alertmanager alert `{alertname}` resolved"),
        explanation: Some(origin(alert, &action.id)),
        action: Some(action.action.clone()),
        step: None,
        action_requested: false,
        dry_run: action.dry_run,
        detail: Some(format!(
            "alert ended {ended}; action {} is {}",
            action.id,
            action.status.as_str()
        )),
        at_ms: now_ms(),
    };
    let stored = api
        .writer
        .send_and_wait(|reply| Write::Alert {
            action: None,
            event: note,
            reply: Some(reply),
        })
        .await
        .map_err(|e| ApiError::from(&*e))?;
    let (outcome, message) = if stored == 0 {
        (
            "duplicate",
            format!("the end of alert `{alertname}` is recorded already"),
        )
    } else {
        (
            "resolved",
            format!(
                "alert `{alertname}` resolved; recorded against action {}",
                action.id
            ),
        )
    };
    Ok(AlertOutcome {
        action_id: Some(action.id),
        host: Some(action.host),
        ..answer(outcome, message)
    })
}
