//! `POST /api/v1/policies/evaluate`: the policy sandbox, with explanations.
//!
//! Request: `{"metrics": {"cpu_percent": 95, …}, "target": "web-server-01",
//! "policies": [optional specs to test instead of the registry's]}` (`target` defaults to
//! `sandbox`). The metrics become one sample each, taken now, about the target; every
//! enabled policy whose target matches is evaluated once with
//! [`vigil_shared::policy::eval::explain`].
//!
//! Response (keys alphabetical): `{"actions_triggered":[…],"evaluated":N,"ok":true,
//! "passed":[…],"timestamp":…,"violations":[…]}`. A violation is the original's
//! `{policy_name,severity,description,target,timestamp}` plus `explanation` (which
//! conditions held, with the observed values), `summary` (the same in one line) and
//! `holds_for` (the policy's `for`: it would fire only after holding that long; `null`
//! when it has none). An action is `{policy_name,action,target,status,params}` with
//! `status` `triggered`, `dry_run` (the policy only records), or `not_auto_remediated`.
//! `passed` lists the evaluated policies that did not fire, with their explanations.
//! Nothing is stored and nothing is run.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use vigil_shared::policy::{eval, expr, Observations, Policy};
use vigil_shared::time::{now_ms, to_rfc3339};
use vigil_shared::validate;
use vigil_shared::wire::Sample;
use warp::reply::Response;

use super::json_object;
use crate::http::error::{respond, ApiError};
use crate::http::Api;
use crate::policies::json::{kind, spec_from_value};

/// The subject evaluated when the request names none.
pub const DEFAULT_TARGET: &str = "sandbox";

/// A sandbox request, checked.
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    /// Metric name → value.
    pub metrics: Vec<(String, f64)>,
    /// The subject.
    pub target: String,
    /// Policies to test instead of the registry's, if given.
    pub policies: Option<Vec<Policy>>,
}

/// Reads and checks the request body; errors name the field (`metrics.cpu_percent`,
/// `policies[0].condition`, …).
pub fn parse(body: &Map<String, Value>) -> Result<SandboxRequest, ApiError> {
    if let Some(key) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "metrics" | "target" | "policies"))
    {
        return Err(ApiError::invalid_field(
            key.as_str(),
            format!("unknown field `{key}`; the sandbox takes metrics, target and policies"),
        ));
    }
    let metrics = match body.get("metrics") {
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "metrics",
                format!(
                    "must be an object of metric names to numbers, got {}",
                    kind(other)
                ),
            ))
        }
        None => {
            return Err(ApiError::invalid_field(
                "metrics",
                "is required: an object of metric names to numbers, e.g. {\"cpu_percent\": 95}",
            ))
        }
    };
    let mut values = Vec::with_capacity(metrics.len());
    for (name, value) in metrics {
        let field = format!("metrics.{name}");
        validate::metric_name(name)
            .map_err(|e| ApiError::invalid_field(&field, format!("metric name {}", e.problem)))?;
        let number = value.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
            ApiError::invalid_field(
                &field,
                format!("must be a finite number, got {}", kind(value)),
            )
        })?;
        values.push((name.clone(), number));
    }
    let target = match body.get("target") {
        None | Some(Value::Null) => DEFAULT_TARGET.to_string(),
        Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_string(),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "target",
                format!("must be a non-empty string, got {}", kind(other)),
            ))
        }
    };
    let policies = match body.get("policies") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(parse_policies(list)?),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "policies",
                format!("must be a list of policies, got {}", kind(other)),
            ))
        }
    };
    Ok(SandboxRequest {
        metrics: values,
        target,
        policies,
    })
}

/// Reads a list of policy specs (as `POST /api/v1/policies` takes them), checked, names
/// unique; errors name the field (`policies[2].condition`).
pub(crate) fn parse_policies(list: &[Value]) -> Result<Vec<Policy>, ApiError> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        let prefix = format!("policies[{i}].");
        let field_error = |field: &str, message: String| {
            ApiError::invalid_field(format!("{prefix}{field}"), message)
        };
        let spec = spec_from_value(value, &prefix)
            .map_err(|e| ApiError::invalid_field(e.field.clone(), e.to_string()))?;
        let policy = spec
            .check()
            .map_err(|e| field_error(&e.field, e.to_string()))?;
        if !names.insert(policy.name.clone()) {
            return Err(field_error(
                "name",
                format!("policy `{}` is given twice", policy.name),
            ));
        }
        out.push(policy);
    }
    Ok(out)
}

