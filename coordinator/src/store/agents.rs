//! The `agents` and `join_tokens` databases: enrolled agents keyed by host name, join
//! tokens keyed by the SHA-256 of the token, both valued as JSON. Rare writes, each in its
//! own transaction; enrollment checks and spends its token in the same transaction that
//! records the agent, so two agents cannot share a one-use token.

use crate::agents::{AgentRecord, EnrollError, JoinTokenRecord};

use super::tokens::{json_decode as decode, json_encode as encode};
use super::{Store, StoreError};

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

    /// In one transaction: finds the join token whose hash is `digest`, checks that it is
    /// usable at `now_ms`, lets `make` build the agent's record from it, checks that the
    /// host is not enrolled (or was revoked), stores the record and spends one use.
    pub fn enroll_agent(
        &self,
        digest: &[u8; 32],
        now_ms: i64,
        make: impl Fn(&JoinTokenRecord) -> Result<AgentRecord, EnrollError>,
    ) -> Result<AgentRecord, EnrollError> {
        self.write_rare(|store, txn| {
            let Some(bytes) = store.dbs.join_tokens.get(txn, digest)? else {
                return Ok(Err(EnrollError::BadToken));
            };
            let mut token: JoinTokenRecord = decode("join_tokens", bytes)?;
            if token.revoked_ms.is_some() || token.uses_left == 0 || now_ms > token.expires_ms {
                return Ok(Err(EnrollError::BadToken));
            }
            let record = match make(&token) {
                Ok(record) => record,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(bytes) = store.dbs.agents.get(txn, record.host.as_bytes())? {
                let existing: AgentRecord = decode("agents", bytes)?;
                if existing.revoked_ms.is_none() {
                    return Ok(Err(EnrollError::AlreadyEnrolled(record.host)));
                }
            }
            token.uses_left -= 1;
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
