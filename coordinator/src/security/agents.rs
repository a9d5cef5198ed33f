//! Agent identities: who may speak for a host.
//!
//! An agent gets its identity by enrolling once with a **join token**
//! (`vigil-coordinator token create --join --label role=web`): it sends the token, its
//! host name and the public half of an ed25519 key it made itself
//! (`POST /api/v1/agents/enroll`). The coordinator records an [`AgentRecord`] (host,
//! public key, the SHA-256 of a fresh MQTT password, the token's labels) and answers with
//! the MQTT login and its own public key. The agent keeps all that in
//! `<data-dir>/identity.json` (mode 0600) and seals every message with its key
//! ([`vigil_shared::agent_auth`]); the broker admits it by its MQTT password.
//!
//! A join token has a number of uses (1 unless `--uses`), an expiry, and may be bound to
//! one host name. An enrolled host cannot be enrolled again until it is revoked
//! (`vigil-coordinator agent revoke HOST`), so a join token cannot take over a host.
//! Revocation applies within [`crate::security::agent_keys::KEY_CACHE_TTL`] to ingest and at once
//! to new broker logins.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use thiserror::Error;
use vigil_shared::agent_auth::AgentPublicKey;
pub use vigil_shared::enrollment::{EnrollRequest, Enrollment};

pub use crate::store::agents::{AgentRecord, JoinTokenRecord};
use crate::store::{Store, StoreError};

/// The MQTT user name the coordinator itself logs in with on its embedded broker.
pub const COORDINATOR_MQTT_USER: &str = "vigil-coordinator";

/// The MQTT user name integrations log in with, a REST API token as the password.
pub const API_MQTT_USER: &str = "api";

