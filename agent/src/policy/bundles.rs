//! Signed policy bundles on the agent: which host groups' bundles are in force, and how
//! an offered bundle becomes one of them.
//!
//! The coordinator publishes one [`SignedBundle`] per host group, retained, on
//! `vigil/v1/bundles/{group}`; the link forwards every one of them here. For each:
//!
//! 1. Decode it; the topic's group must be the envelope's.
//! 2. [`open`] it: signature (in the bundle's or tombstone's signing context), hash,
//!    group, and version order against the group's *version floor*, the highest version
//!    this agent ever accepted for the group. The floor is persisted and outlives the
//!    group's bundle (leaving the group, the group's removal, restarts), so a captured
//!    older bundle replayed later is refused ([`BundleError::Replayed`]), counted
//!    ([`Bundles::replays_refused`]) and reported.
//! 3. A message that does not verify is reported only if it could concern this host: its
//!    group is in force here, or its (unverified) selector matches this host's labels.
//!    Others are ignored quietly (forgeries for other groups are not this host's news).
//! 4. A verified tombstone drops the group's policies and raises the floor to its
//!    version. A verified bundle whose selector does not match this host raises the floor;
//!    if the host had the group in force, it has *left* the group and the group's bundle is
//!    dropped (a forged or replayed message cannot make a host drop its policies).
//! 5. A verified bundle for this host: parse every policy file (`*.yaml` / `*.yml`) and
//!    the desired-state manifest (names unique across the bundle), give the group's budget
//!    (if the bundle carries one) to every policy that remediates and has none of its own
//!    ([`vigil_shared::policy::budget::apply_group_budget`]), persist it and its floor
//!    ([`BundleStore`], atomically), then put it in force.
//!
//! All or nothing: any failure refuses the whole bundle with a [`Refusal`] naming the
//! reason (the [`BundleError`], or the file, policy and field), and the group's last good
//! bundle stays in force. On start, [`Bundles::open`] loads the persisted floors and
//! bundles and verifies the bundles again the same way, before the agent touches the
//! network, so a host keeps running its groups' policies while the coordinator is
//! unreachable.
//!
//! How the groups' policies combine with the local policy directory is
//! [`crate::policy::set`]'s business.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;
use vigil_shared::bundle::{
    open, Bundle, BundleError, BundleKind, PublicKey, Release, SignedBundle, MANIFEST_FILE,
};
use vigil_shared::policy::load::{self, LoadError};
use vigil_shared::policy::Policy;
use vigil_shared::wire::{self, AppliedBundle, DecodeError, Tag};

use crate::policy::bundle_store::{BundleStore, Floor, StoreError};

/// Why an offered (or stored) bundle was refused. The group's last good bundle stays in
/// force.
#[derive(Debug, Error)]
pub enum Refusal {
    /// The payload is not a signed bundle.
    #[error("bundle on topic group `{group}`: payload does not decode: {source}")]
    Decode {
        /// The group named by the topic.
        group: String,
        /// Why it does not decode.
        source: DecodeError,
    },
    /// The envelope names another group than the topic it came on.
    #[error("bundle on topic group `{topic}` is for group `{group}`")]
    WrongTopic {
        /// The group named by the topic.
        topic: String,
        /// The group named by the bundle.
        group: String,
    },
    /// Signature, hash, content or version order is wrong.
    #[error(transparent)]
    Verify(#[from] BundleError),
    /// A policy file is invalid (the error names file, policy and field).
    #[error("bundle for group `{group}` version {version}: {source}")]
    Policy {
        /// The group.
        group: String,
        /// The version offered.
        version: u64,
        /// What is wrong, and where.
        source: Box<LoadError>,
    },
    /// The desired-state manifest is invalid.
    #[error("bundle for group `{group}` version {version}: {reason}")]
    Manifest {
        /// The group.
        group: String,
        /// The version offered.
        version: u64,
        /// What is wrong (names `manifest.yaml`, the entry and the field).
        reason: String,
    },
    /// The group budget is out of range.
    #[error("bundle for group `{group}` version {version}: group.yaml: {field}: {reason}")]
    Budget {
        /// The group.
        group: String,
        /// The version offered.
        version: u64,
        /// The field (`budget.max_concurrent`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Two files of the bundle define the same policy name.
    #[error(
        "bundle for group `{group}` version {version}: policy `{name}` is defined in {file} and in {other}"
    )]
    Duplicate {
        /// The group.
        group: String,
        /// The version offered.
        version: u64,
        /// The policy name.
        name: String,
        /// The second file defining it.
        file: String,
        /// The first.
        other: String,
    },
    /// The bundle could not be written to disk, so it is not put in force (what runs must
    /// be what a restart would run).
    #[error(
        "bundle for group `{group}` version {version}: not applied, cannot persist it: {source}"
    )]
    Persist {
        /// The group.
        group: String,
        /// The version offered.
        version: u64,
        /// The store's error.
        source: StoreError,
    },
    /// A stored bundle could not be read.
    #[error(transparent)]
    Stored(#[from] StoreError),
}

