//! Sealed agent messages: every message an agent publishes is signed with the agent's own
//! ed25519 key, so the coordinator never has to trust a topic name (rumqttd has no topic
//! ACLs, and an external broker may be shared).
//!
//! A [`SealedMessage`] carries the encoded message (`body`) inside a signed part that also
//! names the host, the channel, the agent's session (a counter the agent raises at every
//! start, kept on disk: never its clock), a sequence number per channel, the time it was
//! sealed, and for messages from a durable queue their place in it
//! ([`crate::delivery::Delivery`]). The coordinator
//! - finds the host's enrolled public key and checks the signature ([`open`]);
//! - checks that the signed host and channel are the topic's;
//! - refuses anything it has already seen in this session or that is older than the last
//!   [`REPLAY_WINDOW`] messages of that channel, or from an earlier session
//!   ([`ReplayGuard`], in memory); what must also hold across its own restarts holds by
//!   what it stores: queued messages by their delivery windows, the status by its order.
//!
//! The seal time is the agent's clock: it is not a reason to refuse a message (an agent
//! whose clock is off still has its data stored), only to report the skew when it is
//! more than [`MAX_CLOCK_SKEW_MS`].
//!
//! The last will is sealed when the agent connects, long before the broker sends it, so
//! it cannot be fresh: each status message names the sequence number of the will armed
//! for the current connection (`armed_will`), and the coordinator accepts that will once,
//! whatever its age, and no other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::delivery::Delivery;
use crate::topics::AgentChannel;
use crate::validate::{self, FieldError};
use crate::wire::WireMessage;

/// How far a message's seal time may be from the coordinator's clock before the agent's
/// clock is reported as off.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// How many recent sequence numbers per channel the coordinator remembers: a message up
/// to this far behind the newest is accepted once (MQTT keeps order within a topic, so
/// anything further behind is a replay).
pub const REPLAY_WINDOW: u64 = 128;

/// What separates these signatures from every other Vigil signature.
const DOMAIN: &str = "vigil/agent-message/v1";

/// A message as it travels on `vigil/v1/agents/{host}/{channel}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMessage {
    /// The host it speaks for (outside the signed bytes to find the key by; checked
    /// against them).
    pub host: String,
    /// The postcard encoding of a [`Seal`].
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    /// The agent's ed25519 signature over `signed` (64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl WireMessage for SealedMessage {
    const KIND: &'static str = "sealed_message";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        if self.signature.len() != 64 {
            return Err(FieldError::new("signature", "must be 64 bytes"));
        }
        Ok(())
    }
}

/// The signed part of a [`SealedMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Always [`DOMAIN`]: a signature made for anything else never verifies as this.
    pub domain: String,
    /// The host the agent is enrolled as.
    pub host: String,
    /// The channel (`metrics`, `status`, `actions`, `events`).
    pub channel: String,
    /// The agent's session: a counter raised at every agent start (kept on disk); a
    /// later session starts a new sequence.
    pub session: u64,
    /// Sequence number within the session and channel, from 1.
    pub seq: u64,
    /// When it was sealed, epoch ms.
    pub sealed_at_ms: i64,
    /// Whether this is the agent's last will (sent by the broker, maybe much later).
    pub will: bool,
    /// The sequence number of the will armed for the agent's current connection (0: none).
    pub armed_will: u64,
    /// For a message from one of the agent's durable queues: its place there.
    pub delivery: Option<Delivery>,
    /// The message: a version byte and its postcard encoding ([`crate::wire::encode`]).
    /// (`serde_bytes`: one copy, not a byte-by-byte sequence — this is on every message.)
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// An agent's identity key.
pub struct AgentKey(SigningKey);

impl AgentKey {
    /// A new random key.
    pub fn generate() -> AgentKey {
        AgentKey(SigningKey::from_bytes(&rand::random()))
    }

    /// The key from its 64 hex characters.
    pub fn from_hex(text: &str) -> Result<AgentKey, KeyError> {
        decode_key(text).map(|bytes| AgentKey(SigningKey::from_bytes(&bytes)))
    }

    /// The private key, hex (what the identity file holds).
    pub fn private_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The public key, hex (what the coordinator records at enrollment).
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }
}

