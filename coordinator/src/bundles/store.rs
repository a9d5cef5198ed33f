//! The `bundles` database: per group, the last published version, so versions keep
//! increasing across restarts. Key = the group name, value = a [`BundleRecord`] (store
//! codec). A removed group keeps its record (`removed`, with the version of its signed
//! tombstone), so re-adding it continues the version sequence instead of offering agents
//! an "older" version 1, and its tombstone is published again after a restart.
//!
//! Writes are rare (a changed bundle directory), so each runs in its own short write
//! transaction on the caller's thread (call from `spawn_blocking`).

use serde::{Deserialize, Serialize};
use vigil_shared::bundle::{Bundle, BundleFile};
use vigil_shared::policy::budget::Budget;
use vigil_shared::wire::Tag;

use crate::store::{codec, Store, StoreError};

/// What is kept per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// The group.
    pub group: String,
    /// The last version published (for a removed group: its tombstone's).
    pub version: u64,
    /// Its content hash (selector and files); empty for a removed group (older
    /// coordinators kept the last bundle's hash there, see `service::Bundles::open`).
    pub hash: String,
    /// When that version was built (or the group removed), epoch ms.
    pub created_at_ms: i64,
    /// The selector.
    pub selector: Vec<Tag>,
    /// The files (none for a removed group).
    pub files: Vec<BundleFile>,
    /// The group's folder is gone (a signed tombstone replaced its retained bundle).
    pub removed: bool,
    /// The group budget (`group.yaml`). Last: a record stored before group budgets
    /// existed ends before it and reads as `None`.
    pub budget: Option<Budget>,
}

impl BundleRecord {
    /// The bundle this record describes.
    pub fn bundle(&self) -> Bundle {
        Bundle {
            group: self.group.clone(),
            selector: self.selector.clone(),
            version: self.version,
            created_at_ms: self.created_at_ms,
            files: self.files.clone(),
            budget: self.budget.clone(),
        }
    }
}

/// Decodes a stored record, one from before group budgets included.
fn decode_record(bytes: &[u8]) -> Result<BundleRecord, StoreError> {
    codec::decode::<BundleRecord>("bundles", bytes).or_else(|error| {
        let mut padded = bytes.to_vec();
        padded.push(0);
        codec::decode::<BundleRecord>("bundles", &padded).map_err(|_| error)
    })
}

impl Store {
    /// Every stored bundle record, sorted by group.
    pub fn bundle_records(&self) -> Result<Vec<BundleRecord>, StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.env.read_txn()?;
        let mut out = Vec::new();
        for entry in self.dbs.bundles.iter(&txn)? {
            let (_, bytes) = entry?;
            out.push(decode_record(bytes)?);
        }
        Ok(out)
    }

    /// Stores these records (one transaction).
    pub fn put_bundle_records(&self, records: &[BundleRecord]) -> Result<(), StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut txn = self.env.write_txn()?;
        for record in records {
            self.dbs
                .bundles
                .put(&mut txn, record.group.as_bytes(), &codec::encode(record))?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapSize;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let size = MapSize {
            initial: 1 << 24,
            max: 1 << 26,
        };
        let record = BundleRecord {
            group: "web".into(),
            version: 3,
            hash: "h".into(),
            created_at_ms: 7,
            selector: vec![("role".into(), "web".into())],
            files: vec![BundleFile {
                name: "a.yaml".into(),
                text: "policies: []".into(),
            }],
            removed: false,
            budget: None,
        };
        {
            let store = Store::open(dir.path(), size).unwrap();
            store
                .put_bundle_records(std::slice::from_ref(&record))
                .unwrap();
        }
        let store = Store::open(dir.path(), size).unwrap();
        assert_eq!(store.bundle_records().unwrap(), vec![record.clone()]);
        // A record written before group budgets (no `budget` at its end) still reads.
        let mut old = codec::encode(&record);
        assert_eq!(old.pop(), Some(0), "an absent Option is one zero byte");
        assert_eq!(decode_record(&old).unwrap(), record);
    }
}
