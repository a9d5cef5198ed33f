//! The coordinator's policy registry: the policies it knows, from two sources.
//!
//! - **file**: the `--policies DIR` directory, read as one set at start and on
//!   [`PolicyRegistry::reload`]. A directory that fails to load leaves the previous set in
//!   force (and counts in `vigil_policy_load_errors_total{source="coordinator"}`).
//! - **api**: policies created over REST, written through to the LMDB `policies` database
//!   (see [`crate::store::policies`]) so that they survive a restart.
//!
//! A name defined in a file belongs to the file: REST cannot create, update or delete it.
//! Should a file later define a name that an API policy already has, the file's
//! definition is the one in force (the API one stays stored, shadowed, and comes back if
//! the file drops the name).
//!
//! Reads take a read lock on an in-memory map and never touch LMDB. Changes are
//! serialised by a mutex, written to LMDB first, then swapped in; they block (disk I/O),
//! so call them from `spawn_blocking` in async code.
//!
//! [`backtest`] replays stored metric history through the agents' policy engine, for
//! `POST /api/v1/policies/backtest`, `vigil-coordinator policy backtest` and the bundle
//! gate.

pub mod backtest;
pub mod files;
pub mod json;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value};
use thiserror::Error;
use vigil_shared::policy::{LoadError, Policy, PolicyError, PolicySpec, Severity};

use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A file in the policy directory.
    File {
        /// The file's path.
        file: String,
    },
    /// Created over REST, stored in LMDB.
    Api,
}

impl PolicySource {
    /// `file` or `api`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicySource::File { .. } => "file",
            PolicySource::Api => "api",
        }
    }
}

/// One registered policy.
#[derive(Debug, Clone)]
pub struct Registered {
    /// As written.
    pub spec: PolicySpec,
    /// Checked.
    pub policy: Policy,
    /// Where it comes from.
    pub source: PolicySource,
}

