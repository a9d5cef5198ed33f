//! `POST /api/v1/policies/backtest`: replays stored metric history through the agents'
//! policy engine (see [`crate::policies::backtest`]) and answers what each policy would
//! have done.
//!
//! Request: `{"policies": [specs] | "policy YAML text", "hosts": "role=web", "since":
//! "7d", "limit": 100}`, every key optional: `policies` defaults to the registry's (the
//! specs as `POST /api/v1/policies` takes them, or the text of a policy file), `hosts` to
//! `all` (else a host name, a glob such as `web-*`, or labels `key=value,…`), `since` to
//! `7d` (at most 31 days), `limit` (events listed) to 100 (at most 1000). Errors name the
//! field and are counted in `vigil_http_requests_rejected_total`. At most
//! [`MAX_RUNNING`] backtests run at once; another is answered 429.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use vigil_shared::policy::load::{check_specs, parse_specs};
use vigil_shared::policy::{LoadError, Policy};
use vigil_shared::time::now_ms;
use warp::http::StatusCode;
use warp::reply::Response;

use super::json_object;
use super::sandbox::parse_policies;
use crate::http::error::{counted, respond, ApiError};
use crate::http::{task_failed, Api};
use crate::policies::backtest::{
    self, Backtest, BacktestError, HostSelector, DEFAULT_EVENTS, MAX_EVENTS, MAX_POLICIES,
};
use crate::policies::json::kind;

