//! The HTTP layer: the REST API (warp) and its [`server`] (TLS, connection bounds). Every
//! route is declared once, in the table of [`routes`](mod@routes) (method, path template, who may
//! call it, handler, OpenAPI operation); its handler lives in the [`handlers`] module named
//! for what it serves. [`routes()`](fn@routes) builds the router from that table: every request passes
//! the token check ([`auth`]) first, every route's requests are measured
//! (`vigil_http_requests_total`, `vigil_http_request_duration_seconds`, labelled by route
//! template, not raw path), warp's own rejections become JSON errors ([`error`]), and a
//! 405 says which methods the path has. The [`openapi`] document is built from the same
//! table; [`params`] reads the query parameters the list routes share.
//!
//! Children, in the order a request meets them: [`server`], [`auth`], [`routes`](mod@routes),
//! [`params`], [`handlers`], [`error`], [`openapi`].

pub mod auth;
pub mod error;
pub mod handlers;
pub mod openapi;
pub mod params;
pub mod routes;
pub mod server;

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
    /// Which Alertmanager alerts become which actions (empty: none).
    pub alert_routes: Arc<crate::alerts::routing::AlertRoutes>,
    /// The disruption budgets' leases.
    pub budgets: crate::budgets::Budgets,
}

/// The error for a blocking task that panicked or was cancelled.
pub fn task_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("request task failed: {e}"),
    )
}

/// Every route of [`routes::ROUTES`], measured, behind the token check, with JSON errors
/// for anything unmatched.
pub fn routes(api: Arc<Api>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let mut served = auth::guard(api.auth.clone());
    for route in routes::ROUTES {
        let measured = measure(api.telemetry.clone(), route.path, route.filter(api.clone()));
        served = served.or(measured).unify().boxed();
    }
    let unmatched = {
        let telemetry = api.telemetry.clone();
        move |rejection: Rejection| {
            let telemetry = telemetry.clone();
            async move { Ok::<_, Infallible>(rejection_response(&telemetry, rejection)) }
        }
    };
    let served = served.recover(unmatched).unify();
    // A 405 says which methods the path has (RFC 9110).
    warp::path::full()
        .and(served)
        .map(|path: warp::path::FullPath, mut response: Response| {
            if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                if let Some(allow) = routes::allowed_methods(path.as_str())
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
fn measure(
    telemetry: Arc<Telemetry>,
    template: &'static str,
    route: BoxedFilter<(Response,)>,
) -> BoxedFilter<(Response,)> {
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