/// What became of an offered bundle that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new version is in force for the group.
    Applied {
        /// The group.
        group: String,
        /// The version now in force.
        version: u64,
    },
    /// The bundle in force, seen again (a retained message after a reconnect).
    Unchanged,
    /// For a group this host is not in (or an empty payload: a cleared retained message).
    Ignored,
    /// The group's signed selector no longer matches this host: its bundle was dropped.
    Left {
        /// The group.
        group: String,
    },
    /// The group was removed (a signed tombstone): its bundle was dropped.
    Removed {
        /// The group.
        group: String,
        /// The tombstone's version, now the group's floor.
        version: u64,
    },
}

/// One group's bundle in force.
#[derive(Debug, Clone)]
struct InForce {
    version: u64,
    hash: String,
    policies: Vec<Policy>,
}

/// The bundles in force, by group, and what checks new ones.
#[derive(Debug)]
pub struct Bundles {
    key: PublicKey,
    labels: Vec<Tag>,
    store: BundleStore,
    groups: BTreeMap<String, InForce>,
    /// Every group's version floor (groups in force, left, removed, or never joined).
    floors: BTreeMap<String, Floor>,
    /// Replayed (older) bundles refused since start.
    replays_refused: u64,
}

impl Bundles {
    /// Loads the persisted floors, then loads and verifies again every persisted bundle
    /// (with `key`, against this host's `labels`). Bundles that fail are not applied and
    /// come back as refusals; a stored bundle whose group no longer selects this host, or
    /// that is below its group's floor (the group was removed), is removed.
    pub fn open(key: PublicKey, labels: Vec<Tag>, store: BundleStore) -> (Bundles, Vec<Refusal>) {
        let mut bundles = Bundles {
            key,
            labels,
            store,
            groups: BTreeMap::new(),
            floors: BTreeMap::new(),
            replays_refused: 0,
        };
        let mut refusals = Vec::new();
        for floor in bundles.store.load_floors() {
            match floor {
                Ok((group, floor)) => {
                    bundles.floors.insert(group, floor);
                }
                Err(e) => refusals.push(Refusal::Stored(e)),
            }
        }
        for stored in bundles.store.load_all() {
            let outcome = stored
                .map_err(Refusal::from)
                .and_then(|signed| bundles.accept(signed, false));
            match outcome {
                Ok(Outcome::Applied { group, version }) => {
                    tracing::info!(%group, version, "persisted policy bundle verified and loaded");
                }
                Ok(Outcome::Left { group }) => {
                    tracing::info!(%group, "persisted policy bundle dropped: its group no longer selects this host");
                }
                Ok(Outcome::Removed { .. } | Outcome::Unchanged | Outcome::Ignored) => {}
                Err(Refusal::Verify(BundleError::Replayed {
                    group,
                    offered,
                    floor,
                })) => {
                    // Only a crash between persisting a tombstone's floor and removing the
                    // bundle leaves this: the group was removed.
                    tracing::info!(%group, version = offered, floor, "persisted policy bundle dropped: its group was removed at a later version");
                    if let Err(e) = bundles.store.remove(&group) {
                        refusals.push(Refusal::Stored(e));
                    }
                }
                Err(refusal) => refusals.push(refusal),
            }
        }
        (bundles, refusals)
    }

