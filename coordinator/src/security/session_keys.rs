//! The agents' session keys, as ingest holds them ([`vigil_shared::agent_auth`]): per
//! host, the current key (from the host's latest accepted handshake) and the previous one.
//!
//! - A Hello must be newer than every handshake this coordinator has seen from the host
//!   (a later session, or a higher rekey number within the session) and not from a
//!   session before the host's stored status: otherwise it is refused as
//!   `replayed_handshake`.
//! - A new key replaces the current one. If the current one was used (a message arrived
//!   under it), it becomes the previous key and stays valid for [`GRACE`] after the
//!   first message under the new key (messages the agent sealed before the Welcome
//!   reached it are still in flight); a message under it after that is refused as
//!   `rekeyed`. A current key never used is simply replaced (its Welcome was lost, or
//!   the Hello was a replay nobody can finish).
//! - A key older than the current one and not the previous: `rekeyed`; any other
//!   unknown key: `unknown_session`.
//! - Keys are tied to the enrolled public key they were made under: a revoked host, or
//!   one re-enrolled with another key, loses them at the first message after ingest's
//!   key cache sees it ([`super::agent_keys::KEY_CACHE_TTL`], 1 s).
//!
//! Nothing here is stored: after a restart the coordinator knows no session key, refuses
//! MAC'd messages as `unknown_session`, and asks the agent (a signed notice on its
//! `welcome` topic) to handshake again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vigil_shared::agent_auth::{AgentPublicKey, KeyId, Refusal, SessionKey};

/// How long the previous key stays valid after the first message under its successor.
pub const GRACE: Duration = Duration::from_secs(5);

/// Most hosts held (enrolled agents that handshook); beyond it the table starts over.
const MAX_HOSTS: usize = 1_000_000;

/// One key and how it is used.
struct Slot {
    key: SessionKey,
    /// A message arrived under it.
    used: bool,
}

/// What is known about one host.
struct HostKeys {
    /// The enrolled key the session keys were made under.
    enrolled: AgentPublicKey,
    /// The newest handshake accepted.
    newest: KeyId,
    current: Option<Slot>,
    previous: Option<Slot>,
    /// When the previous key stops being accepted (set by the first message under the
    /// current one).
    previous_until: Option<Instant>,
}

/// Every host's session keys.
#[derive(Default)]
pub struct SessionKeys {
    hosts: HashMap<String, HostKeys>,
}

impl SessionKeys {
    /// Checks that a Hello (already verified with `enrolled`, naming `id`) is newer than
    /// anything this host sent: `floor_session` is the host's latest session known
    /// elsewhere (its stored status order, the replay windows).
    pub fn admit_hello(
        &mut self,
        host: &str,
        enrolled: &AgentPublicKey,
        id: KeyId,
        floor_session: u64,
    ) -> Result<(), Refusal> {
        if id.session < floor_session {
            return Err(Refusal::ReplayedHandshake(id));
        }
        match self.hosts.get(host) {
            Some(known) if known.enrolled == *enrolled && id <= known.newest => {
                Err(Refusal::ReplayedHandshake(id))
            }
            _ => Ok(()),
        }
    }

    /// Installs the key of an accepted handshake as `host`'s current key.
    pub fn install(&mut self, host: &str, enrolled: &AgentPublicKey, key: SessionKey) {
        let id = key.id();
        let slot = Slot { key, used: false };
        match self.hosts.get_mut(host) {
            Some(known) if known.enrolled == *enrolled => {
                known.newest = known.newest.max(id);
                if let Some(current) = known.current.take() {
                    if current.used {
                        known.previous = Some(current);
                        known.previous_until = None;
                    }
                }
                known.current = Some(slot);
            }
            _ => {
                if self.hosts.len() >= MAX_HOSTS {
                    self.hosts.clear();
                }
                self.hosts.insert(
                    host.to_string(),
                    HostKeys {
                        enrolled: enrolled.clone(),
                        newest: id,
                        current: Some(slot),
                        previous: None,
                        previous_until: None,
                    },
                );
            }
        }
    }

    /// The key `id` of `host` (whose enrolled key is `enrolled`), if a message under it
    /// is acceptable `now`.
    pub fn lookup(
        &mut self,
        host: &str,
        enrolled: &AgentPublicKey,
        id: KeyId,
        now: Instant,
    ) -> Result<&SessionKey, Refusal> {
        if self
            .hosts
            .get(host)
            .is_some_and(|known| known.enrolled != *enrolled)
        {
            self.hosts.remove(host);
        }
        let Some(known) = self.hosts.get_mut(host) else {
            return Err(Refusal::UnknownSession(id));
        };
        let current_id = known.current.as_ref().map(|slot| slot.key.id());
        if current_id == Some(id) {
            if let Some(current) = known.current.as_mut() {
                if !current.used {
                    current.used = true;
                    if known.previous.is_some() {
                        known.previous_until = Some(now + GRACE);
                    }
                }
                return Ok(&current.key);
            }
        }
        if let Some(previous) = known.previous.as_ref() {
            if previous.key.id() == id {
                return match known.previous_until {
                    Some(until) if now >= until => Err(Refusal::Rekeyed(id)),
                    _ => Ok(&previous.key),
                };
            }
        }
        match current_id {
            Some(current) if id < current => Err(Refusal::Rekeyed(id)),
            _ => Err(Refusal::UnknownSession(id)),
        }
    }

