//! The OpenAPI 3.1 document of the REST API, served at `GET /api/v1/openapi.json`
//! (utoipa). Its paths come from the route table ([`super::routes::ROUTES`]): each entry's
//! operation, under the entry's method and path, with the security its access asks for.
//! Response types that handlers serialize from Rust structs (actions, queue stats, hosts,
//! history, policy events, health, ingest, agents and join tokens, bundles, drift,
//! policies, the policy runners, the sandbox) derive their schema from those structs;
//! bodies the handlers read field by field (to name the bad field in errors) are described
//! by the schema types below, and the few answers still built with `json!` by the `Json`
//! placeholder.
//! The route table's tests check the document against the router, and `tests/openapi.rs`
//! runs schemathesis against a live coordinator (no server error, every answer as
//! documented).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};

use super::error::ApiError;
use super::routes::{Access, ROUTES};

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
    /// A policy in force whose disruption budget the action runs under (it waits for a
    /// lease like the policy's own actions).
    policy: Option<String>,
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

/// Alertmanager's webhook payload (version 4); its schema is written out in full by
/// `alertmanager_schema`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AlertmanagerBody {
    /// `"4"`.
    version: String,
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

/// A policy backtest: every key optional.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BacktestBody {
    /// The policies to replay: a list of policies (as `POST /api/v1/policies` takes
    /// them) or the text of a policy file; default: the registry's.
    #[schema(value_type = Option<Object>)]
    policies: Option<Value>,
    /// `all` (default), a host name, a glob such as `web-*`, or labels `role=web,env=prod`.
    hosts: Option<String>,
    /// How far back from now, e.g. `7d` (default), at most 31 days.
    since: Option<String>,
    /// How many events to list (default 100).
    limit: Option<u32>,
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
    /// Waiting for a lease of its policy's disruption budget.
    Deferred,
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

/// The document's parts that are not paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vigil coordinator REST API",
        description = "Hosts, metric history, the policy and action audit trails, policies, \
                       bundles and drift, agent enrollment, and the live event stream. Every \
                       /api/v1 route needs `Authorization: Bearer <token>` (roles viewer, \
                       operator, admin; see README)."
    ),
    components(schemas(
        ErrorBody, IngestBody, ManualActionBody, PolicyBody, EvaluateBody, BacktestBody,
        AlertmanagerBody,
        EnrollBody, JoinTokenBody, Json, ActionStatus, Severity,
        crate::http::handlers::actions::ActionList, crate::http::handlers::actions::ActionJson,
        crate::http::handlers::actions::TransitionJson, crate::http::handlers::actions::StatsJson,
        crate::http::handlers::actions::QueueJson, crate::http::handlers::actions::LastTask,
        crate::http::handlers::actions::ActionCreated,
        crate::http::handlers::actions::RemediationSent,
        crate::http::handlers::alertmanager::AlertmanagerReceived,
        crate::http::handlers::alertmanager::AlertOutcome,
        crate::http::handlers::budgets::BudgetList, crate::http::handlers::budgets::BudgetJson,
        crate::http::handlers::budgets::LeaseJson,
        crate::http::handlers::health::HealthJson, crate::http::handlers::ingest::Stored,
        crate::http::handlers::violations::ViolationList,
        crate::events::json::PolicyEventJson,
        crate::http::handlers::hosts::HostList, crate::http::handlers::hosts::HostJson,
        crate::http::handlers::hosts::BundleJson, crate::http::handlers::hosts::LatestJson,
        crate::http::handlers::hosts::RunningJson, crate::http::handlers::hosts::RunningPolicyJson,
        crate::http::handlers::query::History, crate::http::handlers::query::PointJson,
        crate::http::handlers::agents::AgentList, crate::http::handlers::agents::AgentJson,
        crate::http::handlers::agents::Revoked, crate::http::handlers::agents::JoinTokenList,
        crate::http::handlers::agents::JoinTokenJson,
        vigil_shared::enrollment::Enrollment,
        crate::http::handlers::bundles::BundleList, crate::http::handlers::bundles::BundleSummary,
        crate::http::handlers::bundles::BundleDetail, crate::http::handlers::bundles::BundleFileJson,
        crate::http::handlers::bundles::ReloadJson, crate::http::handlers::bundles::PublishedJson,
        crate::http::handlers::bundles::DriftJson, crate::bundles::drift::HostDrift,
        crate::bundles::gate::GateResult,
        crate::bundles::drift::GroupDrift, crate::bundles::drift::FailingCheck,
        crate::http::handlers::policies::PolicyList, crate::http::handlers::policies::PolicyOne,
        crate::http::handlers::policies::PolicyChanged,
        crate::http::handlers::policies::PolicyMessage,
        crate::http::handlers::policies::runner::RunnerStatus,
        crate::http::handlers::policies::runner::RunnerJson,
        crate::http::handlers::policies::runner::AgentRunnerJson,
        crate::http::handlers::policies::sandbox::SandboxAnswer,
        crate::http::handlers::policies::sandbox::SandboxPassed,
        crate::http::handlers::policies::sandbox::SandboxViolation,
        crate::http::handlers::policies::sandbox::SandboxAction,
        crate::policies::backtest::BacktestReport, crate::policies::backtest::PolicyCounts,
        crate::policies::backtest::BacktestEvent,
    )),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The security an operation with `access` lists (`None`: the document's, a bearer token).
fn security(access: Access) -> Option<Vec<SecurityRequirement>> {
    let open = SecurityRequirement::default();
    match access {
        Access::Open | Access::JoinToken => Some(vec![open]),
        Access::Scrape => Some(vec![
            open,
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]),
        Access::Needs(_) => None,
    }
}

fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The document: every documented route of the table, then the parts every operation
/// shares (`CommonParts`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for route in ROUTES {
        let Some(operation) = route.operation else {
            continue;
        };
        let mut operation = operation();
        operation.security = security(route.access);
        doc.paths
            .add_path_operation(route.path, vec![http_method(&route.method)], operation);
    }
    CommonParts.modify(&mut doc);
    doc
}

