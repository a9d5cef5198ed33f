//! Agent identity routes ([`crate::security::agents`]):
//!
//! | route | who | answer |
//! | --- | --- | --- |
//! | `POST /api/v1/agents/enroll` `{"join_token","host","public_key"}` | the join token | 201 `{"host","mqtt_username","mqtt_password","labels":{…},"coordinator_key"}`; 401 bad token, 403 token bound to another host, 409 host enrolled, 422 bad field |
//! | `GET /api/v1/agents` | admin | `{"agents":[{"enrolled_at","host","join_token","labels","public_key","revoked_at"}]}` |
//! | `POST /api/v1/agents/{host}/revoke` | admin | `{"host","ok":true,"revoked_at"}`; 404 if never enrolled |
//! | `POST /api/v1/join-tokens` `{"name","labels"?,"host"?,"uses"?,"ttl"?}` | admin | 201 a join token as listed, with `"token"` (shown only here); 422 naming `ttl` for a lifetime over ten years |
//! | `GET /api/v1/join-tokens` | admin | `{"join_tokens":[{"created_at","expires_at","host","id","labels","name","revoked_at","uses_left"}]}` |
//!
//! The answers other than enrollment's are structs with their fields in alphabetical order,
//! the order their keys have always had.
//!
//! A failed enrollment counts as a failed authentication for the client's address (the
//! same rate limit as bad REST tokens), and in `vigil_agent_enrollments_total{result}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_shared::time::{now_ms, to_rfc3339};
use vigil_shared::validate;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::http::error::{counted, respond, ApiError};
use crate::http::{task_failed, Api};
use crate::security::agents::{
    self, AgentRecord, EnrollError, EnrollRequest, JoinTokenRecord, JoinTokenSpec,
};

/// How long a join token is valid unless the request says otherwise.
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);

fn enroll_error(e: EnrollError) -> ApiError {
    let status = match &e {
        EnrollError::BadToken => StatusCode::UNAUTHORIZED,
        EnrollError::WrongHost(_) => StatusCode::FORBIDDEN,
        EnrollError::AlreadyEnrolled(_) => StatusCode::CONFLICT,
        EnrollError::UnknownHost(_) => StatusCode::NOT_FOUND,
        EnrollError::Invalid { field, reason } => {
            return ApiError::invalid_field(*field, reason.clone())
        }
        EnrollError::Store(e) => return ApiError::from(e),
    };
    ApiError::new(status, e.to_string())
}

/// `POST /api/v1/agents/enroll`.
pub(crate) async fn enroll(
    remote: Option<SocketAddr>,
    api: Arc<Api>,
    body: bytes::Bytes,
) -> Response {
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            api.telemetry
                .enrollments
                .with_label_values(&["bad_request"])
                .inc();
            return ApiError::bad_request(format!("enrollment body: {e}")).into_response();
        }
    };
    if let Some(ip) = remote.map(|a| a.ip()) {
        if api.auth.is_rate_limited(ip) {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address; wait a minute",
            )
            .into_response();
        }
    }
    let store = api.store.clone();
    let key = api.coordinator_key.clone();
    let result = tokio::task::spawn_blocking(move || {
        agents::enroll(&store, &request, &key, now_ms()).map(|e| (request.host, e))
    })
    .await;
    let result = match result {
        Ok(result) => result,
        Err(e) => return task_failed(e).into_response(),
    };
    match result {
        Ok((host, enrollment)) => {
            api.telemetry.enrollments.with_label_values(&["ok"]).inc();
            tracing::info!(%host, labels = ?enrollment.labels, "agent enrolled");
            warp::reply::with_status(warp::reply::json(&enrollment), StatusCode::CREATED)
                .into_response()
        }
        Err(e) => {
            let reason = match &e {
                EnrollError::BadToken => "bad_token",
                EnrollError::WrongHost(_) => "wrong_host",
                EnrollError::AlreadyEnrolled(_) => "already_enrolled",
                EnrollError::Invalid { .. } => "invalid",
                _ => "error",
            };
            api.telemetry.enrollments.with_label_values(&[reason]).inc();
            if matches!(e, EnrollError::BadToken | EnrollError::WrongHost(_)) {
                if let Some(ip) = remote.map(|a| a.ip()) {
                    api.auth.note_failure(ip);
                }
            }
            tracing::warn!(reason, "enrollment refused: {e}");
            enroll_error(e).into_response()
        }
    }
}

/// An enrolled agent (no secrets).
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentJson<'a> {
    /// When it enrolled, RFC 3339.
    pub enrolled_at: String,
    /// The host it enrolled as.
    pub host: &'a str,
    /// The id of the join token it used.
    pub join_token: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its ed25519 public key, hex.
    pub public_key: &'a str,
    /// When it was revoked, RFC 3339.
    pub revoked_at: Option<String>,
}

/// `GET /api/v1/agents`: `{"agents":[…]}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentList<'a> {
    /// Every enrolled agent.
    pub agents: Vec<AgentJson<'a>>,
}

/// `POST /api/v1/agents/{host}/revoke`: `{"host","ok","revoked_at"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    /// The host.
    pub host: String,
    /// Always true.
    pub ok: bool,
    /// When, RFC 3339.
    pub revoked_at: Option<String>,
}

fn agent_json(r: &AgentRecord) -> AgentJson<'_> {
    AgentJson {
        enrolled_at: to_rfc3339(r.enrolled_ms),
        host: &r.host,
        join_token: &r.join_token,
        labels: &r.labels,
        public_key: &r.public_key,
        revoked_at: r.revoked_ms.map(to_rfc3339),
    }
}

