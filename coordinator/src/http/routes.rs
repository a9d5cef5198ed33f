//! Every REST route, declared once in [`ROUTES`]: its method, its path template (as the
//! OpenAPI document writes it, `/api/v1/hosts/{host}`), who may call it ([`Access`]), what
//! it reads besides its path ([`Input`]), its handler, and its OpenAPI operation (the
//! arguments of utoipa's `#[utoipa::path]`, without method and path, which come from the
//! entry). Everything else is derived from this table:
//!
//! - the warp router ([`Route::filter`], assembled in [`crate::http::routes()`](fn@crate::http::routes)), which
//!   tries the entries in table order, so a literal path comes before a `{param}` one that
//!   would also match it (`/api/v1/actions/health` before `/api/v1/actions/{id}`);
//! - the metric label: each entry's requests are counted under its template in
//!   `vigil_http_requests_total{route}`, and its refusals in
//!   `vigil_http_requests_rejected_total{route}` ([`Call::route`]);
//! - the token check ([`access`], used by [`crate::http::auth`]);
//! - the `Allow` header of a 405 ([`allowed_methods`]);
//! - the OpenAPI document's paths ([`crate::http::openapi::document`]).
//!
//! A template has at most one `{param}` segment; the handler gets it raw, as sent
//! (percent-encoded), in [`Call::param`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use utoipa::openapi::path::Operation;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method};
use warp::reply::Response;
use warp::Filter;

use super::handlers::agents::{AgentList, JoinTokenJson, JoinTokenList, Revoked};
use super::handlers::health::HealthJson;
use super::handlers::hosts::{HostJson, HostList};
use super::handlers::ingest::Stored;
use super::handlers::query::History;
use super::handlers::violations::ViolationList;
use super::handlers::{
    actions, agents, alertmanager, budgets, bundles, events, health, hosts, ingest, policies,
    query, status_page, violations,
};
use super::openapi::{
    ActionStatus, AlertmanagerBody, BacktestBody, EnrollBody, ErrorBody, EvaluateBody, IngestBody,
    JoinTokenBody, Json, ManualActionBody, PolicyBody, Severity,
};
use super::{Api, MAX_BODY_BYTES};
use crate::security::tokens::Role;
use vigil_shared::enrollment::Enrollment;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token: the answer holds no data.
    Open,
    /// Anyone, without a token: the join token in the body is the credential, and the
    /// handler checks it (see [`crate::http::handlers::agents`]).
    JoinToken,
    /// `GET /metrics`: open, unless the coordinator runs with `--metrics-auth`; then a
    /// viewer token.
    Scrape,
    /// A token with at least this role.
    Needs(Role),
}

impl Access {
    /// How much it asks: the strictest of several is the one with the highest rank.
    fn rank(self) -> u8 {
        match self {
            Access::Open | Access::JoinToken => 0,
            Access::Scrape => 1,
            Access::Needs(Role::Viewer) => 2,
            Access::Needs(Role::Operator) => 3,
            Access::Needs(Role::Admin) => 4,
        }
    }
}

const OPEN: Access = Access::Open;
const JOIN_TOKEN: Access = Access::JoinToken;
const SCRAPE: Access = Access::Scrape;
const VIEWER: Access = Access::Needs(Role::Viewer);
const OPERATOR: Access = Access::Needs(Role::Operator);
const ADMIN: Access = Access::Needs(Role::Admin);

/// What a route reads besides its path (and headers, which every handler may read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing else.
    Path,
    /// The query string, as `name → value`; a malformed one is a 400.
    Query,
    /// A body of at most this many bytes; without `Content-Length` it is a 411, larger a
    /// 413.
    Body(u64),
}

/// The largest enrollment or join-token body.
const SMALL_BODY_BYTES: u64 = 64 * 1024;

/// What a handler is given.
pub struct Call {
    /// What every handler can reach.
    pub api: Arc<Api>,
    /// The route's template: the `route` label of the metrics that count its requests.
    pub route: &'static str,
    /// The template's `{param}` segment as sent (percent-encoded); empty without one.
    pub param: String,
    /// The query string (empty unless the route reads it: [`Input::Query`]).
    pub query: HashMap<String, String>,
    /// The body (empty unless the route reads it: [`Input::Body`]).
    pub body: Bytes,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The client's address, if the server knows it.
    pub client: Option<SocketAddr>,
}

/// A handler: the answer to one call.
pub type Handler = fn(Call) -> BoxFuture<'static, Response>;