/// The sandbox's answer. Keys on the wire are alphabetical (as the `json!` body this
/// replaced was), and so are the fields of this module's response structs.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SandboxAnswer {
    /// The actions the violations would trigger.
    actions_triggered: Vec<SandboxAction>,
    /// How many policies were evaluated.
    evaluated: usize,
    /// Always true.
    ok: bool,
    /// The evaluated policies that did not fire.
    passed: Vec<SandboxPassed>,
    /// When, RFC 3339.
    timestamp: String,
    /// The policies that would fire.
    violations: Vec<SandboxViolation>,
}

/// A policy that did not fire, explained.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SandboxPassed {
    /// Which conditions held, with the observed values.
    #[schema(value_type = Object)]
    explanation: Value,
    /// The policy.
    policy_name: String,
}

/// A policy that would fire, explained.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SandboxViolation {
    /// The policy's description.
    description: String,
    /// Which conditions held, with the observed values.
    #[schema(value_type = Object)]
    explanation: Value,
    /// The policy's `for`: it fires only after holding that long.
    holds_for: Option<String>,
    /// The policy.
    policy_name: String,
    /// Its severity.
    severity: &'static str,
    /// The explanation in one line.
    summary: String,
    /// The target evaluated.
    target: String,
    /// When, RFC 3339.
    timestamp: String,
}

/// The first action of a policy that would fire.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SandboxAction {
    /// The action as written.
    action: String,
    /// Its parameters.
    #[schema(value_type = Object)]
    params: BTreeMap<String, Value>,
    /// The policy.
    policy_name: String,
    /// `triggered`, `dry_run` or `not_auto_remediated`.
    status: &'static str,
    /// The target evaluated.
    target: String,
}

/// Evaluates `policies` against the request's metrics at `now_ms`; the response body.
pub(crate) fn run<'a>(
    request: &SandboxRequest,
    policies: impl IntoIterator<Item = &'a Policy>,
    now_ms: i64,
) -> SandboxAnswer {
    let target = request.target.as_str();
    let mut obs = Observations::new(now_ms);
    for (name, value) in &request.metrics {
        obs.record(
            target,
            &Sample {
                name: name.clone(),
                value: *value,
                ts_ms: now_ms,
                tags: Vec::new(),
            },
        );
    }
    let timestamp = to_rfc3339(now_ms);
    let mut violations = Vec::new();
    let mut actions = Vec::new();
    let mut passed = Vec::new();
    let mut evaluated = 0usize;
    for policy in policies {
        if !policy.enabled || !policy.target.matches(target) {
            continue;
        }
        evaluated += 1;
        let explanation = eval::explain(&policy.condition, &obs, target, now_ms);
        if !explanation.held {
            passed.push(SandboxPassed {
                explanation: json!(explanation),
                policy_name: policy.name.clone(),
            });
            continue;
        }
        violations.push(SandboxViolation {
            description: policy.description.clone(),
            summary: explanation.summary(),
            explanation: json!(explanation),
            holds_for: policy.hold.map(expr::format_hold),
            policy_name: policy.name.clone(),
            severity: policy.severity.as_str(),
            target: target.to_string(),
            timestamp: timestamp.clone(),
        });
        if let Some(step) = policy.actions.first() {
            let status = if !policy.auto_remediate {
                "not_auto_remediated"
            } else if policy.dry_run {
                "dry_run"
            } else {
                "triggered"
            };
            actions.push(SandboxAction {
                action: step.written.clone(),
                params: step.params.clone(),
                policy_name: policy.name.clone(),
                status,
                target: target.to_string(),
            });
        }
    }
    SandboxAnswer {
        actions_triggered: actions,
        evaluated,
        ok: true,
        passed,
        timestamp,
        violations,
    }
}

/// `POST /api/v1/policies/evaluate`.
pub async fn evaluate(api: Arc<Api>, body: Bytes) -> Response {
    let result = json_object(&body)
        .and_then(|body| parse(&body))
        .map(|request| {
            let now = now_ms();
            let body = match &request.policies {
                Some(given) => run(&request, given, now),
                None => {
                    let registered = api.policies.list();
                    run(&request, registered.iter().map(|r| &r.policy), now)
                }
            };
            warp::reply::json(&body)
        });
    respond(result)
}

#[cfg(test)]
mod tests {
    use warp::http::StatusCode;

    use super::*;

    const NOW: i64 = 1_768_912_496_000;

    fn seed_policy() -> Value {
        json!({
            "name": "high-cpu-alert",
            "description": "Alert when CPU exceeds 80%",
            "severity": "warning",
            "target": "web-*",
            "enabled": true,
            "auto_remediate": false,
            "condition": {"type": "metric_exceeds", "metric": "cpu_percent", "threshold": 80},
            "action": "restart",
            "params": {"cooldown_seconds": 300}
        })
    }