/// Why a registry operation was refused.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// No policy has this name.
    #[error("policy `{name}` does not exist")]
    NotFound {
        /// The name.
        name: String,
    },
    /// An API policy already has this name.
    #[error("policy `{name}` already exists; use PUT /api/v1/policies/{name} to change it")]
    Exists {
        /// The name.
        name: String,
    },
    /// The name belongs to a policy file.
    #[error(
        "policy `{name}` is defined in {file}; edit that file and POST /api/v1/policies/reload \
         instead"
    )]
    FileOwned {
        /// The name.
        name: String,
        /// The file that defines it.
        file: String,
    },
    /// The spec breaks a rule.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// The policy directory could not be loaded.
    #[error("policy directory not loaded: {0}")]
    Load(#[from] LoadError),
    /// Reload was asked for without a directory.
    #[error("no policy directory is configured; start the coordinator with --policies DIR")]
    NoDirectory,
    /// The stored API policies could not be read.
    #[error("cannot read the API policies stored in LMDB: {0}")]
    StoreRead(#[source] StoreError),
    /// LMDB refused the write.
    #[error("cannot store policy `{name}`: {source}")]
    Store {
        /// The policy.
        name: String,
        /// What the store said.
        source: StoreError,
    },
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Arc<Registered>>,
    api: BTreeMap<String, Arc<Registered>>,
}

impl State {
    fn get(&self, name: &str) -> Option<&Arc<Registered>> {
        self.files.get(name).or_else(|| self.api.get(name))
    }

    fn refuse_file_owned(&self, name: &str) -> Result<(), RegistryError> {
        match self.files.get(name).map(|r| &r.source) {
            Some(PolicySource::File { file }) => Err(RegistryError::FileOwned {
                name: name.to_string(),
                file: file.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// The coordinator's policies. Share it as an `Arc`.
pub struct PolicyRegistry {
    dir: Option<PathBuf>,
    store: Store,
    telemetry: Arc<Telemetry>,
    state: RwLock<State>,
    changes: Mutex<()>,
}

impl PolicyRegistry {
    /// Loads the directory (if any; an error here is fatal to the caller) and the API
    /// policies stored in LMDB (a stored policy that no longer reads or checks is logged,
    /// counted, and left out).
    pub fn open(
        dir: Option<PathBuf>,
        store: Store,
        telemetry: Arc<Telemetry>,
    ) -> Result<PolicyRegistry, RegistryError> {
        let registry = PolicyRegistry {
            dir,
            store,
            telemetry,
            state: RwLock::new(State::default()),
            changes: Mutex::new(()),
        };
        let files = registry.read_dir()?;
        let stored = registry
            .store
            .api_policies()
            .map_err(RegistryError::StoreRead)?;
        let mut api = BTreeMap::new();
        for bad in stored.unreadable {
            registry.count_load_error();
            tracing::error!(
                policy = %bad.name,
                "stored API policy cannot be read and is ignored: {}",
                bad.reason
            );
        }
        for spec in stored.specs {
            match spec.check() {
                Ok(policy) => {
                    api.insert(
                        spec.name.clone(),
                        Arc::new(Registered {
                            spec,
                            policy,
                            source: PolicySource::Api,
                        }),
                    );
                }
                Err(e) => {
                    registry.count_load_error();
                    tracing::error!("stored API policy is invalid and is ignored: {e}");
                }
            }
        }
        warn_shadowed(&files, &api);
        *registry.write_state() = State { files, api };
        Ok(registry)
    }

    /// The policy directory, if one is configured.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Every policy in force, sorted by name.
    pub fn list(&self) -> Vec<Arc<Registered>> {
        let state = self.read_state();
        let mut all: BTreeMap<&str, &Arc<Registered>> = state
            .api
            .iter()
            .map(|(name, r)| (name.as_str(), r))
            .collect();
        all.extend(state.files.iter().map(|(name, r)| (name.as_str(), r)));
        all.into_values().cloned().collect()
    }

    /// The policies in force with this severity, sorted by name.
    pub fn with_severity(&self, severity: Severity) -> Vec<Arc<Registered>> {
        let mut all = self.list();
        all.retain(|r| r.policy.severity == severity);
        all
    }

    /// One policy in force.
    pub fn get(&self, name: &str) -> Option<Arc<Registered>> {
        self.read_state().get(name).cloned()
    }

    /// Creates an API policy.
    pub fn create(&self, spec: PolicySpec) -> Result<Arc<Registered>, RegistryError> {
        let _one_change = self.lock_changes();
        {
            let state = self.read_state();
            state.refuse_file_owned(&spec.name)?;
            if state.api.contains_key(&spec.name) {
                return Err(RegistryError::Exists { name: spec.name });
            }
        }
        self.save(spec)
    }

    /// Updates an API policy: `patch`'s keys over the stored spec (see [`json::merge`]).
    pub fn update(
        &self,
        name: &str,
        patch: &Map<String, Value>,
    ) -> Result<Arc<Registered>, RegistryError> {
        let _one_change = self.lock_changes();
        let current = self.api_policy(name)?;
        let spec = json::merge(&current.spec, patch)?;
        self.save(spec)
    }

    /// Enables or disables an API policy.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<Arc<Registered>, RegistryError> {
        let _one_change = self.lock_changes();
        let current = self.api_policy(name)?;
        let mut spec = current.spec.clone();
        spec.enabled = enabled;
        self.save(spec)
    }

    /// Deletes an API policy.
    pub fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let _one_change = self.lock_changes();
        self.api_policy(name)?;
        self.store
            .delete_api_policy(name)
            .map_err(|source| RegistryError::Store {
                name: name.to_string(),
                source,
            })?;
        self.write_state().api.remove(name);
        Ok(())
    }

    /// Re-reads the policy directory. On success the file policies are replaced and the
    /// number of policies now in force is returned; on failure the previous set stays.
    pub fn reload(&self) -> Result<usize, RegistryError> {
        let _one_change = self.lock_changes();
        if self.dir.is_none() {
            return Err(RegistryError::NoDirectory);
        }
        let files = self.read_dir()?;
        let mut state = self.write_state();
        warn_shadowed(&files, &state.api);
        state.files = files;
        drop(state);
        Ok(self.list().len())
    }

    /// Reads the directory into file entries (empty without a directory); counts failures.
    fn read_dir(&self) -> Result<BTreeMap<String, Arc<Registered>>, RegistryError> {
        let Some(dir) = &self.dir else {
            return Ok(BTreeMap::new());
        };
        let loaded = files::load_dir(dir).inspect_err(|e| {
            self.count_load_error();
            tracing::error!("policy directory {} not loaded: {e}", dir.display());
        })?;
        tracing::info!(
            count = loaded.len(),
            dir = %dir.display(),
            "policy files loaded"
        );
        // The coordinator runs no action; whether one runs is up to each agent's mapping.
        for p in &loaded {
            for warning in p.policy.unmapped_actions(|_| false) {
                tracing::warn!(file = %p.file, "{warning}");
            }
        }
        Ok(loaded
            .into_iter()
            .map(|p| {
                (
                    p.spec.name.clone(),
                    Arc::new(Registered {
                        spec: p.spec,
                        policy: p.policy,
                        source: PolicySource::File { file: p.file },
                    }),
                )
            })
            .collect())
    }

    /// The API policy `name`, refusing file-owned and unknown names.
    fn api_policy(&self, name: &str) -> Result<Arc<Registered>, RegistryError> {
        let state = self.read_state();
        state.refuse_file_owned(name)?;
        state
            .api
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound {
                name: name.to_string(),
            })
    }

    /// Checks, stores and registers an API policy. The caller holds `changes`.
    fn save(&self, spec: PolicySpec) -> Result<Arc<Registered>, RegistryError> {
        let policy = spec.check()?;
        self.store
            .put_api_policy(&spec)
            .map_err(|source| RegistryError::Store {
                name: spec.name.clone(),
                source,
            })?;
        let registered = Arc::new(Registered {
            spec,
            policy,
            source: PolicySource::Api,
        });
        self.write_state()
            .api
            .insert(registered.spec.name.clone(), registered.clone());
        Ok(registered)
    }

    fn count_load_error(&self) {
        self.telemetry
            .policy_load_errors
            .with_label_values(&["coordinator"])
            .inc();
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn warn_shadowed(
    files: &BTreeMap<String, Arc<Registered>>,
    api: &BTreeMap<String, Arc<Registered>>,
) {
    for (name, registered) in files {
        if api.contains_key(name) {
            if let PolicySource::File { file } = &registered.source {
                tracing::warn!(
                    policy = %name,
                    %file,
                    "a policy file defines a name that an API policy also has; the file's \
                     definition is in force"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::MapSize;

    const FILE_POLICY: &str = "policies:\n  - name: disk-low\n    severity: critical\n    condition: \"disk_free_percent < 10\"\n";

    fn spec(name: &str) -> PolicySpec {
        serde_json::from_value(json!({
            "name": name,
            "description": "Alert when CPU exceeds 80%",
            "target": "web-*",
            "condition": {"type": "metric_exceeds", "metric": "cpu_percent", "threshold": 80},
            "action": "restart",
        }))
        .unwrap()
    }

    struct Fixture {
        data: tempfile::TempDir,
        policies: tempfile::TempDir,
        telemetry: Arc<Telemetry>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let policies = tempfile::tempdir().unwrap();
            std::fs::write(policies.path().join("disk.yaml"), FILE_POLICY).unwrap();
            Fixture {
                data: tempfile::tempdir().unwrap(),
                policies,
                telemetry: Arc::new(Telemetry::new()),
            }
        }

        fn open(&self) -> Result<PolicyRegistry, RegistryError> {
            let store = Store::open(
                self.data.path(),
                MapSize {
                    initial: 1 << 20,
                    max: 1 << 24,
                },
            )
            .unwrap();
            PolicyRegistry::open(
                Some(self.policies.path().to_path_buf()),
                store,
                self.telemetry.clone(),
            )
        }

        fn load_errors(&self) -> u64 {
            self.telemetry
                .policy_load_errors
                .with_label_values(&["coordinator"])
                .get()
        }
    }

    #[test]
    fn api_policies_are_created_changed_deleted_and_persist() {
        let fx = Fixture::new();
        {
            let registry = fx.open().unwrap();
            registry.create(spec("cpu")).unwrap();
            registry.create(spec("gone")).unwrap();
            assert!(matches!(
                registry.create(spec("cpu")),
                Err(RegistryError::Exists { .. })
            ));
            let patched = registry
                .update("cpu", json!({"severity": "critical"}).as_object().unwrap())
                .unwrap();
            assert_eq!(patched.policy.severity, Severity::Critical);
            assert_eq!(patched.spec.target, "web-*");
            assert!(!registry.set_enabled("cpu", false).unwrap().policy.enabled);
            registry.delete("gone").unwrap();
            assert!(matches!(
                registry.delete("gone"),
                Err(RegistryError::NotFound { .. })
            ));
        }
        let registry = fx.open().unwrap();
        let names: Vec<String> = registry
            .list()
            .iter()
            .map(|r| r.spec.name.clone())
            .collect();
        assert_eq!(names, vec!["cpu", "disk-low"]);
        let cpu = registry.get("cpu").unwrap();
        assert_eq!(cpu.source, PolicySource::Api);
        assert!(!cpu.spec.enabled);
        assert_eq!(cpu.policy.severity, Severity::Critical);
        assert_eq!(registry.with_severity(Severity::Critical).len(), 2);
        assert_eq!(registry.with_severity(Severity::Info).len(), 0);
    }

    #[test]
    fn file_policies_cannot_be_changed_over_rest() {
        let fx = Fixture::new();
        let registry = fx.open().unwrap();
        let disk = registry.get("disk-low").unwrap();
        assert_eq!(disk.source.as_str(), "file");
        let refused = [
            registry.create(spec("disk-low")).err(),
            registry
                .update("disk-low", json!({"enabled": false}).as_object().unwrap())
                .err(),
            registry.set_enabled("disk-low", false).err(),
            registry.delete("disk-low").err(),
        ];
        for e in refused {
            match e {
                Some(RegistryError::FileOwned { file, .. }) => {
                    assert!(file.ends_with("disk.yaml"), "{file}")
                }
                other => panic!("expected FileOwned, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_specs_are_refused_with_the_field() {
        let fx = Fixture::new();
        let registry = fx.open().unwrap();
        let mut bad = spec("bad");
        bad.target = "web-[".into();
        match registry.create(bad) {
            Err(RegistryError::Invalid(e)) => assert_eq!(e.field, "target"),
            other => panic!("{other:?}"),
        }
        registry.create(spec("cpu")).unwrap();
        match registry.update("cpu", json!({"action": "drain-nodes"}).as_object().unwrap()) {
            Err(RegistryError::Invalid(e)) => assert_eq!(e.field, "action"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            registry.get("cpu").unwrap().spec.action.as_deref(),
            Some("restart")
        );
        assert!(registry.get("bad").is_none());
    }

    #[test]
    fn a_failed_reload_keeps_the_previous_files_and_counts() {
        let fx = Fixture::new();
        let registry = fx.open().unwrap();
        std::fs::write(
            fx.policies.path().join("more.yaml"),
            "- name: mem\n  condition: {type: metric_exceeds, metric: memory_percent, threshold: nope}\n",
        )
        .unwrap();
        let err = registry.reload().unwrap_err();
        assert!(err.to_string().contains("more.yaml"), "{err}");
        assert_eq!(fx.load_errors(), 1);
        assert!(registry.get("disk-low").is_some());
        std::fs::write(
            fx.policies.path().join("more.yaml"),
            "- name: mem\n  condition: \"memory_percent > 90\"\n",
        )
        .unwrap();
        assert_eq!(registry.reload().unwrap(), 2);
        assert!(registry.get("mem").is_some());
    }

    #[test]
    fn a_file_policy_shadows_a_stored_api_policy_of_the_same_name() {
        let fx = Fixture::new();
        {
            let registry = fx.open().unwrap();
            registry.create(spec("later-in-a-file")).unwrap();
        }
        std::fs::write(
            fx.policies.path().join("later.yaml"),
            "- name: later-in-a-file\n  condition: \"load1 > 8\"\n",
        )
        .unwrap();
        let registry = fx.open().unwrap();
        let r = registry.get("later-in-a-file").unwrap();
        assert_eq!(r.source.as_str(), "file");
        assert_eq!(registry.list().len(), 2);
    }

    #[test]
    fn a_bad_directory_at_start_is_an_error() {
        let fx = Fixture::new();
        std::fs::write(
            fx.policies.path().join("bad.yaml"),
            "policies: [{name: x}]\n",
        )
        .unwrap();
        let err = fx.open().err().unwrap();
        assert!(err.to_string().contains("bad.yaml"), "{err}");
    }

    #[test]
    fn reload_without_a_directory_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(
            data.path(),
            MapSize {
                initial: 1 << 20,
                max: 1 << 24,
            },
        )
        .unwrap();
        let registry = PolicyRegistry::open(None, store, Arc::new(Telemetry::new())).unwrap();
        assert!(matches!(registry.reload(), Err(RegistryError::NoDirectory)));
        assert!(registry.list().is_empty());
    }
}