/// One route. See the module documentation.
pub struct Route {
    /// Its name: the OpenAPI `operationId` (the document takes it from the same entry;
    /// the table's tests check that they agree).
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    /// Its method.
    pub method: Method,
    /// Its path template, as in the OpenAPI document.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What it reads besides the path.
    pub input: Input,
    /// Its handler.
    pub handler: Handler,
    /// Its OpenAPI operation; `None` for the status page, which is not API.
    pub operation: Option<fn() -> Operation>,
}

/// The segments of a template or a path after its leading `/` (none for `/`).
fn segments(template: &str) -> impl Iterator<Item = &str> {
    template.split('/').filter(|s| !s.is_empty())
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

impl Route {
    /// Whether `path` (raw, as in the request line) matches the template, exactly as the
    /// router's warp filters match it: segment by segment, a `{param}` taking any
    /// non-empty one, and at most one trailing `/`.
    pub fn matches(&self, path: &str) -> bool {
        let mut actual = path.strip_prefix('/').unwrap_or(path).split('/');
        for wanted in segments(self.path) {
            match actual.next() {
                Some(seg) if is_param(wanted) && !seg.is_empty() => {}
                Some(seg) if seg == wanted => {}
                _ => return false,
            }
        }
        matches!((actual.next(), actual.next()), (None, _) | (Some(""), None))
    }

    /// The warp filter that serves this route (unmeasured; [`crate::http::routes()`](fn@crate::http::routes)
    /// measures it): path, method, then the inputs, then the handler.
    pub fn filter(&'static self, api: Arc<Api>) -> BoxedFilter<(Response,)> {
        let mut path = warp::any().map(String::new).boxed();
        for segment in segments(self.path) {
            path = if is_param(segment) {
                path.and(warp::path::param::<String>())
                    .map(|_: String, param: String| param)
                    .boxed()
            } else {
                path.and(warp::path(segment)).boxed()
            };
        }
        // The table writes only these four methods (see `route_method!`).
        let method = if self.method == Method::GET {
            warp::get().boxed()
        } else if self.method == Method::POST {
            warp::post().boxed()
        } else if self.method == Method::PUT {
            warp::put().boxed()
        } else {
            warp::delete().boxed()
        };
        let query = match self.input {
            Input::Query => warp::query::<HashMap<String, String>>().boxed(),
            Input::Path | Input::Body(_) => warp::any().map(HashMap::new).boxed(),
        };
        let body = match self.input {
            Input::Body(limit) => warp::body::content_length_limit(limit)
                .and(warp::body::bytes())
                .boxed(),
            Input::Path | Input::Query => warp::any().map(Bytes::new).boxed(),
        };
        let (route, handler) = (self.path, self.handler);
        path.and(warp::path::end())
            .and(method)
            .and(query)
            .and(warp::header::headers_cloned())
            .and(super::server::client_addr())
            .and(body)
            .then(
                move |param, query, headers, client, body| -> BoxFuture<'static, Response> {
                    handler(Call {
                        api: api.clone(),
                        route,
                        param,
                        query,
                        body,
                        headers,
                        client,
                    })
                },
            )
            .boxed()
    }
}

/// The route that serves `method path`: the first entry of [`ROUTES`] whose method and
/// template match, as the router picks it.
pub fn find(method: &Method, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|route| route.method == method && route.matches(path))
}

/// Who may send `method path`: the access of the route that serves it (for `HEAD`, which
/// no route serves, that of `GET`: it is a read). A request no route serves is answered
/// 405 when its path has routes for other methods; it needs what the strictest of those
/// needs (so the `Allow` header tells only someone who could use them all). Any other
/// request is a 404 for anyone with a token (viewer).
pub fn access(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    if let Some(route) = find(method, path) {
        return route.access;
    }
    ROUTES
        .iter()
        .filter(|route| route.matches(path))
        .map(|route| route.access)
        .max_by_key(|access| access.rank())
        .unwrap_or(VIEWER)
}

/// The methods of the resource `path` names, for the `Allow` header of a 405: those of
/// the routes with the template that matches it most literally (`/api/v1/policies/reload`
/// is the reload resource, not the policy named `reload`), as the OpenAPI document lists
/// them; `None` when no route has the path.
pub fn allowed_methods(path: &str) -> Option<String> {
    let literal = |route: &Route| segments(route.path).filter(|s| !is_param(s)).count();
    // The first such template in table order (`max_by_key` keeps the last of a tie).
    let template = ROUTES
        .iter()
        .rev()
        .filter(|route| route.matches(path))
        .max_by_key(|route| literal(route))?
        .path;
    let methods: Vec<&str> = [Method::GET, Method::POST, Method::PUT, Method::DELETE]
        .iter()
        .filter(|method| {
            ROUTES
                .iter()
                .any(|route| route.path == template && route.method == **method)
        })
        .map(Method::as_str)
        .collect();
    Some(methods.join(", "))
}