    fn request(body: Value) -> Result<SandboxRequest, ApiError> {
        parse(body.as_object().unwrap())
    }

    #[test]
    fn the_seed_example_gives_one_explained_violation() {
        let req = request(json!({
            "metrics": {"cpu_percent": 95, "memory_percent": 88},
            "target": "web-server-01",
            "policies": [seed_policy()],
        }))
        .unwrap();
        let policies = req.policies.clone().unwrap();
        let out = serde_json::to_value(run(&req, &policies, NOW)).unwrap();
        let violations = out["violations"].as_array().unwrap();
        assert_eq!(violations.len(), 1, "{out}");
        let v = &violations[0];
        assert_eq!(v["policy_name"], "high-cpu-alert");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["description"], "Alert when CPU exceeds 80%");
        assert_eq!(v["target"], "web-server-01");
        assert_eq!(v["timestamp"], to_rfc3339(NOW));
        assert_eq!(v["explanation"]["condition"], "cpu_percent > 80");
        assert_eq!(v["explanation"]["held"], true);
        assert_eq!(v["explanation"]["observed"], 95.0);
        assert_eq!(v["summary"], "cpu_percent > 80 (observed 95)");
        assert_eq!(v["holds_for"], Value::Null);
        let actions = out["actions_triggered"].as_array().unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0]["action"], "restart");
        assert_eq!(actions[0]["target"], "web-server-01");
        assert_eq!(actions[0]["status"], "not_auto_remediated");
        assert_eq!(actions[0]["params"]["cooldown_seconds"], 300);
        assert_eq!(out["evaluated"], 1);
    }

    #[test]
    fn targets_holds_and_statuses() {
        let mut remediating = seed_policy();
        remediating["name"] = json!("remediating");
        remediating["auto_remediate"] = json!(true);
        remediating["for"] = json!("5m");
        let mut dry = remediating.clone();
        dry["name"] = json!("dry");
        dry["dry_run"] = json!(true);
        let mut disabled = seed_policy();
        disabled["name"] = json!("disabled");
        disabled["enabled"] = json!(false);
        let mut quiet = seed_policy();
        quiet["name"] = json!("memory-fine");
        quiet["condition"] = json!("memory_percent > 90");
        let req = request(json!({
            "metrics": {"cpu_percent": 95, "memory_percent": 88},
            "target": "web-server-01",
            "policies": [remediating, dry, disabled, quiet],
        }))
        .unwrap();
        let out = serde_json::to_value(run(&req, req.policies.as_ref().unwrap(), NOW)).unwrap();
        assert_eq!(out["evaluated"], 3);
        assert_eq!(out["violations"][0]["holds_for"], "5m");
        assert_eq!(out["actions_triggered"][0]["status"], "triggered");
        assert_eq!(out["actions_triggered"][1]["status"], "dry_run");
        assert_eq!(out["passed"][0]["policy_name"], "memory-fine");
        assert_eq!(out["passed"][0]["explanation"]["observed"], 88.0);

        let elsewhere =
            request(json!({"metrics": {"cpu_percent": 95}, "policies": [seed_policy()]})).unwrap();
        assert_eq!(elsewhere.target, DEFAULT_TARGET);
        let out = serde_json::to_value(run(&elsewhere, elsewhere.policies.as_ref().unwrap(), NOW))
            .unwrap();
        assert_eq!(out["evaluated"], 0, "web-* does not match `sandbox`");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let field = |body: Value| {
            let e = request(body).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            e.field.unwrap()
        };
        assert_eq!(
            field(json!({"metrics": {"cpu_percent": "95"}})),
            "metrics.cpu_percent"
        );
        assert_eq!(
            field(json!({"metrics": {"cpu_percent": null}})),
            "metrics.cpu_percent"
        );
        assert_eq!(field(json!({"metrics": [1]})), "metrics");
        assert_eq!(field(json!({"target": "x"})), "metrics");
        assert_eq!(field(json!({"metrics": {}, "target": 3})), "target");
        assert_eq!(field(json!({"metrics": {}, "targte": "x"})), "targte");
        let mut bad = seed_policy();
        bad["target"] = json!("web-[");
        assert_eq!(
            field(json!({"metrics": {}, "policies": [seed_policy(), bad]})),
            "policies[1].target"
        );
        let mut bad = seed_policy();
        bad["severity"] = json!("urgent");
        assert_eq!(
            field(json!({"metrics": {}, "policies": [bad]})),
            "policies[0].severity"
        );
        assert_eq!(
            field(json!({"metrics": {}, "policies": [seed_policy(), seed_policy()]})),
            "policies[1].name"
        );
    }
}
