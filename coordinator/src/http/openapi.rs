//! The OpenAPI 3.1 document of the REST API, served at `GET /api/v1/openapi.json`
//! (utoipa). Response types that handlers serialize from Rust structs (actions, queue
//! stats) derive their schema from those structs; bodies the handlers read field by field
//! (to name the bad field in errors) and `json!`-built answers are described by the
//! schema types below. Two checks keep the document honest: a unit test compares its
//! paths with every route template the router declares, and `tests/openapi.rs` runs
//! schemathesis against a live coordinator (no server error, every answer as documented).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// An error: `{"ok": false, "error": "…", "field": "…"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Always false.
    ok: bool,
    /// What went wrong, naming the problem.
    error: String,
    /// The field at fault, when one is.
    field: Option<String>,
}

/// `GET /health` and the per-service health routes.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `healthy`.
    status: String,
    /// Which service answers.
    service: String,
    /// The coordinator's version (only on `/health`).
    version: Option<String>,
}

/// One metric in the original HTTP ingest shape (other keys are ignored, as the original
/// did).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IngestBody {
    /// Metric name, 1–255 characters.
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    /// A finite number.
    value: f64,
    /// String tags; `host` picks the host ("unknown" without it).
    tags: Option<BTreeMap<String, String>>,
    /// RFC 3339 or epoch milliseconds; default: now.
    #[schema(value_type = Option<Object>)]
    timestamp: Option<Value>,
}

/// A manual action: the original shape plus Vigil's fields.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ManualActionBody {
    /// What to act on (a unit, a container, the host).
    #[schema(min_length = 1)]
    target: String,
    /// What to do (`restart`, `start`, `stop`, `exec`, `notify`, …).
    #[schema(min_length = 1)]
    action: String,
    /// `pending` (default: sent to the agent) or another status (recorded only).
    status: Option<String>,
    /// Words for the audit trail.
    details: Option<String>,
    /// The host whose agent runs it.
    host: Option<String>,
    /// Executor parameters.
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// Record, do not run.
    dry_run: Option<bool>,
}

/// A policy in the original format (see README "Policies"); `PUT` takes any subset.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PolicyBody {
    /// Unique name.
    #[schema(min_length = 1)]
    name: String,
    /// Words.
    description: Option<String>,
    /// `info`, `warning` or `critical`.
    severity: Option<String>,
    /// A host, a glob (`web-*`) or `all`.
    target: Option<String>,
    /// Whether it is evaluated.
    enabled: Option<bool>,
    /// Whether its action runs by itself.
    auto_remediate: Option<bool>,
    /// The condition: an object (`{"type":"metric_exceeds",…}`) or a string (`cpu_percent > 80 for 30s`).
    #[schema(value_type = Object)]
    condition: Value,
    /// The action.
    action: Option<String>,
    /// Action parameters.
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
}

/// The policy sandbox's input.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EvaluateBody {
    /// Metric name → value.
    metrics: BTreeMap<String, f64>,
    /// The target to evaluate for.
    target: Option<String>,
    /// Policies to evaluate instead of the stored ones.
    #[schema(value_type = Option<Vec<Object>>)]
    policies: Option<Vec<Value>>,
}

/// An enrollment request: the agent's join token, host name and public key.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EnrollBody {
    /// The one-time join token.
    join_token: String,
    /// The host name the agent will report under.
    host: String,
    /// Its ed25519 public key, 64 hex characters.
    public_key: String,
}

/// A new join token.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct JoinTokenBody {
    /// A name for it.
    #[schema(min_length = 1)]
    name: String,
    /// Labels given to every agent that enrolls with it.
    labels: Option<BTreeMap<String, String>>,
    /// The only host that may use it.
    host: Option<String>,
    /// How many enrollments it allows (default 1).
    #[schema(value_type = Option<u64>)]
    uses: Option<u32>,
    /// How long it is valid, e.g. `24h` (default).
    ttl: Option<String>,
}

