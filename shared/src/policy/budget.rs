//! Fleet-wide disruption budgets: how many hosts a policy may act on at once, across the
//! fleet (or per label group), and how many times an hour.
//!
//! ```yaml
//! budget:
//!   max_concurrent: 2        # or "10%": a share of the hosts in the label group
//!   per: role                # one budget per value of this label (default: one for all)
//!   max_per_hour: 20         # optional
//!   offline: wait            # wait (default: no lease, no action) | act (edge autonomy)
//! ```
//!
//! An agent takes a lease from the coordinator before each budgeted action
//! ([`crate::lease`]); the budget's key is the policy's name and the value of the `per`
//! label on the host ([`Budget::key`]).
//!
//! A bundle group may declare one budget for all its policies (`budget:` in its
//! `group.yaml`): it travels in the signed [`crate::bundle::Bundle`] and applies to every
//! policy of the group that remediates and has no budget of its own
//! ([`group_budget_applies`]). The coordinator counts all of them against one pool per
//! group.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest `max_concurrent` (and `max_per_hour`) a budget may give.
pub const MAX_BUDGET: u32 = 10_000;

/// How many actions may run at once under one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetMax {
    /// At most this many hosts at once.
    Count(u32),
    /// At most this share (1–100 %) of the hosts in the label group, rounded up (at least
    /// one).
    Percent(u32),
}

impl BudgetMax {
    /// The number of concurrent leases this allows in a group of `hosts` hosts.
    pub fn resolve(self, hosts: usize) -> u32 {
        match self {
            BudgetMax::Count(n) => n,
            BudgetMax::Percent(p) => {
                let hosts = u64::try_from(hosts).unwrap_or(u64::MAX);
                let n = hosts.saturating_mul(u64::from(p)).div_ceil(100);
                u32::try_from(n).unwrap_or(u32::MAX).clamp(1, MAX_BUDGET)
            }
        }
    }
}

impl fmt::Display for BudgetMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetMax::Count(n) => write!(f, "{n}"),
            BudgetMax::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What an agent does when the coordinator does not answer a lease request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineMode {
    /// Keep waiting (fail closed): no lease, no action.
    #[default]
    Wait,
    /// Act alone, and record that it did.
    Act,
}

impl OfflineMode {
    /// `wait` or `act`.
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineMode::Wait => "wait",
            OfflineMode::Act => "act",
        }
    }
}

/// A checked budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Concurrent leases allowed.
    pub max: BudgetMax,
    /// The label whose value splits the fleet into groups, each with its own budget.
    pub per: Option<String>,
    /// Leases granted per rolling hour, at most.
    pub max_per_hour: Option<u32>,
    /// What to do when the coordinator cannot be reached.
    pub offline: OfflineMode,
}

impl Budget {
    /// The budget key for `policy` on a host with `labels`: the policy's name, and the
    /// value of the `per` label (empty when the host has no such label).
    pub fn key(&self, policy: &str, labels: &[(String, String)]) -> String {
        match self.per_value(labels) {
            None => policy.to_string(),
            Some((per, value)) => format!("{policy}/{per}={value}"),
        }
    }

    /// The `per` label and its value on a host with `labels` (empty when the host has no
    /// such label); `None` for a budget without `per`.
    pub fn per_value(&self, labels: &[(String, String)]) -> Option<(String, String)> {
        let per = self.per.as_ref()?;
        let value = labels
            .iter()
            .find(|(k, _)| k == per)
            .map_or(String::new(), |(_, v)| v.clone());
        Some((per.clone(), value))
    }
}

impl Budget {
    /// Checks the ranges of a budget that arrived already parsed (in a signed bundle or
    /// a command); an error names the field (under `budget.`).
    pub fn check_ranges(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: String| Err((format!("budget.{field}"), message));
        match self.max {
            BudgetMax::Count(n) if !(1..=MAX_BUDGET).contains(&n) => {
                return err(
                    "max_concurrent",
                    format!("must be 1–{MAX_BUDGET} hosts, got {n}"),
                )
            }
            BudgetMax::Percent(p) if !(1..=100).contains(&p) => {
                return err(
                    "max_concurrent",
                    format!("a share must be 1%–100%, got {p}%"),
                )
            }
            _ => {}
        }
        if let Some(per) = &self.per {
            if !is_label_name(per) {
                return err("per", format!("`{per}` is not a label name"));
            }
        }
        if let Some(n) = self.max_per_hour {
            if !(1..=MAX_BUDGET).contains(&n) {
                return err("max_per_hour", format!("must be 1–{MAX_BUDGET}, got {n}"));
            }
        }
        Ok(())
    }
}

