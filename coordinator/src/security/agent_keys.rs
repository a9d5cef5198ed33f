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
#[derive(Clone, PartialEq, Eq)]
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

    /// Checks a message from `host` with `check` against its enrolled key. A refusal
    /// based on a cached entry (a key replaced by a re-enrollment, a host enrolled since
    /// it was last seen as unknown) re-reads the store once and checks again, so a
    /// re-enrolled agent is not refused for up to [`KEY_CACHE_TTL`].
    pub fn check<T>(
        &mut self,
        host: &str,
        check: impl Fn(&AgentPublicKey) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let now = Instant::now();
        let cached = match self.cache.get(host) {
            Some((at, entry)) if now.duration_since(*at) < KEY_CACHE_TTL => Some(entry.clone()),
            _ => None,
        };
        let from_cache = cached.is_some();
        let entry = match cached {
            Some(entry) => entry,
            None => self.load(host, now),
        };
        let result = Self::apply(host, &entry, &check);
        if result.is_err() && from_cache {
            let reloaded = self.load(host, now);
            if reloaded != entry {
                return Self::apply(host, &reloaded, &check);
            }
        }
        result
    }

    fn apply<T>(
        host: &str,
        entry: &Entry,
        check: &impl Fn(&AgentPublicKey) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        match entry {
            Entry::Key(key) => check(key),
            Entry::Revoked => Err(Refusal::Revoked(host.to_string())),
            Entry::Unknown => Err(Refusal::UnknownAgent(host.to_string())),
        }
    }

    /// Reads `host`'s entry from the store and caches it.
    fn load(&mut self, host: &str, now: Instant) -> Entry {
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
                match self.cache.get(host) {
                    Some((_, entry)) => entry.clone(),
                    None => Entry::Unknown,
                }
            }
        };
        if self.cache.len() > 100_000 {
            self.cache.clear();
        }
        self.cache.insert(host.to_string(), (now, entry.clone()));
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::agent_auth::{self, AgentKey, Sealer};
    use vigil_shared::topics::AgentChannel;

    #[test]
    fn a_re_enrolled_agent_is_accepted_at_once_despite_the_cache() {
        let (_dir, store) = Store::temporary();
        let mut keys = AgentKeys::new(store.clone());
        let open = |keys: &mut AgentKeys, key: &AgentKey| {
            let sealed = Sealer::new("web-01", AgentKey::from_hex(&key.private_hex()).unwrap())
                .seal(AgentChannel::Metrics, vec![1]);
            let sealed = vigil_shared::wire::decode(&sealed).unwrap();
            keys.check("web-01", |public| {
                agent_auth::open(&sealed, public, "web-01", AgentChannel::Metrics)
            })
        };

        let first = AgentKey::generate();
        // Unknown, then enrolled: the cached "unknown" does not hold the new agent back.
        assert!(matches!(
            open(&mut keys, &first),
            Err(Refusal::UnknownAgent(_))
        ));
        crate::security::agents::enroll_local(&store, "web-01", &first.public_hex(), 1).unwrap();
        assert!(open(&mut keys, &first).is_ok());

        // Re-enrolled with a new key: accepted at once; the old key is refused.
        let second = AgentKey::generate();
        crate::security::agents::enroll_local(&store, "web-01", &second.public_hex(), 2).unwrap();
        assert!(open(&mut keys, &second).is_ok());
        assert!(matches!(
            open(&mut keys, &first),
            Err(Refusal::BadSignature(_))
        ));
    }
}