/// `get` → `Method::GET`, for the four methods the table uses.
macro_rules! route_method {
    (get) => {
        Method::GET
    };
    (post) => {
        Method::POST
    };
    (put) => {
        Method::PUT
    };
    (delete) => {
        Method::DELETE
    };
}

/// An entry's OpenAPI part: `(tag = "…", …)` holds the arguments of `#[utoipa::path]`
/// but method and path, the tag first; `undocumented` leaves the route out of the
/// document.
macro_rules! route_doc {
    (@stub $name:ident $method:ident $path:tt undocumented) => {};
    (@stub $name:ident $method:ident $path:tt (tag = $tag:tt, $($doc:tt)*)) => {
        /// The operation's type (utoipa implements `utoipa::Path` for it).
        #[allow(non_camel_case_types)]
        pub(super) struct $name {}

        #[utoipa::path($method, path = $path, impl_for = $name, tag = $tag, $($doc)*)]
        #[allow(dead_code)]
        fn $name() {}
    };
    (@operation $name:ident undocumented) => {
        None
    };
    // The tag is set here: utoipa adds it only to operations an `OpenApi` derive lists.
    (@operation $name:ident (tag = $tag:tt, $($doc:tt)*)) => {
        Some({
            fn operation() -> Operation {
                let mut operation = <doc::$name as utoipa::Path>::operation();
                operation.tags = Some(vec![$tag.to_string()]);
                operation
            }
            operation as fn() -> Operation
        })
    };
}

/// Builds [`ROUTES`] and the OpenAPI operations from the entries: `name: method "path",
/// access, input, |call| handler-future, (openapi…) | undocumented;`.
macro_rules! routes {
    ($(
        $name:ident: $method:ident $path:tt, $access:expr, $input:expr,
        |$call:ident| $serve:expr,
        $doc:tt;
    )*) => {
        /// One type per documented operation (utoipa's `#[utoipa::path]` needs one).
        mod doc {
            use super::*;
            $( route_doc!(@stub $name $method $path $doc); )*
        }

        /// Every route, in the order the router tries them.
        pub static ROUTES: &[Route] = &[$(
            Route {
                name: stringify!($name),
                method: route_method!($method),
                path: $path,
                access: $access,
                input: $input,
                handler: {
                    fn serve($call: Call) -> BoxFuture<'static, Response> {
                        Box::pin($serve)
                    }
                    serve
                },
                operation: route_doc!(@operation $name $doc),
            },
        )*];
    };
}