/// Most backtests running at once.
pub const MAX_RUNNING: usize = 2;
/// The range replayed when the request names none.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(7 * 24 * 3600);

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_RUNNING`] places, freed when dropped.
struct Place;

impl Place {
    fn take() -> Option<Place> {
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_RUNNING).then_some(n + 1)
            })
            .ok()
            .map(|_| Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request, read: the policies if it gives them, and the rest.
#[derive(Debug)]
pub struct Parsed {
    /// The policies given (`None`: the registry's).
    pub policies: Option<Vec<Policy>>,
    /// The hosts.
    pub hosts: HostSelector,
    /// The range.
    pub since: Duration,
    /// Events to list.
    pub limit: usize,
}

fn string<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid_field(
            field,
            format!("must be a string, got {}", kind(other)),
        )),
    }
}

/// Reads and checks the body; errors name the field.
pub fn parse(body: &Map<String, Value>) -> Result<Parsed, ApiError> {
    if let Some(key) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "policies" | "hosts" | "since" | "limit"))
    {
        return Err(ApiError::invalid_field(
            key.as_str(),
            format!("unknown field `{key}`; a backtest takes policies, hosts, since and limit"),
        ));
    }
    let policies = match body.get("policies") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            if list.len() > MAX_POLICIES {
                return Err(ApiError::invalid_field(
                    "policies",
                    format!(
                        "{} policies, more than a backtest takes ({MAX_POLICIES})",
                        list.len()
                    ),
                ));
            }
            Some(parse_policies(list)?)
        }
        Some(Value::String(text)) => Some(policies_from_yaml(text)?),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "policies",
                format!(
                    "must be a list of policies or policy YAML text, got {}",
                    kind(other)
                ),
            ))
        }
    };
    let hosts = HostSelector::parse(string(body, "hosts")?.unwrap_or("all"))
        .map_err(|e| ApiError::invalid_field("hosts", e))?;
    let since = match string(body, "since")? {
        None => DEFAULT_SINCE,
        Some(text) => {
            backtest::parse_since(text).map_err(|e| ApiError::invalid_field("since", e))?
        }
    };
    let limit = match body.get("limit") {
        None | Some(Value::Null) => DEFAULT_EVENTS,
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n <= MAX_EVENTS)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "limit",
                    format!("must be a whole number from 0 to {MAX_EVENTS}, got {value}"),
                )
            })?,
    };
    Ok(Parsed {
        policies,
        hosts,
        since,
        limit,
    })
}

/// Policies from the text of a policy file.
fn policies_from_yaml(text: &str) -> Result<Vec<Policy>, ApiError> {
    let field = |e: &LoadError| match e {
        LoadError::Policy { error, .. } if !error.field.is_empty() => {
            format!("policies.{}", error.field)
        }
        _ => "policies".to_string(),
    };
    let specs = parse_specs(text, "policies")
        .map_err(|e| ApiError::invalid_field(field(&e), e.to_string()))?;
    if specs.len() > MAX_POLICIES {
        return Err(ApiError::invalid_field(
            "policies",
            format!(
                "{} policies, more than a backtest takes ({MAX_POLICIES})",
                specs.len()
            ),
        ));
    }
    check_specs(&specs, "policies").map_err(|e| ApiError::invalid_field(field(&e), e.to_string()))
}

impl From<BacktestError> for ApiError {
    fn from(e: BacktestError) -> Self {
        match e {
            BacktestError::Invalid { field, message } => ApiError::invalid_field(field, message),
            BacktestError::Store(e) => ApiError::from(e),
        }
    }
}

/// `POST /api/v1/policies/backtest`.
pub async fn run(api: Arc<Api>, route: &'static str, body: Bytes) -> Response {
    let result = async {
        let Some(place) = Place::take() else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_RUNNING} backtests are running already; try again when one ends"),
            ));
        };
        let parsed = json_object(&body)
            .and_then(|body| parse(&body))
            .map_err(|e| counted(&api.telemetry, route, e))?;
        let policies = match parsed.policies {
            Some(given) => given,
            None => api
                .policies
                .list()
                .iter()
                .map(|r| r.policy.clone())
                .collect(),
        };
        let request = Backtest {
            policies,
            hosts: parsed.hosts,
            since: parsed.since,
            events: parsed.limit,
        };
        let store = api.store.clone();
        let report = tokio::task::spawn_blocking(move || {
            let _place = place;
            backtest::run(&store, &request, now_ms())
        })
        .await
        .map_err(task_failed)?
        .map_err(|e| counted(&api.telemetry, route, ApiError::from(e)))?;
        Ok(warp::reply::json(&report))
    }
    .await;
    respond(result)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(body: Value) -> String {
        parse(body.as_object().unwrap()).unwrap_err().field.unwrap()
    }

    #[test]
    fn defaults_and_both_policy_forms() {
        let p = parse(json!({}).as_object().unwrap()).unwrap();
        assert!(p.policies.is_none());
        assert_eq!((p.since, p.limit), (DEFAULT_SINCE, DEFAULT_EVENTS));
        let yaml = "- name: cpu\n  condition: \"cpu_percent > 90 for 1m\"\n";
        let p = parse(
            json!({"policies": yaml, "hosts": "role=web", "since": "12h", "limit": 0})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.policies.unwrap()[0].name, "cpu");
        assert_eq!(p.since, Duration::from_secs(12 * 3600));
        assert_eq!(p.limit, 0);
        let p = parse(
            json!({"policies": [{"name": "cpu", "condition": "cpu_percent > 90"}]})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.policies.unwrap().len(), 1);
    }

    #[test]
    fn bad_requests_name_the_field() {
        assert_eq!(field(json!({"sinse": "7d"})), "sinse");
        assert_eq!(field(json!({"since": "forever"})), "since");
        assert_eq!(field(json!({"since": "90d"})), "since");
        assert_eq!(field(json!({"since": 7})), "since");
        assert_eq!(field(json!({"hosts": "role="})), "hosts");
        assert_eq!(field(json!({"hosts": ["a"]})), "hosts");
        assert_eq!(field(json!({"limit": 1001})), "limit");
        assert_eq!(field(json!({"limit": -1})), "limit");
        assert_eq!(field(json!({"policies": 3})), "policies");
        assert_eq!(
            field(json!({"policies": "- name: x\n  target: web-[\n  condition: \"cpu > 1\"\n"})),
            "policies.target"
        );
        assert_eq!(field(json!({"policies": "::"})), "policies");
        assert_eq!(
            field(json!({"policies": [{"name": "x", "condition": "cpu > 1", "severity": "dire"}]})),
            "policies[0].severity"
        );
        let many: Vec<Value> = (0..=MAX_POLICIES)
            .map(|i| json!({"name": format!("p{i}"), "condition": "cpu > 1"}))
            .collect();
        assert_eq!(field(json!({"policies": many})), "policies");
    }
}
