//! The bundle routes. Their answers are the typed structs below; keys on the wire are
//! alphabetical (as the `json!` bodies these replaced were), and so are the structs' fields.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/bundles` | `{"bundles":[{"created_at","files":[names],"group","hash","manifest":{…}\|null,"policies":N,"selector","version"}],"directory":…\|null,"error":…\|null,"gates":[{"actions","checked_at","group","hosts","max_actions","passed","reason","since"}],"public_key":"…"}` |
//! | `GET /api/v1/bundles/{group}` | one bundle as above, `files` with their text; 404 if unknown |
//! | `POST /api/v1/bundles/reload` | re-read the bundle directory now: `{"errors":[…],"ok":true,"published":[…],"removed":[…]}` (422 with `"ok":false` when a group is refused) |
//! | `GET /api/v1/drift` | `{"hosts":[{"bundle_error","failing_checks":[…],"groups":[{"applied_version","desired_version","group","in_sync"}],"host","labels","online"}]}` |

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use vigil_shared::time::{now_ms, to_rfc3339};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::bundles::drift::{host_drift, HostDrift};
use crate::bundles::{Published, ReloadError};
use crate::http::error::{respond, ApiError};
use crate::http::{task_failed, Api};
use crate::store::reader::EventQuery;

/// How many of a host's newest events drift looks at for failing checks.
const DRIFT_EVENTS_PER_HOST: usize = 10_000;

/// One bundle in the list: its files by name.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BundleSummary<'a> {
    /// When this version was built, RFC 3339.
    created_at: String,
    /// The file names.
    files: Vec<&'a str>,
    /// The host group.
    group: &'a str,
    /// SHA-256 of the signed content, hex.
    hash: &'a str,
    /// The manifest (desired units and containers), if any.
    #[schema(value_type = Option<Object>)]
    manifest: Option<&'a vigil_shared::bundle_manifest::Manifest>,
    /// How many policies (files and manifest).
    policies: usize,
    /// The label selector (a label repeated: its last value).
    selector: BTreeMap<&'a str, &'a str>,
    /// The version.
    version: u64,
}

/// One file of a bundle, with its text.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BundleFileJson<'a> {
    /// The file name.
    name: &'a str,
    /// Its text.
    text: &'a str,
}

/// One bundle with its files' text.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BundleDetail<'a> {
    /// When this version was built, RFC 3339.
    created_at: String,
    /// The files with their text.
    files: Vec<BundleFileJson<'a>>,
    /// The host group.
    group: &'a str,
    /// SHA-256 of the signed content, hex.
    hash: &'a str,
    /// The manifest (desired units and containers), if any.
    #[schema(value_type = Option<Object>)]
    manifest: Option<&'a vigil_shared::bundle_manifest::Manifest>,
    /// How many policies (files and manifest).
    policies: usize,
    /// The label selector (a label repeated: its last value).
    selector: BTreeMap<&'a str, &'a str>,
    /// The version.
    version: u64,
}

fn selector(p: &Published) -> BTreeMap<&str, &str> {
    p.record
        .selector
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn summary(p: &Published) -> BundleSummary<'_> {
    BundleSummary {
        created_at: to_rfc3339(p.record.created_at_ms),
        files: p.record.files.iter().map(|f| f.name.as_str()).collect(),
        group: &p.record.group,
        hash: &p.signed.hash,
        manifest: p.manifest.as_ref(),
        policies: p.policies,
        selector: selector(p),
        version: p.record.version,
    }
}

fn detail(p: &Published) -> BundleDetail<'_> {
    BundleDetail {
        created_at: to_rfc3339(p.record.created_at_ms),
        files: p
            .record
            .files
            .iter()
            .map(|f| BundleFileJson {
                name: &f.name,
                text: &f.text,
            })
            .collect(),
        group: &p.record.group,
        hash: &p.signed.hash,
        manifest: p.manifest.as_ref(),
        policies: p.policies,
        selector: selector(p),
        version: p.record.version,
    }
}

/// `GET /api/v1/bundles`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BundleList<'a> {
    /// Every group's bundle.
    bundles: Vec<BundleSummary<'a>>,
    /// The bundle directory, if one is configured.
    directory: Option<String>,
    /// Why the last read of the directory failed, if it did.
    error: Option<String>,
    /// Per gated group, its last backtest gate check (a refused one says why).
    gates: Vec<crate::bundles::gate::GateResult>,
    /// The coordinator's bundle signing key.
    public_key: &'a str,
}

/// `GET /api/v1/bundles`.
pub(crate) async fn list(api: Arc<Api>) -> Response {
    let published = api.bundles.published();
    warp::reply::json(&BundleList {
        bundles: published.iter().map(summary).collect(),
        public_key: api.bundles.public_key(),
        directory: api.bundles.dir().map(|d| d.display().to_string()),
        error: api.bundles.last_error(),
        gates: api.bundles.gates(),
    })
    .into_response()
}

/// `GET /api/v1/bundles/{group}`.
pub(crate) async fn one(group: String, api: Arc<Api>) -> Response {
    respond(
        api.bundles
            .get(&group)
            .map(|p| warp::reply::json(&detail(&p)))
            .ok_or_else(|| ApiError::not_found(format!("no bundle for group `{group}`"))),
    )
}

/// A group published by a reload.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PublishedJson<'a> {
    /// The group.
    group: &'a str,
    /// Its new version.
    version: u64,
}

/// What `POST /api/v1/bundles/reload` did (200 when `errors` is empty, else 422).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReloadJson<'a> {
    /// Groups refused, with why (their last good version stays).
    errors: &'a [String],
    /// No group was refused.
    ok: bool,
    /// Groups published with a new version.
    published: Vec<PublishedJson<'a>>,
    /// Groups removed.
    removed: &'a [String],
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
                warp::reply::json(&ReloadJson {
                    errors: &report.errors,
                    ok,
                    published: report
                        .published
                        .iter()
                        .map(|(group, version)| PublishedJson {
                            group,
                            version: *version,
                        })
                        .collect(),
                    removed: &report.removed,
                }),
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
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DriftJson {
    /// Every host's drift.
    hosts: Vec<HostDrift>,
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
        Ok(Ok(hosts)) => warp::reply::json(&DriftJson { hosts }).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => task_failed(e).into_response(),
    }
}
