//! The `policies` database: policies created over the REST API, so that they survive a
//! restart. Key = the policy's name (UTF-8), value = its [`PolicySpec`] as JSON.
//!
//! These writes are rare (an operator creating or editing a policy), so each one runs in
//! its own short write transaction on the caller's thread instead of going through the
//! batching [`super::writer`]; LMDB serialises it with the writer's transactions. Call
//! from `spawn_blocking` in async code. A full map is grown here the same way the writer
//! grows it, up to the configured ceiling.

use heed::RwTxn;
use vigil_shared::policy::PolicySpec;

use super::{Store, StoreError};

/// A stored policy that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadablePolicy {
    /// The key it is stored under.
    pub name: String,
    /// Why it could not be read.
    pub reason: String,
}

/// Every policy stored in the `policies` database.
#[derive(Debug, Clone, Default)]
pub struct StoredPolicies {
    /// The ones that decode, sorted by name.
    pub specs: Vec<PolicySpec>,
    /// The ones that do not (left in place, reported to the caller).
    pub unreadable: Vec<UnreadablePolicy>,
}

impl Store {
    /// Reads every stored API policy. A record that is not a valid spec is reported in
    /// [`StoredPolicies::unreadable`] rather than failing the whole read.
    pub fn api_policies(&self) -> Result<StoredPolicies, StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.env.read_txn()?;
        let mut out = StoredPolicies::default();
        for entry in self.dbs.policies.iter(&txn)? {
            let (key, bytes) = entry?;
            let name = String::from_utf8_lossy(key).into_owned();
            match serde_json::from_slice::<PolicySpec>(bytes) {
                Ok(spec) if spec.name == name => out.specs.push(spec),
                Ok(spec) => out.unreadable.push(UnreadablePolicy {
                    reason: format!("stored under `{name}` but named `{}`", spec.name),
                    name,
                }),
                Err(e) => out.unreadable.push(UnreadablePolicy {
                    name,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Stores (creates or replaces) an API policy under its name.
    pub fn put_api_policy(&self, spec: &PolicySpec) -> Result<(), StoreError> {
        let json = serde_json::to_vec(spec).map_err(|e| StoreError::Corrupt {
            db: "policies",
            reason: format!("policy `{}` cannot be encoded as JSON: {e}", spec.name),
        })?;
        self.write_rare(|store, txn| {
            store.dbs.policies.put(txn, spec.name.as_bytes(), &json)?;
            Ok(())
        })
    }

    /// Deletes an API policy; returns whether it was stored.
    pub fn delete_api_policy(&self, name: &str) -> Result<bool, StoreError> {
        self.write_rare(|store, txn| Ok(store.dbs.policies.delete(txn, name.as_bytes())?))
    }

    /// Runs `f` in its own write transaction and commits; grows a full map and retries.
    /// For rare writes (policies, tokens) that need not go through the batching writer.
    pub(super) fn write_rare<R>(
        &self,
        f: impl Fn(&Store, &mut RwTxn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        loop {
            let attempt = {
                let _guard = self
                    .resize_lock
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let mut txn = self.env.write_txn()?;
                f(self, &mut txn).and_then(|r| {
                    txn.commit()?;
                    Ok(r)
                })
            };
            match attempt {
                Err(StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull))) => {
                    self.grow_map()?
                }
                other => return other,
            }
        }
    }

    /// Doubles the map (up to the ceiling) while no transaction is open.
    fn grow_map(&self) -> Result<(), StoreError> {
        let _no_readers = self
            .resize_lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current_map_size();
        if current >= self.map_size.max {
            return Err(StoreError::Full {
                max_bytes: self.map_size.max,
            });
        }
        let grown = current.saturating_mul(2).min(self.map_size.max);
        // SAFETY: every transaction (ours, the writer's, and readers') holds
        // `resize_lock` for reading while open; we hold it for writing, so none is open.
        unsafe { self.env.resize(grown) }?;
        tracing::warn!(
            from = current,
            to = grown,
            "LMDB map was full during a rare write (policy or token); grew it"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapSize;

    fn spec(name: &str) -> PolicySpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "condition": {"type": "metric_exceeds", "metric": "cpu_percent", "threshold": 80},
        }))
        .unwrap()
    }

    fn open(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            MapSize {
                initial: 1 << 20,
                max: 1 << 24,
            },
        )
        .unwrap()
    }

    #[test]
    fn policies_are_stored_replaced_deleted_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            store.put_api_policy(&spec("b")).unwrap();
            store.put_api_policy(&spec("a")).unwrap();
            let mut changed = spec("a");
            changed.description = "changed".into();
            store.put_api_policy(&changed).unwrap();
            assert!(store.delete_api_policy("b").unwrap());
            assert!(!store.delete_api_policy("b").unwrap());
        }
        let store = open(dir.path());
        let stored = store.api_policies().unwrap();
        assert!(stored.unreadable.is_empty());
        assert_eq!(stored.specs.len(), 1);
        assert_eq!(stored.specs[0].description, "changed");
    }

    #[test]
    fn an_unreadable_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.put_api_policy(&spec("good")).unwrap();
        store
            .write_rare(|s, txn| {
                s.dbs.policies.put(txn, b"bad", b"{not json")?;
                Ok(())
            })
            .unwrap();
        let stored = store.api_policies().unwrap();
        assert_eq!(stored.specs.len(), 1);
        assert_eq!(stored.unreadable.len(), 1);
        assert_eq!(stored.unreadable[0].name, "bad");
    }
}
