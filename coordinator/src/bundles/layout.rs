//! The bundle directory: one folder per host group, `DIR/<group>/`, holding
//!
//! - `group.yaml`: `selector: {role: web}`, the labels a host must all have (`{}` or no
//!   file: every host); optionally `backtest: {since: 7d, max_actions: N}`, the gate
//!   a new version must pass before it is published (see [`super::gate`]); and optionally
//!   `budget: {max_concurrent: 2, per: role, max_per_hour: N, offline: wait}`, one
//!   disruption budget for every policy of the group that remediates and has no budget of
//!   its own (one lease pool for the group; it travels in the signed bundle, see
//!   [`GroupBudgets`]);
//! - policy files `*.yaml` / `*.yml`, the same format agents read; names unique in the group;
//! - an optional `manifest.yaml`, the desired state (see [`vigil_shared::bundle_manifest`]).
//!
//! A group is read whole or not at all: any error rejects the group, naming the file, the
//! policy and the field. Files and folders starting with `.` and files that are not YAML
//! are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use vigil_shared::bundle::{content_hash, BundleFile, MANIFEST_FILE};
use vigil_shared::bundle_manifest::{manifest_policies, parse_manifest, Manifest};
use vigil_shared::policy::budget::{group_budget_applies, Budget, BudgetSpec};
use vigil_shared::policy::load::{check_specs, parse_specs};
use vigil_shared::policy::{LoadError, PolicySpec};
use vigil_shared::wire::{Tag, MAX_PAYLOAD_BYTES};

use super::gate::{Gate, GateSpec};
pub use crate::budgets::authority::{GroupBudgets, PolicyBudget};

/// The group settings file.
pub const GROUP_FILE: &str = "group.yaml";

/// Why a group (or the whole directory) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// A file or folder could not be read.
    #[error("{path}: cannot read: {message}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The folder name cannot be a group name (it becomes an MQTT topic level).
    #[error("group folder `{group}`: {problem}")]
    GroupName {
        /// The folder name.
        group: String,
        /// What is wrong.
        problem: String,
    },
    /// `group.yaml` is malformed.
    #[error("group `{group}`: {GROUP_FILE}: {message}")]
    GroupFile {
        /// The group.
        group: String,
        /// The parser's message (field, line, column).
        message: String,
    },
    /// A policy file is invalid (the error names file, policy and field).
    #[error("group `{group}`: {error}")]
    Policy {
        /// The group.
        group: String,
        /// What the policy loader said.
        error: LoadError,
    },
    /// `manifest.yaml` is invalid.
    #[error("group `{group}`: {message}")]
    Manifest {
        /// The group.
        group: String,
        /// What is wrong (entry and field).
        message: String,
    },
    /// The group's backtest gate held the new version back.
    #[error("group `{group}`: not published: {reason}")]
    Gated {
        /// The group.
        group: String,
        /// Why (what the backtest counted, or why it could not run).
        reason: String,
    },
    /// The bundle would not fit in one MQTT message.
    #[error("group `{group}`: the bundle is {bytes} bytes, more than an MQTT message may carry ({MAX_PAYLOAD_BYTES})")]
    TooLarge {
        /// The group.
        group: String,
        /// Its size.
        bytes: usize,
    },
}

/// `group.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSettings {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    backtest: Option<GateSpec>,
    #[serde(default)]
    budget: Option<BudgetSpec>,
}

/// `group.yaml`, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Labels a host must all have, sorted by label name.
    pub selector: Vec<Tag>,
    /// The backtest gate, if any.
    pub gate: Option<Gate>,
    /// The group budget, if any.
    pub budget: Option<Budget>,
}

/// One group, read and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSource {
    /// The group (folder name).
    pub group: String,
    /// Labels a host must all have.
    pub selector: Vec<Tag>,
    /// Every file that goes into the bundle (`group.yaml` excluded), sorted by name.
    pub files: Vec<BundleFile>,
    /// The policies of the policy files and the manifest, in file order.
    pub policies: Vec<PolicySpec>,
    /// The manifest, if the group has one.
    pub manifest: Option<Manifest>,
    /// SHA-256 of selector and files: changes exactly when the content does.
    pub hash: String,
    /// The backtest a new version must pass (from `group.yaml`; not part of the bundle).
    pub gate: Option<Gate>,
    /// The group budget (from `group.yaml`; part of the bundle and of its hash).
    pub budget: Option<Budget>,
    /// Which budget each policy takes its leases from.
    pub budgets: GroupBudgets,
}

