//! `GET /api/v1/violations`: the policy audit history — every decision agents reported
//! (fired, act, verified, deferred, escalated, resolved), newest first.
//! Filters: `host`, `policy`, `target`, `kind`, `since` (RFC 3339 or epoch ms), `limit`
//! (1–1000, default 100).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use vigil_shared::time::parse_time;
use vigil_shared::validate;
use warp::reply::Response;

use crate::events::json::{event, PolicyEventJson};
use crate::http::error::{respond, ApiError};
use crate::http::Api;
use crate::store::reader::EventQuery;

/// Most events one request returns.
pub const MAX_LIMIT: usize = 1000;
/// Events a request returns when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// The answer: `{"count":N,"events":[policy event…]}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ViolationList<'a> {
    /// How many events follow.
    pub count: usize,
    /// The events, newest first.
    pub events: Vec<PolicyEventJson<'a>>,
}

/// Reads the query string.
pub fn parse(params: &HashMap<String, String>) -> Result<EventQuery, ApiError> {
    let limit = crate::http::params::limit(params, DEFAULT_LIMIT, MAX_LIMIT)?;
    let since_ms = params
        .get("since")
        .map(|t| {
            let ms = parse_time(t).map_err(|e| ApiError::invalid_field("since", e))?;
            validate::timestamp("since", ms)
                .map_err(|e| ApiError::invalid_field("since", format!("query parameter {e}")))?;
            Ok::<i64, ApiError>(ms)
        })
        .transpose()?;
    if let Some(kind) = params.get("kind") {
        if !matches!(
            kind.as_str(),
            "fired" | "act" | "verified" | "deferred" | "escalated" | "resolved"
        ) {
            return Err(ApiError::invalid_field(
                "kind",
                format!(
                    "`{kind}` is not one of fired, act, verified, deferred, escalated, resolved"
                ),
            ));
        }
    }
    Ok(EventQuery {
        host: params.get("host").cloned(),
        policy: params.get("policy").cloned(),
        target: params.get("target").cloned(),
        kind: params.get("kind").cloned(),
        since_ms,
        limit,
    })
}

/// Handles one request; refusals are counted under `route`.
pub async fn list(params: HashMap<String, String>, route: &'static str, api: Arc<Api>) -> Response {
    let result = async {
        let query =
            parse(&params).map_err(|e| crate::http::error::counted(&api.telemetry, route, e))?;
        let store = api.store.clone();
        let events = tokio::task::spawn_blocking(move || store.events(&query))
            .await
            .map_err(crate::http::task_failed)??;
        Ok(warp::reply::json(&ViolationList {
            count: events.len(),
            events: events.iter().map(event).collect(),
        }))
    }
    .await;
    respond(result)
}
