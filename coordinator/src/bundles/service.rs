//! The bundle publisher: builds every group of the bundle directory, gives changed
//! content a new version (persisted in LMDB before it is published), signs it, and
//! publishes it retained on `vigil/v1/bundles/{group}`.
//!
//! A group whose folder is gone gets a signed [`Tombstone`] instead, at the next version
//! (persisted like a bundle's), retained on the same topic: agents drop the group's
//! policies and keep that version as the group's floor, so its old bundles are refused.
//! Tombstones are republished after a restart and on every reconnect, like bundles;
//! re-adding the group continues the version sequence above its tombstone.
//!
//! A group with a backtest gate ([`super::gate`]) gets a new version only if the gate
//! passes; otherwise it is refused like an invalid group (its last good version stays),
//! and the gate's last result is kept per group for `GET /api/v1/bundles`.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;
use vigil_shared::bundle::{BundleKeys, SignedBundle, Tombstone};
use vigil_shared::bundle_manifest::Manifest;
use vigil_shared::time::now_ms;
use vigil_shared::topics;

use prometheus::IntCounter;

use super::gate::GateResult;
use super::layout::{read_groups, GroupBudgets, GroupResults, GroupSource, LayoutError};
use super::store::BundleRecord;
use crate::mqtt::publisher::Publisher;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// Why a reload did not complete.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// No `--bundles` directory is configured.
    #[error("no bundle directory is configured (start with --bundles DIR)")]
    NoDirectory,
    /// The directory cannot be listed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// New versions could not be stored (nothing was published).
    #[error("bundle versions could not be stored, nothing published: {0}")]
    Store(#[from] StoreError),
    /// The build task failed.
    #[error("bundle build task failed: {0}")]
    Task(String),
}

/// A group's bundle as it is published now.
#[derive(Debug, Clone)]
pub struct Published {
    /// The persisted record (version, hash, files).
    pub record: BundleRecord,
    /// What travels.
    pub signed: SignedBundle,
    /// How many policies (files and manifest).
    pub policies: usize,
    /// The manifest, if any.
    pub manifest: Option<Manifest>,
    /// Which budget each policy takes its leases from (the coordinator enforces these
    /// for the group's hosts).
    pub budgets: Arc<GroupBudgets>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Groups published with a new version: (group, version).
    pub published: Vec<(String, u64)>,
    /// Groups removed: their retained bundle was replaced by a signed tombstone.
    pub removed: Vec<String>,
    /// Groups published again with their stored version (first build after a restart).
    pub restored: Vec<String>,
    /// Groups refused, with why (their last good version stays).
    pub errors: Vec<String>,
}

#[derive(Default)]
struct State {
    published: BTreeMap<String, Published>,
    /// The signed tombstone of every removed group.
    tombstones: BTreeMap<String, SignedBundle>,
    /// The tombstones read from the store are not published yet (done by the first
    /// reload).
    tombstones_unannounced: bool,
    /// Every record ever stored (removed groups included), for version continuity.
    records: BTreeMap<String, BundleRecord>,
    error: Option<String>,
    /// The last gate check of every group that has a gate.
    gates: BTreeMap<String, GateResult>,
}

/// The bundle publisher. Cheap to share (`Arc`).
pub struct Bundles {
    dir: Option<PathBuf>,
    keys: Arc<BundleKeys>,
    public_hex: String,
    store: Store,
    telemetry: Arc<Telemetry>,
    publisher: Publisher,
    state: Mutex<State>,
    /// One reload or republish at a time, so retained messages never go backwards.
    publishing: tokio::sync::Mutex<()>,
    /// `vigil_bundle_gate_refusals_total`: versions the backtest gate held back.
    gate_refusals: IntCounter,
}

