//! The desired-state manifest of a bundle (`manifest.yaml`): the systemd units and Docker
//! containers a host group must run, and what to do when one is not running.
//!
//! ```yaml
//! units:      [{name: nginx.service, remediation: restart}]
//! containers: [{name: web-1}]            # remediation defaults to restart
//! ```
//!
//! Both the coordinator (to validate and to show drift) and the agent (to enforce it) turn
//! each entry into an ordinary policy with [`manifest_policies`]:
//! `manifest:<group>:unit:<name>` / `manifest:<group>:container:<name>`, condition
//! `unit_state` / `container_state` on `target: <name>`, `auto_remediate: true`,
//! `action: <remediation>`, severity critical.

use serde::{Deserialize, Serialize};

use crate::policy::PolicySpec;

/// The prefix of every policy made from a manifest.
pub const MANIFEST_POLICY_PREFIX: &str = "manifest:";

/// The remediation used when an entry names none.
pub const DEFAULT_REMEDIATION: &str = "restart";

/// A manifest: the desired state of a host group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// systemd units that must be active.
    #[serde(default)]
    pub units: Vec<ManifestEntry>,
    /// Docker containers that must be running (and healthy).
    #[serde(default)]
    pub containers: Vec<ManifestEntry>,
}

/// One unit or container of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// The unit (`nginx.service`) or container (`web-1`) name.
    pub name: String,
    /// The action when it is not running (default [`DEFAULT_REMEDIATION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

/// Parses a manifest's text (`manifest.yaml`; an empty file is an empty manifest). The
/// error names the field, with line and column.
pub fn parse_manifest(text: &str) -> Result<Manifest, String> {
    if text.trim().is_empty() {
        return Ok(Manifest::default());
    }
    serde_yaml_ng::from_str::<Option<Manifest>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("manifest.yaml: {e}"))
}

/// Parses a manifest and turns each entry into a checked policy spec (see the module
/// documentation for the shape). The error names the entry and the field at fault.
pub fn manifest_policies(group: &str, text: &str) -> Result<Vec<PolicySpec>, String> {
    let manifest = parse_manifest(text)?;
    let mut specs = Vec::new();
    for (kind, condition, entries) in [
        ("unit", "unit_state", &manifest.units),
        ("container", "container_state", &manifest.containers),
    ] {
        for (index, entry) in entries.iter().enumerate() {
            let at = format!("manifest.yaml: {kind}s[{index}] (`{}`)", entry.name);
            if entry.name.trim().is_empty() {
                return Err(format!("{at}: field `name` must not be empty"));
            }
            let name = format!("{MANIFEST_POLICY_PREFIX}{group}:{kind}:{}", entry.name);
            let action = entry
                .remediation
                .clone()
                .unwrap_or_else(|| DEFAULT_REMEDIATION.to_string());
            let spec: PolicySpec = serde_json::from_value(serde_json::json!({
                "name": name,
                "description": format!("desired state of group `{group}`: {kind} `{}` running", entry.name),
                "severity": "critical",
                "target": entry.name,
                "auto_remediate": true,
                "condition": {"type": condition},
                "action": action,
            }))
            .map_err(|e| format!("{at}: {e}"))?;
            spec.check().map_err(|e| format!("{at}: {e}"))?;
            if specs.iter().any(|s: &PolicySpec| s.name == spec.name) {
                return Err(format!("{at}: field `name`: listed twice"));
            }
            specs.push(spec);
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_critical_auto_remediating_policies() {
        let specs = manifest_policies(
            "web",
            "units: [{name: nginx.service, remediation: restart}]\ncontainers: [{name: web-1}]\n",
        )
        .unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "manifest:web:unit:nginx.service",
                "manifest:web:container:web-1"
            ]
        );
        let json = serde_json::to_value(&specs[1]).unwrap();
        assert_eq!(json["condition"]["type"], "container_state");
        assert_eq!(json["target"], "web-1");
        assert_eq!(json["action"], "restart");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["auto_remediate"], true);
        assert!(specs.iter().all(|s| s.check().is_ok()));
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let err = manifest_policies("web", "unitz: []\n").unwrap_err();
        assert!(err.contains("unitz"), "{err}");
        let err = manifest_policies("web", "units: [{name: a.service, remediation: dance}]\n")
            .unwrap_err();
        assert!(err.contains("units[0]") && err.contains("dance"), "{err}");
        let err =
            manifest_policies("web", "units: [{name: a.service}, {name: a.service}]").unwrap_err();
        assert!(err.contains("twice"), "{err}");
        assert_eq!(manifest_policies("web", "").unwrap(), vec![]);
    }
}