/// A public key given as hex is not one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not an ed25519 key: {0}")]
pub struct KeyError(String);

fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|e| KeyError(format!("not hex: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        KeyError(format!(
            "expected 32 bytes (64 hex characters), got {}",
            bytes.len()
        ))
    })
}

/// An enrolled agent's public key, for [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPublicKey(VerifyingKey);

impl AgentPublicKey {
    /// The key from its 64 hex characters.
    pub fn from_hex(text: &str) -> Result<AgentPublicKey, KeyError> {
        let bytes = decode_key(text)?;
        VerifyingKey::from_bytes(&bytes)
            .map(AgentPublicKey)
            .map_err(|e| KeyError(e.to_string()))
    }
}

/// Seals an agent's messages: one per agent process, shared by its connections.
pub struct Sealer {
    host: String,
    key: AgentKey,
    session: u64,
    /// The next sequence number per channel (metrics, status, actions, events).
    next: [AtomicU64; 4],
    armed_will: AtomicU64,
}

impl Sealer {
    /// A sealer for `host` in session `session` (the agent's start counter: higher than
    /// every earlier session of this host).
    pub fn with_session(host: impl Into<String>, key: AgentKey, session: u64) -> Sealer {
        Sealer {
            host: host.into(),
            key,
            session,
            next: std::array::from_fn(|_| AtomicU64::new(1)),
            armed_will: AtomicU64::new(0),
        }
    }

    /// A sealer whose session is the current time in ms: for tools that keep no state
    /// between runs (simulators, tests). An agent uses [`Sealer::with_session`].
    pub fn new(host: impl Into<String>, key: AgentKey) -> Sealer {
        let session = u64::try_from(crate::time::now_ms()).unwrap_or(0);
        Sealer::with_session(host, key, session)
    }

    /// The session it seals in.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The host it seals for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The agent's public key, hex.
    pub fn public_hex(&self) -> String {
        self.key.public_hex()
    }

    /// Seals an encoded message (`body`, from [`crate::wire::encode`]) for `channel`, and
    /// returns the payload to publish.
    pub fn seal(&self, channel: AgentChannel, body: Vec<u8>) -> Vec<u8> {
        self.seal_inner(channel, body, false, None)
    }

    /// Seals a message taken from a durable queue, naming its place there.
    pub fn seal_queued(&self, channel: AgentChannel, body: Vec<u8>, delivery: Delivery) -> Vec<u8> {
        self.seal_inner(channel, body, false, Some(delivery))
    }

    /// Seals the last will for a new connection (an encoded offline status) and arms it:
    /// every status sealed from now on names it.
    pub fn seal_will(&self, body: Vec<u8>) -> Vec<u8> {
        self.seal_inner(AgentChannel::Status, body, true, None)
    }

    fn seal_inner(
        &self,
        channel: AgentChannel,
        body: Vec<u8>,
        will: bool,
        delivery: Option<Delivery>,
    ) -> Vec<u8> {
        let seq = self.next[slot(channel)].fetch_add(1, Ordering::SeqCst);
        if will {
            self.armed_will.store(seq, Ordering::SeqCst);
        }
        let seal = Seal {
            domain: DOMAIN.to_string(),
            host: self.host.clone(),
            channel: channel.as_str().to_string(),
            session: self.session,
            seq,
            sealed_at_ms: crate::time::now_ms(),
            will,
            armed_will: self.armed_will.load(Ordering::SeqCst),
            delivery,
            body,
        };
        let signed = match postcard::to_stdvec(&seal) {
            Ok(bytes) => bytes,
            Err(e) => unreachable!("postcard cannot fail to encode a seal: {e}"),
        };
        let signature = self.key.0.sign(&signed).to_bytes().to_vec();
        crate::wire::encode(&SealedMessage {
            host: self.host.clone(),
            signed,
            signature,
        })
    }
}

fn slot(channel: AgentChannel) -> usize {
    match channel {
        AgentChannel::Metrics => 0,
        AgentChannel::Status => 1,
        AgentChannel::Actions => 2,
        // Commands, acknowledgements and grants are never sealed by agents; lease
        // requests share the events counter (a channel's sequence only has to rise).
        AgentChannel::Events
        | AgentChannel::Leases
        | AgentChannel::Commands
        | AgentChannel::Acks
        | AgentChannel::Grants => 3,
    }
}