impl Bundles {
    /// Loads the stored versions. Nothing is read or published until [`Bundles::reload`].
    pub fn open(
        dir: Option<PathBuf>,
        keys: Arc<BundleKeys>,
        store: Store,
        telemetry: Arc<Telemetry>,
        publisher: Publisher,
    ) -> Result<Bundles, StoreError> {
        let mut state = State::default();
        let mut upgraded = Vec::new();
        for mut record in store.bundle_records()? {
            if record.removed && !record.hash.is_empty() {
                // Removed before removals had tombstones: the record still holds the last
                // bundle's version and hash. Its tombstone takes the next version.
                record = removed_record(&record, record.created_at_ms);
                upgraded.push(record.clone());
            }
            if record.removed {
                state.tombstones.insert(
                    record.group.clone(),
                    keys.sign_tombstone(&tombstone(&record)),
                );
            }
            state.records.insert(record.group.clone(), record);
        }
        state.tombstones_unannounced = !state.tombstones.is_empty();
        if !upgraded.is_empty() {
            store.put_bundle_records(&upgraded)?;
        }
        let gate_refusals = IntCounter::new(
            "vigil_bundle_gate_refusals_total",
            "Bundle versions not published because their group's backtest gate refused them",
        )
        .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
        if let Err(e) = telemetry
            .registry()
            .register(Box::new(gate_refusals.clone()))
        {
            tracing::debug!("vigil_bundle_gate_refusals_total not registered again: {e}");
        }
        Ok(Bundles {
            gate_refusals,
            dir,
            public_hex: keys.public_hex(),
            keys,
            store,
            telemetry,
            publisher,
            state: Mutex::new(state),
            publishing: tokio::sync::Mutex::new(()),
        })
    }

    /// The bundle directory, if configured.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    /// The public key agents verify with (hex).
    pub fn public_key(&self) -> &str {
        &self.public_hex
    }

    /// The bundles published now, by group.
    pub fn published(&self) -> Vec<Published> {
        self.lock().published.values().cloned().collect()
    }

    /// Every published group's selector and policy budgets, by group name.
    pub fn group_budgets(&self) -> Vec<(String, Vec<vigil_shared::wire::Tag>, Arc<GroupBudgets>)> {
        self.lock()
            .published
            .values()
            .map(|p| {
                (
                    p.record.group.clone(),
                    p.record.selector.clone(),
                    Arc::clone(&p.budgets),
                )
            })
            .collect()
    }

    /// One group's published bundle.
    pub fn get(&self, group: &str) -> Option<Published> {
        self.lock().published.get(group).cloned()
    }

    /// The signed tombstones of the removed groups, by group.
    pub fn tombstones(&self) -> Vec<SignedBundle> {
        self.lock().tombstones.values().cloned().collect()
    }

    /// The last gate check of every group that has a gate, by group.
    pub fn gates(&self) -> Vec<GateResult> {
        self.lock().gates.values().cloned().collect()
    }