/// Why an enrollment or revocation was refused.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// The join token is not known, used up, expired or revoked.
    #[error("join token unknown, used up, expired or revoked")]
    BadToken,
    /// The token is bound to another host.
    #[error("this join token may only enroll host `{0}`")]
    WrongHost(String),
    /// The host already has an identity.
    #[error(
        "host `{0}` is already enrolled; revoke it first (`vigil-coordinator agent revoke {0}`)"
    )]
    AlreadyEnrolled(String),
    /// A field is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// No such enrolled host.
    #[error("no enrolled agent `{0}`")]
    UnknownHost(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A new random join token (`vigil_join_` and 64 hex characters).
pub fn generate_join_token() -> String {
    format!("vigil_join_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// A new random MQTT password.
pub fn generate_password() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// SHA-256 of a secret, hex.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Settings of a new join token.
#[derive(Debug, Clone)]
pub struct JoinTokenSpec {
    /// Who or what it is for.
    pub name: String,
    /// Labels for enrolled agents.
    pub labels: BTreeMap<String, String>,
    /// Bind it to this host name.
    pub host: Option<String>,
    /// How many agents may enroll with it.
    pub uses: u32,
    /// How long it is valid, ms.
    pub ttl_ms: i64,
}

/// Makes a join token, stores its hash, and returns the token (shown once) and its record.
pub fn create_join_token(
    store: &Store,
    spec: &JoinTokenSpec,
    now_ms: i64,
) -> Result<(String, JoinTokenRecord), EnrollError> {
    if spec.uses == 0 {
        return Err(EnrollError::Invalid {
            field: "uses",
            reason: "must be at least 1".into(),
        });
    }
    if let Some(host) = &spec.host {
        check_host(host)?;
    }
    for (key, value) in &spec.labels {
        vigil_shared::validate::tags([(key.as_str(), value.as_str())]).map_err(|e| {
            EnrollError::Invalid {
                field: "labels",
                reason: e.to_string(),
            }
        })?;
    }
    let token = generate_join_token();
    let digest = crate::security::tokens::hash(&token);
    let record = JoinTokenRecord {
        id: hex::encode(&digest[..4]),
        name: spec.name.clone(),
        labels: spec.labels.clone(),
        host: spec.host.clone(),
        uses_left: spec.uses,
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(spec.ttl_ms),
        revoked_ms: None,
    };
    store.put_join_token(&digest, &record)?;
    Ok((token, record))
}

/// Checks what an enrollment request says before its token is looked at.
pub(crate) fn check_request(request: &EnrollRequest) -> Result<(), EnrollError> {
    check_host(&request.host)?;
    AgentPublicKey::from_hex(&request.public_key).map_err(|e| EnrollError::Invalid {
        field: "public_key",
        reason: e.to_string(),
    })?;
    Ok(())
}

fn check_host(host: &str) -> Result<(), EnrollError> {
    vigil_shared::validate::host_name(host).map_err(|e| EnrollError::Invalid {
        field: "host",
        reason: e.to_string(),
    })
}

/// Enrolls an agent with a join token: checks and spends the token, records the agent,
/// and returns its enrollment (with a new MQTT password).
pub fn enroll(
    store: &Store,
    request: &EnrollRequest,
    coordinator_key: &str,
    now_ms: i64,
) -> Result<Enrollment, EnrollError> {
    check_request(request)?;
    let digest = crate::security::tokens::hash(&request.join_token);
    let password = generate_password();
    let record = store.enroll_agent(&digest, &request.host, |token, existing| {
        let Some(mut token) = token else {
            return Err(EnrollError::BadToken);
        };
        if token.revoked_ms.is_some() || token.uses_left == 0 || now_ms > token.expires_ms {
            return Err(EnrollError::BadToken);
        }
        if let Some(bound) = &token.host {
            if bound != &request.host {
                return Err(EnrollError::WrongHost(bound.clone()));
            }
        }
        if existing.is_some_and(|agent| agent.revoked_ms.is_none()) {
            return Err(EnrollError::AlreadyEnrolled(request.host.clone()));
        }
        token.uses_left -= 1;
        let agent = AgentRecord {
            host: request.host.clone(),
            public_key: request.public_key.clone(),
            mqtt_password_sha256: secret_sha256(&password),
            labels: token.labels.clone(),
            join_token: token.id.clone(),
            enrolled_ms: now_ms,
            revoked_ms: None,
        };
        Ok((token, agent))
    })?;
    Ok(Enrollment {
        host: record.host.clone(),
        mqtt_username: record.host,
        mqtt_password: password,
        labels: record.labels,
        coordinator_key: Some(coordinator_key.to_string()),
    })
}

/// Enrolls `host` directly, without a join token (the coordinator's own local agent
/// under `vigil up`). Replaces an earlier identity of the same host. Returns the MQTT password.
pub fn enroll_local(
    store: &Store,
    host: &str,
    public_key: &str,
    now_ms: i64,
) -> Result<String, EnrollError> {
    check_host(host)?;
    AgentPublicKey::from_hex(public_key).map_err(|e| EnrollError::Invalid {
        field: "public_key",
        reason: e.to_string(),
    })?;
    let password = generate_password();
    store.put_agent(&AgentRecord {
        host: host.to_string(),
        public_key: public_key.to_string(),
        mqtt_password_sha256: secret_sha256(&password),
        labels: BTreeMap::new(),
        join_token: "local".into(),
        enrolled_ms: now_ms,
        revoked_ms: None,
    })?;
    Ok(password)
}

/// Revokes `host`'s identity: its messages and logins are refused from now on.
pub fn revoke(store: &Store, host: &str, now_ms: i64) -> Result<AgentRecord, EnrollError> {
    store
        .revoke_agent(host, now_ms)?
        .ok_or_else(|| EnrollError::UnknownHost(host.to_string()))
}

/// Whether `password` is the MQTT password of enrolled, unrevoked `host`.
pub fn mqtt_login_ok(record: &AgentRecord, password: &str) -> bool {
    use subtle::ConstantTimeEq;
    record.revoked_ms.is_none()
        && secret_sha256(password)
            .as_bytes()
            .ct_eq(record.mqtt_password_sha256.as_bytes())
            .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::agent_auth::AgentKey;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    fn spec(uses: u32, host: Option<&str>) -> JoinTokenSpec {
        JoinTokenSpec {
            name: "web".into(),
            labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
            host: host.map(str::to_string),
            uses,
            ttl_ms: 60_000,
        }
    }

    fn request(token: &str, host: &str) -> EnrollRequest {
        EnrollRequest {
            join_token: token.into(),
            host: host.into(),
            public_key: AgentKey::generate().public_hex(),
        }
    }

    #[test]
    fn a_join_token_enrolls_as_many_hosts_as_it_has_uses() {
        let (_dir, store) = store();
        let (token, _) = create_join_token(&store, &spec(2, None), 1_000).unwrap();
        let a = enroll(&store, &request(&token, "web-01"), "k", 1_001).unwrap();
        assert_eq!(a.labels.get("role").map(String::as_str), Some("web"));
        let record = store.agent("web-01").unwrap().unwrap();
        assert!(mqtt_login_ok(&record, &a.mqtt_password));
        assert!(!mqtt_login_ok(&record, "guess"));
        enroll(&store, &request(&token, "web-02"), "k", 1_002).unwrap();
        assert!(matches!(
            enroll(&store, &request(&token, "web-03"), "k", 1_003),
            Err(EnrollError::BadToken)
        ));
        // A revoked token enrolls nobody, even with uses left.
        let (other, record) = create_join_token(&store, &spec(5, None), 1_004).unwrap();
        let revoked = store.revoke_join_tokens(&record.id, 1_005).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(store
            .revoke_join_tokens(&record.id, 1_006)
            .unwrap()
            .is_empty());
        assert!(matches!(
            enroll(&store, &request(&other, "web-04"), "k", 1_007),
            Err(EnrollError::BadToken)
        ));
    }

    #[test]
    fn expired_bound_and_unknown_tokens_and_taken_hosts_are_refused() {
        let (_dir, store) = store();
        let (token, _) = create_join_token(&store, &spec(5, Some("db-01")), 1_000).unwrap();
        assert!(matches!(
            enroll(&store, &request(&token, "web-01"), "k", 1_001),
            Err(EnrollError::WrongHost(_))
        ));
        assert!(matches!(
            enroll(&store, &request(&token, "db-01"), "k", 61_001),
            Err(EnrollError::BadToken)
        ));
        assert!(matches!(
            enroll(&store, &request("vigil_join_nope", "db-01"), "k", 1_001),
            Err(EnrollError::BadToken)
        ));
        enroll(&store, &request(&token, "db-01"), "k", 1_002).unwrap();
        assert!(matches!(
            enroll(&store, &request(&token, "db-01"), "k", 1_003),
            Err(EnrollError::AlreadyEnrolled(_))
        ));
        // Revoked: the host may enroll again (with a token), and its old login fails.
        let revoked = revoke(&store, "db-01", 1_004).unwrap();
        assert!(!mqtt_login_ok(&revoked, "anything"));
        enroll(&store, &request(&token, "db-01"), "k", 1_005).unwrap();
        assert!(matches!(
            revoke(&store, "nobody", 1_006),
            Err(EnrollError::UnknownHost(_))
        ));
    }
}