/// Why the coordinator refused an agent's message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// No enrolled agent has this host name.
    #[error("host `{0}` is not enrolled")]
    UnknownAgent(String),
    /// The host's identity was revoked.
    #[error("host `{0}` was revoked")]
    Revoked(String),
    /// The signature does not verify with the host's key.
    #[error("signature does not verify with the key enrolled for `{0}`")]
    BadSignature(String),
    /// The signed part is not a seal.
    #[error("signed part is malformed: {0}")]
    Malformed(String),
    /// The signed host or channel is not the topic's.
    #[error("sealed for host `{host}` channel `{channel}`, published on another topic")]
    WrongTopic {
        /// The signed host.
        host: String,
        /// The signed channel.
        channel: String,
    },
    /// Already accepted once.
    #[error("already received (sequence {seq})")]
    Duplicate {
        /// The sequence number.
        seq: u64,
    },
    /// A last will that is not the one armed for the agent's current connection (an
    /// earlier connection's, sent after the agent reconnected, or a copy): the agent is not
    /// offline; dropped quietly, like a duplicate.
    #[error("last will of an earlier connection (sequence {seq}); the agent has reconnected")]
    SupersededWill {
        /// The will's sequence number.
        seq: u64,
    },
    /// From an earlier session, or too far behind the newest message of its channel.
    #[error("replayed: sequence {seq} of session {session} is behind what this host already sent")]
    Replayed {
        /// The session.
        session: u64,
        /// The sequence number.
        seq: u64,
    },
}

impl Refusal {
    /// A short, stable label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownAgent(_) => "unknown_agent",
            Refusal::Revoked(_) => "revoked",
            Refusal::BadSignature(_) => "bad_signature",
            Refusal::Malformed(_) => "malformed_seal",
            Refusal::WrongTopic { .. } => "host_mismatch",
            Refusal::Duplicate { .. } => "duplicate",
            Refusal::SupersededWill { .. } => "superseded_will",
            Refusal::Replayed { .. } => "replayed",
        }
    }
}

/// Checks `sealed`'s signature with `key` and that it was sealed for `host` and
/// `channel`; returns the seal.
pub fn open(
    sealed: &SealedMessage,
    key: &AgentPublicKey,
    host: &str,
    channel: AgentChannel,
) -> Result<Seal, Refusal> {
    let signature = <[u8; 64]>::try_from(sealed.signature.as_slice())
        .map_err(|_| Refusal::BadSignature(sealed.host.clone()))?;
    key.0
        .verify(&sealed.signed, &Signature::from_bytes(&signature))
        .map_err(|_| Refusal::BadSignature(sealed.host.clone()))?;
    let seal: Seal =
        postcard::from_bytes(&sealed.signed).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if seal.domain != DOMAIN {
        return Err(Refusal::Malformed(format!("domain `{}`", seal.domain)));
    }
    if seal.host != host || seal.host != sealed.host || seal.channel != channel.as_str() {
        return Err(Refusal::WrongTopic {
            host: seal.host,
            channel: seal.channel,
        });
    }
    Ok(seal)
}

/// What the coordinator remembers about one channel of one host.
#[derive(Debug, Clone, Default)]
struct ChannelWindow {
    session: u64,
    highest: u64,
    /// Bit `i` set: `highest - i` was accepted.
    seen: u128,
    /// The will the agent armed for its current connection (status channel; 0: none).
    armed_will: u64,
}

/// Refuses replayed and duplicated messages, per host and channel (in memory: a
/// restarted coordinator relies on what it stored — delivery windows and the order of
/// statuses — for messages it saw before it restarted).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    windows: HashMap<(String, AgentChannel), ChannelWindow>,
}

