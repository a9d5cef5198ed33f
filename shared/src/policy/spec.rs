//! Policies as users write them, in YAML files or REST bodies (JSON): the original
//! system's shape plus Vigil's extensions. [`PolicySpec::check`] turns a
//! spec into a [`Policy`], or a [`PolicyError`] naming the policy and the field.
//!
//! ```yaml
//! policies:
//!   - name: high-cpu-alert            # the original format, unchanged
//!     description: Alert when CPU exceeds 80%
//!     severity: warning               # info | warning | critical
//!     target: web-*                   # exact, glob, or all / *
//!     enabled: true
//!     auto_remediate: false
//!     condition: {type: metric_exceeds, metric: cpu_percent, threshold: 80}
//!     action: restart
//!     params: {cooldown_seconds: 300}
//!   - name: nginx-down                # extensions
//!     target: nginx.service
//!     condition: {type: unit_state, expect: [active]}
//!     for: 10s
//!     cooldown: 1m
//!     verify: 30s
//!     flap: {max_actions: 3, within: 10m, reset_after: 10m}
//!     actions: [restart, restart, {action: webhook, params: {url: "http://pager/hook"}}]
//!     dry_run: false
//!     budget: {max_concurrent: 2, per: role, max_per_hour: 10, offline: wait}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::budget::BudgetSpec;
use super::expr;
use super::model::{ActionKind, ActionStep, Condition, Direction, Flap, Hold, Policy, Severity};
use super::target::Target;
use crate::validate;

/// Default verify window after an action.
pub const DEFAULT_VERIFY: Duration = Duration::from_secs(30);
/// Default HTTP/TCP check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default consecutive failures for HTTP/TCP checks.
pub const DEFAULT_CHECK_FAILURES: u32 = 3;

