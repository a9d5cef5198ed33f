//! The agents' session keys, as ingest holds them ([`vigil_shared::agent_auth`]): per
//! host, the key of its latest accepted handshake and the few before it the agent may
//! still be sealing with.
//!
//! - A Hello must be newer than every handshake this coordinator has seen from the host
//!   (a later session, or a higher rekey number within the session) and not from a
//!   session before the host's stored status: otherwise it is refused as
//!   `replayed_handshake`.
//! - The coordinator cannot know whether the agent got a Welcome (a reconnection may lose
//!   it, and the agent keeps sealing with the key it had; under an ingest backlog, the
//!   Hellos of several reconnections may be read before any message under their keys).
//!   So it keeps the [`KEPT`] newest keys and the newest key a message has already
//!   arrived under (the agent surely holds it).
//! - The first message under a key on a channel starts the [`GRACE`] of every older key
//!   on that channel: messages the agent sealed before it switched are still in flight;
//!   after the grace a message under an older key on that channel is refused as
//!   `rekeyed`. The grace runs per channel because the broker keeps order only within a
//!   topic: under a backlog, one channel's messages (say the agent's action transitions)
//!   may reach ingest many seconds after another's sealed later (its metrics). Whatever
//!   the channel, an older key dies [`MAX_OVERLAP`] after the first message under a newer
//!   one. A key older than the newest and no longer kept is `rekeyed` too; any other
//!   key: `unknown_session`.
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
use vigil_shared::topics::AgentChannel;

/// How long older keys stay valid on a channel after the first message under a newer
/// one on that channel.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long older keys stay valid on any channel after the first message under a newer
/// one (two rekey periods).
pub const MAX_OVERLAP: Duration = Duration::from_secs(200);

/// The channels a grace runs on apart (metrics, status, actions, events).
const CHANNELS: usize = 4;

fn channel_slot(channel: AgentChannel) -> usize {
    match channel {
        AgentChannel::Metrics => 0,
        AgentChannel::Status => 1,
        AgentChannel::Actions => 2,
        _ => 3,
    }
}

/// How many of a host's newest keys are kept (besides the newest used one): enough for
/// the Hellos of many reconnections while ingest is far behind (their keys' messages
/// still queued), few enough to bound memory.
const KEPT: usize = 16;

/// Most hosts held (enrolled agents that handshook); beyond it the table starts over.
const MAX_HOSTS: usize = 1_000_000;

/// One key and how it is used.
struct Slot {
    key: SessionKey,
    /// A message arrived under it (on any channel).
    used: bool,
    /// A message arrived under it, per channel.
    seen: [bool; CHANNELS],
    /// When it stops being accepted, per channel (set by the first message under a newer
    /// key on that channel).
    until: [Option<Instant>; CHANNELS],
    /// When it stops being accepted on every channel.
    dies: Option<Instant>,
}

/// What is known about one host.
struct HostKeys {
    /// The enrolled key the session keys were made under.
    enrolled: AgentPublicKey,
    /// The newest handshake accepted.
    newest: KeyId,
    /// The keys kept, oldest first.
    slots: Vec<Slot>,
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

