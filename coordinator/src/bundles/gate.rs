//! The bundle gate: a group's `group.yaml` may ask that its policies be backtested
//! ([`crate::policies::backtest`]) over the group's hosts before a new version is
//! published:
//!
//! ```yaml
//! selector: {role: web}
//! backtest: {since: 7d, max_actions: 20}
//! ```
//!
//! If the replay of the last `since` of stored history says the group's policies would
//! have run more than `max_actions` actions on the hosts the selector picks, the version
//! is not published (the last good one stays) and the reason shows in
//! `GET /api/v1/bundles`. A gate that cannot be run (the store cannot be read, the range
//! holds too much history) also holds the version back: the gate fails closed.

use serde::{Deserialize, Serialize};
use vigil_shared::time::{format_duration, to_rfc3339};
use vigil_shared::wire::Tag;

use super::layout::GroupSource;
use crate::policies::backtest::{self, Backtest, HostSelector};
use crate::store::Store;

/// Largest `max_actions`.
pub const MAX_ACTIONS: i64 = 1_000_000;

/// `backtest:` in `group.yaml`, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// How far back to replay, e.g. `7d` (at most 31 days).
    pub since: String,
    /// The most actions the replay may count.
    pub max_actions: i64,
}

/// A checked gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// How far back to replay.
    pub since: std::time::Duration,
    /// The most actions allowed.
    pub max_actions: u64,
}

impl GateSpec {
    /// Checks the spec; an error is `(field, message)`, the field under `backtest.`.
    pub fn check(&self) -> Result<Gate, (String, String)> {
        let since =
            backtest::parse_since(&self.since).map_err(|m| ("backtest.since".to_string(), m))?;
        let max_actions = u64::try_from(self.max_actions)
            .ok()
            .filter(|n| *n <= MAX_ACTIONS as u64)
            .ok_or_else(|| {
                (
                    "backtest.max_actions".to_string(),
                    format!("must be 0–{MAX_ACTIONS}, got {}", self.max_actions),
                )
            })?;
        Ok(Gate { since, max_actions })
    }
}

/// What the last gate check of a group found. Fields (and keys on the wire) are
/// alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GateResult {
    /// Actions the replay counted (`null` when it could not run).
    pub actions: Option<u64>,
    /// When it was checked, RFC 3339.
    pub checked_at: String,
    /// The group.
    pub group: String,
    /// Hosts replayed.
    pub hosts: usize,
    /// The most actions allowed.
    pub max_actions: u64,
    /// Whether the version may be published.
    pub passed: bool,
    /// Why not, when it may not.
    pub reason: Option<String>,
    /// The range replayed, e.g. `7days`.
    pub since: String,
}

/// Runs `gate` for `source` over the history in `store` at `now_ms`. Blocks (call from
/// `spawn_blocking` in async code).
pub fn check(store: &Store, source: &GroupSource, gate: &Gate, now_ms: i64) -> GateResult {
    let mut result = GateResult {
        actions: None,
        checked_at: to_rfc3339(now_ms),
        group: source.group.clone(),
        hosts: 0,
        max_actions: gate.max_actions,
        passed: false,
        reason: None,
        since: format_duration(gate.since),
    };
    let policies = match source
        .policies
        .iter()
        .map(|spec| spec.check())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(policies) => policies,
        Err(e) => {
            result.reason = Some(format!("backtest not run: {e}"));
            return result;
        }
    };
    if policies.is_empty() {
        result.actions = Some(0);
        result.passed = true;
        return result;
    }
    let run = backtest::run(
        store,
        &Backtest {
            policies,
            hosts: HostSelector::Labels(source.selector.clone()),
            since: gate.since,
            events: 0,
        },
        now_ms,
    );
    match run {
        Ok(report) => {
            result.actions = Some(report.actions);
            result.hosts = report.hosts.len();
            result.passed = report.actions <= gate.max_actions;
            if !result.passed {
                result.reason = Some(format!(
                    "backtest over the last {} on {} host(s){}: {} actions would have run, more \
                     than max_actions {}",
                    result.since,
                    result.hosts,
                    selector_words(&source.selector),
                    report.actions,
                    gate.max_actions
                ));
            }
        }
        Err(e) => result.reason = Some(format!("backtest could not run: {e}")),
    }
    result
}

fn selector_words(selector: &[Tag]) -> String {
    if selector.is_empty() {
        return String::new();
    }
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", labels.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_by_name() {
        let spec = |since: &str, max| GateSpec {
            since: since.into(),
            max_actions: max,
        };
        assert_eq!(
            spec("7d", 5).check().unwrap(),
            Gate {
                since: std::time::Duration::from_secs(7 * 86_400),
                max_actions: 5
            }
        );
        assert_eq!(spec("soon", 5).check().unwrap_err().0, "backtest.since");
        assert_eq!(spec("40d", 5).check().unwrap_err().0, "backtest.since");
        assert_eq!(
            spec("1h", -1).check().unwrap_err().0,
            "backtest.max_actions"
        );
        assert_eq!(
            spec("1h", MAX_ACTIONS + 1).check().unwrap_err().0,
            "backtest.max_actions"
        );
    }
}