/// `GET /api/v1/agents`.
pub(crate) async fn list(api: Arc<Api>) -> Response {
    respond(
        api.store
            .agents()
            .map(|agents| {
                warp::reply::json(&AgentList {
                    agents: agents.iter().map(agent_json).collect(),
                })
            })
            .map_err(ApiError::from),
    )
}

/// `POST /api/v1/agents/{host}/revoke`.
pub(crate) async fn revoke(host: String, api: Arc<Api>) -> Response {
    let store = api.store.clone();
    let result = tokio::task::spawn_blocking(move || agents::revoke(&store, &host, now_ms()))
        .await
        .map_err(task_failed)
        .and_then(|r| r.map_err(enroll_error));
    respond(result.map(|record| {
        tracing::warn!(host = %record.host, "agent identity revoked");
        warp::reply::json(&Revoked {
            revoked_at: record.revoked_ms.map(to_rfc3339),
            host: record.host,
            ok: true,
        })
    }))
}

/// The body of `POST /api/v1/join-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenBody {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    host: Option<String>,
    /// A whole number (JSON may write it `3.0`), checked by [`whole_number`].
    uses: Option<serde_json::Number>,
    /// Like `24h`, `30m`.
    ttl: Option<String>,
}

/// A join token (its hash is never shown; the token itself only when created).
#[derive(Serialize, utoipa::ToSchema)]
pub struct JoinTokenJson<'a> {
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When it expires, RFC 3339.
    pub expires_at: String,
    /// The only host that may use it.
    pub host: Option<&'a str>,
    /// Its id.
    pub id: &'a str,
    /// Labels given to every agent that enrolls with it.
    pub labels: &'a BTreeMap<String, String>,
    /// Its name.
    pub name: &'a str,
    /// When it was revoked, RFC 3339.
    pub revoked_at: Option<String>,
    /// The token (only in the answer that creates it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Enrollments it still allows.
    pub uses_left: u32,
}

/// `GET /api/v1/join-tokens`: `{"join_tokens":[…]}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JoinTokenList<'a> {
    /// Every join token.
    pub join_tokens: Vec<JoinTokenJson<'a>>,
}

fn join_token_json(r: &JoinTokenRecord) -> JoinTokenJson<'_> {
    JoinTokenJson {
        created_at: to_rfc3339(r.created_ms),
        expires_at: to_rfc3339(r.expires_ms),
        host: r.host.as_deref(),
        id: &r.id,
        labels: &r.labels,
        name: &r.name,
        revoked_at: r.revoked_ms.map(to_rfc3339),
        token: None,
        uses_left: r.uses_left,
    }
}

/// Reads and checks a `POST /api/v1/join-tokens` body.
pub(crate) fn join_token_spec(body: &[u8]) -> Result<JoinTokenSpec, ApiError> {
    let body: JoinTokenBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("join token body: {e}")))?;
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid_field("name", "must not be empty"));
    }
    let ttl = match body.ttl.as_deref().map(humantime::parse_duration) {
        None => DEFAULT_JOIN_TTL,
        Some(Ok(ttl)) => ttl,
        Some(Err(e)) => {
            return Err(ApiError::invalid_field(
                "ttl",
                format!("not a duration like 24h: {e}"),
            ))
        }
    };
    // At most ten years: a longer lifetime is a mistake (or an attempt to make a token
    // that never expires), and its expiry must stay a time Vigil can store and show.
    let ttl_ms = validate::ttl("ttl", ttl).map_err(ApiError::from_field)?;
    let uses = match body.uses.as_ref().map(whole_number) {
        None => 1,
        Some(Some(n)) => u32::try_from(n).map_err(|_| {
            ApiError::invalid_field("uses", format!("{n} is not from 1 to {}", u32::MAX))
        })?,
        Some(None) => return Err(ApiError::invalid_field("uses", "must be a whole number")),
    };
    Ok(JoinTokenSpec {
        name: body.name,
        labels: body.labels,
        host: body.host,
        uses,
        ttl_ms,
    })
}

/// `POST /api/v1/join-tokens`; refusals are counted under `route`.
pub(crate) async fn create_join_token(
    api: Arc<Api>,
    route: &'static str,
    body: bytes::Bytes,
) -> Response {
    let spec = match join_token_spec(&body) {
        Ok(spec) => spec,
        Err(e) => return counted(&api.telemetry, route, e).into_response(),
    };
    let store = api.store.clone();
    let result =
        tokio::task::spawn_blocking(move || agents::create_join_token(&store, &spec, now_ms()))
            .await
            .map_err(task_failed)
            .and_then(|r| r.map_err(enroll_error));
    match result {
        Ok((token, record)) => {
            let mut answer = join_token_json(&record);
            answer.token = Some(token);
            warp::reply::with_status(warp::reply::json(&answer), StatusCode::CREATED)
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// A JSON number that is whole (`3` or `3.0`), as an `i64`.
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            // Whole and well inside i64: the conversion is exact.
            .map(|f| f as i64)
    })
}

/// `GET /api/v1/join-tokens`.
pub(crate) async fn list_join_tokens(api: Arc<Api>) -> Response {
    respond(
        api.store
            .join_tokens()
            .map(|tokens| {
                warp::reply::json(&JoinTokenList {
                    join_tokens: tokens.iter().map(join_token_json).collect(),
                })
            })
            .map_err(ApiError::from),
    )
}
