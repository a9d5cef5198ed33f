//! The policy routes, backed by the [`PolicyRegistry`]:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/policies` | `{"enabled_count":M,"ok":true,"policies":{name: policy},"total":N}` |
//! | `POST /api/v1/policies` | 201 `{"message":…,"ok":true,"policy":…}`; 409 if the name exists |
//! | `GET /api/v1/policies/{name}` | `{"ok":true,"policy":…}`; 404 if unknown |
//! | `PUT /api/v1/policies/{name}` | partial update (the body's keys over the stored spec), answered as `POST` |
//! | `DELETE /api/v1/policies/{name}` | `{"message":"Policy 'x' deleted","ok":true}` |
//! | `PUT /api/v1/policies/{name}/enable`, `…/disable` | `{"message":…,"ok":true,"policy":…}` |
//! | `GET /api/v1/policies/severity/{severity}` | as the list, filtered, plus `"severity"` (before `"total"`); 422 for an unknown severity |
//! | `POST /api/v1/policies/evaluate` | the sandbox, see [`sandbox`] |
//! | `POST /api/v1/policies/backtest` | stored history replayed through the engine, see [`backtest`] |
//! | `POST /api/v1/policies/reload` | `{"message":"Policies reloaded successfully (N policies)","ok":true}` |
//! | `GET /api/v1/policies/runner/status` | the agents' policy runners, see [`runner`] |
//!
//! A policy is shown as its spec (the JSON a client would POST) plus `"source"`
//! (`"file"` or `"api"`) and, for file policies, `"file"`. Policies defined in a file
//! cannot be changed here (409 naming the file). Errors are `{"ok":false,"error":…}` with
//! `"field"` when one field is at fault (422), 400 when the body is not JSON at all.

pub mod backtest;
pub mod runner;
pub mod sandbox;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use vigil_shared::policy::{LoadError, Severity};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::http::error::{respond, ApiError};
use crate::http::{task_failed, Api};
use crate::policies::{json as spec_json, PolicyRegistry, PolicySource, Registered, RegistryError};

/// One policy as the API shows it: its spec, plus `source` (and `file` for file policies).
pub fn policy_json(registered: &Registered) -> Value {
    let mut value = match serde_json::to_value(&registered.spec) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) | Err(_) => json!({
            "name": registered.spec.name,
            "error": "this policy's spec cannot be shown as JSON",
        }),
    };
    value["source"] = json!(registered.source.as_str());
    if let PolicySource::File { file } = &registered.source {
        value["file"] = json!(file);
    }
    value
}

/// A set of policies in the original list shape. Keys on the wire are alphabetical (as
/// the `json!` bodies these structs replaced were), and so are the fields of the response
/// structs of this module.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyList<'a> {
    /// How many of them are enabled.
    enabled_count: usize,
    /// Always true.
    ok: bool,
    /// The policies by name.
    #[schema(value_type = BTreeMap<String, Object>)]
    policies: BTreeMap<&'a str, Value>,
    /// The severity asked for (only on `/api/v1/policies/severity/{severity}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<&'static str>,
    /// How many policies.
    total: usize,
}

fn listing(policies: &[Arc<Registered>], severity: Option<&'static str>) -> warp::reply::Json {
    warp::reply::json(&PolicyList {
        enabled_count: policies.iter().filter(|r| r.policy.enabled).count(),
        ok: true,
        policies: policies
            .iter()
            .map(|r| (r.spec.name.as_str(), policy_json(r)))
            .collect(),
        severity,
        total: policies.len(),
    })
}

/// One policy: `GET /api/v1/policies/{name}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyOne {
    /// Always true.
    ok: bool,
    /// The policy: its spec plus `source` (and `file`).
    #[schema(value_type = Object)]
    policy: Value,
}

/// A policy created or changed, and what happened to it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyChanged {
    /// What happened, in words.
    message: String,
    /// Always true.
    ok: bool,
    /// The policy as it is now: its spec plus `source` (and `file`).
    #[schema(value_type = Object)]
    policy: Value,
}

/// What a delete or a reload did, in words.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyMessage {
    /// What happened.
    message: String,
    /// Always true.
    ok: bool,
}

fn changed(message: String, registered: &Registered) -> warp::reply::Json {
    warp::reply::json(&PolicyChanged {
        message,
        ok: true,
        policy: policy_json(registered),
    })
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound { .. } => ApiError::not_found(message),
            RegistryError::Exists { .. }
            | RegistryError::FileOwned { .. }
            | RegistryError::NoDirectory => ApiError::new(StatusCode::CONFLICT, message),
            RegistryError::Invalid(error) if !error.field.is_empty() => {
                ApiError::invalid_field(error.field, message)
            }
            RegistryError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            RegistryError::Load(LoadError::Policy { error, .. }) => {
                ApiError::invalid_field(error.field, message)
            }
            RegistryError::Load(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            RegistryError::Store { source, .. } | RegistryError::StoreRead(source) => ApiError {
                message,
                ..ApiError::from(&source)
            },
        }
    }
}