/// Each group folder's name and what reading it gave.
pub type GroupResults = Vec<(String, Result<GroupSource, LayoutError>)>;

/// Every group of the directory, each read whole or refused. The outer error is for a
/// directory that cannot be listed at all.
pub fn read_groups(dir: &Path) -> Result<GroupResults, LayoutError> {
    let mut out = Vec::new();
    for path in list(dir)? {
        if !path.is_dir() {
            continue;
        }
        let group = file_name(&path);
        let result = read_group(&path, &group);
        out.push((group, result));
    }
    Ok(out)
}

/// Reads and validates one group folder.
pub fn read_group(path: &Path, group: &str) -> Result<GroupSource, LayoutError> {
    vigil_shared::validate::host_name(group).map_err(|e| LayoutError::GroupName {
        group: group.to_string(),
        problem: e.problem.to_string(),
    })?;
    let mut settings = Settings::default();
    let mut files = Vec::new();
    for file in list(path)? {
        let name = file_name(&file);
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if !file.is_file() || !is_yaml {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|e| LayoutError::Read {
            path: file.display().to_string(),
            message: e.to_string(),
        })?;
        if name == GROUP_FILE {
            settings = parse_settings(group, &text)?;
        } else {
            files.push(BundleFile { name, text });
        }
    }
    let mut source = validate(group, settings.selector, settings.budget, files)?;
    source.gate = settings.gate;
    Ok(source)
}

/// Parses `group.yaml` into a selector (sorted by label name), the gate and the group
/// budget; an error names the field (`backtest.max_actions`, `budget.max_concurrent`).
pub fn parse_settings(group: &str, text: &str) -> Result<Settings, LayoutError> {
    if text.trim().is_empty() {
        return Ok(Settings::default());
    }
    let settings: Option<GroupSettings> =
        serde_yaml_ng::from_str(text).map_err(|e| LayoutError::GroupFile {
            group: group.to_string(),
            message: e.to_string(),
        })?;
    let settings = settings.unwrap_or_default();
    let refused = |(field, message): (String, String)| LayoutError::GroupFile {
        group: group.to_string(),
        message: format!("{field}: {message}"),
    };
    let gate = settings
        .backtest
        .as_ref()
        .map(|spec| spec.check().map_err(refused))
        .transpose()?;
    let budget = settings
        .budget
        .as_ref()
        .map(|spec| spec.check().map_err(refused))
        .transpose()?;
    Ok(Settings {
        selector: settings.selector.into_iter().collect(),
        gate,
        budget,
    })
}

/// Validates a group's files (policy files and manifest) and computes its hash (of
/// selector and files, and of the group budget when there is one).
pub fn validate(
    group: &str,
    selector: Vec<Tag>,
    budget: Option<Budget>,
    mut files: Vec<BundleFile>,
) -> Result<GroupSource, LayoutError> {
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let mut policies: Vec<PolicySpec> = Vec::new();
    let mut budgets = GroupBudgets {
        group: budget.clone(),
        policies: BTreeMap::new(),
    };
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest = None;
    for file in &files {
        let specs = if file.name == MANIFEST_FILE {
            manifest =
                Some(
                    parse_manifest(&file.text).map_err(|message| LayoutError::Manifest {
                        group: group.to_string(),
                        message,
                    })?,
                );
            let specs =
                manifest_policies(group, &file.text).map_err(|message| LayoutError::Manifest {
                    group: group.to_string(),
                    message,
                })?;
            let checked = check_specs(&specs, &file.name).map_err(|error| LayoutError::Policy {
                group: group.to_string(),
                error,
            })?;
            note_budgets(&mut budgets, &checked);
            specs
        } else {
            let specs =
                parse_specs(&file.text, &file.name).map_err(|error| LayoutError::Policy {
                    group: group.to_string(),
                    error,
                })?;
            let checked = check_specs(&specs, &file.name).map_err(|error| LayoutError::Policy {
                group: group.to_string(),
                error,
            })?;
            note_budgets(&mut budgets, &checked);
            specs
        };
        for spec in specs {
            if let Some(other) = origin.insert(spec.name.clone(), file.name.clone()) {
                return Err(LayoutError::Policy {
                    group: group.to_string(),
                    error: LoadError::Duplicate {
                        file: file.name.clone(),
                        name: spec.name,
                        other,
                    },
                });
            }
            policies.push(spec);
        }
    }
    // Without a group budget the hash is what it was before group budgets existed, so
    // an upgraded coordinator does not republish unchanged groups.
    let hash = match &budget {
        None => content_hash(&postcard_bytes(&(&selector, &files))),
        Some(budget) => content_hash(&postcard_bytes(&(&selector, &files, budget))),
    };
    let bytes: usize = files.iter().map(|f| f.name.len() + f.text.len()).sum();
    if bytes + 4096 > MAX_PAYLOAD_BYTES {
        return Err(LayoutError::TooLarge {
            group: group.to_string(),
            bytes,
        });
    }
    Ok(GroupSource {
        group: group.to_string(),
        selector,
        files,
        policies,
        manifest,
        hash,
        gate: None,
        budget,
        budgets,
    })
}