impl ReplayGuard {
    /// Accepts `seal` (received on `channel`; `retained` if the broker delivered it as a
    /// retained message) or says why not. Accepting records it.
    pub fn admit(
        &mut self,
        seal: &Seal,
        channel: AgentChannel,
        retained: bool,
    ) -> Result<(), Refusal> {
        let key = (seal.host.clone(), channel);
        let window = self.windows.get(&key);
        if seal.will {
            // The broker sends the will whenever the connection dies: accept it once if
            // it is the one armed for the current connection, whatever its age.
            // (`armed_will` 0 means none armed: a will numbered 0 is never the armed one.)
            let armed = window
                .map(|w| w.armed_will != 0 && w.session == seal.session && w.armed_will == seal.seq)
                .unwrap_or(false);
            // A coordinator that has seen nothing of this host yet (it just started)
            // takes a retained will as the host's last word.
            if armed || (window.is_none() && retained) {
                let entry = self.windows.entry(key).or_default();
                entry.session = entry.session.max(seal.session);
                entry.armed_will = 0;
                return Ok(());
            }
            // Any other will: an earlier connection's (or an earlier run's), sent by the
            // broker after the agent had already reconnected, or sent again. Not applied;
            // dropped quietly, since reconnects make it happen without any attack.
            return Err(Refusal::SupersededWill { seq: seal.seq });
        }
        let window = self.windows.entry(key).or_default();
        if seal.session > window.session {
            *window = ChannelWindow {
                session: seal.session,
                highest: seal.seq,
                seen: 1,
                armed_will: seal.armed_will,
            };
            return Ok(());
        }
        if seal.session < window.session {
            return Err(Refusal::Replayed {
                session: seal.session,
                seq: seal.seq,
            });
        }
        if seal.seq > window.highest {
            let shift = seal.seq - window.highest;
            window.seen = if shift >= 128 {
                0
            } else {
                window.seen << shift
            } | 1;
            window.highest = seal.seq;
            window.armed_will = seal.armed_will;
            return Ok(());
        }
        let behind = window.highest - seal.seq;
        if behind >= REPLAY_WINDOW {
            return Err(Refusal::Replayed {
                session: seal.session,
                seq: seal.seq,
            });
        }
        let bit = 1u128 << behind;
        if window.seen & bit != 0 {
            return Err(Refusal::Duplicate { seq: seal.seq });
        }
        window.seen |= bit;
        Ok(())
    }