/// An action's status.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ActionStatus {
    /// Queued.
    Pending,
    /// Running.
    Running,
    /// Done.
    Completed,
    /// Failed (may be retried).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Verified resolved.
    Resolved,
    /// Verification found the problem still there.
    NotResolved,
    /// Out of attempts.
    DeadLetter,
}

/// A policy severity.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Severity {
    /// Informational.
    Info,
    /// Warning.
    Warning,
    /// Critical.
    Critical,
}

/// Any JSON object (answers the handlers build field by field).
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct Json(Value);

/// Adds the bearer-token scheme, and to every operation the answers every route may
/// give: 400, 401, 403, 422, 429, 500, 503, 507 (the error body).
struct CommonParts;

impl Modify for CommonParts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        let common = [
            ("400", "The request cannot be read (not JSON, bad query)"),
            ("401", "No token, or an unknown, malformed or revoked one"),
            ("403", "The token's role is too low"),
            ("404", "No such thing (host, action, policy, route)"),
            ("405", "Method not allowed"),
            ("409", "Conflicts with what exists"),
            ("411", "A Content-Length header is required"),
            ("413", "Body too large"),
            ("422", "A field is unacceptable (named in `field`)"),
            ("429", "Too many failed authentications from this address"),
            ("500", "An internal error"),
            ("503", "The store writer has stopped"),
            ("507", "The store is full"),
        ];
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                }
            }
        }
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vigil coordinator REST API",
        description = "Hosts, metric history, the policy and action audit trails, policies, \
                       bundles and drift, agent enrollment, and the live event stream. Every \
                       /api/v1 route needs `Authorization: Bearer <token>` (roles viewer, \
                       operator, admin; see README)."
    ),
    paths(
        doc::health, doc::metrics, doc::openapi, doc::ingest, doc::ingest_alias,
        doc::ingest_health, doc::hosts, doc::host, doc::history, doc::violations,
        doc::events, doc::actions_create, doc::actions_list, doc::actions_health,
        doc::actions_by_status, doc::action, doc::queue_stats, doc::ui_queue_stats,
        doc::pause, doc::resume, doc::policies_list, doc::policies_create,
        doc::policies_evaluate, doc::policies_reload, doc::runner_status,
        doc::policies_by_severity, doc::policy_get, doc::policy_put, doc::policy_delete,
        doc::policy_enable, doc::policy_disable, doc::bundles, doc::bundles_reload,
        doc::bundle, doc::drift, doc::enroll, doc::agents, doc::agent_revoke,
        doc::join_tokens, doc::join_tokens_create,
    ),
    components(schemas(
        ErrorBody, Health, IngestBody, ManualActionBody, PolicyBody, EvaluateBody,
        EnrollBody, JoinTokenBody, Json, ActionStatus, Severity,
        crate::http::handlers::actions::ActionList, crate::http::handlers::actions::ActionJson,
        crate::http::handlers::actions::TransitionJson, crate::http::handlers::actions::StatsJson,
        crate::http::handlers::actions::QueueJson, crate::http::handlers::actions::LastTask,
    )),
    modifiers(&CommonParts),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The document as JSON text.
pub fn document() -> String {
    let refined = serde_json::to_value(ApiDoc::openapi()).map(|mut doc| {
        refine(&mut doc);
        doc
    });
    refined
        .and_then(|doc| serde_json::to_string_pretty(&doc))
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot render the OpenAPI document: {e}\"}}"))
}

/// A point in time as the API reads one (`vigil_shared::validate::timestamp`): epoch
/// milliseconds from 2000-01-01 up to (not including) 2200-01-01, exactly, or RFC 3339
/// in UTC in those years (days up to the 28th, which every month has; the API also reads
/// any valid date and offsets, which a pattern cannot describe exactly).
const TIME_PATTERN: &str = "^(946684[89][0-9]{5}|94668[5-9][0-9]{6}|94669[0-9]{7}|946[7-9][0-9]{8}\
    |94[7-9][0-9]{9}|9[5-9][0-9]{10}|[1-6][0-9]{12}|7[01][0-9]{11}|72[0-4][0-9]{10}\
    |725[0-7][0-9]{9}|72580[0-9]{8}|725810[0-9]{7}|725811[0-7][0-9]{6}|7258118[0-2][0-9]{5}\
    |72581183[0-9]{5}\
    |(20|21)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{3})?Z)$";