    /// The last build's error(s), if it had any.
    pub fn last_error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the directory; publishes changed groups with version + 1, a signed
    /// tombstone (version + 1) for removed ones, keeps the last good version of refused
    /// ones.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.publishing.lock().await;
        let Some(dir) = self.dir.clone() else {
            return Err(ReloadError::NoDirectory);
        };
        let groups = tokio::task::spawn_blocking(move || read_groups(&dir))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))?
            .inspect_err(|e| self.fail(e.to_string()))?;
        let groups = self.gate(groups).await?;
        let (changed, mut report) = self.plan(groups);
        if !changed.is_empty() {
            let store = self.store.clone();
            let records: Vec<BundleRecord> = changed.iter().map(|(r, _)| r.clone()).collect();
            tokio::task::spawn_blocking(move || store.put_bundle_records(&records))
                .await
                .map_err(|e| ReloadError::Task(e.to_string()))?
                .inspect_err(|e| self.fail(e.to_string()))?;
        }
        let mut to_send = Vec::new();
        {
            let mut state = self.lock();
            for group in &report.restored {
                if let Some(p) = state.published.get(group) {
                    to_send.push((group.clone(), vigil_shared::wire::encode(&p.signed)));
                }
            }
            if std::mem::take(&mut state.tombstones_unannounced) {
                for (group, signed) in &state.tombstones {
                    to_send.push((group.clone(), vigil_shared::wire::encode(signed)));
                }
            }
            for (record, source) in changed {
                state.records.insert(record.group.clone(), record.clone());
                match source {
                    Some(source) => {
                        let signed = self.keys.sign(&record.bundle());
                        tracing::info!(group = %record.group, version = record.version, hash = %record.hash, "publishing bundle");
                        state.tombstones.remove(&record.group);
                        report
                            .published
                            .push((record.group.clone(), record.version));
                        to_send.push((record.group.clone(), vigil_shared::wire::encode(&signed)));
                        state.published.insert(
                            record.group.clone(),
                            Published {
                                record,
                                signed,
                                policies: source.policies.len(),
                                manifest: source.manifest,
                                budgets: Arc::new(source.budgets),
                            },
                        );
                    }
                    None => {
                        tracing::info!(group = %record.group, version = record.version, "bundle group removed; publishing its signed tombstone");
                        let signed = self.keys.sign_tombstone(&tombstone(&record));
                        state.published.remove(&record.group);
                        report.removed.push(record.group.clone());
                        to_send.push((record.group.clone(), vigil_shared::wire::encode(&signed)));
                        state.tombstones.insert(record.group.clone(), signed);
                    }
                }
            }
            state.error = (!report.errors.is_empty()).then(|| report.errors.join("; "));
        }
        for (group, payload) in to_send {
            if let Err(e) = self
                .publisher
                .retained(&topics::bundle(&group), payload)
                .await
            {
                tracing::warn!(
                    "bundle for `{group}` not handed to MQTT now (republished on reconnect): {e}"
                );
            }
        }
        Ok(report)
    }

    /// Runs the backtest gate of every gated group that would get a new version (its
    /// content differs from its last record); a group that fails it becomes a refused
    /// group ([`LayoutError::Gated`]) and keeps its last good version.
    async fn gate(&self, mut groups: GroupResults) -> Result<GroupResults, ReloadError> {
        let due: Vec<usize> = {
            let mut state = self.lock();
            state.gates.retain(|group, _| {
                groups
                    .iter()
                    .any(|(g, r)| g == group && r.as_ref().is_ok_and(|s| s.gate.is_some()))
            });
            groups
                .iter()
                .enumerate()
                .filter(|(_, (group, result))| {
                    result.as_ref().is_ok_and(|source| {
                        source.gate.is_some()
                            && state
                                .records
                                .get(group)
                                .is_none_or(|prev| prev.removed || prev.hash != source.hash)
                    })
                })
                .map(|(i, _)| i)
                .collect()
        };
        if due.is_empty() {
            return Ok(groups);
        }
        let store = self.store.clone();
        let (groups_back, results) = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let results: Vec<(usize, GateResult)> = due
                .into_iter()
                .filter_map(|i| {
                    let source = groups.get(i)?.1.as_ref().ok()?;
                    let gate = source.gate.as_ref()?;
                    Some((i, super::gate::check(&store, source, gate, now)))
                })
                .collect();
            (groups, results)
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))?;
        groups = groups_back;
        let mut state = self.lock();
        for (i, result) in results {
            let group = result.group.clone();
            if result.passed {
                tracing::info!(%group, actions = ?result.actions, max = result.max_actions, "bundle backtest gate passed");
            } else {
                let reason = result.reason.clone().unwrap_or_default();
                tracing::warn!(%group, "bundle not published: {reason}");
                self.gate_refusals.inc();
                if let Some(slot) = groups.get_mut(i) {
                    slot.1 = Err(LayoutError::Gated {
                        group: group.clone(),
                        reason,
                    });
                }
            }
            state.gates.insert(group, result);
        }
        Ok(groups)
    }

    /// Decides what changes: new records (with the source, or `None` for a removal) and
    /// the refused groups. Groups whose content hash is unchanged are left alone; a group
    /// published from the store after a restart (and not yet in `published`) is filled
    /// in without a new version.
    fn plan(
        &self,
        groups: GroupResults,
    ) -> (Vec<(BundleRecord, Option<GroupSource>)>, ReloadReport) {
        let mut report = ReloadReport::default();
        let mut changed = Vec::new();
        let mut state = self.lock();
        let mut seen = Vec::new();
        for (group, result) in groups {
            seen.push(group.clone());
            let source = match result {
                Ok(source) => source,
                Err(e) => {
                    // A gate's refusal is logged and counted by `gate`.
                    if !matches!(e, LayoutError::Gated { .. }) {
                        tracing::error!("bundle group `{group}` not published: {e}");
                        self.telemetry
                            .policy_load_errors
                            .with_label_values(&["bundles"])
                            .inc();
                    }
                    report.errors.push(e.to_string());
                    continue;
                }
            };
            let previous = state.records.get(&group).cloned();
            match previous {
                Some(prev) if !prev.removed && prev.hash == source.hash => {
                    if let Entry::Vacant(slot) = state.published.entry(group.clone()) {
                        // First build after a restart: same content, same version.
                        let signed = self.keys.sign(&prev.bundle());
                        report.restored.push(group);
                        slot.insert(Published {
                            record: prev,
                            signed,
                            policies: source.policies.len(),
                            manifest: source.manifest,
                            budgets: Arc::new(source.budgets),
                        });
                    }
                }
                _ => {
                    let record = BundleRecord {
                        group: group.clone(),
                        version: previous.map_or(1, |p| p.version + 1),
                        hash: source.hash.clone(),
                        created_at_ms: now_ms(),
                        selector: source.selector.clone(),
                        files: source.files.clone(),
                        removed: false,
                        budget: source.budget.clone(),
                    };
                    changed.push((record, Some(source)));
                }
            }
        }
        for (group, record) in &state.records {
            if !record.removed && !seen.contains(group) {
                changed.push((removed_record(record, now_ms()), None));
            }
        }
        (changed, report)
    }

    fn fail(&self, message: String) {
        tracing::error!("bundles not reloaded: {message}");
        self.telemetry
            .policy_load_errors
            .with_label_values(&["bundles"])
            .inc();
        self.lock().error = Some(message);
    }

    /// A receiver that changes whenever the MQTT connection (re)connects.
    pub fn publisher_connects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.publisher.connects()
    }

    /// Publishes every current bundle and tombstone again (after the MQTT connection
    /// (re)connects).
    pub async fn republish(&self) {
        let _one = self.publishing.lock().await;
        let all: Vec<(String, Vec<u8>)> = {
            let state = self.lock();
            let bundles = state.published.values().map(|p| &p.signed);
            bundles
                .chain(state.tombstones.values())
                .map(|signed| (signed.group.clone(), vigil_shared::wire::encode(signed)))
                .collect()
        };
        for (group, payload) in all {
            if let Err(e) = self
                .publisher
                .retained(&topics::bundle(&group), payload)
                .await
            {
                tracing::warn!("cannot republish the bundle for `{group}`: {e}");
            }
        }
    }
}

