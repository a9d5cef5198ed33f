//! Who may call what. Every request passes [`guard`] before any route: what it needs is
//! the [`Access`] of the route that serves it, from the route table
//! ([`routes::access`]): open (`/health`, the API's description, the status page,
//! enrollment, whose credential is the join token in its body), `/metrics` open unless
//! configured otherwise, and everything else a token (`Authorization: Bearer vigil_…`)
//! whose role is high enough for the route. A missing, unknown, revoked or malformed token is a 401, a role too low
//! a 403; each is counted in `vigil_http_auth_failures_total{reason}`. A client address
//! with more 401s in [`FAILURE_WINDOW`] than the limit (`--auth-failure-limit`, default
//! [`DEFAULT_MAX_FAILURES`]) gets 429 instead of 401 until the window passes. The token
//! is checked first: a request with a valid token is served whatever its address's
//! failure count (many clients may share one address behind NAT or a proxy, and one of
//! them guessing must not lock the others out), and only failures count. Tokens are
//! looked up in the store on every request, so a revocation takes effect at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::error::ApiError;
use super::routes::{self, Access};
use crate::security::tokens::{self, Role};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Failed authentications one client address may make per [`FAILURE_WINDOW`] by default.
pub const DEFAULT_MAX_FAILURES: u32 = 30;
/// The window for the failure limit.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The authentication state shared by every request.
pub struct Auth {
    store: Store,
    telemetry: Arc<Telemetry>,
    metrics_open: bool,
    max_failures: u32,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Auth {
    /// Checks tokens against `store`; `/metrics` is open when `metrics_open`; a client
    /// address with more than `max_failures` 401s a minute gets 429 (0: no limit).
    pub fn new(
        store: Store,
        telemetry: Arc<Telemetry>,
        metrics_open: bool,
        max_failures: u32,
    ) -> Auth {
        Auth {
            store,
            telemetry,
            metrics_open,
            max_failures,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `None` when the request may proceed, else the error response to send.
    fn check(
        &self,
        method: &Method,
        path: &str,
        header: Option<&str>,
        client: Option<IpAddr>,
    ) -> Option<Response> {
        let needed = match routes::access(method, path) {
            Access::Open | Access::JoinToken => return None,
            Access::Scrape if self.metrics_open => return None,
            Access::Scrape => Role::Viewer,
            Access::Needs(role) => role,
        };
        // A failure: 429 for an address over the limit, else 401 (counted either way).
        let unauthorized = |reason: &'static str, message: String| {
            if let Some(ip) = client {
                let limited = self.is_rate_limited(ip);
                self.note_failure(ip);
                if limited {
                    return Some(self.refuse(
                        "rate_limited",
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many failed authentications from {ip}: more than {} in \
                             {FAILURE_WINDOW:?}; wait and retry with a valid token",
                            self.max_failures
                        ),
                    ));
                }
            }
            Some(self.refuse(reason, StatusCode::UNAUTHORIZED, message))
        };
        let Some(header) = header else {
            return unauthorized(
                "missing",
                format!("{method} {path} needs a token: send `Authorization: Bearer <token>` (see `vigil-coordinator token create`)"),
            );
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
            return unauthorized(
                "malformed",
                "the Authorization header must be `Bearer <token>`".into(),
            );
        };
        let record = match self.store.token(&tokens::hash(token)) {
            Ok(Some(record)) => record,
            Ok(None) => return unauthorized("unknown", "unknown token".into()),
            Err(e) => {
                tracing::error!("cannot read tokens: {e}");
                return Some(self.refuse(
                    "store_error",
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot check the token: {e}"),
                ));
            }
        };
        if record.revoked_ms.is_some() {
            return unauthorized(
                "revoked",
                format!("token `{}` ({}) has been revoked", record.name, record.id),
            );
        }
        if record.role < needed {
            return Some(self.refuse(
                "forbidden",
                StatusCode::FORBIDDEN,
                format!(
                    "{method} {path} needs the {needed} role; token `{}` is {}",
                    record.name, record.role
                ),
            ));
        }
        None
    }

    fn refuse(&self, reason: &'static str, status: StatusCode, message: String) -> Response {
        self.telemetry
            .http_auth_failures
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(reason, "refused a REST request: {message}");
        ApiError::new(status, message).into_response()
    }

    /// Whether `ip` has failed authentication too often lately (429 until the window
    /// passes).
    pub fn is_rate_limited(&self, ip: IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.get(&ip).is_some_and(|(since, count)| {
            since.elapsed() < FAILURE_WINDOW && *count >= self.max_failures
        })
    }

    /// Counts a failed authentication from `ip` towards the rate limit.
    pub fn note_failure(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() > 10_000 {
            failures.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = failures.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// A filter that answers with 401/403/429 when a request may not proceed, and otherwise
/// rejects (so the routes after it answer).
pub fn guard(auth: Arc<Auth>) -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and(crate::http::server::client_addr())
        .and_then(
            move |method: Method,
                  path: FullPath,
                  header: Option<String>,
                  addr: Option<SocketAddr>| {
                let auth = Arc::clone(&auth);
                async move {
                    match auth.check(
                        &method,
                        path.as_str(),
                        header.as_deref(),
                        addr.map(|a| a.ip()),
                    ) {
                        Some(response) => Ok(response),
                        None => Err(warp::reject::not_found()),
                    }
                }
            },
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_roles_the_readme_gives() {
        let need = |m: Method, p: &str| routes::access(&m, p);
        assert_eq!(need(Method::GET, "/health"), Access::Open);
        assert_eq!(need(Method::GET, "/metrics"), Access::Scrape);
        assert_eq!(
            need(Method::GET, "/api/v1/hosts"),
            Access::Needs(Role::Viewer)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/policies/evaluate"),
            Access::Needs(Role::Viewer)
        );
        // A policy *named* `evaluate` is changed by an admin only.
        assert_eq!(
            need(Method::PUT, "/api/v1/policies/evaluate"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::DELETE, "/api/v1/policies/evaluate"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/actions"),
            Access::Needs(Role::Operator)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/ingest"),
            Access::Needs(Role::Operator)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/hosts/web-1/remediation/pause"),
            Access::Needs(Role::Operator)
        );
        assert_eq!(
            need(Method::PUT, "/api/v1/policies/cpu/disable"),
            Access::Needs(Role::Operator)
        );
        // A policy *named* `enable` is changed by an admin only.
        assert_eq!(
            need(Method::PUT, "/api/v1/policies/enable"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/policies"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::DELETE, "/api/v1/policies/cpu"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/bundles/reload"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::GET, "/api/v1/agents"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::GET, "/api/v1/join-tokens"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/agents/enroll"),
            Access::JoinToken
        );
        // The status page and its assets hold no data.
        assert_eq!(need(Method::GET, "/"), Access::Open);
        assert_eq!(need(Method::GET, "/assets/status.js"), Access::Open);
        assert_eq!(need(Method::GET, "/assets/status.css"), Access::Open);
        // A method the path does not have (405) needs what the path's strictest route
        // needs: the wrong method on an operator route needs an operator.
        assert_eq!(
            need(Method::POST, "/api/v1/policies/cpu/disable"),
            Access::Needs(Role::Operator)
        );
        assert_eq!(
            need(Method::DELETE, "/api/v1/join-tokens"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(need(Method::HEAD, "/health"), Access::Open);
        assert_eq!(need(Method::POST, "/"), Access::Open);
        assert_eq!(
            need(Method::GET, "/api/v1/agents/enroll"),
            Access::JoinToken
        );
        // A path no route has (404) needs a token.
        assert_eq!(
            need(Method::POST, "/api/v1/nothing"),
            Access::Needs(Role::Viewer)
        );
    }

    #[test]
    fn a_valid_token_is_served_from_an_address_over_the_failure_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            crate::store::MapSize {
                initial: 1 << 24,
                max: 1 << 26,
            },
        )
        .unwrap();
        let admin = tokens::generate();
        let viewer = tokens::generate();
        for (token, role) in [(&admin, Role::Admin), (&viewer, Role::Viewer)] {
            let digest = tokens::hash(token);
            store
                .put_token(&digest, &tokens::record(&digest, "t", role, 1))
                .unwrap();
        }
        let telemetry = Arc::new(Telemetry::new());
        let auth = Auth::new(store, telemetry.clone(), false, 3);
        let shared: IpAddr = "192.0.2.7".parse().unwrap();
        let status = |header: Option<String>, path: &str, ip: IpAddr| {
            auth.check(&Method::GET, path, header.as_deref(), Some(ip))
                .map_or(200, |r| r.status().as_u16())
        };
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        let bad = bearer("vigil_guess");
        let hosts = "/api/v1/hosts";
        // Three failures are 401s; from then on failures are 429s.
        for _ in 0..3 {
            assert_eq!(status(bad.clone(), hosts, shared), 401);
        }
        for _ in 0..30 {
            assert_eq!(status(bad.clone(), hosts, shared), 429);
        }
        assert_eq!(status(None, hosts, shared), 429);
        // Valid tokens from the same address are served, and never counted.
        for _ in 0..10 {
            assert_eq!(status(bearer(&admin), hosts, shared), 200);
            assert_eq!(status(bearer(&viewer), hosts, shared), 200);
        }
        // A valid token with too low a role is still a 403, not a 429.
        assert_eq!(status(bearer(&viewer), "/api/v1/agents", shared), 403);
        // Another address is unaffected.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(status(bad.clone(), hosts, other), 401);
        assert_eq!(
            telemetry
                .http_auth_failures
                .with_label_values(&["rate_limited"])
                .get(),
            31
        );
    }
}