    /// Takes a bundle payload that arrived on `vigil/v1/bundles/{topic_group}`.
    pub fn offer(&mut self, topic_group: &str, payload: &[u8]) -> Result<Outcome, Refusal> {
        if payload.is_empty() {
            // Clearing a retained message is not signed, so it cannot drop a group (a
            // removed group is dropped by its signed tombstone).
            return Ok(Outcome::Ignored);
        }
        let signed = wire::decode::<SignedBundle>(payload).map_err(|source| Refusal::Decode {
            group: topic_group.to_string(),
            source,
        })?;
        if signed.group != topic_group {
            return Err(Refusal::WrongTopic {
                topic: topic_group.to_string(),
                group: signed.group,
            });
        }
        self.accept(signed, true)
    }

    /// Steps 2–5 of the module doc. `from_network` is false for bundles read from the
    /// store: those are already persisted, and their refusals are always reported.
    fn accept(&mut self, signed: SignedBundle, from_network: bool) -> Result<Outcome, Refusal> {
        let group = signed.group.clone();
        let in_force = self.groups.get(&group);
        let floor = self
            .floors
            .get(&group)
            .map(|f| (f.version, f.hash.as_str()));
        let release = match open(&signed, &self.key, floor) {
            Ok(release) => release,
            Err(e) => {
                if matches!(e, BundleError::Replayed { .. }) {
                    self.replays_refused += 1;
                }
                if from_network && in_force.is_none() && !self.might_select_me(&signed) {
                    tracing::debug!("bundle for a group this host is not in refused: {e}");
                    return Ok(Outcome::Ignored);
                }
                return Err(e.into());
            }
        };
        let bundle = match release {
            Release::Removed(tombstone) => {
                let dropped = self.drop_group(&signed, tombstone.version)?;
                return Ok(if dropped {
                    Outcome::Removed {
                        group,
                        version: tombstone.version,
                    }
                } else {
                    Outcome::Ignored
                });
            }
            Release::Bundle(bundle) => bundle,
        };
        if !bundle.selects(&self.labels) {
            let dropped = self.drop_group(&signed, bundle.version)?;
            return Ok(if dropped {
                Outcome::Left { group }
            } else {
                Outcome::Ignored
            });
        }
        if in_force.is_some_and(|g| g.version == bundle.version && g.hash == signed.hash) {
            return Ok(Outcome::Unchanged);
        }
        let policies = parse(&bundle)?;
        let persist_error = |source| Refusal::Persist {
            group: group.clone(),
            version: bundle.version,
            source,
        };
        if from_network {
            // The bundle before its floor: a crash in between leaves a floor below the
            // stored bundle, which the next start raises again.
            self.store.save(&signed).map_err(persist_error)?;
        }
        self.raise_floor(&signed, bundle.version)
            .map_err(persist_error)?;
        self.groups.insert(
            group.clone(),
            InForce {
                version: bundle.version,
                hash: signed.hash,
                policies,
            },
        );
        Ok(Outcome::Applied {
            group,
            version: bundle.version,
        })
    }

    /// Whether an unverified message could concern this host: a bundle whose selector
    /// matches its labels (a tombstone only concerns a group in force).
    fn might_select_me(&self, signed: &SignedBundle) -> bool {
        signed.kind == BundleKind::Bundle
            && vigil_shared::bundle::decode_bundle(&signed.content)
                .map_or(true, |b| b.selects(&self.labels))
    }