/// Whether a bundle group's budget applies to `policy`: it remediates (`auto_remediate`,
/// at least one action, not `dry_run`) and has no budget of its own (its own wins).
pub fn group_budget_applies(policy: &crate::policy::Policy) -> bool {
    policy.budget.is_none()
        && policy.auto_remediate
        && !policy.dry_run
        && !policy.actions.is_empty()
}

/// Gives every policy of a bundle group that [`group_budget_applies`] to the group's
/// budget.
pub fn apply_group_budget(policies: &mut [crate::policy::Policy], group: &Budget) {
    for policy in policies {
        if group_budget_applies(policy) {
            policy.budget = Some(group.clone());
        }
    }
}

fn is_label_name(per: &str) -> bool {
    (1..=64).contains(&per.len())
        && per
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `max_concurrent` as written: a number, or a share such as `"10%"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxSpec {
    /// `2`.
    Number(i64),
    /// `"10%"` (or `"2"`).
    Text(String),
}

/// A budget as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// A number of hosts (1–10000), or a share of the label group (`"1%"`–`"100%"`).
    pub max_concurrent: MaxSpec,
    /// The label that splits the fleet into groups (default: one group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// Leases granted per rolling hour (1–10000; default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_hour: Option<i64>,
    /// `wait` (default) or `act`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<String>,
}

impl BudgetSpec {
    /// Checks the spec; an error names the field (under `budget.`).
    pub fn check(&self) -> Result<Budget, (String, String)> {
        let err = |field: &str, message: String| (format!("budget.{field}"), message);
        let max = match &self.max_concurrent {
            MaxSpec::Number(n) => count(*n).map_err(|m| err("max_concurrent", m))?,
            MaxSpec::Text(text) => {
                let text = text.trim();
                match text.strip_suffix('%') {
                    Some(share) => {
                        let p: i64 = share.trim().parse().map_err(|_| {
                            err(
                                "max_concurrent",
                                format!("`{text}` is not a whole percentage such as \"10%\""),
                            )
                        })?;
                        if !(1..=100).contains(&p) {
                            return Err(err(
                                "max_concurrent",
                                format!("a share must be 1%–100%, got {p}%"),
                            ));
                        }
                        BudgetMax::Percent(u32::try_from(p).unwrap_or(100))
                    }
                    None => {
                        let n: i64 = text.parse().map_err(|_| {
                            err(
                                "max_concurrent",
                                format!("`{text}` is neither a number of hosts nor a share such as \"10%\""),
                            )
                        })?;
                        count(n).map_err(|m| err("max_concurrent", m))?
                    }
                }
            }
        };
        if let Some(per) = &self.per {
            if !is_label_name(per) {
                return Err(err(
                    "per",
                    format!("`{per}` is not a label name (1–64 letters, digits, `_`, `-`, `.`)"),
                ));
            }
        }
        let max_per_hour = match self.max_per_hour {
            None => None,
            Some(n) if (1..=i64::from(MAX_BUDGET)).contains(&n) => u32::try_from(n).ok(),
            Some(n) => {
                return Err(err(
                    "max_per_hour",
                    format!("must be 1–{MAX_BUDGET}, got {n}"),
                ))
            }
        };
        let offline = match self.offline.as_deref().map(str::trim) {
            None | Some("wait") => OfflineMode::Wait,
            Some("act") => OfflineMode::Act,
            Some(other) => {
                return Err(err(
                    "offline",
                    format!("`{other}` is not `wait` (the default: no lease, no action) or `act`"),
                ))
            }
        };
        Ok(Budget {
            max,
            per: self.per.clone(),
            max_per_hour,
            offline,
        })
    }
}

fn count(n: i64) -> Result<BudgetMax, String> {
    if (1..=i64::from(MAX_BUDGET)).contains(&n) {
        Ok(BudgetMax::Count(u32::try_from(n).unwrap_or(MAX_BUDGET)))
    } else {
        Err(format!(
            "must be 1–{MAX_BUDGET} hosts (or a share such as \"10%\"), got {n}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BudgetSpec {
        serde_yaml_ng::from_str(yaml).expect("budget yaml")
    }

    #[test]
    fn counts_shares_and_defaults() {
        let b = spec("{max_concurrent: 2, per: role}").check().unwrap();
        assert_eq!(b.max, BudgetMax::Count(2));
        assert_eq!(b.per.as_deref(), Some("role"));
        assert_eq!(b.offline, OfflineMode::Wait);
        assert_eq!(b.max_per_hour, None);
        let b = spec("{max_concurrent: \"10%\", max_per_hour: 5, offline: act}")
            .check()
            .unwrap();
        assert_eq!(b.max, BudgetMax::Percent(10));
        assert_eq!(b.max_per_hour, Some(5));
        assert_eq!(b.offline, OfflineMode::Act);
        assert_eq!(
            spec("{max_concurrent: \"3\"}").check().unwrap().max,
            BudgetMax::Count(3)
        );
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        for (yaml, field) in [
            ("{max_concurrent: 0}", "budget.max_concurrent"),
            ("{max_concurrent: -1}", "budget.max_concurrent"),
            ("{max_concurrent: 10001}", "budget.max_concurrent"),
            ("{max_concurrent: \"0%\"}", "budget.max_concurrent"),
            ("{max_concurrent: \"101%\"}", "budget.max_concurrent"),
            ("{max_concurrent: \"ten%\"}", "budget.max_concurrent"),
            ("{max_concurrent: many}", "budget.max_concurrent"),
            (
                "{max_concurrent: 1, max_per_hour: 0}",
                "budget.max_per_hour",
            ),
            ("{max_concurrent: 1, offline: maybe}", "budget.offline"),
            ("{max_concurrent: 1, per: \"a b\"}", "budget.per"),
        ] {
            let (f, message) = spec(yaml).check().unwrap_err();
            assert_eq!(f, field, "{yaml}: {message}");
        }
        assert!(serde_yaml_ng::from_str::<BudgetSpec>("{max_concurrent: 1, extra: 2}").is_err());
    }

    #[test]
    fn a_policy_file_with_a_budget_loads_and_a_bad_one_names_the_field() {
        let yaml = "policies:\n  - name: restart-web\n    target: nginx.service\n    \
                    condition: {type: unit_state}\n    auto_remediate: true\n    \
                    action: restart\n    budget: {max_concurrent: \"10%\", per: role, \
                    max_per_hour: 20, offline: act}\n";
        let policies = crate::policy::load::load_text(yaml, "p.yaml").unwrap();
        let budget = policies[0].budget.clone().unwrap();
        assert_eq!(budget.max, BudgetMax::Percent(10));
        assert_eq!(budget.offline, OfflineMode::Act);
        // The spec writes back what it read.
        let specs = crate::policy::load::parse_specs(yaml, "p.yaml").unwrap();
        let json = serde_json::to_value(&specs[0]).unwrap();
        assert_eq!(json["budget"]["max_concurrent"], "10%");
        let bad = yaml.replace("\"10%\"", "0");
        let err = crate::policy::load::load_text(&bad, "p.yaml").unwrap_err();
        assert!(err.to_string().contains("budget.max_concurrent"), "{err}");
        let unknown = yaml.replace("offline: act", "offline: act, extra: 1");
        assert!(crate::policy::load::load_text(&unknown, "p.yaml").is_err());
    }

    #[test]
    fn shares_round_up_and_keys_name_the_label_value() {
        assert_eq!(BudgetMax::Percent(10).resolve(10), 1);
        assert_eq!(BudgetMax::Percent(10).resolve(11), 2);
        assert_eq!(BudgetMax::Percent(10).resolve(0), 1);
        assert_eq!(BudgetMax::Percent(100).resolve(7), 7);
        assert_eq!(BudgetMax::Count(2).resolve(100), 2);
        let b = spec("{max_concurrent: 2, per: role}").check().unwrap();
        let labels = vec![("role".to_string(), "web".to_string())];
        assert_eq!(b.key("p", &labels), "p/role=web");
        assert_eq!(b.key("p", &[]), "p/role=");
        let all = spec("{max_concurrent: 2}").check().unwrap();
        assert_eq!(all.key("p", &labels), "p");
    }
}