/// `GET /api/v1/openapi.json`.
pub fn response() -> Response {
    warp::http::Response::builder()
        .header("content-type", "application/json")
        .body(document().into())
        .unwrap_or_else(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        })
}

/// The document as JSON text.
pub fn document() -> String {
    let refined = serde_json::to_value(openapi()).map(|mut doc| {
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

/// A time as Alertmanager writes one (RFC 3339, up to nanoseconds, `Z` or an offset) that
/// `alerts::webhook` takes: in 2001–2199 (so that no offset takes it out of the range
/// `validate::timestamp` accepts), days up to the 28th.
const GO_TIME_PATTERN: &str =
    "(200[1-9]|20[1-9][0-9]|21[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])\
    T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";

/// Alertmanager's webhook payload, exactly as `alerts::webhook::parse` takes it: the
/// fields it reads are checked, the others (`groupLabels`, `externalURL`, …) pass.
fn alertmanager_schema() -> Value {
    use crate::alerts::webhook::{
        MAX_ALERTS, MAX_ANNOTATION_VALUE, MAX_FINGERPRINT, MAX_LABELS, MAX_LABEL_VALUE,
    };
    let names = json!({"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$", "maxLength": 128});
    let status = json!({"type": "string", "enum": ["firing", "resolved"]});
    let time = format!("^{GO_TIME_PATTERN}$");
    json!({
        "type": "object",
        "description": "Alertmanager's webhook payload, version 4 (what its webhook receiver sends)",
        "required": ["version", "status", "alerts"],
        "properties": {
            "version": {"type": "string", "enum": ["4"]},
            "receiver": {"type": ["string", "null"], "maxLength": MAX_LABEL_VALUE},
            "status": status,
            "alerts": {
                "type": "array",
                "maxItems": MAX_ALERTS,
                "items": {
                    "type": "object",
                    "required": ["status", "labels", "startsAt", "fingerprint"],
                    "properties": {
                        "status": status,
                        "labels": {
                            "type": "object",
                            "required": ["alertname"],
                            "maxProperties": MAX_LABELS,
                            "propertyNames": names,
                            "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
                        },
                        "annotations": {
                            "type": ["object", "null"],
                            "maxProperties": MAX_LABELS,
                            "propertyNames": names,
                            "additionalProperties": {"type": "string", "maxLength": MAX_ANNOTATION_VALUE},
                        },
                        "startsAt": {"type": "string", "pattern": time},
                        "endsAt": {
                            "type": ["string", "null"],
                            "pattern": format!("^(0001-01-01T00:00:00Z|{GO_TIME_PATTERN})$"),
                        },
                        "fingerprint": {
                            "type": "string",
                            "pattern": format!("^[0-9a-fA-F]{{1,{MAX_FINGERPRINT}}}$"),
                        },
                    },
                },
            },
        },
    })
}

/// Narrows the generated schemas to exactly what the handlers accept where utoipa's
/// attributes cannot say it (patterns, unions, ranges), so that a request the document
/// allows is one the API takes, and one it forbids is refused.
fn refine(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let Some(params) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for param in params {
                let name = param["name"].as_str().unwrap_or_default().to_string();
                let schema = match (id.as_str(), name.as_str()) {
                    (_, "from" | "to" | "since") => time_schema(),
                    ("history", "name") => json!({
                        "type": "string",
                        "minLength": 1,
                        "maxLength": vigil_shared::validate::MAX_METRIC_NAME_LEN,
                        "pattern": NO_CONTROL_PATTERN,
                    }),
                    ("violations", "kind") => json!({
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
            "enum": [
                "restart", "start", "stop", "reload", "scale", "exec", "webhook", "notify",
                "drain-pod", "rebalance", "snapshot"
            ],
            "description": "drain-pod, rebalance and snapshot run only on agents that map \
                            them ([actions] in agent.toml); elsewhere they are recorded as \
                            not runnable",
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
    set(
        "BacktestBody",
        "policies",
        json!({"anyOf": [
            {"type": "array", "items": {"type": "object"},
             "maxItems": crate::policies::backtest::MAX_POLICIES},
            {"type": "string"},
            {"type": "null"},
        ], "description": "A list of policies (as POST /api/v1/policies takes them) or the \
                           text of a policy file; default: the registry's"}),
    );
    set(
        "BacktestBody",
        "hosts",
        json!({"type": ["string", "null"], "maxLength": 1024,
               "description": "all (default), a host name, a glob such as web-*, or labels \
                               role=web,env=prod"}),
    );
    set(
        "BacktestBody",
        "since",
        json!({"type": ["string", "null"],
               "description": "How far back from now, e.g. 7d (default), at most 31 days"}),
    );
    set(
        "BacktestBody",
        "limit",
        json!({"type": ["integer", "null"], "minimum": 0,
               "maximum": crate::policies::backtest::MAX_EVENTS,
               "description": "How many events to list (default 100)"}),
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
    schemas.insert("AlertmanagerBody".into(), alertmanager_schema());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::handlers::{actions, query, violations};

    #[test]
    fn the_document_renders_with_security_and_common_errors() {
        let json: Value = serde_json::from_str(&document()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3."));
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
        let hosts = &json["paths"]["/api/v1/hosts"]["get"]["responses"];
        assert!(hosts["401"].is_object() && hosts["200"].is_object());
        // Open routes say so; `/metrics` may be open or need a token.
        assert_eq!(json["paths"]["/health"]["get"]["security"], json!([{}]));
        assert_eq!(
            json["paths"]["/metrics"]["get"]["security"],
            json!([{}, {"bearer": []}])
        );
        assert!(json["paths"]["/api/v1/hosts"]["get"]["security"].is_null());
    }

    /// The `limit` of each list route, as documented: its maximum, and the default its
    /// description names, are the handler's.
    #[test]
    fn list_limits_are_documented_as_the_handlers_apply_them() {
        let json: Value = serde_json::from_str(&document()).unwrap();
        let routes = [
            (
                "/api/v1/actions",
                actions::DEFAULT_LIMIT,
                actions::MAX_LIMIT,
            ),
            (
                "/api/v1/actions/status/{status}",
                actions::DEFAULT_LIMIT,
                actions::MAX_LIMIT,
            ),
            (
                "/api/v1/violations",
                violations::DEFAULT_LIMIT,
                violations::MAX_LIMIT,
            ),
            (
                "/api/v1/metrics/query",
                query::DEFAULT_LIMIT,
                query::MAX_LIMIT,
            ),
        ];
        for (path, default, max) in routes {
            let params = json["paths"][path]["get"]["parameters"].as_array().unwrap();
            let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
            assert_eq!(limit["schema"]["maximum"], json!(max), "{path}");
            let description = limit["description"].as_str().unwrap();
            assert!(
                description.contains(&format!("(default {default})")),
                "{path}: {description}"
            );
        }
    }

    /// A response type named in the route table but missing from `components(schemas(…))`
    /// leaves a `$ref` to nothing.
    #[test]
    fn every_schema_reference_resolves() {
        let json: Value = serde_json::from_str(&document()).unwrap();
        let schemas = json["components"]["schemas"].as_object().unwrap();
        let text = json.to_string();
        let prefix = "#/components/schemas/";
        for (at, _) in text.match_indices(prefix) {
            let name: String = text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(schemas.contains_key(&name), "no schema `{name}`");
        }
    }
}
