//! The `agents` and `join_tokens` databases: enrolled agents keyed by host name, join
//! tokens keyed by the SHA-256 of the token, both valued as JSON. Rare writes, each in its
//! own transaction; enrollment checks and spends its token in the same transaction that
//! records the agent, so two agents cannot share a one-use token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{json_decode as decode, json_encode as encode};
use super::{Store, StoreError};

/// What the store keeps about an enrolled agent (never its MQTT password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The host the agent speaks for.
    pub host: String,
    /// Its ed25519 public key, hex.
    pub public_key: String,
    /// SHA-256 of its MQTT password, hex.
    pub mqtt_password_sha256: String,
    /// Labels given by its join token.
    pub labels: BTreeMap<String, String>,
    /// The join token it enrolled with (its id), or `local` for `vigil up`'s own agent.
    pub join_token: String,
    /// When it enrolled, epoch ms.
    pub enrolled_ms: i64,
    /// When it was revoked, epoch ms.
    pub revoked_ms: Option<i64>,
}

/// What the store keeps about a join token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// A short id (the first 8 hex characters of its hash).
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// Labels every agent enrolling with it gets.
    pub labels: BTreeMap<String, String>,
    /// The only host name it may enroll, if bound.
    pub host: Option<String>,
    /// Enrollments left.
    pub uses_left: u32,
    /// When it was made, epoch ms.
    pub created_ms: i64,
    /// After this it is refused, epoch ms.
    pub expires_ms: i64,
    /// When it was revoked, epoch ms.
    pub revoked_ms: Option<i64>,
}

impl Store {
    /// The enrolled agent `host`, revoked or not.
    pub fn agent(&self, host: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.read(|txn| match self.dbs.agents.get(txn, host.as_bytes())? {
            Some(bytes) => Ok(Some(decode("agents", bytes)?)),
            None => Ok(None),
        })
    }

    /// Every enrolled agent, by host name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(|txn| {
            self.dbs
                .agents
                .iter(txn)?
                .map(|entry| decode("agents", entry?.1))
                .collect()
        })
    }

    /// Records `record`, replacing any earlier identity of its host.
    pub fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        let json = encode("agents", record)?;
        self.write_rare(|store, txn| {
            store.dbs.agents.put(txn, record.host.as_bytes(), &json)?;
            Ok(())
        })
    }

    /// Marks `host` revoked at `now_ms` (kept revoked if it already was); `None` if it
    /// was never enrolled.
    pub fn revoke_agent(&self, host: &str, now_ms: i64) -> Result<Option<AgentRecord>, StoreError> {
        self.write_rare(|store, txn| {
            let Some(bytes) = store.dbs.agents.get(txn, host.as_bytes())? else {
                return Ok(None);
            };
            let mut record: AgentRecord = decode("agents", bytes)?;
            record.revoked_ms.get_or_insert(now_ms);
            store
                .dbs
                .agents
                .put(txn, host.as_bytes(), &encode("agents", &record)?)?;
            Ok(Some(record))
        })
    }

    /// Stores a new join token record under its hash.
    pub fn put_join_token(
        &self,
        digest: &[u8; 32],
        record: &JoinTokenRecord,
    ) -> Result<(), StoreError> {
        let json = encode("join_tokens", record)?;
        self.write_rare(|store, txn| {
            store.dbs.join_tokens.put(txn, digest, &json)?;
            Ok(())
        })
    }

    /// Every join token record, oldest first.
    pub fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StoreError> {
        let mut out: Vec<JoinTokenRecord> = self.read(|txn| {
            self.dbs
                .join_tokens
                .iter(txn)?
                .map(|entry| decode("join_tokens", entry?.1))
                .collect::<Result<_, _>>()
        })?;
        out.sort_by_key(|r| r.created_ms);
        Ok(out)
    }

    /// Revokes every join token whose id or name is `which`; returns them.
    pub fn revoke_join_tokens(
        &self,
        which: &str,
        now_ms: i64,
    ) -> Result<Vec<JoinTokenRecord>, StoreError> {
        self.revoke_named(self.dbs.join_tokens, "join_tokens", which, now_ms)
    }

    /// In one transaction: reads the join token whose hash is `digest` and the agent
    /// record of `host`, lets `decide` judge them (the enrollment rules live with the
    /// caller) and return the token and agent records to keep, and stores both. Two
    /// enrollments cannot both spend the last use of a token.
    pub fn enroll_agent<E: From<StoreError>>(
        &self,
        digest: &[u8; 32],
        host: &str,
        decide: impl Fn(
            Option<JoinTokenRecord>,
            Option<AgentRecord>,
        ) -> Result<(JoinTokenRecord, AgentRecord), E>,
    ) -> Result<AgentRecord, E> {
        self.write_rare(|store, txn| {
            let token = match store.dbs.join_tokens.get(txn, digest)? {
                Some(bytes) => Some(decode("join_tokens", bytes)?),
                None => None,
            };
            let existing = match store.dbs.agents.get(txn, host.as_bytes())? {
                Some(bytes) => Some(decode("agents", bytes)?),
                None => None,
            };
            let (token, record) = match decide(token, existing) {
                Ok(decided) => decided,
                Err(e) => return Ok(Err(e)),
            };
            store
                .dbs
                .join_tokens
                .put(txn, digest, &encode("join_tokens", &token)?)?;
            store
                .dbs
                .agents
                .put(txn, record.host.as_bytes(), &encode("agents", &record)?)?;
            Ok(Ok(record))
        })?
    }
}
