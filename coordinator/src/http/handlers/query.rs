//! `GET /api/v1/metrics/query?name=&host=&from=&to=&limit=`: history of one metric,
//! time-ordered (none when `from` is after `to`). `name` is required; `host` narrows to
//! one host; `from`/`to` are RFC 3339 or epoch ms (default: the last hour), each within
//! the plausible range ([`validate::timestamp`]: 2000 to 2200); `limit` is 1–10000
//! (default 1000). A bad parameter is a 422 naming it, counted in
//! `vigil_http_requests_rejected_total`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use vigil_shared::time::{now_ms, parse_time, to_rfc3339};
use vigil_shared::validate;
use warp::reply::Response;

use crate::events::json::{tags, TagsJson};
use crate::http::error::{counted, respond, ApiError};
use crate::http::Api;
use crate::store::reader::HistoryQuery;

/// Default number of points returned.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most points one query may return.
pub const MAX_LIMIT: usize = 10_000;

/// Reads the query string into a [`HistoryQuery`], naming any bad parameter.
pub fn parse(params: &HashMap<String, String>, now_ms: i64) -> Result<HistoryQuery, ApiError> {
    let name = params
        .get("name")
        .ok_or_else(|| ApiError::invalid_field("name", "query parameter `name` is required"))?
        .clone();
    validate::metric_name(&name).map_err(|e| ApiError::invalid_field("name", e.to_string()))?;
    let time = |key: &str, default: i64| -> Result<i64, ApiError> {
        match params.get(key) {
            Some(text) => {
                let ms = parse_time(text).map_err(|e| {
                    ApiError::invalid_field(key, format!("query parameter `{key}`: {e}"))
                })?;
                validate::timestamp(key, ms)
                    .map_err(|e| ApiError::invalid_field(key, format!("query parameter {e}")))?;
                Ok(ms)
            }
            None => Ok(default),
        }
    };
    let to_ms = time("to", now_ms)?;
    let from_ms = time("from", to_ms.saturating_sub(3_600_000))?;
    let limit = crate::http::params::limit(params, DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok(HistoryQuery {
        host: params.get("host").filter(|h| !h.is_empty()).cloned(),
        name,
        from_ms,
        to_ms,
        limit,
    })
}

/// The answer: `{"count","from","host","name","points","to"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct History<'a> {
    /// How many points follow.
    pub count: usize,
    /// The window's start, RFC 3339.
    pub from: String,
    /// The host asked for (null: every host).
    pub host: Option<&'a str>,
    /// The metric name.
    pub name: &'a str,
    /// The points, time-ordered.
    pub points: Vec<PointJson<'a>>,
    /// The window's end, RFC 3339.
    pub to: String,
}

/// One stored point.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PointJson<'a> {
    /// Its host.
    pub host: &'a str,
    /// The metric name.
    pub name: &'a str,
    /// Its tags.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub tags: TagsJson<'a>,
    /// When, RFC 3339.
    pub timestamp: String,
    /// The value.
    pub value: f64,
}

/// Handles one query; refusals are counted under `route`.
pub async fn query(
    params: HashMap<String, String>,
    route: &'static str,
    api: Arc<Api>,
) -> Response {
    let result = async {
        let query = parse(&params, now_ms()).map_err(|e| counted(&api.telemetry, route, e))?;
        let store = api.store.clone();
        let q = query.clone();
        // `from` after `to` is an empty window: no points.
        let points = if query.from_ms > query.to_ms {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || store.query(&q))
                .await
                .map_err(crate::http::task_failed)??
        };
        Ok(warp::reply::json(&History {
            count: points.len(),
            from: to_rfc3339(query.from_ms),
            host: query.host.as_deref(),
            name: &query.name,
            points: points
                .iter()
                .map(|p| PointJson {
                    host: &p.host,
                    name: &p.name,
                    tags: tags(&p.tags),
                    timestamp: to_rfc3339(p.ts_ms),
                    value: p.value,
                })
                .collect(),
            to: to_rfc3339(query.to_ms),
        }))
    }
    .await;
    respond(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_cover_the_last_hour() {
        let q = parse(&params(&[("name", "cpu_percent")]), 10_000_000).unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.limit),
            (6_400_000, 10_000_000, DEFAULT_LIMIT)
        );
        assert!(q.host.is_none());
    }

    #[test]
    fn bad_parameters_are_named() {
        let field = |p: &[(&str, &str)]| parse(&params(p), 0).unwrap_err().field;
        assert_eq!(field(&[]).as_deref(), Some("name"));
        assert_eq!(
            field(&[("name", "x"), ("limit", "0")]).as_deref(),
            Some("limit")
        );
        assert_eq!(
            field(&[("name", "x"), ("limit", "abc")]).as_deref(),
            Some("limit")
        );
        assert_eq!(
            field(&[("name", "x"), ("from", "yesterday")]).as_deref(),
            Some("from")
        );
        // Implausible times, however well written, are refused and named.
        assert_eq!(
            field(&[("name", "x"), ("to", "253402300800000")]).as_deref(),
            Some("to")
        );
        assert_eq!(
            field(&[("name", "x"), ("from", "-5")]).as_deref(),
            Some("from")
        );
        assert_eq!(
            field(&[("name", "x"), ("from", "1970-01-01T00:00:00Z")]).as_deref(),
            Some("from")
        );
    }
}
