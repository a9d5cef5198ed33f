//! The enrolled agents' public keys as ingest needs them: looked up in the store and
//! kept for [`KEY_CACHE_TTL`], so that checking a message's seal costs no store read and
//! no key decoding on the hot path, and a revocation (made by the CLI in another process,
//! or the REST API) applies within that time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vigil_shared::agent_auth::{AgentPublicKey, Refusal};

use crate::store::Store;

/// How long a looked-up key (or its absence) is trusted.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// What is known about one host.
#[derive(Clone)]
enum Entry {
    Key(AgentPublicKey),
    Revoked,
    Unknown,
}

/// A cache of agents' public keys in front of the store.
pub struct AgentKeys {
    store: Store,
    cache: HashMap<String, (Instant, Entry)>,
}

impl AgentKeys {
    /// An empty cache over `store`.
    pub fn new(store: Store) -> AgentKeys {
        AgentKeys {
            store,
            cache: HashMap::new(),
        }
    }

    /// The key `host` seals with, or why its messages are refused.
    pub fn key(&mut self, host: &str) -> Result<AgentPublicKey, Refusal> {
        let now = Instant::now();
        let fresh = matches!(self.cache.get(host), Some((at, _)) if now.duration_since(*at) < KEY_CACHE_TTL);
        if !fresh {
            let entry = match self.store.agent(host) {
                Ok(Some(record)) if record.revoked_ms.is_some() => Entry::Revoked,
                Ok(Some(record)) => match AgentPublicKey::from_hex(&record.public_key) {
                    Ok(key) => Entry::Key(key),
                    Err(e) => {
                        tracing::error!(%host, "stored public key is unusable: {e}");
                        Entry::Unknown
                    }
                },
                Ok(None) => Entry::Unknown,
                Err(e) => {
                    tracing::error!(%host, "cannot read the agent's identity: {e}");
                    // Keep what we knew rather than refusing a known agent over a
                    // passing store error.
                    match self.cache.get(host) {
                        Some((_, entry)) => entry.clone(),
                        None => Entry::Unknown,
                    }
                }
            };
            if self.cache.len() > 100_000 {
                self.cache.clear();
            }
            self.cache.insert(host.to_string(), (now, entry));
        }
        match self.cache.get(host).map(|(_, entry)| entry) {
            Some(Entry::Key(key)) => Ok(key.clone()),
            Some(Entry::Revoked) => Err(Refusal::Revoked(host.to_string())),
            _ => Err(Refusal::UnknownAgent(host.to_string())),
        }
    }
}