/// Records which budget each of `policies` takes its leases from.
fn note_budgets(budgets: &mut GroupBudgets, policies: &[vigil_shared::policy::Policy]) {
    for policy in policies {
        let which = match (&policy.budget, &budgets.group) {
            (Some(own), _) => PolicyBudget::Own(own.clone()),
            (None, Some(group)) if group_budget_applies(policy) => {
                PolicyBudget::Group(group.clone())
            }
            _ => PolicyBudget::Unbudgeted,
        };
        budgets.policies.insert(policy.name.clone(), which);
    }
}

fn postcard_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Strings and sequences of strings always encode.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// The entries of a folder, sorted, without hidden ones.
fn list(dir: &Path) -> Result<Vec<PathBuf>, LayoutError> {
    let read_err = |e: std::io::Error| LayoutError::Read {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if !file_name(&path).starts_with('.') {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "policies:\n  - name: cpu-high\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 90}\n";

    fn write(dir: &Path, path: &str, text: &str) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_directory_gives_one_group_per_folder_with_selector_files_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "web/group.yaml",
            "selector: {role: web, env: prod}\n",
        );
        write(dir.path(), "web/cpu.yaml", POLICY);
        write(
            dir.path(),
            "web/manifest.yaml",
            "units: [{name: nginx.service, remediation: restart}]\n",
        );
        write(dir.path(), "web/README.md", "ignored");
        write(dir.path(), "all/cpu.yml", POLICY);
        write(dir.path(), "notes.txt", "ignored");
        let groups = read_groups(dir.path()).unwrap();
        let names: Vec<&str> = groups.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(names, vec!["all", "web"]);
        let all = groups[0].1.as_ref().unwrap();
        assert!(all.selector.is_empty());
        let web = groups[1].1.as_ref().unwrap();
        assert_eq!(
            web.selector,
            vec![("env".into(), "prod".into()), ("role".into(), "web".into())]
        );
        let files: Vec<&str> = web.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, vec!["cpu.yaml", "manifest.yaml"]);
        assert_eq!(web.policies.len(), 2);
        assert_eq!(web.manifest.as_ref().unwrap().units.len(), 1);
    }

    #[test]
    fn errors_name_group_file_policy_and_field() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "web/bad.yaml",
            "policies:\n  - name: p\n    severity: apocalyptic\n    condition: {type: metric_exceeds, metric: m, threshold: 1}\n",
        );
        write(dir.path(), "db/a.yaml", POLICY);
        write(dir.path(), "db/b.yaml", POLICY);
        write(dir.path(), "ok/group.yaml", "selectr: {}\n");
        let groups = read_groups(dir.path()).unwrap();
        let err = |g: &str| {
            groups
                .iter()
                .find(|(name, _)| name == g)
                .unwrap()
                .1
                .as_ref()
                .unwrap_err()
                .to_string()
        };
        let web = err("web");
        assert!(
            web.contains("web") && web.contains("bad.yaml") && web.contains("severity"),
            "{web}"
        );
        let db = err("db");
        assert!(db.contains("cpu-high") && db.contains("twice"), "{db}");
        let ok = err("ok");
        assert!(ok.contains("group.yaml") && ok.contains("selectr"), "{ok}");
    }

    #[test]
    fn the_backtest_gate_is_read_and_its_fields_checked_by_name() {
        let settings = parse_settings(
            "web",
            "selector: {role: web}\nbacktest: {since: 2h, max_actions: 3}\n",
        )
        .unwrap();
        assert_eq!(settings.selector, vec![("role".into(), "web".into())]);
        let gate = settings.gate.unwrap();
        assert_eq!((gate.since.as_secs(), gate.max_actions), (7200, 3));
        for (yaml, field) in [
            (
                "backtest: {since: 2h, max_actions: -3}",
                "backtest.max_actions",
            ),
            ("backtest: {since: 90d, max_actions: 3}", "backtest.since"),
            ("backtest: {since: 1h}", "max_actions"),
            ("backtest: {since: 1h, max_actions: 1, extra: 1}", "extra"),
        ] {
            let e = parse_settings("web", yaml).unwrap_err().to_string();
            assert!(e.contains("group.yaml") && e.contains(field), "{yaml}: {e}");
        }
        assert_eq!(parse_settings("web", "").unwrap(), Settings::default());
    }

    #[test]
    fn a_group_budget_is_read_checked_by_field_and_given_to_remediating_policies() {
        use vigil_shared::policy::budget::BudgetMax;
        let settings = parse_settings(
            "web",
            "selector: {role: web}\nbudget: {max_concurrent: \"10%\", per: role, max_per_hour: 6}\n",
        )
        .unwrap();
        let budget = settings.budget.unwrap();
        assert_eq!(budget.max, BudgetMax::Percent(10));
        assert_eq!(budget.max_per_hour, Some(6));
        for (yaml, field) in [
            ("budget: {max_concurrent: 0}", "budget.max_concurrent"),
            ("budget: {max_concurrent: -5}", "budget.max_concurrent"),
            (
                "budget: {max_concurrent: 99999999999}",
                "budget.max_concurrent",
            ),
            (
                "budget: {max_concurrent: \"250%\"}",
                "budget.max_concurrent",
            ),
            ("budget: {max_concurrent: \"1e9\"}", "budget.max_concurrent"),
            (
                "budget: {max_concurrent: 1, max_per_hour: 0}",
                "budget.max_per_hour",
            ),
            ("budget: {max_concurrent: 1, per: \"a/b\"}", "budget.per"),
            (
                "budget: {max_concurrent: 1, offline: sometimes}",
                "budget.offline",
            ),
            ("budget: {max_concurrent: 1, extra: 1}", "extra"),
            ("budget: {per: role}", "max_concurrent"),
            ("budget: 3", "budget"),
        ] {
            let e = parse_settings("web", yaml).unwrap_err().to_string();
            assert!(e.contains("group.yaml") && e.contains(field), "{yaml}: {e}");
        }

        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "web/group.yaml",
            "selector: {role: web}\nbudget: {max_concurrent: 2}\n",
        );
        let act = |name: &str, extra: &str| {
            format!(
                "  - name: {name}\n    condition: cpu_percent > 90\n    auto_remediate: true\n    \
                 action: exec\n    params: {{command: x}}\n{extra}"
            )
        };
        write(
            dir.path(),
            "web/p.yaml",
            &format!(
                "policies:\n{}{}{}",
                act("pooled", ""),
                act("own", "    budget: {max_concurrent: 5}\n"),
                "  - name: watch\n    condition: cpu_percent > 90\n"
            ),
        );
        let source = read_group(&dir.path().join("web"), "web").unwrap();
        let b = &source.budgets.policies;
        assert!(matches!(&b["pooled"], PolicyBudget::Group(g) if g.max == BudgetMax::Count(2)));
        assert!(matches!(&b["own"], PolicyBudget::Own(o) if o.max == BudgetMax::Count(5)));
        assert_eq!(b["watch"], PolicyBudget::Unbudgeted);
        // The budget is part of the content: changing it makes a new version.
        write(
            dir.path(),
            "web/group.yaml",
            "selector: {role: web}\nbudget: {max_concurrent: 3}\n",
        );
        let changed = read_group(&dir.path().join("web"), "web").unwrap();
        assert_ne!(source.hash, changed.hash);
        // Without a budget, the hash is the one of selector and files alone.
        write(dir.path(), "web/group.yaml", "selector: {role: web}\n");
        let none = read_group(&dir.path().join("web"), "web").unwrap();
        let plain = validate("web", none.selector.clone(), None, none.files.clone()).unwrap();
        assert_eq!(none.hash, plain.hash);
        assert_ne!(none.hash, changed.hash);
    }

    #[test]
    fn the_hash_changes_with_content_only() {
        let a = validate(
            "g",
            vec![],
            None,
            vec![BundleFile {
                name: "a.yaml".into(),
                text: POLICY.into(),
            }],
        )
        .unwrap();
        let again = validate(
            "g",
            vec![],
            None,
            vec![BundleFile {
                name: "a.yaml".into(),
                text: POLICY.into(),
            }],
        )
        .unwrap();
        assert_eq!(a.hash, again.hash);
        let changed = validate(
            "g",
            vec![("role".into(), "web".into())],
            None,
            vec![BundleFile {
                name: "a.yaml".into(),
                text: POLICY.into(),
            }],
        )
        .unwrap();
        assert_ne!(a.hash, changed.hash);
    }
}