/// Text without control characters (`validate::metric_name`).
const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// A host name (`validate::host_name`): no `/`, `+`, `#`, whitespace or control
/// characters.
const HOST_PATTERN: &str =
    "^[^/+#\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+$";

/// Text with at least one character that is not whitespace.
const NOT_BLANK_PATTERN: &str = "[^\\s]";

fn time_schema() -> Value {
    json!({"type": "string", "pattern": TIME_PATTERN})
}

fn host_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": vigil_shared::validate::MAX_HOST_LEN,
        "pattern": HOST_PATTERN,
    })
}

/// Tags as HTTP ingest (`host`: with a host tag, may be null) and join tokens read them
/// (`validate::tags`).
fn tags_schema(host: bool) -> Value {
    let mut schema = json!({
        "type": if host { json!(["object", "null"]) } else { json!("object") },
        "maxProperties": vigil_shared::validate::MAX_TAGS,
        "propertyNames": {"minLength": 1, "maxLength": vigil_shared::validate::MAX_TAG_LEN},
        "additionalProperties": {"type": "string", "maxLength": vigil_shared::validate::MAX_TAG_LEN},
    });
    if host {
        schema["properties"] = json!({"host": host_schema()});
    }
    schema
}

/// Narrows the generated schemas to exactly what the handlers accept where utoipa's
/// attributes cannot say it (patterns, unions, ranges), so that a request the document
/// allows is one the API takes, and one it forbids is refused.
fn refine(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let Some(params) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for param in params {
                let name = param["name"].as_str().unwrap_or_default().to_string();
                let schema = match (method.as_str(), path.as_str(), name.as_str()) {
                    (_, _, "from" | "to" | "since") => time_schema(),
                    ("get", "/api/v1/metrics/query", "name") => json!({
                        "type": "string",
                        "minLength": 1,
                        "maxLength": vigil_shared::validate::MAX_METRIC_NAME_LEN,
                        "pattern": NO_CONTROL_PATTERN,
                    }),
                    ("get", "/api/v1/violations", "kind") => json!({
                        "type": "string",
                        "enum": ["fired", "act", "verified", "deferred", "escalated", "resolved"],
                    }),
                    _ => continue,
                };
                param["schema"] = schema;
            }
        }
    }
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut set = |schema: &str, field: &str, value: Value| {
        if let Some(properties) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(Value::as_object_mut)
        {
            properties.insert(field.to_string(), value);
        }
    };
    set(
        "IngestBody",
        "name",
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": vigil_shared::validate::MAX_METRIC_NAME_LEN,
            "pattern": NO_CONTROL_PATTERN,
        }),
    );
    set(
        "IngestBody",
        "timestamp",
        json!({"anyOf": [
            {"type": "integer",
             "minimum": vigil_shared::validate::MIN_PLAUSIBLE_MS,
             "maximum": vigil_shared::validate::MAX_PLAUSIBLE_MS - 1},
            time_schema(),
            {"type": "null"},
        ], "description": "RFC 3339 or epoch milliseconds, 2000 to 2199; default: now"}),
    );
    set("IngestBody", "tags", tags_schema(true));
    set(
        "ManualActionBody",
        "action",
        json!({
            "type": "string",
            "enum": ["restart", "start", "stop", "reload", "scale", "exec", "webhook", "notify"],
        }),
    );
    set(
        "ManualActionBody",
        "status",
        json!({"anyOf": [{"$ref": "#/components/schemas/ActionStatus"}, {"type": "null"}]}),
    );
    set(
        "ManualActionBody",
        "host",
        json!({"anyOf": [host_schema(), {"type": "null"}]}),
    );
    set(
        "EvaluateBody",
        "target",
        json!({"anyOf": [{"type": "string", "pattern": NOT_BLANK_PATTERN}, {"type": "null"}]}),
    );
    set("EnrollBody", "host", host_schema());
    set(
        "EnrollBody",
        "public_key",
        json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
    );
    set(
        "JoinTokenBody",
        "name",
        json!({"type": "string", "pattern": NOT_BLANK_PATTERN}),
    );
    set("JoinTokenBody", "labels", tags_schema(false));
    set(
        "JoinTokenBody",
        "host",
        json!({"anyOf": [host_schema(), {"type": "null"}]}),
    );
    set(
        "JoinTokenBody",
        "uses",
        json!({"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX}),
    );
    set(
        "JoinTokenBody",
        "ttl",
        json!({
            "type": ["string", "null"],
            "pattern": "^[1-9][0-9]{0,2}(s|m|h|d)$",
            "description": "How long it is valid, e.g. `24h` (default); at most ten years",
        }),
    );
}

/// The methods the document lists for `path` (templates such as `/api/v1/hosts/{host}`
/// match any one segment), for the `Allow` header of a 405; `None` for an unknown path.
pub fn allowed_methods(path: &str) -> Option<String> {
    static TABLE: std::sync::OnceLock<Vec<(Vec<String>, Vec<&'static str>)>> =
        std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        ApiDoc::openapi()
            .paths
            .paths
            .iter()
            .map(|(template, item)| {
                let segments = template.split('/').map(str::to_string).collect();
                let methods = [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("DELETE", item.delete.is_some()),
                ]
                .into_iter()
                .filter_map(|(name, present)| present.then_some(name))
                .collect();
                (segments, methods)
            })
            .collect()
    });
    let wanted: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // The most literal template wins (`/policies/reload` over `/policies/{name}`), as in
    // the router, where literal routes come first.
    let mut best: Option<(usize, &Vec<&'static str>)> = None;
    for (segments, listed) in table {
        if segments.len() != wanted.len() {
            continue;
        }
        let mut literal = 0;
        let matches = segments.iter().zip(&wanted).all(|(template, actual)| {
            if template == actual {
                literal += 1;
                true
            } else {
                template.starts_with('{') && template.ends_with('}') && !actual.is_empty()
            }
        });
        if matches && best.is_none_or(|(most, _)| literal > most) {
            best = Some((literal, listed));
        }
    }
    let methods: Vec<&str> = best.map(|(_, listed)| listed.clone()).unwrap_or_default();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// One marker function per operation: the `#[utoipa::path]` attributes are the document.
/// (warp has no utoipa integration, so paths and parameters are written here, next to
/// each other; `tests` below checks them against the router's templates.)
#[allow(dead_code)]
mod doc {
    use super::*;

    #[utoipa::path(get, path = "/health", tag = "service", security(()),
        responses((status = 200, description = "Up", body = Health)))]
    pub fn health() {}

    #[utoipa::path(get, path = "/metrics", tag = "service", security((), ("bearer" = [])),
        responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
    pub fn metrics() {}

    #[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service", security(()),
        responses((status = 200, description = "This document", body = Json)))]
    pub fn openapi() {}

    #[utoipa::path(post, path = "/api/v1/ingest", tag = "ingest", request_body = IngestBody,
        responses((status = 201, description = "Stored", body = Json)))]
    pub fn ingest() {}

    #[utoipa::path(post, path = "/api/v1/ingest/agent/metrics", tag = "ingest", request_body = IngestBody,
        responses((status = 201, description = "Stored (alias of /api/v1/ingest)", body = Json)))]
    pub fn ingest_alias() {}

    #[utoipa::path(get, path = "/api/v1/ingest/health", tag = "ingest",
        responses((status = 200, description = "Up", body = Health)))]
    pub fn ingest_health() {}

    #[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts",
        responses((status = 200, description = "Every host", body = Json)))]
    pub fn hosts() {}

    #[utoipa::path(get, path = "/api/v1/hosts/{host}", tag = "hosts",
        params(("host" = String, Path, description = "Host name")),
        responses((status = 200, description = "One host and its latest values", body = Json)))]
    pub fn host() {}

    #[utoipa::path(get, path = "/api/v1/metrics/query", tag = "hosts",
        params(
            ("name" = String, Query, min_length = 1, description = "Metric name"),
            ("host" = Option<String>, Query, description = "Host"),
            ("from" = Option<String>, Query, description = "RFC 3339 or epoch ms (default: an hour ago)"),
            ("to" = Option<String>, Query, description = "RFC 3339 or epoch ms (default: now)"),
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1–10000 (default 1000)"),
        ),
        responses((status = 200, description = "History, time-ordered", body = Json)))]
    pub fn history() {}

    #[utoipa::path(get, path = "/api/v1/violations", tag = "audit",
        params(
            ("host" = Option<String>, Query, description = "Host"),
            ("policy" = Option<String>, Query, description = "Policy"),
            ("target" = Option<String>, Query, description = "Target"),
            ("kind" = Option<String>, Query, description = "fired, act, verified, deferred, escalated, resolved"),
            ("since" = Option<String>, Query, description = "RFC 3339 or epoch ms"),
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1–1000 (default 100)"),
        ),
        responses((status = 200, description = "Policy decisions, newest first", body = Json)))]
    pub fn violations() {}

    #[utoipa::path(get, path = "/api/v1/events", tag = "audit",
        params(
            ("host" = Option<String>, Query, description = "Hosts, comma-separated"),
            ("kind" = Option<String>, Query, description = "violation, action, host, bundle, drift (comma-separated)"),
            ("last_event_id" = Option<u64>, Query, description = "Resume after this event id"),
            ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
        ),
        responses((status = 200, description = "Server-Sent Events; `data:` is the JSON of schemas/json/", content_type = "text/event-stream", body = String)))]
    pub fn events() {}

    #[utoipa::path(post, path = "/api/v1/actions", tag = "actions", request_body = ManualActionBody,
        responses((status = 201, description = "Created (sent to the host's agent when pending)", body = Json)))]
    pub fn actions_create() {}

    #[utoipa::path(get, path = "/api/v1/actions", tag = "actions",
        params(
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500 (default 100)"),
            ("status" = Option<ActionStatus>, Query, description = "Status"),
            ("target" = Option<String>, Query, description = "Target"),
            ("host" = Option<String>, Query, description = "Host"),
            ("policy" = Option<String>, Query, description = "Policy"),
            ("since" = Option<String>, Query, description = "RFC 3339 or epoch ms"),
        ),
        responses((status = 200, description = "Actions, newest first", body = crate::http::handlers::actions::ActionList)))]
    pub fn actions_list() {}

    #[utoipa::path(get, path = "/api/v1/actions/health", tag = "actions",
        responses((status = 200, description = "Up", body = Health)))]
    pub fn actions_health() {}

    #[utoipa::path(get, path = "/api/v1/actions/status/{status}", tag = "actions",
        params(("status" = ActionStatus, Path, description = "Status"),
               ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500 (default 100)")),
        responses((status = 200, description = "Actions in that status", body = crate::http::handlers::actions::ActionList)))]
    pub fn actions_by_status() {}

    #[utoipa::path(get, path = "/api/v1/actions/{id}", tag = "actions",
        params(("id" = String, Path, description = "Action id")),
        responses((status = 200, description = "One action", body = crate::http::handlers::actions::ActionJson)))]
    pub fn action() {}

    #[utoipa::path(get, path = "/api/v1/queue/stats", tag = "actions",
        responses((status = 200, description = "Queue statistics", body = crate::http::handlers::actions::StatsJson)))]
    pub fn queue_stats() {}

    #[utoipa::path(get, path = "/api/v1/ui/queue/stats", tag = "actions",
        responses((status = 200, description = "Queue statistics (alias)", body = crate::http::handlers::actions::StatsJson)))]
    pub fn ui_queue_stats() {}

    #[utoipa::path(post, path = "/api/v1/hosts/{host}/remediation/pause", tag = "actions",
        params(("host" = String, Path, description = "Host")),
        responses((status = 200, description = "Kill switch sent", body = Json)))]
    pub fn pause() {}

    #[utoipa::path(post, path = "/api/v1/hosts/{host}/remediation/resume", tag = "actions",
        params(("host" = String, Path, description = "Host")),
        responses((status = 200, description = "Resume sent", body = Json)))]
    pub fn resume() {}

    #[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
        responses((status = 200, description = "Every policy", body = Json)))]
    pub fn policies_list() {}

    #[utoipa::path(post, path = "/api/v1/policies", tag = "policies", request_body = PolicyBody,
        responses((status = 201, description = "Created", body = Json),
                  (status = 409, description = "The name exists", body = ErrorBody)))]
    pub fn policies_create() {}

    #[utoipa::path(post, path = "/api/v1/policies/evaluate", tag = "policies", request_body = EvaluateBody,
        responses((status = 200, description = "What would fire, explained", body = Json)))]
    pub fn policies_evaluate() {}

    #[utoipa::path(post, path = "/api/v1/policies/reload", tag = "policies",
        responses((status = 200, description = "Re-read", body = Json)))]
    pub fn policies_reload() {}

    #[utoipa::path(get, path = "/api/v1/policies/runner/status", tag = "policies",
        responses((status = 200, description = "What each agent's evaluator reports", body = Json)))]
    pub fn runner_status() {}

    #[utoipa::path(get, path = "/api/v1/policies/severity/{severity}", tag = "policies",
        params(("severity" = Severity, Path, description = "info, warning or critical")),
        responses((status = 200, description = "Policies of that severity", body = Json)))]
    pub fn policies_by_severity() {}

    #[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies",
        params(("name" = String, Path, description = "Policy name")),
        responses((status = 200, description = "One policy", body = Json)))]
    pub fn policy_get() {}

    #[utoipa::path(put, path = "/api/v1/policies/{name}", tag = "policies",
        params(("name" = String, Path, description = "Policy name")), request_body = Json,
        responses((status = 200, description = "Updated (given keys replace stored ones)", body = Json),
                  (status = 409, description = "A file policy cannot be changed here", body = ErrorBody)))]
    pub fn policy_put() {}

    #[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies",
        params(("name" = String, Path, description = "Policy name")),
        responses((status = 200, description = "Deleted", body = Json),
                  (status = 409, description = "A file policy cannot be deleted here", body = ErrorBody)))]
    pub fn policy_delete() {}

    #[utoipa::path(put, path = "/api/v1/policies/{name}/enable", tag = "policies",
        params(("name" = String, Path, description = "Policy name")),
        responses((status = 200, description = "Enabled", body = Json),
                  (status = 409, description = "A file policy cannot be changed here", body = ErrorBody)))]
    pub fn policy_enable() {}

    #[utoipa::path(put, path = "/api/v1/policies/{name}/disable", tag = "policies",
        params(("name" = String, Path, description = "Policy name")),
        responses((status = 200, description = "Disabled", body = Json),
                  (status = 409, description = "A file policy cannot be changed here", body = ErrorBody)))]
    pub fn policy_disable() {}

    #[utoipa::path(get, path = "/api/v1/bundles", tag = "bundles",
        responses((status = 200, description = "Every group's bundle", body = Json)))]
    pub fn bundles() {}

    #[utoipa::path(post, path = "/api/v1/bundles/reload", tag = "bundles",
        responses((status = 200, description = "Re-read", body = Json)))]
    pub fn bundles_reload() {}

    #[utoipa::path(get, path = "/api/v1/bundles/{group}", tag = "bundles",
        params(("group" = String, Path, description = "Host group")),
        responses((status = 200, description = "One group's bundle", body = Json)))]
    pub fn bundle() {}

    #[utoipa::path(get, path = "/api/v1/drift", tag = "bundles",
        responses((status = 200, description = "Desired vs applied, per group and host", body = Json)))]
    pub fn drift() {}

    #[utoipa::path(post, path = "/api/v1/agents/enroll", tag = "agents", security(()), request_body = EnrollBody,
        responses((status = 201, description = "Enrolled: the agent's MQTT login and the coordinator's key", body = Json),
                  (status = 409, description = "The host is enrolled already", body = ErrorBody)))]
    pub fn enroll() {}

    #[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
        responses((status = 200, description = "Enrolled agents (no secrets)", body = Json)))]
    pub fn agents() {}

    #[utoipa::path(post, path = "/api/v1/agents/{host}/revoke", tag = "agents",
        params(("host" = String, Path, description = "Host")),
        responses((status = 200, description = "Revoked", body = Json)))]
    pub fn agent_revoke() {}

    #[utoipa::path(get, path = "/api/v1/join-tokens", tag = "agents",
        responses((status = 200, description = "Join tokens (hashes only)", body = Json)))]
    pub fn join_tokens() {}

    #[utoipa::path(post, path = "/api/v1/join-tokens", tag = "agents", request_body = JoinTokenBody,
        responses((status = 201, description = "Created; `token` is shown once", body = Json)))]
    pub fn join_tokens_create() {}
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `measured("TEMPLATE", …)` in the router's source that serves data (`/api/…`,
    /// `/health`, `/metrics`; the status page's HTML and assets are not API).
    fn router_templates() -> BTreeSet<String> {
        let sources = [
            include_str!("mod.rs"),
            include_str!("handlers/actions.rs"),
            include_str!("handlers/agents.rs"),
            include_str!("handlers/bundles.rs"),
            include_str!("handlers/policies.rs"),
        ];
        let mut templates = BTreeSet::new();
        for source in sources {
            let mut rest = source;
            while let Some(at) = rest.find("measured(") {
                rest = &rest[at + "measured(".len()..];
                let trimmed = rest.trim_start();
                if let Some(quoted) = trimmed.strip_prefix('"') {
                    if let Some(end) = quoted.find('"') {
                        let template = &quoted[..end];
                        if template.starts_with("/api/")
                            || template == "/health"
                            || template == "/metrics"
                        {
                            templates.insert(template.to_string());
                        }
                    }
                }
            }
        }
        templates
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = ApiDoc::openapi();
        let documented: BTreeSet<String> = doc.paths.paths.keys().cloned().collect();
        let routes = router_templates();
        assert!(routes.len() > 30, "found only {routes:?}");
        let undocumented: Vec<_> = routes.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&routes).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the document: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "documented paths with no route: {unknown:?}"
        );
    }

    #[test]
    fn allowed_methods_come_from_the_document() {
        assert_eq!(allowed_methods("/api/v1/hosts").as_deref(), Some("GET"));
        assert_eq!(
            allowed_methods("/api/v1/policies/high-cpu").as_deref(),
            Some("GET, PUT, DELETE")
        );
        assert_eq!(
            allowed_methods("/api/v1/actions").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            allowed_methods("/api/v1/policies/reload").as_deref(),
            Some("POST")
        );
        assert_eq!(allowed_methods("/api/v1/nothing/here"), None);
    }

    #[test]
    fn the_document_renders_with_security_and_common_errors() {
        let json: Value = serde_json::from_str(&document()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3."));
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
        let hosts = &json["paths"]["/api/v1/hosts"]["get"]["responses"];
        assert!(hosts["401"].is_object() && hosts["200"].is_object());
    }
}