/// The record of `last`'s group removed at `at_ms`: its tombstone takes the next version,
/// above every bundle of the group; no hash or files (an empty hash marks a tombstone).
fn removed_record(last: &BundleRecord, at_ms: i64) -> BundleRecord {
    BundleRecord {
        group: last.group.clone(),
        version: last.version + 1,
        hash: String::new(),
        created_at_ms: at_ms,
        selector: last.selector.clone(),
        files: Vec::new(),
        removed: true,
        budget: None,
    }
}

/// The tombstone a removed group's record stands for.
fn tombstone(record: &BundleRecord) -> Tombstone {
    Tombstone {
        group: record.group.clone(),
        version: record.version,
        removed_at_ms: record.created_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapSize;

    const POLICY: &str = "policies:\n  - name: cpu-high\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 90}\n";

    fn bundles(data: &std::path::Path, dir: &std::path::Path) -> Bundles {
        let store = Store::open(
            data,
            MapSize {
                initial: 1 << 24,
                max: 1 << 26,
            },
        )
        .unwrap();
        let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let keys = Arc::new(BundleKeys::load(&data.join("k")).unwrap_or_else(|_| {
            let k = BundleKeys::generate();
            std::fs::write(data.join("k"), k.private_hex()).unwrap();
            k
        }));
        let (publisher, _eventloop) = crate::mqtt::publisher::connect(options, Arc::clone(&keys));
        Bundles::open(
            Some(dir.to_path_buf()),
            keys,
            store,
            Arc::new(Telemetry::new()),
            publisher,
        )
        .unwrap()
    }

    fn version(b: &Bundles, group: &str) -> u64 {
        b.get(group).unwrap().record.version
    }

    #[tokio::test]
    async fn versions_increase_only_on_change_and_survive_restarts() {
        let data = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        std::fs::write(dir.path().join("web/a.yaml"), POLICY).unwrap();
        {
            let b = bundles(data.path(), dir.path());
            let report = b.reload().await.unwrap();
            assert_eq!(report.published, vec![("web".to_string(), 1)]);
            let report = b.reload().await.unwrap();
            assert!(report.published.is_empty(), "unchanged is not republished");
            std::fs::write(dir.path().join("web/a.yaml"), POLICY.replace("90", "95")).unwrap();
            b.reload().await.unwrap();
            assert_eq!(version(&b, "web"), 2);
        }
        let b = bundles(data.path(), dir.path());
        let report = b.reload().await.unwrap();
        assert!(report.published.is_empty());
        assert_eq!(report.restored, vec!["web".to_string()]);
        assert_eq!(version(&b, "web"), 2, "version kept across a restart");

        // Removal publishes a signed tombstone at the next version; re-adding continues
        // the sequence above it.
        std::fs::rename(dir.path().join("web"), dir.path().join(".web")).unwrap();
        let report = b.reload().await.unwrap();
        assert_eq!(report.removed, vec!["web".to_string()]);
        assert!(b.get("web").is_none());
        let key = vigil_shared::bundle::PublicKey::from_hex(b.public_key()).unwrap();
        let tombstones = b.tombstones();
        let removed = match vigil_shared::bundle::open(&tombstones[0], &key, Some((2, ""))) {
            Ok(vigil_shared::bundle::Release::Removed(t)) => t,
            other => panic!("not a tombstone: {other:?}"),
        };
        assert_eq!((removed.group.as_str(), removed.version), ("web", 3));
        assert!(b.reload().await.unwrap().removed.is_empty(), "removed once");
        drop(b);
        // After a restart the tombstone is still there (and signed the same way).
        let b = bundles(data.path(), dir.path());
        assert_eq!(b.tombstones().len(), 1);
        assert_eq!(b.tombstones()[0].content, tombstones[0].content);
        std::fs::rename(dir.path().join(".web"), dir.path().join("web")).unwrap();
        b.reload().await.unwrap();
        assert_eq!(
            version(&b, "web"),
            4,
            "continues after the tombstone's version 3"
        );
        assert!(b.tombstones().is_empty());
    }

    #[tokio::test]
    async fn a_group_removed_before_tombstones_existed_gets_one_above_its_last_version() {
        let data = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let b = bundles(data.path(), dir.path());
            // As an older coordinator stored a removal: the last bundle's version and hash.
            b.store
                .put_bundle_records(&[BundleRecord {
                    group: "old".into(),
                    version: 5,
                    hash: "ab".repeat(32),
                    created_at_ms: 1,
                    selector: vec![],
                    files: vec![],
                    removed: true,
                    budget: None,
                }])
                .unwrap();
        }
        for _ in 0..2 {
            let b = bundles(data.path(), dir.path());
            let key = vigil_shared::bundle::PublicKey::from_hex(b.public_key()).unwrap();
            match vigil_shared::bundle::open(&b.tombstones()[0], &key, Some((5, "x"))) {
                Ok(vigil_shared::bundle::Release::Removed(t)) => assert_eq!(t.version, 6),
                other => panic!("not a tombstone above version 5: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_invalid_edit_keeps_the_last_good_version_and_reports_the_error() {
        let data = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        std::fs::write(dir.path().join("web/a.yaml"), POLICY).unwrap();
        let b = bundles(data.path(), dir.path());
        b.reload().await.unwrap();
        std::fs::write(
            dir.path().join("web/a.yaml"),
            POLICY.replace("threshold", "treshold"),
        )
        .unwrap();
        let report = b.reload().await.unwrap();
        assert!(report.published.is_empty());
        assert_eq!(version(&b, "web"), 1);
        let error = b.last_error().unwrap();
        assert!(
            error.contains("a.yaml") && error.contains("cpu-high"),
            "{error}"
        );
        assert_eq!(
            b.telemetry
                .policy_load_errors
                .with_label_values(&["bundles"])
                .get(),
            1
        );
        std::fs::write(dir.path().join("web/a.yaml"), POLICY).unwrap();
        b.reload().await.unwrap();
        assert_eq!(b.last_error(), None);
        assert_eq!(version(&b, "web"), 1, "back to the published content");
    }
}
