//! Policy specs from JSON (REST bodies): errors that name the offending field, and the
//! merge behind a partial update (`PUT /api/v1/policies/{name}`).
//!
//! serde reports *what* is wrong but not *where*; to name the field, a failing spec is
//! probed one top-level key at a time (each key on its own, over a minimal valid spec),
//! and the first key that fails alone is the field at fault.

use serde_json::{json, Map, Value};
use vigil_shared::policy::{PolicyError, PolicySpec};

/// The keys a [`PolicySpec`] accepts, as written.
pub const FIELDS: &[&str] = &[
    "name",
    "description",
    "severity",
    "target",
    "enabled",
    "auto_remediate",
    "condition",
    "for",
    "cooldown",
    "verify",
    "flap",
    "dry_run",
    "action",
    "actions",
    "params",
];

/// Keys without a default.
const REQUIRED: &[&str] = &["name", "condition"];

/// Reads a spec from a JSON value. On failure the error's `field` is the offending
/// top-level key, prefixed with `prefix` (e.g. `policies[2].` for the sandbox's list).
pub fn spec_from_value(value: &Value, prefix: &str) -> Result<PolicySpec, PolicyError> {
    let at = |field: &str| format!("{prefix}{field}");
    let Some(object) = value.as_object() else {
        return Err(PolicyError {
            policy: unnamed(prefix),
            field: at("").trim_end_matches('.').to_string(),
            message: format!("a policy must be a JSON object, got {}", kind(value)),
        });
    };
    let policy = object
        .get("name")
        .and_then(Value::as_str)
        .map_or_else(|| unnamed(prefix), str::to_string);
    let err = |field: &str, message: String| PolicyError {
        policy: policy.clone(),
        field: at(field),
        message,
    };
    if let Some(key) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(
            key,
            format!("unknown field `{key}`; a policy has {}", FIELDS.join(", ")),
        ));
    }
    if let Some(key) = REQUIRED.iter().find(|k| !object.contains_key(**k)) {
        return Err(err(key, "is required".into()));
    }
    let whole = match serde_json::from_value::<PolicySpec>(value.clone()) {
        Ok(spec) => return Ok(spec),
        Err(e) => e,
    };
    for (key, field_value) in object {
        let mut probe = json!({
            "name": "probe",
            "condition": {"type": "metric_exceeds", "metric": "probe", "threshold": 0},
        });
        probe[key.as_str()] = field_value.clone();
        if let Err(e) = serde_json::from_value::<PolicySpec>(probe) {
            return Err(err(key, e.to_string()));
        }
    }
    Err(PolicyError {
        policy,
        field: at("").trim_end_matches('.').to_string(),
        message: whole.to_string(),
    })
}

/// Applies a partial update: each key of `patch` replaces that key of `current`; a
/// `null` removes it (back to its default). Setting `action` drops a stored `actions`
/// chain and vice versa, since a policy has one or the other. The name cannot change.
pub fn merge(current: &PolicySpec, patch: &Map<String, Value>) -> Result<PolicySpec, PolicyError> {
    let err = |field: &str, message: String| PolicyError {
        policy: current.name.clone(),
        field: field.to_string(),
        message,
    };
    if let Some(name) = patch.get("name") {
        if name.as_str() != Some(current.name.as_str()) {
            return Err(err(
                "name",
                format!(
                    "a policy cannot be renamed (from `{}` to {name}); create the new one and \
                     delete the old",
                    current.name
                ),
            ));
        }
    }
    let mut merged = match serde_json::to_value(current) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(err(
                "",
                format!("stored policy is not a JSON object but {}", kind(&other)),
            ))
        }
        Err(e) => return Err(err("", format!("stored policy cannot be encoded: {e}"))),
    };
    for (key, value) in patch {
        let sibling = match key.as_str() {
            "action" => Some("actions"),
            "actions" => Some("action"),
            _ => None,
        };
        if let (Some(sibling), false) = (sibling, value.is_null()) {
            merged.remove(sibling);
        }
        if value.is_null() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    spec_from_value(&Value::Object(merged), "")
}

fn unnamed(prefix: &str) -> String {
    let position = prefix.trim_end_matches('.');
    if position.is_empty() {
        "(unnamed)".to_string()
    } else {
        position.to_string()
    }
}

/// The JSON type of a value, in words.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Value {
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

    fn field_of(value: Value) -> String {
        spec_from_value(&value, "").unwrap_err().field
    }

    #[test]
    fn the_seed_example_reads_and_round_trips() {
        let spec = spec_from_value(&seed(), "").unwrap();
        assert_eq!(spec.name, "high-cpu-alert");
        let again = spec_from_value(&serde_json::to_value(&spec).unwrap(), "").unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = seed();
        v["severity"] = json!("urgent");
        assert_eq!(field_of(v), "severity");
        let mut v = seed();
        v["condition"]["threshold"] = json!("eighty");
        assert_eq!(field_of(v), "condition");
        let mut v = seed();
        v["enabeld"] = json!(true);
        let e = spec_from_value(&v, "").unwrap_err();
        assert_eq!(e.field, "enabeld");
        assert!(e.message.contains("unknown field"), "{e}");
        let mut v = seed();
        v.as_object_mut().unwrap().remove("condition");
        assert_eq!(field_of(v), "condition");
        let mut v = seed();
        v["cooldown"] = json!("soon");
        assert_eq!(field_of(v), "cooldown");
        let e = spec_from_value(&json!([1]), "policies[3].").unwrap_err();
        assert_eq!(e.field, "policies[3]");
        assert_eq!(e.policy, "policies[3]");
        let mut v = seed();
        v["enabled"] = json!("yes");
        assert_eq!(
            spec_from_value(&v, "policies[0].").unwrap_err().field,
            "policies[0].enabled"
        );
    }

    #[test]
    fn merge_replaces_given_keys_and_keeps_the_rest() {
        let current = spec_from_value(&seed(), "").unwrap();
        let patch =
            json!({"description": "Updated description", "severity": "critical", "enabled": false});
        let merged = merge(&current, patch.as_object().unwrap()).unwrap();
        assert_eq!(merged.description, "Updated description");
        assert_eq!(merged.severity.as_str(), "critical");
        assert!(!merged.enabled);
        assert_eq!(merged.target, "web-*");
        assert_eq!(merged.condition, current.condition);
        assert_eq!(merged.params, current.params);
    }

    #[test]
    fn merge_null_restores_the_default_and_action_replaces_actions() {
        let current = spec_from_value(&seed(), "").unwrap();
        let merged = merge(&current, json!({"target": null}).as_object().unwrap()).unwrap();
        assert_eq!(merged.target, "all");
        let merged = merge(
            &current,
            json!({"actions": ["restart", "notify"]})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(merged.action, None);
        assert_eq!(merged.actions.as_ref().map(Vec::len), Some(2));
        merged.check().unwrap();
    }

    #[test]
    fn merge_refuses_renames_and_bad_values() {
        let current = spec_from_value(&seed(), "").unwrap();
        let e = merge(&current, json!({"name": "other"}).as_object().unwrap()).unwrap_err();
        assert_eq!(e.field, "name");
        let same = merge(
            &current,
            json!({"name": "high-cpu-alert"}).as_object().unwrap(),
        );
        assert!(same.is_ok());
        let e = merge(&current, json!({"verify": -3}).as_object().unwrap()).unwrap_err();
        assert_eq!(e.field, "verify");
        let e = merge(&current, json!({"condition": null}).as_object().unwrap()).unwrap_err();
        assert_eq!(e.field, "condition");
    }
}
