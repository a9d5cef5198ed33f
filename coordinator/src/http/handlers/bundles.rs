//! The bundle routes:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/bundles` | `{"bundles":[{"group","version","hash","created_at","selector","files":[names],"policies":N,"manifest":{…}\|null}],"public_key":"…","error":…\|null}` |
//! | `GET /api/v1/bundles/{group}` | one bundle as above, `files` with their text; 404 if unknown |
//! | `POST /api/v1/bundles/reload` | re-read the bundle directory now: `{"ok":true,"published":[…],"removed":[…],"errors":[…]}` |
//! | `GET /api/v1/drift` | `{"hosts":[{"host","online","labels","groups":[{"group","desired_version","applied_version","in_sync"}],"bundle_error","failing_checks":[…]}]}` |

use std::sync::Arc;

use serde_json::{json, Value};
use vigil_shared::time::{now_ms, to_rfc3339};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::bundles::drift::host_drift;
use crate::bundles::{Published, ReloadError};
use crate::http::error::{respond, ApiError};
use crate::http::{task_failed, Api};
use crate::store::reader::EventQuery;

/// How many of a host's newest events drift looks at for failing checks.
const DRIFT_EVENTS_PER_HOST: usize = 10_000;

fn bundle_json(p: &Published, with_text: bool) -> Value {
    let files: Vec<Value> = p
        .record
        .files
        .iter()
        .map(|f| {
            if with_text {
                json!({"name": f.name, "text": f.text})
            } else {
                json!(f.name)
            }
        })
        .collect();
    json!({
        "group": p.record.group,
        "version": p.record.version,
        "hash": p.signed.hash,
        "created_at": to_rfc3339(p.record.created_at_ms),
        "selector": p.record.selector.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<String, Value>>(),
        "files": files,
        "policies": p.policies,
        "manifest": p.manifest,
    })
}

/// `GET /api/v1/bundles`.
pub(crate) async fn list(api: Arc<Api>) -> Response {
    let bundles: Vec<Value> = api
        .bundles
        .published()
        .iter()
        .map(|p| bundle_json(p, false))
        .collect();
    warp::reply::json(&json!({
        "bundles": bundles,
        "public_key": api.bundles.public_key(),
        "directory": api.bundles.dir().map(|d| d.display().to_string()),
        "error": api.bundles.last_error(),
    }))
    .into_response()
}

/// `GET /api/v1/bundles/{group}`.
pub(crate) async fn one(group: String, api: Arc<Api>) -> Response {
    respond(
        api.bundles
            .get(&group)
            .map(|p| warp::reply::json(&bundle_json(&p, true)))
            .ok_or_else(|| ApiError::not_found(format!("no bundle for group `{group}`"))),
    )
}

/// `POST /api/v1/bundles/reload`.
pub(crate) async fn reload(api: Arc<Api>) -> Response {
    match api.bundles.reload().await {
        Ok(report) => {
            let ok = report.errors.is_empty();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            warp::reply::with_status(
                warp::reply::json(&json!({
                    "ok": ok,
                    "published": report.published.iter()
                        .map(|(group, version)| json!({"group": group, "version": version}))
                        .collect::<Vec<_>>(),
                    "removed": report.removed,
                    "errors": report.errors,
                })),
                status,
            )
            .into_response()
        }
        Err(ReloadError::NoDirectory) => {
            ApiError::new(StatusCode::CONFLICT, ReloadError::NoDirectory.to_string())
                .into_response()
        }
        Err(e) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

/// `GET /api/v1/drift`.
pub(crate) async fn drift(api: Arc<Api>) -> Response {
    let published = api.bundles.published();
    let store = api.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let now = now_ms();
        let mut hosts = Vec::new();
        for host in store.hosts()? {
            let events = store.events(&EventQuery {
                host: Some(host.host.clone()),
                limit: DRIFT_EVENTS_PER_HOST,
                ..EventQuery::default()
            })?;
            hosts.push(host_drift(&host, &published, &events, now));
        }
        Ok::<_, crate::store::StoreError>(hosts)
    })
    .await;
    match result {
        Ok(Ok(hosts)) => warp::reply::json(&json!({ "hosts": hosts })).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => task_failed(e).into_response(),
    }
}