    /// Installs the key of an accepted handshake as `host`'s newest key.
    pub fn install(&mut self, host: &str, enrolled: &AgentPublicKey, key: SessionKey) {
        let id = key.id();
        let slot = Slot {
            key,
            used: false,
            seen: [false; CHANNELS],
            until: [None; CHANNELS],
            dies: None,
        };
        match self.hosts.get_mut(host) {
            Some(known) if known.enrolled == *enrolled => {
                known.newest = known.newest.max(id);
                known.slots.push(slot);
                known.slots.sort_by_key(|s| s.key.id());
                // Keep the three newest and the newest used.
                let count = known.slots.len();
                let used = known.slots.iter().rposition(|s| s.used);
                let mut index = 0;
                known.slots.retain(|_| {
                    let keep = index + KEPT >= count || Some(index) == used;
                    index += 1;
                    keep
                });
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
                        slots: vec![slot],
                    },
                );
            }
        }
    }

    /// The key `id` of `host` (whose enrolled key is `enrolled`), if a message under it
    /// on `channel` is acceptable `now`.
    pub fn lookup(
        &mut self,
        host: &str,
        enrolled: &AgentPublicKey,
        id: KeyId,
        channel: AgentChannel,
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
        let Some(at) = known.slots.iter().position(|s| s.key.id() == id) else {
            return Err(if id < known.newest {
                Refusal::Rekeyed(id)
            } else {
                Refusal::UnknownSession(id)
            });
        };
        let c = channel_slot(channel);
        let slot = &known.slots[at];
        if slot.until[c].is_some_and(|until| now >= until)
            || slot.dies.is_some_and(|dies| now >= dies)
        {
            return Err(Refusal::Rekeyed(id));
        }
        if !known.slots[at].seen[c] {
            let first = !known.slots[at].used;
            known.slots[at].seen[c] = true;
            known.slots[at].used = true;
            for older in &mut known.slots[..at] {
                older.until[c].get_or_insert(now + GRACE);
                if first {
                    older.dies.get_or_insert(now + MAX_OVERLAP);
                }
            }
        }
        Ok(&known.slots[at].key)
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
    use vigil_shared::topics::AgentChannel;
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
        keys.lookup("web-01", &enrolled, first.id(), AgentChannel::Metrics, t0)
            .unwrap();
        let second = handshake(&sealer, &enrolled, &coordinator);
        keys.admit_hello("web-01", &enrolled, second.id(), 9)
            .unwrap();
        keys.install("web-01", &enrolled, second.clone());
        // Until the new key is used, the old one is good whatever the time.
        keys.lookup(
            "web-01",
            &enrolled,
            first.id(),
            AgentChannel::Metrics,
            t0 + GRACE * 10,
        )
        .unwrap();
        let t1 = t0 + GRACE * 10;
        keys.lookup("web-01", &enrolled, second.id(), AgentChannel::Metrics, t1)
            .unwrap();
        keys.lookup(
            "web-01",
            &enrolled,
            first.id(),
            AgentChannel::Metrics,
            t1 + GRACE / 2,
        )
        .unwrap();
        assert_eq!(
            keys.lookup(
                "web-01",
                &enrolled,
                first.id(),
                AgentChannel::Metrics,
                t1 + GRACE
            )
            .unwrap_err()
            .reason(),
            "rekeyed"
        );
        // KEPT more keys drop the first for good; a key never made is unknown.
        let mut third = second.clone();
        for _ in 0..KEPT {
            third = handshake(&sealer, &enrolled, &coordinator);
            keys.install("web-01", &enrolled, third.clone());
        }
        assert_eq!(
            keys.lookup("web-01", &enrolled, first.id(), AgentChannel::Metrics, t1)
                .unwrap_err()
                .reason(),
            "rekeyed"
        );
        let mut never = third.id();
        never.rekey += 10;
        assert_eq!(
            keys.lookup("web-01", &enrolled, never, AgentChannel::Metrics, t1)
                .unwrap_err()
                .reason(),
            "unknown_session"
        );
        // Another enrolled key (re-enrollment): everything is gone.
        let other = AgentPublicKey::from_hex(&AgentKey::generate().public_hex()).unwrap();
        assert_eq!(
            keys.lookup("web-01", &other, third.id(), AgentChannel::Metrics, t1)
                .unwrap_err()
                .reason(),
            "unknown_session"
        );
        assert_eq!(
            keys.lookup("web-01", &enrolled, third.id(), AgentChannel::Metrics, t1)
                .unwrap_err()
                .reason(),
            "unknown_session"
        );
    }

    #[test]
    fn a_key_whose_welcome_may_be_lost_is_kept_beside_the_one_in_use() {
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
        keys.lookup("web-01", &enrolled, first.id(), AgentChannel::Metrics, now)
            .unwrap();
        // Two handshakes without a message under them (their Welcomes may or may not have
        // arrived): the key in use and both new ones are good.
        let second = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, second.clone());
        let third = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, third.clone());
        keys.lookup("web-01", &enrolled, first.id(), AgentChannel::Metrics, now)
            .unwrap();
        keys.lookup("web-01", &enrolled, second.id(), AgentChannel::Metrics, now)
            .unwrap();
        // The second is used now: the first gets its grace; the third stays.
        keys.lookup(
            "web-01",
            &enrolled,
            first.id(),
            AgentChannel::Metrics,
            now + GRACE,
        )
        .unwrap_err();
        keys.lookup(
            "web-01",
            &enrolled,
            third.id(),
            AgentChannel::Metrics,
            now + GRACE,
        )
        .unwrap();
        // KEPT more: the third (the newest used) and the KEPT newest are kept; the first
        // and second are gone.
        let fourth = handshake(&sealer, &enrolled, &coordinator);
        keys.install("web-01", &enrolled, fourth.clone());
        let mut fifth = fourth.clone();
        for _ in 1..KEPT {
            fifth = handshake(&sealer, &enrolled, &coordinator);
            keys.install("web-01", &enrolled, fifth.clone());
        }
        keys.lookup("web-01", &enrolled, fourth.id(), AgentChannel::Metrics, now)
            .unwrap();
        keys.lookup("web-01", &enrolled, fifth.id(), AgentChannel::Metrics, now)
            .unwrap();
        assert_eq!(
            keys.lookup("web-01", &enrolled, second.id(), AgentChannel::Metrics, now)
                .unwrap_err()
                .reason(),
            "rekeyed"
        );
        assert_eq!(
            keys.lookup("web-01", &enrolled, first.id(), AgentChannel::Metrics, now)
                .unwrap_err()
                .reason(),
            "rekeyed"
        );
    }
}
