//! The HTTP layer: the REST API (warp) and its [`server`] (TLS, connection bounds). Each
//! route's handler lives in the [`handlers`] module named for what it serves; this
//! module wires them together behind the token check ([`auth`]), measures every request
//! (`vigil_http_requests_total`, `vigil_http_request_duration_seconds`, labelled by route
//! template, not raw path), and turns warp's own rejections into JSON errors.
//!
//! | route | module |
//! | --- | --- |
//! | `GET /health`, `GET /metrics`, `GET /api/v1/ingest/health` | [`health`] |
//! | `POST /api/v1/ingest`, `POST /api/v1/ingest/agent/metrics` | [`ingest`] |
//! | `GET /api/v1/hosts`, `GET /api/v1/hosts/{host}` | [`hosts`] |
//! | `GET /api/v1/metrics/query` | [`query`] |
//! | `GET /api/v1/violations` | [`violations`] |
//! | `/api/v1/policies…` (list, CRUD, enable/disable, severity, evaluate, reload, runner) | [`policies`] |
//! | `/api/v1/actions…`, `/api/v1/queue/stats`, `/api/v1/hosts/{host}/remediation/…` | [`actions`] |
//! | `/api/v1/bundles…`, `GET /api/v1/drift` | [`bundles`] |
//! | `/api/v1/agents…` (enroll, list, revoke), `/api/v1/join-tokens` | [`agents`] |
//! | `GET /`, `GET /assets/status.css`, `GET /assets/status.js` (the status page) | [`status_page`] |

pub mod auth;
pub mod error;
pub mod handlers;
pub mod openapi;
pub mod params;
pub mod server;

use self::handlers::{
    actions, agents, bundles, events, health, hosts, ingest, policies, query, status_page,
    violations,
};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use self::error::ApiError;
use crate::policies::PolicyRegistry;
use crate::store::{Store, StoreWriter};
use crate::telemetry::Telemetry;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// What every handler can reach.
pub struct Api {
    /// The store, for reads.
    pub store: Store,
    /// The store writer, for writes.
    pub writer: StoreWriter,
    /// Counters.
    pub telemetry: Arc<Telemetry>,
    /// The coordinator's policies.
    pub policies: Arc<PolicyRegistry>,
    /// Sends commands to agents.
    pub publisher: crate::mqtt::publisher::Publisher,
    /// The bundle publisher.
    pub bundles: Arc<crate::bundles::Bundles>,
    /// Token checks (see [`auth`]).
    pub auth: Arc<auth::Auth>,
    /// The coordinator's public signing key, hex (given to agents when they enroll).
    pub coordinator_key: String,
}

/// The error for a blocking task that panicked or was cancelled.
pub fn task_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("request task failed: {e}"),
    )
}

type Route = BoxedFilter<(Response,)>;