/// A policy whose content breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("policy `{policy}`: field `{field}`: {message}")]
pub struct PolicyError {
    /// The policy's name (or its position, if it has none).
    pub policy: String,
    /// The field, as a path (`condition.conditions[1].threshold`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A duration as written: `"30s"`, `"5m"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\", or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                crate::time::parse_duration(v)
                    .map(DurationSpec)
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                u64::try_from(v)
                    .map(|v| DurationSpec(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationSpec, E> {
                Duration::try_from_secs_f64(v)
                    .map(DurationSpec)
                    .map_err(|_| E::custom(format!("{v} is not a usable number of seconds")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A hold as written in `for:`: a duration, or `"3 attempts"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSpec(pub Hold);

impl Serialize for HoldSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&expr::format_hold(self.0))
    }
}

impl<'de> Deserialize<'de> for HoldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HoldSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", a number of seconds, or \"3 attempts\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HoldSpec, E> {
                expr::parse_hold(v).map(HoldSpec).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HoldSpec, E> {
                if v == 0 {
                    return Err(E::custom("a hold of zero means no hold; leave `for` out"));
                }
                Ok(HoldSpec(Hold::Duration(Duration::from_secs(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HoldSpec, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a hold cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A condition as written: a map with `type:`, or a one-line expression (`cpu_usage > 80`).
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionSpec {
    /// `"cpu_usage > 80% for 5m"`.
    Expression(String),
    /// `{type: metric_exceeds, …}`.
    Node(ConditionNode),
}

/// The structured condition forms. Written as a map whose `type` names the form; see
/// [`ConditionSpec`]'s (de)serialization, which moves `type` so that a bad field is
/// reported by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConditionNode {
    /// Latest value above a threshold.
    MetricExceeds {
        /// Metric name.
        metric: String,
        /// Threshold.
        threshold: f64,
        /// `>=` instead of `>`.
        #[serde(default, skip_serializing_if = "is_false")]
        inclusive: bool,
    },
    /// Latest value below a threshold.
    MetricBelow {
        /// Metric name.
        metric: String,
        /// Threshold.
        threshold: f64,
        /// `<=` instead of `<`.
        #[serde(default, skip_serializing_if = "is_false")]
        inclusive: bool,
    },
    /// Every sub-condition.
    All {
        /// Sub-conditions.
        conditions: Vec<ConditionSpec>,
    },
    /// Any sub-condition.
    Any {
        /// Sub-conditions.
        conditions: Vec<ConditionSpec>,
    },
    /// Rate of increase over a window.
    Rate {
        /// Metric name.
        metric: String,
        /// Window.
        over: DurationSpec,
        /// Time unit of the rate (default 1s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        per: Option<DurationSpec>,
        /// Holds above this rate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        above: Option<f64>,
        /// Holds below this rate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        below: Option<f64>,
    },
    /// Change in one direction over a window.
    Trend {
        /// Metric name.
        metric: String,
        /// Window.
        over: DurationSpec,
        /// increasing | decreasing.
        direction: Direction,
        /// Minimum change (default 0).
        #[serde(default)]
        by: f64,
    },
    /// No sample for a while.
    Absent {
        /// Metric name.
        metric: String,
        /// How long.
        #[serde(rename = "for")]
        for_: DurationSpec,
    },
    /// A systemd unit not in an expected state.
    UnitState {
        /// The unit (default: the policy's target).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
        /// Acceptable `ActiveState`s (default `[active]`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        expect: Vec<String>,
    },
    /// A Docker container not running (or unhealthy).
    ContainerState {
        /// The container (default: the policy's target).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        /// Acceptable state (default `running`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
        /// Also hold when unhealthy (default true).
        #[serde(default = "yes")]
        unhealthy: bool,
    },
    /// A named process is not running.
    ProcessMissing {
        /// Process name.
        process: String,
    },
    /// HTTP GET failing N times in a row.
    HttpCheck {
        /// URL (http://).
        url: String,
        /// Expected status (default: any 2xx).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_status: Option<u16>,
        /// Timeout (default 2s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<DurationSpec>,
        /// Failures in a row (default 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failures: Option<u32>,
    },
    /// TCP connect failing N times in a row.
    TcpCheck {
        /// `host:port`.
        address: String,
        /// Timeout (default 2s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<DurationSpec>,
        /// Failures in a row (default 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failures: Option<u32>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

impl Serialize for ConditionSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConditionSpec::Expression(text) => s.serialize_str(text),
            ConditionSpec::Node(node) => {
                // `{"metric_exceeds": {fields}}` → `{"type": "metric_exceeds", fields}`.
                let tagged = serde_json::to_value(node).map_err(serde::ser::Error::custom)?;
                let flat = match tagged {
                    serde_json::Value::Object(outer) => {
                        let mut flat = serde_json::Map::new();
                        for (kind, fields) in outer {
                            flat.insert("type".into(), serde_json::Value::String(kind));
                            if let serde_json::Value::Object(fields) = fields {
                                flat.extend(fields);
                            }
                        }
                        serde_json::Value::Object(flat)
                    }
                    other => other,
                };
                flat.serialize(s)
            }
        }
    }
}

/// Reads a `{type: …, fields…}` map into a node, naming the field at fault.
fn node_from_map(
    mut map: serde_json::Map<String, serde_json::Value>,
) -> Result<ConditionNode, String> {
    let kind = match map.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(other) => return Err(format!("`type` must be a string, got {other}")),
        None => {
            return Err(
                "a condition map needs `type` (metric_exceeds, metric_below, all, any, \
                        rate, trend, absent, unit_state, container_state, process_missing, \
                        http_check or tcp_check)"
                    .into(),
            )
        }
    };
    let tagged = serde_json::Value::Object(serde_json::Map::from_iter([(
        kind.clone(),
        serde_json::Value::Object(map),
    )]));
    serde_path_to_error::deserialize::<_, ConditionNode>(tagged).map_err(|e| {
        let path = e.path().to_string();
        // The first segment is the `type` we moved; drop it.
        let field = path.split_once('.').map(|(_, rest)| rest.to_string());
        let inner = e.into_inner().to_string();
        match field {
            Some(field) if !field.is_empty() => format!("field `{field}`: {inner}"),
            _ => format!("condition type `{kind}`: {inner}"),
        }
    })
}

impl<'de> Deserialize<'de> for ConditionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ConditionSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a condition: a map with `type` (metric_exceeds, metric_below, all, any, rate, \
                     trend, absent, unit_state, container_state, process_missing, http_check, \
                     tcp_check) or an expression such as \"cpu_percent > 80 for 5m\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConditionSpec, E> {
                expr::parse(v).map_err(E::custom)?;
                Ok(ConditionSpec::Expression(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ConditionSpec, A::Error> {
                let map = serde_json::Map::<String, serde_json::Value>::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?;
                node_from_map(map)
                    .map(ConditionSpec::Node)
                    .map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One step of an `actions:` chain: a name, or `{action: name, params: {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionStepSpec {
    /// The action name.
    pub action: String,
    /// Its parameters.
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionStepMap {
    action: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    params: BTreeMap<String, serde_json::Value>,
}

impl Serialize for ActionStepSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.params.is_empty() {
            s.serialize_str(&self.action)
        } else {
            ActionStepMap {
                action: self.action.clone(),
                params: self.params.clone(),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ActionStepSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ActionStepSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an action name, or {action: name, params: {...}}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ActionStepSpec, E> {
                Ok(ActionStepSpec {
                    action: v.to_string(),
                    params: BTreeMap::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ActionStepSpec, A::Error> {
                let m = ActionStepMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ActionStepSpec {
                    action: m.action,
                    params: m.params,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Flap protection as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapSpec {
    /// Actions allowed within the window (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_actions: Option<u32>,
    /// The window (default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<DurationSpec>,
    /// Healthy time that resets the counters (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<DurationSpec>,
}

fn default_target() -> String {
    "all".into()
}

/// A policy as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Unique name: letters, digits, `-`, `_`, `.`, `:`; at most 128.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// info | warning | critical (default warning).
    #[serde(default)]
    pub severity: Severity,
    /// Exact name, glob, or all / * (default all).
    #[serde(default = "default_target")]
    pub target: String,
    /// Evaluated at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Run the actions on a violation (default false: record only).
    #[serde(default)]
    pub auto_remediate: bool,
    /// The condition.
    pub condition: ConditionSpec,
    /// How long it must hold: `30s`, or `3 attempts`.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldSpec>,
    /// Least time between two actions on one target (default 0; also read from
    /// `params.cooldown_seconds`, as the original did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<DurationSpec>,
    /// Time after an action before judging it (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<DurationSpec>,
    /// Flap protection (default 5 actions in 15m, reset after 10m healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<FlapSpec>,
    /// Decide and record, never act.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// One action (the original format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// An escalation chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ActionStepSpec>>,
    /// Parameters for the actions.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// A fleet-wide disruption budget ([`super::budget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// Whether `name` is a usable policy name.
pub fn check_policy_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1–128 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "`{name}` contains `{}`; use letters, digits, `-`, `_`, `.` and `:`",
            c.escape_debug()
        ));
    }
    Ok(())
}

impl PolicySpec {
    /// Checks the spec and fills in defaults.
    pub fn check(&self) -> Result<Policy, PolicyError> {
        let err = |field: &str, message: String| PolicyError {
            policy: self.name.clone(),
            field: field.to_string(),
            message,
        };
        check_policy_name(&self.name).map_err(|m| err("name", m))?;
        let target = Target::parse(&self.target).map_err(|m| err("target", m))?;
        let (condition, expr_hold) =
            check_condition(&self.condition, "condition").map_err(|(f, m)| err(&f, m))?;
        let hold = match (expr_hold, self.hold) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "for",
                    "the condition expression already says `for`; give the hold once".into(),
                ))
            }
            (a, b) => a.or(b.map(|h| h.0)),
        };
        let cooldown = match (self.cooldown, self.params.get("cooldown_seconds")) {
            (Some(d), _) => d.0,
            (None, Some(v)) => v
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    err(
                        "params.cooldown_seconds",
                        format!("must be a number of seconds, got {v}"),
                    )
                })?,
            (None, None) => Duration::ZERO,
        };
        let verify = self.verify.map_or(DEFAULT_VERIFY, |d| d.0);
        if verify.is_zero() {
            return Err(err("verify", "must be longer than zero".into()));
        }
        let defaults = Flap::default();
        let flap = match self.flap {
            None => defaults,
            Some(f) => Flap {
                max_actions: f.max_actions.unwrap_or(defaults.max_actions),
                within: f.within.map_or(defaults.within, |d| d.0),
                reset_after: f.reset_after.map_or(defaults.reset_after, |d| d.0),
            },
        };
        if flap.max_actions == 0 {
            return Err(err("flap.max_actions", "must be at least 1".into()));
        }
        let steps: Vec<ActionStepSpec> = match (&self.action, &self.actions) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "actions",
                    "give either `action` (one) or `actions` (a chain), not both".into(),
                ))
            }
            (Some(action), None) => vec![ActionStepSpec {
                action: action.clone(),
                params: BTreeMap::new(),
            }],
            (None, Some(chain)) => chain.clone(),
            (None, None) => Vec::new(),
        };
        let mut actions = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let field = if self.actions.is_some() {
                format!("actions[{i}]")
            } else {
                "action".to_string()
            };
            let kind = ActionKind::parse(&step.action).map_err(|m| err(&field, m))?;
            let mut params = self.params.clone();
            params.extend(step.params.clone());
            actions.push(ActionStep {
                kind,
                written: step.action.clone(),
                params,
            });
        }
        if self.auto_remediate && actions.is_empty() {
            return Err(err(
                "action",
                "auto_remediate is true but no action is given".into(),
            ));
        }
        let budget = self
            .budget
            .as_ref()
            .map(BudgetSpec::check)
            .transpose()
            .map_err(|(f, m)| err(&f, m))?;
        Ok(Policy {
            name: self.name.clone(),
            description: self.description.clone(),
            severity: self.severity,
            target,
            enabled: self.enabled,
            auto_remediate: self.auto_remediate,
            condition,
            hold,
            cooldown,
            verify,
            flap,
            dry_run: self.dry_run,
            actions,
            budget,
        })
    }
}

type FieldFailure = (String, String);

fn check_condition(
    spec: &ConditionSpec,
    path: &str,
) -> Result<(Condition, Option<Hold>), FieldFailure> {
    let node = match spec {
        ConditionSpec::Expression(text) => {
            return expr::parse(text).map_err(|m| (path.to_string(), m))
        }
        ConditionSpec::Node(node) => node,
    };
    let at = |field: &str| format!("{path}.{field}");
    let metric_ok =
        |metric: &str| validate::metric_name(metric).map_err(|e| (at("metric"), e.problem));
    let finite = |field: &str, v: f64| {
        if v.is_finite() {
            Ok(v)
        } else {
            Err((at(field), format!("must be a finite number, got {v}")))
        }
    };
    let positive = |field: &str, d: DurationSpec| {
        if d.0.is_zero() {
            Err((at(field), "must be longer than zero".to_string()))
        } else {
            Ok(d.0)
        }
    };
    let condition = match node {
        ConditionNode::MetricExceeds {
            metric,
            threshold,
            inclusive,
        } => {
            metric_ok(metric)?;
            Condition::MetricExceeds {
                metric: metric.clone(),
                threshold: finite("threshold", *threshold)?,
                inclusive: *inclusive,
            }
        }
        ConditionNode::MetricBelow {
            metric,
            threshold,
            inclusive,
        } => {
            metric_ok(metric)?;
            Condition::MetricBelow {
                metric: metric.clone(),
                threshold: finite("threshold", *threshold)?,
                inclusive: *inclusive,
            }
        }
        ConditionNode::All { conditions } | ConditionNode::Any { conditions } => {
            if conditions.is_empty() {
                return Err((at("conditions"), "must list at least one condition".into()));
            }
            let mut children = Vec::with_capacity(conditions.len());
            for (i, child) in conditions.iter().enumerate() {
                let (c, hold) = check_condition(child, &format!("{path}.conditions[{i}]"))?;
                if hold.is_some() {
                    return Err((
                        format!("{path}.conditions[{i}]"),
                        "`for` belongs to the whole policy, not to one sub-condition".into(),
                    ));
                }
                children.push(c);
            }
            if matches!(node, ConditionNode::All { .. }) {
                Condition::All(children)
            } else {
                Condition::Any(children)
            }
        }
        ConditionNode::Rate {
            metric,
            over,
            per,
            above,
            below,
        } => {
            metric_ok(metric)?;
            if above.is_none() && below.is_none() {
                return Err((
                    at("above"),
                    "a rate condition needs `above` or `below`".into(),
                ));
            }
            Condition::Rate {
                metric: metric.clone(),
                over: positive("over", *over)?,
                per: per.map_or(Ok(Duration::from_secs(1)), |p| positive("per", p))?,
                above: above.map(|v| finite("above", v)).transpose()?,
                below: below.map(|v| finite("below", v)).transpose()?,
            }
        }
        ConditionNode::Trend {
            metric,
            over,
            direction,
            by,
        } => {
            metric_ok(metric)?;
            if !by.is_finite() || *by < 0.0 {
                return Err((
                    at("by"),
                    format!("must be a number of at least 0, got {by}"),
                ));
            }
            Condition::Trend {
                metric: metric.clone(),
                over: positive("over", *over)?,
                direction: *direction,
                by: *by,
            }
        }
        ConditionNode::Absent { metric, for_ } => {
            metric_ok(metric)?;
            Condition::Absent {
                metric: metric.clone(),
                for_: positive("for", *for_)?,
            }
        }
        ConditionNode::UnitState { unit, expect } => Condition::UnitState {
            unit: unit.clone(),
            expect: if expect.is_empty() {
                vec!["active".into()]
            } else {
                expect.clone()
            },
        },
        ConditionNode::ContainerState {
            container,
            expect,
            unhealthy,
        } => Condition::ContainerState {
            container: container.clone(),
            expect: expect.clone().unwrap_or_else(|| "running".into()),
            unhealthy: *unhealthy,
        },
        ConditionNode::ProcessMissing { process } => {
            if process.is_empty() {
                return Err((at("process"), "must not be empty".into()));
            }
            Condition::ProcessMissing {
                process: process.clone(),
            }
        }
        ConditionNode::HttpCheck {
            url,
            expect_status,
            timeout,
            failures,
        } => {
            if !url.starts_with("http://") {
                return Err((
                    at("url"),
                    format!(
                        "`{url}` must start with http:// (the agent's checker speaks plain HTTP)"
                    ),
                ));
            }
            Condition::HttpCheck {
                url: url.clone(),
                expect_status: *expect_status,
                timeout: timeout.map_or(Ok(DEFAULT_CHECK_TIMEOUT), |t| positive("timeout", t))?,
                failures: check_failures(*failures).map_err(|m| (at("failures"), m))?,
            }
        }
        ConditionNode::TcpCheck {
            address,
            timeout,
            failures,
        } => {
            if !address.contains(':') {
                return Err((at("address"), format!("`{address}` must be host:port")));
            }
            Condition::TcpCheck {
                address: address.clone(),
                timeout: timeout.map_or(Ok(DEFAULT_CHECK_TIMEOUT), |t| positive("timeout", t))?,
                failures: check_failures(*failures).map_err(|m| (at("failures"), m))?,
            }
        }
    };
    Ok((condition, None))
}

fn check_failures(failures: Option<u32>) -> Result<u32, String> {
    match failures {
        None => Ok(DEFAULT_CHECK_FAILURES),
        Some(0) => Err("must be at least 1".into()),
        Some(n) => Ok(n),
    }
}