/// Decodes `%XX` escapes in a path segment (warp hands segments over raw).
pub fn decode_segment(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request body that must be a JSON object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, got {}",
            spec_json::kind(&other)
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Runs a registry change off the async threads (it writes LMDB).
async fn change<T: Send + 'static>(
    api: &Api,
    f: impl FnOnce(&PolicyRegistry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let registry = api.policies.clone();
    tokio::task::spawn_blocking(move || f(&registry))
        .await
        .map_err(task_failed)?
        .map_err(ApiError::from)
}

/// `GET /api/v1/policies`.
pub async fn list(api: Arc<Api>) -> Response {
    listing(&api.policies.list(), None).into_response()
}

/// `POST /api/v1/policies`: 201 with the policy created.
pub async fn create(api: Arc<Api>, body: Bytes) -> Response {
    let result = async {
        let object = Value::Object(json_object(&body)?);
        let spec = spec_json::spec_from_value(&object, "").map_err(RegistryError::Invalid)?;
        let registered = change(&api, move |r| r.create(spec)).await?;
        let name = &registered.spec.name;
        Ok(warp::reply::with_status(
            changed(format!("Policy '{name}' created"), &registered),
            StatusCode::CREATED,
        ))
    }
    .await;
    respond(result)
}

/// `GET /api/v1/policies/{name}`.
pub async fn get_one(name: String, api: Arc<Api>) -> Response {
    let name = decode_segment(&name);
    let result = api
        .policies
        .get(&name)
        .map(|r| {
            warp::reply::json(&PolicyOne {
                ok: true,
                policy: policy_json(&r),
            })
        })
        .ok_or_else(|| ApiError::from(RegistryError::NotFound { name }));
    respond(result)
}

/// `PUT /api/v1/policies/{name}`: a partial update.
pub async fn update(name: String, api: Arc<Api>, body: Bytes) -> Response {
    let name = decode_segment(&name);
    let result = async {
        let patch = json_object(&body)?;
        let registered = change(&api, {
            let name = name.clone();
            move |r| r.update(&name, &patch)
        })
        .await?;
        Ok(changed(format!("Policy '{name}' updated"), &registered))
    }
    .await;
    respond(result)
}

/// `DELETE /api/v1/policies/{name}`.
pub async fn delete(name: String, api: Arc<Api>) -> Response {
    let name = decode_segment(&name);
    let result = async {
        change(&api, {
            let name = name.clone();
            move |r| r.delete(&name)
        })
        .await?;
        Ok(warp::reply::json(&PolicyMessage {
            message: format!("Policy '{name}' deleted"),
            ok: true,
        }))
    }
    .await;
    respond(result)
}

/// `PUT /api/v1/policies/{name}/enable` and `…/disable`.
pub async fn set_enabled(name: String, api: Arc<Api>, enabled: bool) -> Response {
    let name = decode_segment(&name);
    let result = async {
        let registered = change(&api, {
            let name = name.clone();
            move |r| r.set_enabled(&name, enabled)
        })
        .await?;
        let done = if enabled { "enabled" } else { "disabled" };
        Ok(changed(format!("Policy '{name}' {done}"), &registered))
    }
    .await;
    respond(result)
}

/// `GET /api/v1/policies/severity/{severity}`.
pub async fn by_severity(severity: String, api: Arc<Api>) -> Response {
    let severity = decode_segment(&severity);
    let result = match Severity::parse(&severity) {
        Some(level) => Ok(listing(
            &api.policies.with_severity(level),
            Some(level.as_str()),
        )),
        None => Err(ApiError::invalid_field(
            "severity",
            format!("`{severity}` is not a severity; use info, warning or critical"),
        )),
    };
    respond(result)
}

/// `POST /api/v1/policies/reload`: re-reads the policy directory. A failure is a 422
/// `{"ok":false,"error":…,"file":…,"policy":…,"field":…}` (`policy` and `field` where one
/// policy is at fault); the previous policies stay in force.
pub async fn reload(api: Arc<Api>) -> Response {
    // The one reload route re-reads the bundle directory too, when there is one.
    let bundles = if api.bundles.dir().is_some() {
        Some(match api.bundles.reload().await {
            Ok(report) => report.errors,
            Err(e) => vec![e.to_string()],
        })
    } else {
        None
    };
    let registry = api.policies.clone();
    let policies = match tokio::task::spawn_blocking(move || registry.reload()).await {
        Ok(result) => result,
        Err(e) => return task_failed(e).into_response(),
    };
    match (policies, bundles) {
        (Err(RegistryError::Load(error)), _) => load_error_response(&error),
        (_, Some(errors)) if !errors.is_empty() => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "bundles rejected (the last good versions stay published): {}",
                errors.join("; ")
            ),
        )
        .into_response(),
        (Ok(count), bundles) => warp::reply::json(&PolicyMessage {
            message: format!(
                "Policies reloaded successfully ({count} policies){}",
                if bundles.is_some() {
                    "; bundles re-read"
                } else {
                    ""
                }
            ),
            ok: true,
        })
        .into_response(),
        (Err(RegistryError::NoDirectory), Some(_)) => warp::reply::json(&PolicyMessage {
            message: "Bundles re-read (no --policies directory is configured)".into(),
            ok: true,
        })
        .into_response(),
        (Err(other), _) => ApiError::from(other).into_response(),
    }
}

/// A rejected policy directory, as JSON.
fn load_error_response(error: &LoadError) -> Response {
    let mut body = json!({
        "ok": false,
        "error": RegistryError::Load(error.clone()).to_string(),
        "file": error.file(),
    });
    match error {
        LoadError::Policy { error, .. } => {
            body["policy"] = json!(error.policy);
            body["field"] = json!(error.field);
        }
        LoadError::Duplicate { name, .. } => {
            body["policy"] = json!(name);
            body["field"] = json!("name");
        }
        LoadError::Read { .. } | LoadError::Syntax { .. } => {}
    }
    warp::reply::with_status(warp::reply::json(&body), StatusCode::UNPROCESSABLE_ENTITY)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(decode_segment("db%3Aprimary"), "db:primary");
        assert_eq!(decode_segment("plain-name"), "plain-name");
        assert_eq!(decode_segment("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert_eq!(
            json_object(b"not json").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            json_object(b"[1]").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(json_object(br#"{"a":1}"#).is_ok());
    }
}
