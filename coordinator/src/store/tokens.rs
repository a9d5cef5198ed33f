//! The `tokens` database: REST API tokens, keyed by the SHA-256 of the token, valued by
//! its [`TokenRecord`] as JSON. Rare writes, each in its own transaction (see
//! [`super::policies`]); reads are one lookup per request.

use crate::tokens::TokenRecord;

use super::{Store, StoreError};

impl Store {
    /// The record of the token whose hash is `digest`, if there is one.
    pub fn token(&self, digest: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|txn| match self.dbs.tokens.get(txn, digest)? {
            Some(bytes) => Ok(Some(decode(bytes)?)),
            None => Ok(None),
        })
    }

    /// Every token record, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut out = self.read(|txn| {
            self.dbs
                .tokens
                .iter(txn)?
                .map(|entry| decode(entry?.1))
                .collect::<Result<Vec<_>, _>>()
        })?;
        out.sort_by_key(|r| r.created_ms);
        Ok(out)
    }

    /// Stores a new token record under its hash.
    pub fn put_token(&self, digest: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        let json = encode(record)?;
        self.write_rare(|store, txn| {
            store.dbs.tokens.put(txn, digest, &json)?;
            Ok(())
        })
    }

    /// Revokes every token whose id or name is `which`, at `now_ms`; returns them.
    pub fn revoke_tokens(&self, which: &str, now_ms: i64) -> Result<Vec<TokenRecord>, StoreError> {
        self.write_rare(|store, txn| {
            let mut changed = Vec::new();
            for entry in store.dbs.tokens.iter(txn)? {
                let (key, bytes) = entry?;
                let mut record = decode(bytes)?;
                if (record.id == which || record.name == which) && record.revoked_ms.is_none() {
                    record.revoked_ms = Some(now_ms);
                    changed.push((key.to_vec(), record));
                }
            }
            for (key, record) in &changed {
                store.dbs.tokens.put(txn, key, &encode(record)?)?;
            }
            Ok(changed.into_iter().map(|(_, r)| r).collect())
        })
    }
}

fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        db: "tokens",
        reason: e.to_string(),
    })
}

fn encode(record: &TokenRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
        db: "tokens",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use crate::store::{MapSize, Store};
    use crate::tokens::{self, Role};

    #[test]
    fn tokens_are_found_by_hash_listed_and_revoked_by_id_or_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            MapSize {
                initial: 1 << 20,
                max: 1 << 22,
            },
        )
        .unwrap();
        let secret = tokens::generate();
        let digest = tokens::hash(&secret);
        let record = tokens::record(&digest, "ci", Role::Viewer, 1);
        store.put_token(&digest, &record).unwrap();
        assert_eq!(store.token(&digest).unwrap(), Some(record.clone()));
        assert_eq!(store.token(&tokens::hash("other")).unwrap(), None);
        assert_eq!(store.tokens().unwrap().len(), 1);
        let revoked = store.revoke_tokens("ci", 9).unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(store.token(&digest).unwrap().unwrap().revoked_ms, Some(9));
        assert!(store.revoke_tokens(&record.id, 10).unwrap().is_empty());
    }
}