    /// Forgets `host`'s keys (revoked, re-enrolled, or no longer enrolled).
    pub fn forget(&mut self, host: &str) {
        self.hosts.remove(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::agent_auth::{self, AgentKey, Sealer, SignedHello};
    use vigil_shared::bundle::{BundleKeys, PublicKey};
    use vigil_shared::wire::decode;

    /// A key made by a real handshake between `sealer` and `coordinator`.
    fn handshake(
        sealer: &Sealer,
        enrolled: &AgentPublicKey,
        coordinator: &BundleKeys,
    ) -> SessionKey {
        let hello = decode::<SignedHello>(&sealer.hello().unwrap()).unwrap();
        let opened = agent_auth::open_hello(&hello, enrolled, "web-01").unwrap();
        let (answer, key) = agent_auth::welcome(coordinator, &opened, &hello.signed).unwrap();
        sealer.accept_welcome(&answer).unwrap();
        key
    }

    #[test]
    fn the_previous_key_lasts_its_grace_after_the_new_one_is_used() {
        let coordinator = BundleKeys::generate();
        let agent = AgentKey::generate();
        let enrolled = AgentPublicKey::from_hex(&agent.public_hex()).unwrap();
        let sealer = Sealer::with_session("web-01", agent, 9).with_coordinator_key(Some(
            PublicKey::from_hex(&coordinator.public_hex()).unwrap(),
        ));
        let mut keys = SessionKeys::default();
        let t0 = Instant::now();
        let first = handshake(&sealer, &enrolled, &coordinator);
        keys.admit_hello("web-01", &enrolled, first.id(), 9)
            .unwrap();
        keys.install("web-01", &enrolled, first.clone());
        // A repeated handshake, or one from an earlier session, is a replay.
        for (id, floor) in [
            (first.id(), 0),
            (
                KeyId {
                    session: 8,
                    rekey: 5,
                },
                0,
            ),
            (
                KeyId {
                    session: 9,
                    rekey: 7,
                },
                10,
            ),
        ] {
            assert_eq!(
                keys.admit_hello("web-01", &enrolled, id, floor)
                    .unwrap_err()
                    .reason(),
                "replayed_handshake"
            );
        }
        keys.lookup("web-01", &enrolled, first.id(), t0).unwrap();
        let second = handshake(&sealer, &enrolled, &coordinator);
        keys.admit_hello("web-01", &enrolled, second.id(), 9)
            .unwrap();
        keys.install("web-01", &enrolled, second.clone());
        // Until the new key is used, the old one is good whatever the time.
        keys.lookup("web-01", &enrolled, first.id(), t0 + GRACE * 10)
            .unwrap();
        let t1 = t0 + GRACE * 10;
        keys.lookup("web-01", &enrolled, second.id(), t1).unwrap();
        keys.lookup("web-01", &enrolled, first.id(), t1 + GRACE / 2)
            .unwrap();
        assert_eq!(
            keys.lookup("web-01", &enrolled, first.id(), t1 + GRACE)
                .unwrap_err()
                .reason(),
            "rekeyed"
        );
        // A third key drops the first for good; a key never made is unknown.
        let third = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, third.clone());
        assert_eq!(
            keys.lookup("web-01", &enrolled, first.id(), t1)
                .unwrap_err()
                .reason(),
            "rekeyed"
        );
        let mut never = third.id();
        never.rekey += 10;
        assert_eq!(
            keys.lookup("web-01", &enrolled, never, t1)
                .unwrap_err()
                .reason(),
            "unknown_session"
        );
        // Another enrolled key (re-enrollment): everything is gone.
        let other = AgentPublicKey::from_hex(&AgentKey::generate().public_hex()).unwrap();
        assert_eq!(
            keys.lookup("web-01", &other, third.id(), t1)
                .unwrap_err()
                .reason(),
            "unknown_session"
        );
        assert_eq!(
            keys.lookup("web-01", &enrolled, third.id(), t1)
                .unwrap_err()
                .reason(),
            "unknown_session"
        );
    }

    #[test]
    fn an_unused_key_is_replaced_without_retiring_the_one_in_use() {
        let coordinator = BundleKeys::generate();
        let agent = AgentKey::generate();
        let enrolled = AgentPublicKey::from_hex(&agent.public_hex()).unwrap();
        let sealer = Sealer::with_session("web-01", agent, 1).with_coordinator_key(Some(
            PublicKey::from_hex(&coordinator.public_hex()).unwrap(),
        ));
        let mut keys = SessionKeys::default();
        let now = Instant::now();
        let first = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, first.clone());
        keys.lookup("web-01", &enrolled, first.id(), now).unwrap();
        let lost = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, lost.clone());
        let third = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, third.clone());
        // The first key (in use) is still the previous one; the unused second is gone.
        keys.lookup("web-01", &enrolled, first.id(), now).unwrap();
        assert_eq!(
            keys.lookup("web-01", &enrolled, lost.id(), now)
                .unwrap_err()
                .reason(),
            "rekeyed"
        );
        keys.lookup("web-01", &enrolled, third.id(), now).unwrap();
    }
}
