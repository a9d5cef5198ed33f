//! The `tokens` database: REST API tokens, keyed by the SHA-256 of the token, valued by
//! its [`TokenRecord`] as JSON. Rare writes, each in its own transaction (see
//! [`super::policies`]); reads are one lookup per request.

use std::fmt;
use std::str::FromStr;

use heed::types::Bytes;
use heed::Database;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::agents::JoinTokenRecord;

use super::codec::{json_decode, json_encode};
use super::{Store, StoreError};

/// A stored token that can be revoked by its id or name: REST tokens and join tokens.
pub(crate) trait Revocable: Serialize + DeserializeOwned {
    /// Whether `which` names it (its id or its name).
    fn is_named(&self, which: &str) -> bool;
    /// When it was revoked.
    fn revoked_ms(&mut self) -> &mut Option<i64>;
}

impl Revocable for TokenRecord {
    fn is_named(&self, which: &str) -> bool {
        self.id == which || self.name == which
    }
    fn revoked_ms(&mut self) -> &mut Option<i64> {
        &mut self.revoked_ms
    }
}

impl Revocable for JoinTokenRecord {
    fn is_named(&self, which: &str) -> bool {
        self.id == which || self.name == which
    }
    fn revoked_ms(&mut self) -> &mut Option<i64> {
        &mut self.revoked_ms
    }
}

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also: manual actions, enable/disable policies, the kill switch, HTTP ingest.
    Operator,
    /// Also: create, change and delete policies, reload policies and bundles.
    Admin,
}

impl Role {
    /// The role's name as written on the command line and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected viewer, operator or admin)"
            )),
        }
    }
}

/// What the store keeps about a token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A short id to name it by (the first 8 hex characters of its hash).
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made, epoch ms.
    pub created_ms: i64,
    /// When it was revoked, epoch ms.
    pub revoked_ms: Option<i64>,
}

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
        self.revoke_named(self.dbs.tokens, "tokens", which, now_ms)
    }

    /// In `db` (JSON records), revokes every unrevoked record `which` names, at `now_ms`,
    /// in one transaction; returns them.
    pub(crate) fn revoke_named<T: Revocable>(
        &self,
        db: Database<Bytes, Bytes>,
        db_name: &'static str,
        which: &str,
        now_ms: i64,
    ) -> Result<Vec<T>, StoreError> {
        self.write_rare(|_, txn| {
            let mut changed = Vec::new();
            for entry in db.iter(txn)? {
                let (key, bytes) = entry?;
                let mut record: T = json_decode(db_name, bytes)?;
                if record.is_named(which) && record.revoked_ms().is_none() {
                    *record.revoked_ms() = Some(now_ms);
                    changed.push((key.to_vec(), record));
                }
            }
            for (key, record) in &changed {
                db.put(txn, key, &json_encode(db_name, record)?)?;
            }
            Ok(changed.into_iter().map(|(_, r)| r).collect())
        })
    }
}

fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    json_decode("tokens", bytes)
}

fn encode(record: &TokenRecord) -> Result<Vec<u8>, StoreError> {
    json_encode("tokens", record)
}

#[cfg(test)]
mod tests {
    use crate::security::tokens::{self, Role};
    use crate::store::Store;

    #[test]
    fn tokens_are_found_by_hash_listed_and_revoked_by_id_or_name() {
        let (_dir, store) = Store::temporary();
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