    /// Raises the group's floor to `version` (the verified `signed` carried it) and
    /// persists it; a floor already there stays.
    fn raise_floor(&mut self, signed: &SignedBundle, version: u64) -> Result<(), StoreError> {
        if self
            .floors
            .get(&signed.group)
            .is_some_and(|f| f.version >= version)
        {
            return Ok(());
        }
        let floor = Floor {
            version,
            hash: signed.hash.clone(),
        };
        self.store.save_floor(&signed.group, &floor)?;
        self.floors.insert(signed.group.clone(), floor);
        Ok(())
    }

    /// Raises the group's floor to `version` first, then drops its bundle (from memory and
    /// the store). Whether the group was in force.
    fn drop_group(&mut self, signed: &SignedBundle, version: u64) -> Result<bool, Refusal> {
        self.raise_floor(signed, version)
            .map_err(|source| Refusal::Persist {
                group: signed.group.clone(),
                version,
                source,
            })?;
        let dropped = self.groups.remove(&signed.group).is_some();
        self.store.remove(&signed.group)?;
        Ok(dropped)
    }

    /// Replayed (older) bundles refused since start.
    pub fn replays_refused(&self) -> u64 {
        self.replays_refused
    }

    /// Every group's version floor: the highest version accepted for it, sorted by group.
    #[cfg(test)]
    pub fn floors(&self) -> impl Iterator<Item = (&str, u64)> {
        self.floors.iter().map(|(g, f)| (g.as_str(), f.version))
    }

    /// The bundles in force, sorted by group (for the agent's status).
    pub fn applied(&self) -> Vec<AppliedBundle> {
        self.groups
            .iter()
            .map(|(group, g)| AppliedBundle {
                group: group.clone(),
                version: g.version,
                hash: g.hash.clone(),
            })
            .collect()
    }

    /// Every group's policies, sorted by group name.
    pub fn group_policies(&self) -> impl Iterator<Item = (&str, &[Policy])> {
        self.groups
            .iter()
            .map(|(group, g)| (group.as_str(), g.policies.as_slice()))
    }
}

/// Whether a bundle file is a policy file.
fn is_policy_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Parses every policy file and the manifest of a bundle into one set with unique names,
/// or refuses the bundle. Files are named `<group>/<file>` in errors.
fn parse(bundle: &Bundle) -> Result<Vec<Policy>, Refusal> {
    let mut all = Vec::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    for file in &bundle.files {
        let label = format!("{}/{}", bundle.group, file.name);
        let policies = if file.name == MANIFEST_FILE {
            manifest(bundle, &file.text, &label)?
        } else if is_policy_file(&file.name) {
            load::load_text(&file.text, &label).map_err(|source| Refusal::Policy {
                group: bundle.group.clone(),
                version: bundle.version,
                source: Box::new(source),
            })?
        } else {
            tracing::debug!(file = %label, "bundle file is neither a policy file nor the manifest; skipped");
            continue;
        };
        for policy in policies {
            if let Some(other) = origin.insert(policy.name.clone(), label.clone()) {
                return Err(Refusal::Duplicate {
                    group: bundle.group.clone(),
                    version: bundle.version,
                    name: policy.name,
                    file: label,
                    other,
                });
            }
            all.push(policy);
        }
    }
    if let Some(budget) = &bundle.budget {
        budget
            .check_ranges()
            .map_err(|(field, reason)| Refusal::Budget {
                group: bundle.group.clone(),
                version: bundle.version,
                field,
                reason,
            })?;
        vigil_shared::policy::budget::apply_group_budget(&mut all, budget);
    }
    Ok(all)
}

