//! `GET /health`, the services' health routes and `GET /metrics`.

use std::sync::Arc;

use serde::Serialize;
use warp::reply::{Reply, Response};

use crate::http::error::{respond, ApiError};
use crate::http::Api;

/// `GET /health` and the per-service health routes: `{"service","status","version"}`
/// (keys in this order; `version` only on `/health`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Health)]
pub struct HealthJson {
    /// Which service answers.
    pub service: &'static str,
    /// `healthy`.
    pub status: &'static str,
    /// The coordinator's version (only on `/health`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
}

/// `GET /health`: `{"service":"vigil","status":"healthy","version":…}`.
pub fn health() -> Response {
    warp::reply::json(&HealthJson {
        service: "vigil",
        status: "healthy",
        version: Some(env!("CARGO_PKG_VERSION")),
    })
    .into_response()
}

/// A service's health route (`GET /api/v1/ingest/health`, `GET /api/v1/actions/health`):
/// `{"service":SERVICE,"status":"healthy"}`.
pub fn service_health(service: &'static str) -> Response {
    warp::reply::json(&HealthJson {
        service,
        status: "healthy",
        version: None,
    })
    .into_response()
}

/// `GET /metrics`: Prometheus text. Host gauges are computed from the store at scrape time.
pub async fn metrics(api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let hosts = tokio::task::spawn_blocking(move || store.hosts()).await;
    let result = match hosts {
        Ok(Ok(hosts)) => {
            let now = vigil_shared::time::now_ms();
            let online = hosts.iter().filter(|h| h.is_online(now)).count();
            api.telemetry
                .hosts_online
                .set(i64::try_from(online).unwrap_or(i64::MAX));
            api.telemetry
                .hosts_known
                .set(i64::try_from(hosts.len()).unwrap_or(i64::MAX));
            for host in &hosts {
                if let Some(status) = &host.status {
                    api.telemetry
                        .agent_policy_load_errors
                        .with_label_values(&[host.host.as_str()])
                        .set(i64::try_from(status.policies.load_errors).unwrap_or(i64::MAX));
                }
            }
            Ok(warp::reply::with_header(
                api.telemetry.render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            ))
        }
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(ApiError::new(
            warp::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics task failed: {e}"),
        )),
    };
    respond(result)
}