routes! {
    // The service: health, Prometheus metrics, this API's description.
    health: get "/health", OPEN, Input::Path,
        |_call| async { health::health() },
        (tag = "service",
         responses((status = 200, description = "Up", body = HealthJson)));
    metrics: get "/metrics", SCRAPE, Input::Path,
        |call| health::metrics(call.api),
        (tag = "service",
         responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)));
    openapi: get "/api/v1/openapi.json", OPEN, Input::Path,
        |_call| async { super::openapi::response() },
        (tag = "service",
         responses((status = 200, description = "This document", body = Json)));

    // HTTP ingest.
    ingest: post "/api/v1/ingest", OPERATOR, Input::Body(MAX_BODY_BYTES),
        |call| ingest::ingest(call.api, call.route, call.body),
        (tag = "ingest", request_body = IngestBody,
         responses((status = 201, description = "Stored", body = Stored)));
    ingest_alias: post "/api/v1/ingest/agent/metrics", OPERATOR, Input::Body(MAX_BODY_BYTES),
        |call| ingest::ingest(call.api, call.route, call.body),
        (tag = "ingest", request_body = IngestBody,
         responses((status = 201, description = "Stored (alias of /api/v1/ingest)", body = Stored)));
    ingest_health: get "/api/v1/ingest/health", VIEWER, Input::Path,
        |_call| async { health::service_health("ingest") },
        (tag = "ingest",
         responses((status = 200, description = "Up", body = HealthJson)));

    // Agent identities and join tokens.
    enroll: post "/api/v1/agents/enroll", JOIN_TOKEN, Input::Body(SMALL_BODY_BYTES),
        |call| agents::enroll(call.client, call.api, call.body),
        (tag = "agents", request_body = EnrollBody,
         responses((status = 201, description = "Enrolled: the agent's MQTT login and the coordinator's key", body = Enrollment),
                   (status = 409, description = "The host is enrolled already", body = ErrorBody)));
    agents: get "/api/v1/agents", ADMIN, Input::Path,
        |call| agents::list(call.api),
        (tag = "agents",
         responses((status = 200, description = "Enrolled agents (no secrets)", body = AgentList)));
    agent_revoke: post "/api/v1/agents/{host}/revoke", ADMIN, Input::Path,
        |call| agents::revoke(call.param, call.api),
        (tag = "agents",
         params(("host" = String, Path, description = "Host")),
         responses((status = 200, description = "Revoked", body = Revoked)));
    join_tokens_create: post "/api/v1/join-tokens", ADMIN, Input::Body(SMALL_BODY_BYTES),
        |call| agents::create_join_token(call.api, call.route, call.body),
        (tag = "agents", request_body = JoinTokenBody,
         responses((status = 201, description = "Created; `token` is shown once", body = JoinTokenJson)));
    join_tokens: get "/api/v1/join-tokens", ADMIN, Input::Path,
        |call| agents::list_join_tokens(call.api),
        (tag = "agents",
         responses((status = 200, description = "Join tokens (hashes only)", body = JoinTokenList)));

    // Hosts and their metric history.
    hosts: get "/api/v1/hosts", VIEWER, Input::Path,
        |call| hosts::list(call.api),
        (tag = "hosts",
         responses((status = 200, description = "Every host", body = HostList)));
    host: get "/api/v1/hosts/{host}", VIEWER, Input::Path,
        |call| hosts::one(call.param, call.api),
        (tag = "hosts",
         params(("host" = String, Path, description = "Host name")),
         responses((status = 200, description = "One host and its latest values", body = HostJson)));
    history: get "/api/v1/metrics/query", VIEWER, Input::Query,
        |call| query::query(call.query, call.route, call.api),
        (tag = "hosts",
         params(
             ("name" = String, Query, min_length = 1, description = "Metric name"),
             ("host" = Option<String>, Query, description = "Host"),
             ("from" = Option<String>, Query, description = "RFC 3339 or epoch ms (default: an hour ago)"),
             ("to" = Option<String>, Query, description = "RFC 3339 or epoch ms (default: now)"),
             ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1–10000 (default 1000)"),
         ),
         responses((status = 200, description = "History, time-ordered", body = History)));

    // The policy audit trail and the live event stream.
    violations: get "/api/v1/violations", VIEWER, Input::Query,
        |call| violations::list(call.query, call.route, call.api),
        (tag = "audit",
         params(
             ("host" = Option<String>, Query, description = "Host"),
             ("policy" = Option<String>, Query, description = "Policy"),
             ("target" = Option<String>, Query, description = "Target"),
             ("kind" = Option<String>, Query, description = "fired, act, verified, deferred, escalated, resolved"),
             ("since" = Option<String>, Query, description = "RFC 3339 or epoch ms"),
             ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1–1000 (default 100)"),
         ),
         responses((status = 200, description = "Policy decisions, newest first", body = ViolationList)));
    events: get "/api/v1/events", VIEWER, Input::Query,
        |call| events::stream(call.query, events::last_event_id(&call.headers), call.api),
        (tag = "audit",
         params(
             ("host" = Option<String>, Query, description = "Hosts, comma-separated"),
             ("kind" = Option<String>, Query, description = "violation, action, host, bundle, drift (comma-separated)"),
             ("last_event_id" = Option<u64>, Query, description = "Resume after this event id"),
             ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
         ),
         responses((status = 200, description = "Server-Sent Events; `data:` is the JSON of schemas/json/", content_type = "text/event-stream", body = String)));

    // Actions: the audit trail, manual actions, the kill switch, queue stats.
    actions_create: post "/api/v1/actions", OPERATOR, Input::Body(MAX_BODY_BYTES),
        |call| actions::create(call.api, call.body),
        (tag = "actions", request_body = ManualActionBody,
         responses((status = 201, description = "Created (sent to the host's agent when pending)", body = actions::ActionCreated)));
    actions_list: get "/api/v1/actions", VIEWER, Input::Query,
        |call| actions::list(call.query, None, call.route, call.api),
        (tag = "actions",
         params(
             ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500 (default 50)"),
             ("status" = Option<ActionStatus>, Query, description = "Status"),
             ("target" = Option<String>, Query, description = "Target"),
             ("host" = Option<String>, Query, description = "Host"),
             ("policy" = Option<String>, Query, description = "Policy"),
             ("since" = Option<String>, Query, description = "RFC 3339 or epoch ms"),
         ),
         responses((status = 200, description = "Actions, newest first", body = actions::ActionList)));
    actions_health: get "/api/v1/actions/health", VIEWER, Input::Path,
        |_call| async { health::service_health("actions") },
        (tag = "actions",
         responses((status = 200, description = "Up", body = HealthJson)));
    actions_by_status: get "/api/v1/actions/status/{status}", VIEWER, Input::Query,
        |call| actions::list(call.query, Some(call.param), call.route, call.api),
        (tag = "actions",
         params(("status" = ActionStatus, Path, description = "Status"),
                ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500 (default 50)")),
         responses((status = 200, description = "Actions in that status", body = actions::ActionList)));
    action: get "/api/v1/actions/{id}", VIEWER, Input::Path,
        |call| actions::one(call.param, call.api),
        (tag = "actions",
         params(("id" = String, Path, description = "Action id")),
         responses((status = 200, description = "One action", body = actions::ActionJson)));
    queue_stats: get "/api/v1/queue/stats", VIEWER, Input::Path,
        |call| actions::queue_stats(call.api),
        (tag = "actions",
         responses((status = 200, description = "Queue statistics", body = actions::StatsJson)));
    ui_queue_stats: get "/api/v1/ui/queue/stats", VIEWER, Input::Path,
        |call| actions::queue_stats(call.api),
        (tag = "actions",
         responses((status = 200, description = "Queue statistics (alias)", body = actions::StatsJson)));
    pause: post "/api/v1/hosts/{host}/remediation/pause", OPERATOR, Input::Path,
        |call| actions::set_paused(call.param, call.api, true),
        (tag = "actions",
         params(("host" = String, Path, description = "Host")),
         responses((status = 200, description = "Kill switch sent", body = actions::RemediationSent)));
    resume: post "/api/v1/hosts/{host}/remediation/resume", OPERATOR, Input::Path,
        |call| actions::set_paused(call.param, call.api, false),
        (tag = "actions",
         params(("host" = String, Path, description = "Host")),
         responses((status = 200, description = "Resume sent", body = actions::RemediationSent)));

    alertmanager_webhook: post "/api/v1/alertmanager", OPERATOR, Input::Body(alertmanager::MAX_BODY_BYTES),
        |call| alertmanager::receive(call.api, call.route, call.body),
        (tag = "actions", request_body = AlertmanagerBody,
         responses((status = 200, description = "Alertmanager's webhook (version 4): each alert's outcome", body = alertmanager::AlertmanagerReceived),
                   (status = 422, description = "Not Alertmanager's payload; `field` names what is wrong", body = ErrorBody)));
    // Disruption budgets.
    budgets_list: get "/api/v1/budgets", VIEWER, Input::Path,
        |call| budgets::list(call.api),
        (tag = "actions",
         responses((status = 200, description = "Every disruption budget: leases held, actions deferred, grants in the last hour", body = budgets::BudgetList)));

    // Policies.
    policies_list: get "/api/v1/policies", VIEWER, Input::Path,
        |call| policies::list(call.api),
        (tag = "policies",
         responses((status = 200, description = "Every policy", body = crate::http::handlers::policies::PolicyList)));
    policies_create: post "/api/v1/policies", ADMIN, Input::Body(MAX_BODY_BYTES),
        |call| policies::create(call.api, call.body),
        (tag = "policies", request_body = PolicyBody,
         responses((status = 201, description = "Created", body = crate::http::handlers::policies::PolicyChanged),
                   (status = 409, description = "The name exists", body = ErrorBody)));
    // The sandbox changes nothing: a viewer may use it.
    policies_evaluate: post "/api/v1/policies/evaluate", VIEWER, Input::Body(MAX_BODY_BYTES),
        |call| policies::sandbox::evaluate(call.api, call.body),
        (tag = "policies", request_body = EvaluateBody,
         responses((status = 200, description = "What would fire, explained", body = crate::http::handlers::policies::sandbox::SandboxAnswer)));
    // A backtest changes nothing either; its work is bounded (and two run at most).
    policies_backtest: post "/api/v1/policies/backtest", VIEWER, Input::Body(MAX_BODY_BYTES),
        |call| policies::backtest::run(call.api, call.route, call.body),
        (tag = "policies", request_body = BacktestBody,
         responses((status = 200, description = "What each policy would have done on the stored history", body = crate::policies::backtest::BacktestReport)));
    policies_reload: post "/api/v1/policies/reload", ADMIN, Input::Path,
        |call| policies::reload(call.api),
        (tag = "policies",
         responses((status = 200, description = "Re-read", body = crate::http::handlers::policies::PolicyMessage)));
    runner_status: get "/api/v1/policies/runner/status", VIEWER, Input::Path,
        |call| policies::runner::status(call.api),
        (tag = "policies",
         responses((status = 200, description = "What each agent's evaluator reports", body = crate::http::handlers::policies::runner::RunnerStatus)));
    policies_by_severity: get "/api/v1/policies/severity/{severity}", VIEWER, Input::Path,
        |call| policies::by_severity(call.param, call.api),
        (tag = "policies",
         params(("severity" = Severity, Path, description = "info, warning or critical")),
         responses((status = 200, description = "Policies of that severity", body = crate::http::handlers::policies::PolicyList)));
    policy_get: get "/api/v1/policies/{name}", VIEWER, Input::Path,
        |call| policies::get_one(call.param, call.api),
        (tag = "policies",
         params(("name" = String, Path, description = "Policy name")),
         responses((status = 200, description = "One policy", body = crate::http::handlers::policies::PolicyOne)));
    policy_put: put "/api/v1/policies/{name}", ADMIN, Input::Body(MAX_BODY_BYTES),
        |call| policies::update(call.param, call.api, call.body),
        (tag = "policies",
         params(("name" = String, Path, description = "Policy name")), request_body = Json,
         responses((status = 200, description = "Updated (given keys replace stored ones)", body = crate::http::handlers::policies::PolicyChanged),
                   (status = 409, description = "A file policy cannot be changed here", body = ErrorBody)));
    policy_delete: delete "/api/v1/policies/{name}", ADMIN, Input::Path,
        |call| policies::delete(call.param, call.api),
        (tag = "policies",
         params(("name" = String, Path, description = "Policy name")),
         responses((status = 200, description = "Deleted", body = crate::http::handlers::policies::PolicyMessage),
                   (status = 409, description = "A file policy cannot be deleted here", body = ErrorBody)));
    policy_enable: put "/api/v1/policies/{name}/enable", OPERATOR, Input::Path,
        |call| policies::set_enabled(call.param, call.api, true),
        (tag = "policies",
         params(("name" = String, Path, description = "Policy name")),
         responses((status = 200, description = "Enabled", body = crate::http::handlers::policies::PolicyChanged),
                   (status = 409, description = "A file policy cannot be changed here", body = ErrorBody)));
    policy_disable: put "/api/v1/policies/{name}/disable", OPERATOR, Input::Path,
        |call| policies::set_enabled(call.param, call.api, false),
        (tag = "policies",
         params(("name" = String, Path, description = "Policy name")),
         responses((status = 200, description = "Disabled", body = crate::http::handlers::policies::PolicyChanged),
                   (status = 409, description = "A file policy cannot be changed here", body = ErrorBody)));

    // Bundles and drift.
    bundles: get "/api/v1/bundles", VIEWER, Input::Path,
        |call| bundles::list(call.api),
        (tag = "bundles",
         responses((status = 200, description = "Every group's bundle", body = crate::http::handlers::bundles::BundleList)));
    bundles_reload: post "/api/v1/bundles/reload", ADMIN, Input::Path,
        |call| bundles::reload(call.api),
        (tag = "bundles",
         responses((status = 200, description = "Re-read", body = crate::http::handlers::bundles::ReloadJson)));
    bundle: get "/api/v1/bundles/{group}", VIEWER, Input::Path,
        |call| bundles::one(call.param, call.api),
        (tag = "bundles",
         params(("group" = String, Path, description = "Host group")),
         responses((status = 200, description = "One group's bundle", body = crate::http::handlers::bundles::BundleDetail)));
    drift: get "/api/v1/drift", VIEWER, Input::Path,
        |call| bundles::drift(call.api),
        (tag = "bundles",
         responses((status = 200, description = "Desired vs applied, per group and host", body = crate::http::handlers::bundles::DriftJson)));

    // The status page: no data of its own (every request it makes carries the token).
    status_page: get "/", OPEN, Input::Path,
        |_call| async { status_page::page() },
        undocumented;
    status_css: get "/assets/status.css", OPEN, Input::Path,
        |_call| async { status_page::stylesheet() },
        undocumented;
    status_js: get "/assets/status.js", OPEN, Input::Path,
        |_call| async { status_page::script() },
        undocumented;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use vigil_shared::bundle::BundleKeys;

    use super::*;
    use crate::http::auth::Auth;
    use crate::policies::PolicyRegistry;
    use crate::security::tokens;
    use crate::store::{MapSize, Store, StoreWriter};
    use crate::telemetry::Telemetry;

    /// A path the template matches: each `{param}` filled with `x`.
    fn example(template: &str) -> String {
        if template == "/" {
            return "/".into();
        }
        template
            .split('/')
            .map(|s| if is_param(s) { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn entries_are_well_formed_and_distinct() {
        let mut names = BTreeSet::new();
        let mut routes = BTreeSet::new();
        for route in ROUTES {
            assert!(names.insert(route.name), "two routes named {}", route.name);
            assert!(
                routes.insert((route.method.as_str(), route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
            assert!(route.path.starts_with('/'), "{}", route.path);
            assert!(
                segments(route.path).filter(|s| is_param(s)).count() <= 1,
                "{}: at most one {{param}}",
                route.path
            );
            // The entry serves its own example path: no earlier entry shadows it.
            let path = example(route.path);
            let found = find(&route.method, &path).map(|r| r.name);
            assert_eq!(found, Some(route.name), "{} {path}", route.method);
        }
    }

    #[test]
    fn paths_match_as_warp_matches_them() {
        let route = |name: &str| ROUTES.iter().find(|r| r.name == name).unwrap();
        let (hosts, host, page) = (route("hosts"), route("host"), route("status_page"));
        assert!(hosts.matches("/api/v1/hosts") && hosts.matches("/api/v1/hosts/"));
        assert!(!hosts.matches("/api/v1/hosts//") && !hosts.matches("/api/v1//hosts"));
        assert!(host.matches("/api/v1/hosts/web%2D1") && host.matches("/api/v1/hosts/w/"));
        assert!(!host.matches("/api/v1/hosts/") && !host.matches("/api/v1/hosts/a/b"));
        assert!(page.matches("/") && !page.matches("//") && !page.matches("/x"));
    }

    /// The document lists exactly the table's routes (but the status page, which is not
    /// API), and says what each reads: query parameters for a route that reads the query,
    /// a request body for one that reads a body.
    #[test]
    fn the_document_lists_every_route_and_nothing_else() {
        let doc: serde_json::Value =
            serde_json::from_str(&super::super::openapi::document()).expect("the document is JSON");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let mut listed = BTreeSet::new();
        for route in ROUTES {
            let key = (route.method.to_string(), route.path.to_string());
            let Some(_) = route.operation else {
                assert!(
                    route.path == "/" || route.path.starts_with("/assets/"),
                    "{} {} is not documented",
                    route.method,
                    route.path
                );
                continue;
            };
            let operation = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
            assert_eq!(operation["operationId"], route.name);
            let reads_query = operation["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
            let reads_body = operation["requestBody"].is_object();
            assert_eq!(
                (reads_query, reads_body),
                (
                    route.input == Input::Query,
                    matches!(route.input, Input::Body(_))
                ),
                "{} {}: documented inputs differ from {:?}",
                route.method,
                route.path,
                route.input
            );
            listed.insert(key);
        }
        assert!(listed.len() > 30, "{listed:?}");
        assert_eq!(documented, listed);
    }

    /// A coordinator's API over a fresh store, with a token for each role.
    struct Fixture {
        api: Arc<Api>,
        tokens: Vec<(Role, String)>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(
            dir.path(),
            MapSize {
                initial: 1 << 24,
                max: 1 << 26,
            },
        )
        .expect("open store");
        let telemetry = Arc::new(Telemetry::new());
        let (writer, _thread) = StoreWriter::start(store.clone(), telemetry.clone());
        let keys = Arc::new(BundleKeys::generate());
        let options = rumqttc::MqttOptions::new("routes-test", "127.0.0.1", 1);
        let (publisher, _eventloop) = crate::mqtt::publisher::connect(options, Arc::clone(&keys));
        let bundles = crate::bundles::Bundles::open(
            None,
            keys.clone(),
            store.clone(),
            telemetry.clone(),
            publisher.clone(),
        )
        .expect("bundles");
        let policies =
            PolicyRegistry::open(None, store.clone(), telemetry.clone()).expect("policies");
        let mut made = Vec::new();
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            let token = tokens::generate();
            let digest = tokens::hash(&token);
            store
                .put_token(&digest, &tokens::record(&digest, "t", role, 1))
                .expect("token stored");
            made.push((role, token));
        }
        // `/metrics` needs a token here, so that every kind of access is exercised.
        let auth = Arc::new(Auth::new(store.clone(), telemetry.clone(), false, 0));
        let api = Arc::new(Api {
            store,
            writer,
            telemetry,
            policies: Arc::new(policies),
            publisher,
            bundles: Arc::new(bundles),
            auth,
            coordinator_key: keys.public_hex(),
            alert_routes: Arc::default(),
            budgets: crate::budgets::Budgets::new(std::time::Duration::from_secs(60)),
        });
        Fixture {
            api,
            tokens: made,
            _dir: dir,
        }
    }

    /// A request for `route`'s example path that its handler answers at once (the event
    /// stream would not end: it gets a filter it refuses).
    fn request(route: &Route, token: Option<&str>) -> warp::test::RequestBuilder {
        let mut path = example(route.path);
        if route.name == "events" {
            path.push_str("?kind=nothing");
        }
        let mut request = warp::test::request()
            .method(route.method.as_str())
            .path(&path);
        if let Input::Body(_) = route.input {
            request = request.body("{}");
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request
    }

    /// Through the real router: every entry is served by its own handler and counted
    /// under its template, and each caller — no token, viewer, operator, admin — is
    /// refused or let through as the entry's access says.
    #[tokio::test]
    async fn the_router_serves_every_entry_as_its_access_says() {
        let fixture = fixture();
        let router = crate::http::routes(fixture.api.clone());
        let admin = fixture.tokens[2].1.as_str();
        for route in ROUTES {
            let response = request(route, Some(admin)).reply(&router).await;
            let status = response.status();
            assert_ne!(status, 405, "{} {}", route.method, route.path);
            let counted = fixture
                .api
                .telemetry
                .http_requests
                .with_label_values(&[route.method.as_str(), route.path, status.as_str()])
                .get();
            assert_eq!(
                counted, 1,
                "{} {} ({status}) was not counted under its template",
                route.method, route.path
            );
        }
        let unmatched = fixture
            .api
            .telemetry
            .http_requests
            .with_label_values(&["any", "unmatched", "404"])
            .get();
        assert_eq!(unmatched, 0, "an entry fell through to no route");

        let callers: Vec<(Option<Role>, Option<&str>)> = std::iter::once((None, None))
            .chain(
                fixture
                    .tokens
                    .iter()
                    .map(|(role, token)| (Some(*role), Some(token.as_str()))),
            )
            .collect();
        for route in ROUTES {
            for (caller, token) in &callers {
                let refused = match (route.access, caller) {
                    (Access::Open | Access::JoinToken, _) => None,
                    (Access::Scrape | Access::Needs(_), None) => Some(401),
                    (Access::Needs(needed), Some(role)) if role < &needed => Some(403),
                    _ => None,
                };
                let status = request(route, *token).reply(&router).await.status();
                match refused {
                    Some(expected) => assert_eq!(
                        status.as_u16(),
                        expected,
                        "{} {} as {caller:?}",
                        route.method,
                        route.path
                    ),
                    None => assert!(
                        status != 401 && status != 403,
                        "{} {} as {caller:?}: {status}",
                        route.method,
                        route.path
                    ),
                }
            }
        }
    }

    /// A method a path does not have is a 405 listing the methods it has.
    #[tokio::test]
    async fn a_wrong_method_is_answered_with_the_methods_the_path_has() {
        let fixture = fixture();
        let router = crate::http::routes(fixture.api.clone());
        let admin = fixture.tokens[2].1.as_str();
        let cases = [
            ("/api/v1/hosts", "GET"),
            ("/api/v1/actions", "GET, POST"),
            ("/api/v1/policies/high-cpu", "GET, PUT, DELETE"),
            // The reload resource, though `GET` reads a policy named `reload`.
            ("/api/v1/policies/reload", "POST"),
            ("/", "GET"),
        ];
        for (path, methods) in cases {
            let response = warp::test::request()
                .method("PATCH")
                .path(path)
                .header("authorization", format!("Bearer {admin}"))
                .reply(&router)
                .await;
            assert_eq!(response.status(), 405, "{path}");
            let allow = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok());
            assert_eq!(allow, Some(methods), "{path}");
        }
        assert_eq!(allowed_methods("/api/v1/nothing/here"), None);
        let response = warp::test::request()
            .path("/api/v1/nothing/here")
            .header("authorization", format!("Bearer {admin}"))
            .reply(&router)
            .await;
        assert_eq!(response.status(), 404);
    }
}