/// The policies a bundle's desired-state manifest stands for (named
/// `manifest:<group>:…`), checked like any policy file.
fn manifest(bundle: &Bundle, text: &str, label: &str) -> Result<Vec<Policy>, Refusal> {
    let specs = vigil_shared::bundle_manifest::manifest_policies(&bundle.group, text).map_err(
        |reason| Refusal::Manifest {
            group: bundle.group.clone(),
            version: bundle.version,
            reason,
        },
    )?;
    load::check_specs(&specs, label).map_err(|source| Refusal::Policy {
        group: bundle.group.clone(),
        version: bundle.version,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::bundle::{BundleFile, BundleKeys, Tombstone};

    fn labels(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn bundle(group: &str, role: &str, version: u64, files: &[(&str, &str)]) -> Bundle {
        Bundle {
            group: group.into(),
            selector: labels(&[("role", role)]),
            version,
            created_at_ms: 1,
            files: files
                .iter()
                .map(|(name, text)| BundleFile {
                    name: name.to_string(),
                    text: text.to_string(),
                })
                .collect(),
            budget: None,
        }
    }

    fn policy(name: &str) -> String {
        format!("policies:\n  - name: {name}\n    condition: cpu_percent > 90\n")
    }

    struct Fixture {
        keys: BundleKeys,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                keys: BundleKeys::generate(),
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn open(&self, role: &str) -> (Bundles, Vec<Refusal>) {
            Bundles::open(
                PublicKey::from_hex(&self.keys.public_hex()).unwrap(),
                labels(&[("role", role)]),
                BundleStore::new(self.dir.path().join("bundles")),
            )
        }

        fn payload(&self, bundle: &Bundle) -> Vec<u8> {
            wire::encode(&self.keys.sign(bundle))
        }
    }

    fn names(bundles: &Bundles) -> Vec<String> {
        bundles
            .group_policies()
            .flat_map(|(_, ps)| ps.iter().map(|p| p.name.clone()))
            .collect()
    }

    #[test]
    fn the_group_budget_goes_to_remediating_policies_without_their_own() {
        use vigil_shared::policy::budget::{Budget, BudgetMax, OfflineMode};
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        let act = |name: &str, extra: &str| {
            format!(
                "  - name: {name}\n    condition: cpu_percent > 90\n    auto_remediate: true\n    \
                 action: exec\n    params: {{command: x}}\n{extra}"
            )
        };
        let file = format!(
            "policies:\n{}{}{}  - name: watch-only\n    condition: cpu_percent > 90\n",
            act("pooled", ""),
            act("own", "    budget: {max_concurrent: 5}\n"),
            act("rehearsal", "    dry_run: true\n"),
        );
        let group = Budget {
            max: BudgetMax::Count(2),
            per: Some("role".into()),
            max_per_hour: None,
            offline: OfflineMode::Wait,
        };
        let mut web = bundle("web", "web", 1, &[("a.yaml", &file)]);
        web.budget = Some(group.clone());
        bundles.offer("web", &fx.payload(&web)).unwrap();
        let budgets: BTreeMap<String, Option<BudgetMax>> = bundles
            .group_policies()
            .flat_map(|(_, ps)| ps.iter())
            .map(|p| (p.name.clone(), p.budget.as_ref().map(|b| b.max)))
            .collect();
        assert_eq!(budgets["pooled"], Some(BudgetMax::Count(2)));
        assert_eq!(budgets["own"], Some(BudgetMax::Count(5)), "its own wins");
        assert_eq!(budgets["rehearsal"], None, "dry_run does not remediate");
        assert_eq!(budgets["watch-only"], None);

        // A budget out of range (signed, but hostile all the same) refuses the bundle.
        let mut bad = web.clone();
        bad.version = 2;
        bad.budget = Some(Budget {
            max: BudgetMax::Count(0),
            ..group
        });
        let refusal = bundles.offer("web", &fx.payload(&bad)).unwrap_err();
        assert!(
            refusal.to_string().contains("budget.max_concurrent"),
            "{refusal}"
        );
        assert_eq!(
            bundles.applied()[0].version,
            1,
            "the last good bundle stays"
        );
    }

    #[test]
    fn a_verified_bundle_is_applied_persisted_and_reloaded() {
        let fx = Fixture::new();
        let (mut bundles, refusals) = fx.open("web");
        assert!(refusals.is_empty());
        let web = bundle("web", "web", 3, &[("a.yaml", &policy("web-cpu"))]);
        let outcome = bundles.offer("web", &fx.payload(&web)).unwrap();
        assert_eq!(
            outcome,
            Outcome::Applied {
                group: "web".into(),
                version: 3
            }
        );
        assert_eq!(
            bundles.offer("web", &fx.payload(&web)).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(names(&bundles), vec!["web-cpu"]);
        assert!(fx.dir.path().join("bundles/web.bundle").is_file());

        let (again, refusals) = fx.open("web");
        assert!(refusals.is_empty(), "{refusals:?}");
        assert_eq!(again.applied(), bundles.applied());
        assert_eq!(again.applied()[0].version, 3);
        assert_eq!(names(&again), vec!["web-cpu"]);

        // Loading with another key refuses the stored bundle: it is verified again.
        let other = Bundles::open(
            PublicKey::from_hex(&BundleKeys::generate().public_hex()).unwrap(),
            labels(&[("role", "web")]),
            BundleStore::new(fx.dir.path().join("bundles")),
        );
        assert!(other.0.applied().is_empty());
        assert!(matches!(
            other.1.as_slice(),
            [Refusal::Verify(BundleError::BadSignature { .. })]
        ));
    }

    #[test]
    fn refusals_keep_the_last_good_bundle_and_name_the_reason() {
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        let good = bundle("web", "web", 2, &[("a.yaml", &policy("web-cpu"))]);
        bundles.offer("web", &fx.payload(&good)).unwrap();
        let applied = bundles.applied();

        let forged = wire::encode(&BundleKeys::generate().sign(&bundle("web", "web", 3, &[])));
        let err = bundles.offer("web", &forged).unwrap_err().to_string();
        assert!(err.contains("bad signature"), "{err}");

        let old = bundle("web", "web", 1, &[]);
        let err = bundles
            .offer("web", &fx.payload(&old))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("version 1 is not newer than the applied version 2"),
            "{err}"
        );

        let mut altered = fx.keys.sign(&bundle("web", "web", 4, &[]));
        altered.content = postcard::to_stdvec(&bundle("web", "web", 4, &[("x.yaml", "")])).unwrap();
        let err = bundles
            .offer("web", &wire::encode(&altered))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad signature"), "{err}");

        let invalid = bundle(
            "web",
            "web",
            5,
            &[
                ("a.yaml", &policy("fine")),
                ("b.yaml", "policies:\n  - name: broken\n    condition: {type: metric_exceeds, metric: cpu_percent}\n"),
            ],
        );
        let err = bundles
            .offer("web", &fx.payload(&invalid))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web/b.yaml") && err.contains("broken") && err.contains("version 5"),
            "{err}"
        );

        let duplicate = bundle(
            "web",
            "web",
            6,
            &[("a.yaml", &policy("x")), ("b.yaml", &policy("x"))],
        );
        let err = bundles
            .offer("web", &fx.payload(&duplicate))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`x` is defined in web/b.yaml and in web/a.yaml"),
            "{err}"
        );

        let err = bundles
            .offer("db", &fx.payload(&good))
            .unwrap_err()
            .to_string();
        assert!(err.contains("topic group `db`"), "{err}");
        let err = bundles.offer("web", b"\x01\xff").unwrap_err().to_string();
        assert!(err.contains("does not decode"), "{err}");

        assert_eq!(bundles.applied(), applied);
        assert_eq!(names(&bundles), vec!["web-cpu"]);
        let (reloaded, _) = fx.open("web");
        assert_eq!(
            reloaded.applied(),
            applied,
            "the store keeps the last good one"
        );
    }

    #[test]
    fn the_manifest_becomes_policies_and_a_bad_one_refuses_the_bundle() {
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        let good = bundle(
            "web",
            "web",
            1,
            &[
                ("manifest.yaml", "units: [{name: nginx.service}]\n"),
                ("README.md", "x"),
            ],
        );
        bundles.offer("web", &fx.payload(&good)).unwrap();
        assert_eq!(names(&bundles), vec!["manifest:web:unit:nginx.service"]);
        let bad = bundle("web", "web", 2, &[("manifest.yaml", "unitz: []\n")]);
        let err = bundles
            .offer("web", &fx.payload(&bad))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("version 2") && err.contains("manifest.yaml") && err.contains("unitz"),
            "{err}"
        );
        assert_eq!(bundles.applied()[0].version, 1);
    }

    #[test]
    fn selectors_decide_membership_and_leaving_drops_the_group() {
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        let db = bundle("db", "db", 1, &[("a.yaml", &policy("db-cpu"))]);
        assert_eq!(
            bundles.offer("db", &fx.payload(&db)).unwrap(),
            Outcome::Ignored
        );
        // A forged bundle of a group this host is not in is not even reported.
        let forged = wire::encode(&BundleKeys::generate().sign(&db));
        assert_eq!(bundles.offer("db", &forged).unwrap(), Outcome::Ignored);
        assert!(bundles.applied().is_empty());
        assert_eq!(bundles.offer("db", b"").unwrap(), Outcome::Ignored);

        let web = bundle("web", "web", 1, &[("a.yaml", &policy("web-cpu"))]);
        bundles.offer("web", &fx.payload(&web)).unwrap();
        // Only a verified bundle can make the host leave a group...
        let leave = bundle("web", "frontend", 2, &[]);
        let forged = wire::encode(&BundleKeys::generate().sign(&leave));
        assert!(bundles.offer("web", &forged).is_err());
        assert_eq!(bundles.applied().len(), 1);
        // ...and a genuine one does.
        assert_eq!(
            bundles.offer("web", &fx.payload(&leave)).unwrap(),
            Outcome::Left {
                group: "web".into()
            }
        );
        assert!(bundles.applied().is_empty());
        assert!(!fx.dir.path().join("bundles/web.bundle").exists());

        // Labels changed while the agent was down: the stored bundle is dropped on start.
        let (mut bundles, _) = fx.open("web");
        bundles
            .offer("web", &fx.payload(&bundle("web", "web", 3, &[])))
            .unwrap();
        let (db_host, refusals) = fx.open("db");
        assert!(refusals.is_empty());
        assert!(db_host.applied().is_empty());
        assert!(!fx.dir.path().join("bundles/web.bundle").exists());
    }

    fn floor_of(bundles: &Bundles, group: &str) -> Option<u64> {
        bundles.floors().find(|(g, _)| *g == group).map(|(_, v)| v)
    }

    #[test]
    fn an_older_bundle_is_refused_after_leaving_rejoining_and_restarting() {
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        let v1 = fx.payload(&bundle("web", "web", 1, &[("a.yaml", &policy("v1"))]));
        let v2 = fx.payload(&bundle("web", "web", 2, &[("a.yaml", &policy("v2"))]));
        bundles.offer("web", &v1).unwrap();
        bundles.offer("web", &v2).unwrap();
        assert_eq!(names(&bundles), vec!["v2"]);

        // The host's labels change while it is down: it leaves the group on start...
        let (away, refusals) = fx.open("db");
        assert!(refusals.is_empty(), "{refusals:?}");
        assert!(away.applied().is_empty());
        assert_eq!(
            floor_of(&away, "web"),
            Some(2),
            "the floor outlives the bundle"
        );
        drop(away);
        // ...and rejoins later: the captured version 1 is refused, counted and named.
        let (mut back, _) = fx.open("web");
        assert!(back.applied().is_empty());
        let err = back.offer("web", &v1).unwrap_err().to_string();
        assert!(
            err.contains("version 1 is not newer than the applied version 2"),
            "{err}"
        );
        assert_eq!(back.replays_refused(), 1);
        assert!(back.applied().is_empty());
        // The retained version 2 (the coordinator's) is taken again.
        assert_eq!(
            back.offer("web", &v2).unwrap(),
            Outcome::Applied {
                group: "web".into(),
                version: 2
            }
        );
        assert_eq!(names(&back), vec!["v2"]);

        // A genuine bundle that makes the host leave raises the floor too.
        let leave = fx.payload(&bundle("web", "frontend", 3, &[]));
        assert!(matches!(
            back.offer("web", &leave).unwrap(),
            Outcome::Left { .. }
        ));
        assert!(back.offer("web", &v2).is_err(), "version 2 is now a replay");
        assert_eq!(floor_of(&back, "web"), Some(3));
        // A replay for a group this host is not in, whose (old) selector matches it, is
        // reported too: it is the host it targets.
        let (mut fresh, _) = fx.open("web");
        assert!(fresh.offer("web", &v1).is_err());
    }

    #[test]
    fn a_tombstone_drops_the_group_and_older_bundles_stay_refused() {
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        let v2 = fx.payload(&bundle("web", "web", 2, &[("a.yaml", &policy("web-cpu"))]));
        bundles.offer("web", &v2).unwrap();
        let tombstone = Tombstone {
            group: "web".into(),
            version: 3,
            removed_at_ms: 9,
        };
        let removed = wire::encode(&fx.keys.sign_tombstone(&tombstone));

        // A forged tombstone drops nothing.
        let forged = wire::encode(&BundleKeys::generate().sign_tombstone(&tombstone));
        let err = bundles.offer("web", &forged).unwrap_err().to_string();
        assert!(err.contains("bad signature"), "{err}");
        assert_eq!(names(&bundles), vec!["web-cpu"]);

        assert_eq!(
            bundles.offer("web", &removed).unwrap(),
            Outcome::Removed {
                group: "web".into(),
                version: 3
            }
        );
        assert!(bundles.applied().is_empty());
        assert!(names(&bundles).is_empty());
        assert!(!fx.dir.path().join("bundles/web.bundle").exists());
        assert_eq!(floor_of(&bundles, "web"), Some(3));
        // Seen again (retained): nothing to do.
        assert_eq!(bundles.offer("web", &removed).unwrap(), Outcome::Ignored);
        let err = bundles.offer("web", &v2).unwrap_err().to_string();
        assert!(err.contains("version 2 is not newer"), "{err}");

        // After a restart: still removed, still refusing the old bundle.
        let (mut again, refusals) = fx.open("web");
        assert!(refusals.is_empty(), "{refusals:?}");
        assert!(again.applied().is_empty());
        assert!(again.offer("web", &v2).is_err());
        assert_eq!(again.replays_refused(), 1);
        // The group re-added continues above the tombstone.
        let v4 = fx.payload(&bundle("web", "web", 4, &[("a.yaml", &policy("back"))]));
        assert!(matches!(
            again.offer("web", &v4).unwrap(),
            Outcome::Applied { version: 4, .. }
        ));

        // A crash between the tombstone's floor and the bundle's removal: the stale
        // bundle is dropped on start, not applied.
        let fx = Fixture::new();
        let (mut bundles, _) = fx.open("web");
        bundles
            .offer("web", &fx.payload(&bundle("web", "web", 2, &[])))
            .unwrap();
        let store = BundleStore::new(fx.dir.path().join("bundles"));
        let tombstone = fx.keys.sign_tombstone(&Tombstone {
            group: "web".into(),
            version: 3,
            removed_at_ms: 9,
        });
        store
            .save_floor(
                "web",
                &Floor {
                    version: 3,
                    hash: tombstone.hash,
                },
            )
            .unwrap();
        let (reopened, refusals) = fx.open("web");
        assert!(refusals.is_empty(), "{refusals:?}");
        assert!(reopened.applied().is_empty());
        assert!(!fx.dir.path().join("bundles/web.bundle").exists());
    }
}