    /// Forgets everything about `host` (its identity was revoked or replaced).
    pub fn forget(&mut self, host: &str) {
        self.windows.retain(|(h, _), _| h != host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode;

    fn new_sealer() -> (Sealer, AgentPublicKey) {
        let key = AgentKey::generate();
        let public = AgentPublicKey::from_hex(&key.public_hex()).unwrap();
        (Sealer::new("web-01", key), public)
    }

    fn open_payload(
        payload: &[u8],
        key: &AgentPublicKey,
        channel: AgentChannel,
    ) -> Result<Seal, Refusal> {
        let sealed = decode::<SealedMessage>(payload).unwrap();
        open(&sealed, key, "web-01", channel)
    }

    #[test]
    fn a_sealed_message_opens_with_its_key_only() {
        let (sealer, public) = new_sealer();
        let payload = sealer.seal(AgentChannel::Metrics, vec![1, 2, 3]);
        let seal = open_payload(&payload, &public, AgentChannel::Metrics).unwrap();
        assert_eq!(seal.body, vec![1, 2, 3]);
        assert_eq!(seal.seq, 1);
        let (_, other) = new_sealer();
        assert_eq!(
            open_payload(&payload, &other, AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        // Moved to another channel's topic.
        assert_eq!(
            open_payload(&payload, &public, AgentChannel::Status)
                .unwrap_err()
                .reason(),
            "host_mismatch"
        );
        // Claimed for another host in the clear part.
        let mut sealed = decode::<SealedMessage>(&payload).unwrap();
        sealed.host = "db-01".into();
        assert_eq!(
            open(&sealed, &public, "db-01", AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "host_mismatch"
        );
        // Altered body.
        let mut sealed = decode::<SealedMessage>(&payload).unwrap();
        let last = sealed.signed.len() - 1;
        sealed.signed[last] ^= 1;
        assert_eq!(
            open(&sealed, &public, "web-01", AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
    }

    #[test]
    fn replays_and_duplicates_are_refused() {
        let (sealer, public) = new_sealer();
        let mut guard = ReplayGuard::default();
        let seals: Vec<Seal> = (0..5)
            .map(|_| {
                let payload = sealer.seal(AgentChannel::Metrics, vec![0]);
                open_payload(&payload, &public, AgentChannel::Metrics).unwrap()
            })
            .collect();
        guard
            .admit(&seals[0], AgentChannel::Metrics, false)
            .unwrap();
        guard
            .admit(&seals[2], AgentChannel::Metrics, false)
            .unwrap();
        // Out of order within the window: accepted once.
        guard
            .admit(&seals[1], AgentChannel::Metrics, false)
            .unwrap();
        assert_eq!(
            guard
                .admit(&seals[1], AgentChannel::Metrics, false)
                .unwrap_err()
                .reason(),
            "duplicate"
        );
        // Far behind the newest: a replay.
        let mut far = seals[4].clone();
        far.seq = 500;
        guard.admit(&far, AgentChannel::Metrics, false).unwrap();
        assert_eq!(
            guard
                .admit(&seals[4], AgentChannel::Metrics, false)
                .unwrap_err()
                .reason(),
            "replayed"
        );
        // An earlier session.
        let mut old = far.clone();
        old.session -= 1;
        old.seq = 501;
        assert_eq!(
            guard
                .admit(&old, AgentChannel::Metrics, false)
                .unwrap_err()
                .reason(),
            "replayed"
        );
    }

    #[test]
    fn a_seal_time_far_from_the_coordinators_clock_is_not_a_refusal() {
        let (sealer, public) = new_sealer();
        let mut guard = ReplayGuard::default();
        let payload = sealer.seal(AgentChannel::Metrics, vec![0]);
        let mut seal = open_payload(&payload, &public, AgentChannel::Metrics).unwrap();
        for (i, sealed_at_ms) in [
            i64::MIN,
            i64::MAX,
            0,
            seal.sealed_at_ms + 10 * MAX_CLOCK_SKEW_MS,
        ]
        .into_iter()
        .enumerate()
        {
            seal.sealed_at_ms = sealed_at_ms;
            seal.seq = 10 + i as u64;
            guard.admit(&seal, AgentChannel::Metrics, false).unwrap();
        }
    }

    #[test]
    fn a_will_numbered_zero_is_never_the_armed_one() {
        let (sealer, public) = new_sealer();
        let mut guard = ReplayGuard::default();
        let will = sealer.seal_will(vec![9]);
        let mut will = open_payload(&will, &public, AgentChannel::Status).unwrap();
        will.seq = 0;
        // A coordinator that has just started takes a retained will once…
        guard.admit(&will, AgentChannel::Status, true).unwrap();
        // …and no copy of it after that ("0" is also what "no will armed" is stored as).
        assert_eq!(
            guard
                .admit(&will, AgentChannel::Status, true)
                .unwrap_err()
                .reason(),
            "superseded_will"
        );
    }

    #[test]
    fn the_armed_will_is_accepted_once_whatever_its_age() {
        let (sealer, public) = new_sealer();
        let mut guard = ReplayGuard::default();
        let will = sealer.seal_will(vec![9]);
        let online = sealer.seal(AgentChannel::Status, vec![1]);
        let will = open_payload(&will, &public, AgentChannel::Status).unwrap();
        let online = open_payload(&online, &public, AgentChannel::Status).unwrap();
        assert_eq!(online.armed_will, will.seq);
        guard.admit(&online, AgentChannel::Status, false).unwrap();
        guard.admit(&will, AgentChannel::Status, false).unwrap();
        // Sent again: the agent's run is the same, so it is dropped as superseded.
        assert_eq!(
            guard
                .admit(&will, AgentChannel::Status, false)
                .unwrap_err()
                .reason(),
            "superseded_will"
        );
        // So is a will of an earlier run (the agent restarted before its old connection
        // was noticed as dead); neither marks the host offline.
        let mut old = will.clone();
        old.session -= 1;
        assert_eq!(
            guard
                .admit(&old, AgentChannel::Status, false)
                .unwrap_err()
                .reason(),
            "superseded_will"
        );
    }
}