/// Every route, measured, with JSON errors for anything unmatched.
pub fn routes(api: Arc<Api>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_api = {
        let api = api.clone();
        warp::any().map(move || api.clone())
    };
    let telemetry = api.telemetry.clone();
    let measured =
        |template: &'static str, route: Route| measure(telemetry.clone(), template, route);
    let get = warp::get();
    let body = warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());

    let health = measured(
        "/health",
        warp::path!("health").and(get).map(health::health).boxed(),
    );
    let metrics = measured(
        "/metrics",
        warp::path!("metrics")
            .and(get)
            .and(with_api.clone())
            .then(health::metrics)
            .boxed(),
    );
    let ingest_health = measured(
        "/api/v1/ingest/health",
        warp::path!("api" / "v1" / "ingest" / "health")
            .and(get)
            .map(health::ingest_health)
            .boxed(),
    );
    let ingest = measured(
        "/api/v1/ingest",
        warp::path!("api" / "v1" / "ingest")
            .and(warp::post())
            .and(with_api.clone())
            .and(body)
            .then(ingest::ingest)
            .boxed(),
    );
    let ingest_alias = measured(
        "/api/v1/ingest/agent/metrics",
        warp::path!("api" / "v1" / "ingest" / "agent" / "metrics")
            .and(warp::post())
            .and(with_api.clone())
            .and(body)
            .then(ingest::ingest)
            .boxed(),
    );
    let host_list = measured(
        "/api/v1/hosts",
        warp::path!("api" / "v1" / "hosts")
            .and(get)
            .and(with_api.clone())
            .then(hosts::list)
            .boxed(),
    );
    let host_one = measured(
        "/api/v1/hosts/{host}",
        warp::path!("api" / "v1" / "hosts" / String)
            .and(get)
            .and(with_api.clone())
            .then(hosts::one)
            .boxed(),
    );
    let history = measured(
        "/api/v1/metrics/query",
        warp::path!("api" / "v1" / "metrics" / "query")
            .and(get)
            .and(warp::query::<HashMap<String, String>>())
            .and(with_api.clone())
            .then(query::query)
            .boxed(),
    );
    let violations = measured(
        "/api/v1/violations",
        warp::path!("api" / "v1" / "violations")
            .and(get)
            .and(warp::query::<HashMap<String, String>>())
            .and(with_api.clone())
            .then(violations::list)
            .boxed(),
    );
    let openapi = measured(
        "/api/v1/openapi.json",
        warp::path!("api" / "v1" / "openapi.json")
            .and(get)
            .map(|| {
                warp::http::Response::builder()
                    .header("content-type", "application/json")
                    .body(openapi::document().into())
                    .unwrap_or_else(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                            .into_response()
                    })
            })
            .boxed(),
    );
    let events = measured(
        "/api/v1/events",
        warp::path!("api" / "v1" / "events")
            .and(get)
            .and(warp::query::<HashMap<String, String>>())
            .and(warp::header::optional::<String>("last-event-id"))
            .and(with_api.clone())
            .then(events::stream)
            .boxed(),
    );
    let status_html = measured(
        "/",
        warp::path::end().and(get).map(status_page::page).boxed(),
    );
    let status_css = measured(
        "/assets/status.css",
        warp::path!("assets" / "status.css")
            .and(get)
            .map(status_page::stylesheet)
            .boxed(),
    );
    let status_js = measured(
        "/assets/status.js",
        warp::path!("assets" / "status.js")
            .and(get)
            .map(status_page::script)
            .boxed(),
    );

    let unmatched = {
        let telemetry = api.telemetry.clone();
        move |rejection: Rejection| {
            let telemetry = telemetry.clone();
            async move { Ok::<_, Infallible>(rejection_response(&telemetry, rejection)) }
        }
    };
    let routes = auth::guard(api.auth.clone())
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(ingest_health)
        .unify()
        .or(ingest)
        .unify()
        .or(ingest_alias)
        .unify()
        .or(host_list)
        .unify()
        .or(host_one)
        .unify()
        .or(history)
        .unify()
        .or(violations)
        .unify()
        .or(events)
        .unify()
        .or(openapi)
        .unify()
        .or(status_html)
        .unify()
        .or(status_css)
        .unify()
        .or(status_js)
        .unify()
        .or(policies::routes(api.clone()))
        .unify()
        .or(actions::routes(api.clone()))
        .unify()
        .or(bundles::routes(api.clone()))
        .unify()
        .or(agents::routes(api.clone()))
        .unify()
        .recover(unmatched)
        .unify();
    // A 405 says which methods the path has (RFC 9110), from the OpenAPI document.
    warp::path::full()
        .and(routes)
        .map(|path: warp::path::FullPath, mut response: Response| {
            if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                if let Some(allow) = openapi::allowed_methods(path.as_str())
                    .and_then(|methods| warp::http::HeaderValue::from_str(&methods).ok())
                {
                    response
                        .headers_mut()
                        .insert(warp::http::header::ALLOW, allow);
                }
            }
            response
        })
}

/// Wraps a route so every response it gives is counted and timed under `template`.
pub(crate) fn measure(telemetry: Arc<Telemetry>, template: &'static str, route: Route) -> Route {
    warp::method()
        .and(warp::any().map(Instant::now))
        .and(route)
        .map(
            move |method: Method, started: Instant, response: Response| {
                record(
                    &telemetry,
                    method.as_str(),
                    template,
                    response.status(),
                    started,
                );
                response
            },
        )
        .boxed()
}

fn record(telemetry: &Telemetry, method: &str, route: &str, status: StatusCode, started: Instant) {
    telemetry
        .http_requests
        .with_label_values(&[method, route, status.as_str()])
        .inc();
    telemetry
        .http_duration
        .with_label_values(&[method, route])
        .observe(started.elapsed().as_secs_f64());
}

/// Turns a rejection (no route, wrong method, bad query, body too large) into JSON.
fn rejection_response(telemetry: &Telemetry, rejection: Rejection) -> Response {
    let error = if rejection.is_not_found() {
        ApiError::not_found("no such route; see README for the REST API")
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("malformed query string: {e}"))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unhandled rejection: {rejection:?}"),
        )
    };
    telemetry
        .http_requests
        .with_label_values(&["any", "unmatched", error.status.as_str()])
        .inc();
    error.into_response()
}
