//! Sealed agent messages: every message an agent publishes is authenticated as coming
//! from the agent's own enrolled key, so the coordinator never has to trust a topic name
//! (rumqttd has no topic ACLs, and an external broker may be shared).
//!
//! A [`SealedMessage`] carries the encoded message (`body`) inside an authenticated part
//! (the [`Seal`]) that also names the host, the channel, the agent's session (a counter
//! the agent raises at every start, kept on disk: never its clock), the session key it is
//! authenticated with (`rekey`, 0 for none), a sequence number per channel, the time it
//! was sealed, and for messages from a durable queue their place in it
//! ([`crate::delivery::Delivery`]). The seal is authenticated ([`Authenticator`]) either
//! - by an ed25519 signature with the agent's enrolled key (before the agent has a
//!   session key, when it cannot get one, and always for its last will), checked by
//!   [`open`]; or
//! - by a MAC (BLAKE3 keyed hash, 32 bytes) under a **session key** both sides derived in a
//!   handshake, checked by [`open_mac`]: an asymmetric exchange once per session key, then
//!   a cheap symmetric check per message, as WireGuard and Noise do.
//!
//! The handshake: the agent publishes a [`SignedHello`] on `vigil/v1/agents/{host}/session`,
//! signed with its enrolled ed25519 key (a signing domain of its own, [`HELLO_DOMAIN`]),
//! naming its session, a rekey number (1, 2, … within the session) and a fresh X25519
//! public key. The coordinator checks it with the enrolled key, answers with a
//! [`signed::Signed`] [`Welcome`] on `vigil/v1/agents/{host}/welcome`, signed with the coordinator's
//! key ([`crate::bundle::SigningContext::SessionWelcome`]) and carrying the Hello's hash and
//! its own fresh X25519 public key ([`welcome`]). Both sides derive the key with
//! HKDF-SHA256 from the X25519 shared secret, salted with a hash of the transcript (the
//! Hello's and the Welcome's signed bytes) ([`SessionKey`]). The agent ([`Sealer`])
//! switches to MACs when the Welcome verifies ([`Sealer::accept_welcome`]); an agent
//! without the coordinator's key cannot verify a Welcome and keeps signing every message.
//!
//! The coordinator
//! - checks the authenticator: the signature with the host's enrolled key, or the MAC with
//!   the session key the seal names;
//! - checks that the sealed host and channel are the topic's;
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
//! it cannot be fresh, and the session key it would name may be long gone: it is always
//! signed. Each status message names the sequence number of the will armed for the
//! current connection (`armed_will`), and the coordinator accepts that will once,
//! whatever its age, and no other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};

use crate::bundle::{BundleKeys, PublicKey as CoordinatorKey, SigningContext};
use crate::delivery::Delivery;
use crate::signed::{self, CoordinatorSigned};
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

/// How often an agent replaces its session key (a new handshake), at most.
pub const REKEY_EVERY: std::time::Duration = std::time::Duration::from_secs(100);

/// What separates message signatures from every other Vigil signature.
const DOMAIN: &str = "vigil/agent-message/v1";

/// What separates a handshake Hello's signature from every other Vigil signature (a
/// message's signed bytes start with [`DOMAIN`], so neither passes as the other).
pub const HELLO_DOMAIN: &str = "vigil/agent-session-hello/v1";

/// Names the transcript hash that salts the key derivation.
const TRANSCRIPT_LABEL: &[u8] = b"vigil/v1/agent-session-transcript";

/// HKDF's `info`: what the derived key is for.
const KEY_INFO: &[u8] = b"vigil/v1/agent-session-key/message-mac";

/// How a [`SealedMessage`]'s seal is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Authenticator {
    /// The agent's ed25519 signature over `signed` (64 bytes); the seal's `rekey` is 0.
    Signature(#[serde(with = "serde_bytes")] Vec<u8>),
    /// BLAKE3 keyed hash of `signed` under the session key the seal names (its `session`
    /// and `rekey`).
    Mac([u8; 32]),
}

/// A message as it travels on `vigil/v1/agents/{host}/{channel}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMessage {
    /// The host it speaks for (outside the authenticated bytes to find the key by;
    /// checked against them).
    pub host: String,
    /// The postcard encoding of a [`Seal`].
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    /// What proves `signed` comes from the host's agent.
    pub auth: Authenticator,
}

impl WireMessage for SealedMessage {
    const KIND: &'static str = "sealed_message";
    const MIN_VERSION: u8 = 3;

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        if let Authenticator::Signature(signature) = &self.auth {
            if signature.len() != 64 {
                return Err(FieldError::new("signature", "must be 64 bytes"));
            }
        }
        Ok(())
    }
}

/// The authenticated part of a [`SealedMessage`].
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
    /// The session key it is authenticated with (its rekey number within `session`);
    /// 0: signed with the agent's ed25519 key.
    pub rekey: u32,
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

impl Seal {
    /// The session key it names (`None`: signed).
    pub fn key_id(&self) -> Option<KeyId> {
        (self.rekey != 0).then_some(KeyId {
            session: self.session,
            rekey: self.rekey,
        })
    }
}

/// Names one session key: the agent's session and the rekey number within it (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    /// The agent's session.
    pub session: u64,
    /// The handshake within the session, from 1.
    pub rekey: u32,
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.session, self.rekey)
    }
}

/// A session key: what both sides derived from one handshake. Its bytes never leave the
/// process and are not printed.
#[derive(Clone)]
pub struct SessionKey {
    id: KeyId,
    key: [u8; 32],
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey").field("id", &self.id).finish()
    }
}

impl SessionKey {
    /// The key schedule: HKDF-SHA256 over the X25519 shared secret, salted with the hash
    /// of the transcript (the Hello's and the Welcome's signed bytes, each with its
    /// length), `info` naming Vigil's per-message MAC.
    fn derive(id: KeyId, shared: &[u8; 32], hello: &[u8], welcome: &[u8]) -> SessionKey {
        let mut transcript = Sha256::new();
        transcript.update(TRANSCRIPT_LABEL);
        transcript.update((hello.len() as u64).to_be_bytes());
        transcript.update(hello);
        transcript.update((welcome.len() as u64).to_be_bytes());
        transcript.update(welcome);
        let salt = transcript.finalize();
        let mut key = [0u8; 32];
        if let Err(e) =
            Hkdf::<Sha256>::new(Some(salt.as_slice()), shared).expand(KEY_INFO, &mut key)
        {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length: {e}");
        }
        SessionKey { id, key }
    }

    /// Which key it is.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The MAC of `bytes` under this key.
    pub fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, bytes).as_bytes()
    }

    /// Whether `mac` is this key's MAC of `bytes` (compared in constant time).
    pub fn verifies(&self, bytes: &[u8], mac: &[u8; 32]) -> bool {
        blake3::keyed_hash(&self.key, bytes) == *mac
    }
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

/// The agent's half of a session key handshake (signed part of a [`SignedHello`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`HELLO_DOMAIN`].
    pub domain: String,
    /// The host the agent is enrolled as.
    pub host: String,
    /// The agent's session (as in its seals).
    pub session: u64,
    /// The handshake's number within the session, from 1.
    pub rekey: u32,
    /// The agent's fresh X25519 public key.
    pub ephemeral: [u8; 32],
    /// When it was made, epoch ms (agent's clock; informational).
    pub sealed_at_ms: i64,
}

impl Hello {
    /// The key this handshake makes.
    pub fn key_id(&self) -> KeyId {
        KeyId {
            session: self.session,
            rekey: self.rekey,
        }
    }
}

/// A [`Hello`] as it travels on `vigil/v1/agents/{host}/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHello {
    /// The host it speaks for (checked against the signed part).
    pub host: String,
    /// The postcard encoding of the [`Hello`].
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    /// The agent's ed25519 signature over `signed` (64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl WireMessage for SignedHello {
    const KIND: &'static str = "session_hello";
    const MIN_VERSION: u8 = 3;

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

/// The coordinator's half of a handshake (signed part of a [`signed::Signed`] [`Welcome`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The host it answers.
    pub host: String,
    /// The Hello's session.
    pub session: u64,
    /// The Hello's rekey number.
    pub rekey: u32,
    /// SHA-256 of the Hello's signed bytes: which Hello this answers.
    pub hello_hash: [u8; 32],
    /// The coordinator's fresh X25519 public key.
    pub ephemeral: [u8; 32],
    /// When it was made, epoch ms (coordinator's clock; informational).
    pub sealed_at_ms: i64,
}

impl WireMessage for Welcome {
    const KIND: &'static str = "welcome";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)
    }
}

/// A [`Welcome`] travels on `vigil/v1/agents/{host}/welcome` as a [`signed::Signed`] envelope.
impl CoordinatorSigned for Welcome {
    const WHAT: &'static str = "Welcome";
    const CONTEXT: SigningContext = SigningContext::SessionWelcome;
    const ENVELOPE_KIND: &'static str = "session_welcome";
    const ENVELOPE_MIN_VERSION: u8 = 3;
}

/// Why an agent did not take a Welcome.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WelcomeRefusal {
    /// The agent has no coordinator key to check it with.
    #[error("no coordinator key is configured: the Welcome cannot be verified")]
    NoCoordinatorKey,
    /// Not signed by the coordinator's key, malformed, or for another host.
    #[error(transparent)]
    Refused(#[from] signed::Refusal),
    /// The coordinator's X25519 key is of low order.
    #[error("the coordinator's X25519 key is of low order")]
    LowOrderKey,
    /// Answers no Hello this agent is waiting on (an older one, or a copy).
    #[error("Welcome for key {0} answers no Hello this agent is waiting on")]
    NotPending(KeyId),
}

/// What a Welcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The agent seals with this new session key from now on.
    Key(KeyId),
    /// The coordinator holds no session key for this agent's session (it restarted, or
    /// dropped the key): the agent should send a new Hello.
    HandshakeAgain,
}

/// A Hello sent, waiting for its Welcome.
struct PendingHello {
    id: KeyId,
    secret: StaticSecret,
    signed: Vec<u8>,
    hash: [u8; 32],
}

/// The agent's handshake in progress.
#[derive(Default)]
struct KeyState {
    /// The last Hello sent, until its Welcome arrives.
    pending: Option<PendingHello>,
    /// The last rekey number used in this session.
    last_rekey: u32,
}

/// Seals an agent's messages: one per agent process, shared by its connections (they
/// all seal with the current session key, held here).
pub struct Sealer {
    host: String,
    key: AgentKey,
    session: u64,
    /// The coordinator's key, to check Welcomes with (`None`: no handshake; every message
    /// is signed).
    coordinator: Option<CoordinatorKey>,
    /// The next sequence number per channel (metrics, status, actions, events).
    next: [AtomicU64; 4],
    armed_will: AtomicU64,
    /// The current session key (read on every seal).
    current: RwLock<Option<SessionKey>>,
    /// The handshake in progress.
    handshake: Mutex<KeyState>,
    /// Session keys taken so far.
    keys_taken: AtomicU64,
}

impl Sealer {
    /// A sealer for `host` in session `session` (the agent's start counter: higher than
    /// every earlier session of this host).
    pub fn with_session(host: impl Into<String>, key: AgentKey, session: u64) -> Sealer {
        Sealer {
            host: host.into(),
            key,
            session,
            coordinator: None,
            next: std::array::from_fn(|_| AtomicU64::new(1)),
            armed_will: AtomicU64::new(0),
            current: RwLock::new(None),
            handshake: Mutex::new(KeyState::default()),
            keys_taken: AtomicU64::new(0),
        }
    }

    /// A sealer whose session is the current time in ms: for tools that keep no state
    /// between runs (simulators, tests). An agent uses [`Sealer::with_session`].
    pub fn new(host: impl Into<String>, key: AgentKey) -> Sealer {
        let session = u64::try_from(crate::time::now_ms()).unwrap_or(0);
        Sealer::with_session(host, key, session)
    }

    /// The same sealer able to make session keys: Welcomes are checked with `key`, the
    /// coordinator's public key (bundles, commands). Without it every message is signed.
    pub fn with_coordinator_key(mut self, key: Option<CoordinatorKey>) -> Sealer {
        self.coordinator = key;
        self
    }

    /// Whether it can make session keys (it has the coordinator's key).
    pub fn can_handshake(&self) -> bool {
        self.coordinator.is_some()
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

    /// The session key messages are sealed with now (`None`: they are signed).
    pub fn session_key(&self) -> Option<KeyId> {
        self.read_current().as_ref().map(SessionKey::id)
    }

    /// How many session keys it has taken ([`Taken::Key`]): a sender that sealed messages
    /// under a key the coordinator may not hold sends them again once this moves on.
    pub fn keys_taken(&self) -> u64 {
        self.keys_taken.load(Ordering::Relaxed)
    }

    fn read_current(&self) -> std::sync::RwLockReadGuard<'_, Option<SessionKey>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a handshake (a new session key): returns the [`SignedHello`] payload to
    /// publish on `vigil/v1/agents/{host}/session`, or `None` without a coordinator key.
    /// The current key stays in use until the answer is taken
    /// ([`Sealer::accept_welcome`]); a Hello sent earlier and not yet answered is
    /// forgotten (its Welcome will be refused as not pending).
    pub fn hello(&self) -> Option<Vec<u8>> {
        self.coordinator.as_ref()?;
        let mut state = self.handshake.lock().unwrap_or_else(|e| e.into_inner());
        state.last_rekey = state.last_rekey.checked_add(1)?;
        let secret = StaticSecret::from(rand::random::<[u8; 32]>());
        let hello = Hello {
            domain: HELLO_DOMAIN.to_string(),
            host: self.host.clone(),
            session: self.session,
            rekey: state.last_rekey,
            ephemeral: DhPublic::from(&secret).to_bytes(),
            sealed_at_ms: crate::time::now_ms(),
        };
        let signed = encode_postcard(&hello);
        let signature = self.key.0.sign(&signed).to_bytes().to_vec();
        state.pending = Some(PendingHello {
            id: hello.key_id(),
            secret,
            hash: Sha256::digest(&signed).into(),
            signed: signed.clone(),
        });
        Some(crate::wire::encode(&SignedHello {
            host: self.host.clone(),
            signed,
            signature,
        }))
    }

    /// Takes the coordinator's answer to the last Hello: checks its signature, that it
    /// answers that Hello, derives the session key and seals with it from now on. A
    /// signed notice that the coordinator holds no key for this session
    /// ([`rehandshake_notice`]) asks for a new handshake ([`Taken::HandshakeAgain`]).
    pub fn accept_welcome(&self, payload: &[u8]) -> Result<Taken, WelcomeRefusal> {
        let coordinator = self
            .coordinator
            .as_ref()
            .ok_or(WelcomeRefusal::NoCoordinatorKey)?;
        let signed::Opened {
            message: welcome,
            content,
        } = signed::open_with_content::<Welcome>(payload, Some(coordinator), &self.host)?;
        let id = KeyId {
            session: welcome.session,
            rekey: welcome.rekey,
        };
        if welcome.rekey == 0 {
            return if welcome.session == self.session {
                Ok(Taken::HandshakeAgain)
            } else {
                Err(WelcomeRefusal::NotPending(id))
            };
        }
        let mut state = self.handshake.lock().unwrap_or_else(|e| e.into_inner());
        let answers = state
            .pending
            .as_ref()
            .is_some_and(|p| p.id == id && p.hash == welcome.hello_hash);
        if !answers {
            return Err(WelcomeRefusal::NotPending(id));
        }
        let Some(pending) = state.pending.take() else {
            return Err(WelcomeRefusal::NotPending(id));
        };
        let shared = pending
            .secret
            .diffie_hellman(&DhPublic::from(welcome.ephemeral));
        if !shared.was_contributory() {
            return Err(WelcomeRefusal::LowOrderKey);
        }
        let key = SessionKey::derive(id, shared.as_bytes(), &pending.signed, &content);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
        self.keys_taken.fetch_add(1, Ordering::Relaxed);
        Ok(Taken::Key(id))
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
    /// every status sealed from now on names it. Always signed.
    pub fn seal_will(&self, body: Vec<u8>) -> Vec<u8> {
        self.seal_inner(AgentChannel::Status, body, true, None)
    }

    /// Seals with the agent's ed25519 key even when it has a session key (for
    /// benchmarks measuring the signature path against the MAC path).
    pub fn seal_signed(&self, channel: AgentChannel, body: Vec<u8>) -> Vec<u8> {
        self.seal_with(channel, body, false, None, None)
    }

    /// [`Sealer::seal_queued`], always signed (see [`Sealer::seal_signed`]).
    pub fn seal_queued_signed(
        &self,
        channel: AgentChannel,
        body: Vec<u8>,
        delivery: Delivery,
    ) -> Vec<u8> {
        self.seal_with(channel, body, false, Some(delivery), None)
    }

    fn seal_inner(
        &self,
        channel: AgentChannel,
        body: Vec<u8>,
        will: bool,
        delivery: Option<Delivery>,
    ) -> Vec<u8> {
        if will {
            return self.seal_with(channel, body, will, delivery, None);
        }
        let current = self.read_current();
        self.seal_with(channel, body, will, delivery, current.as_ref())
    }

    fn seal_with(
        &self,
        channel: AgentChannel,
        body: Vec<u8>,
        will: bool,
        delivery: Option<Delivery>,
        key: Option<&SessionKey>,
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
            rekey: key.map(|k| k.id.rekey).unwrap_or(0),
            seq,
            sealed_at_ms: crate::time::now_ms(),
            will,
            armed_will: self.armed_will.load(Ordering::SeqCst),
            delivery,
            body,
        };
        let signed = encode_postcard(&seal);
        let auth = match key {
            Some(key) => Authenticator::Mac(key.mac(&signed)),
            None => Authenticator::Signature(self.key.0.sign(&signed).to_bytes().to_vec()),
        };
        crate::wire::encode(&SealedMessage {
            host: self.host.clone(),
            signed,
            auth,
        })
    }
}

fn encode_postcard<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail to encode a seal or a handshake: {e}"),
    }
}

fn slot(channel: AgentChannel) -> usize {
    match channel {
        AgentChannel::Metrics => 0,
        AgentChannel::Status => 1,
        AgentChannel::Actions => 2,
        // Commands, acknowledgements, handshakes and grants are never sealed by agents;
        // lease requests share the events counter (a channel's sequence only has to rise).
        AgentChannel::Events
        | AgentChannel::Leases
        | AgentChannel::Commands
        | AgentChannel::Acks
        | AgentChannel::Session
        | AgentChannel::Welcome
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
    /// The signature does not verify with the host's key, or the MAC with the session
    /// key it names.
    #[error("signature or MAC does not verify with the key of `{0}`")]
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
    /// MAC'd under a session key the coordinator does not hold (never made, dropped by a
    /// revocation or a coordinator restart, or two rekeys old).
    #[error("no session key {0} is known for this host")]
    UnknownSession(KeyId),
    /// MAC'd under the host's previous session key after its grace period.
    #[error("session key {0} was replaced by a newer one")]
    Rekeyed(KeyId),
    /// A Hello from an earlier session, or repeating a (session, rekey) already seen.
    #[error("handshake {0} is behind what this host already sent")]
    ReplayedHandshake(KeyId),
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
            Refusal::UnknownSession(_) => "unknown_session",
            Refusal::Rekeyed(_) => "rekeyed",
            Refusal::ReplayedHandshake(_) => "replayed_handshake",
        }
    }
}

/// Checks `sealed`'s signature with `key` and that it was sealed for `host` and
/// `channel`; returns the seal. A MAC'd message is refused here (`bad_signature`): its
/// key is a session key ([`open_mac`]).
pub fn open(
    sealed: &SealedMessage,
    key: &AgentPublicKey,
    host: &str,
    channel: AgentChannel,
) -> Result<Seal, Refusal> {
    let Authenticator::Signature(signature) = &sealed.auth else {
        return Err(Refusal::BadSignature(sealed.host.clone()));
    };
    let signature = <[u8; 64]>::try_from(signature.as_slice())
        .map_err(|_| Refusal::BadSignature(sealed.host.clone()))?;
    key.0
        .verify(&sealed.signed, &Signature::from_bytes(&signature))
        .map_err(|_| Refusal::BadSignature(sealed.host.clone()))?;
    let seal = peek(sealed)?;
    if seal.rekey != 0 {
        return Err(Refusal::Malformed(format!(
            "signed, yet names session key {}",
            seal.rekey
        )));
    }
    check_topic(seal, sealed, host, channel)
}

/// The seal of a MAC'd message, unchecked: to find which session key it names
/// ([`Seal::key_id`]) before [`open_mac`] checks it.
pub fn peek(sealed: &SealedMessage) -> Result<Seal, Refusal> {
    let seal: Seal =
        postcard::from_bytes(&sealed.signed).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if seal.domain != DOMAIN {
        return Err(Refusal::Malformed(format!("domain `{}`", seal.domain)));
    }
    Ok(seal)
}

/// Checks `sealed`'s MAC with `key` (the session key its `seal`, from [`peek`], names)
/// and that it was sealed for `host` and `channel`; returns the seal.
pub fn open_mac(
    sealed: &SealedMessage,
    seal: Seal,
    key: &SessionKey,
    host: &str,
    channel: AgentChannel,
) -> Result<Seal, Refusal> {
    let Authenticator::Mac(mac) = &sealed.auth else {
        return Err(Refusal::BadSignature(sealed.host.clone()));
    };
    if seal.key_id() != Some(key.id) || !key.verifies(&sealed.signed, mac) {
        return Err(Refusal::BadSignature(sealed.host.clone()));
    }
    check_topic(seal, sealed, host, channel)
}

fn check_topic(
    seal: Seal,
    sealed: &SealedMessage,
    host: &str,
    channel: AgentChannel,
) -> Result<Seal, Refusal> {
    if seal.host != host || seal.host != sealed.host || seal.channel != channel.as_str() {
        return Err(Refusal::WrongTopic {
            host: seal.host,
            channel: seal.channel,
        });
    }
    Ok(seal)
}

/// Checks a Hello's signature with the host's enrolled `key` and that it is for `host`;
/// returns it. Whether it is fresh (a later session or rekey than any seen) is the
/// caller's to decide.
pub fn open_hello(
    signed: &SignedHello,
    key: &AgentPublicKey,
    host: &str,
) -> Result<Hello, Refusal> {
    let signature = <[u8; 64]>::try_from(signed.signature.as_slice())
        .map_err(|_| Refusal::BadSignature(signed.host.clone()))?;
    key.0
        .verify(&signed.signed, &Signature::from_bytes(&signature))
        .map_err(|_| Refusal::BadSignature(signed.host.clone()))?;
    let hello: Hello =
        postcard::from_bytes(&signed.signed).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if hello.domain != HELLO_DOMAIN {
        return Err(Refusal::Malformed(format!("domain `{}`", hello.domain)));
    }
    if hello.rekey == 0 {
        return Err(Refusal::Malformed(
            "rekey number 0 (they start at 1)".into(),
        ));
    }
    if hello.host != host || signed.host != host {
        return Err(Refusal::WrongTopic {
            host: hello.host,
            channel: AgentChannel::Session.as_str().to_string(),
        });
    }
    Ok(hello)
}

/// The coordinator's answer to a checked Hello (`signed`: its signed bytes): the
/// [`signed::Signed`] [`Welcome`] payload to publish on `vigil/v1/agents/{host}/welcome`, signed with
/// `keys`, and the session key both sides now hold.
pub fn welcome(
    keys: &BundleKeys,
    hello: &Hello,
    signed: &[u8],
) -> Result<(Vec<u8>, SessionKey), Refusal> {
    let secret = StaticSecret::from(rand::random::<[u8; 32]>());
    let shared = secret.diffie_hellman(&DhPublic::from(hello.ephemeral));
    if !shared.was_contributory() {
        return Err(Refusal::Malformed(
            "the agent's X25519 key is of low order".into(),
        ));
    }
    let answer = Welcome {
        host: hello.host.clone(),
        session: hello.session,
        rekey: hello.rekey,
        hello_hash: Sha256::digest(signed).into(),
        ephemeral: DhPublic::from(&secret).to_bytes(),
        sealed_at_ms: crate::time::now_ms(),
    };
    let (payload, content) = signed::sign_with_content(keys, &answer);
    let key = SessionKey::derive(hello.key_id(), shared.as_bytes(), signed, &content);
    Ok((payload, key))
}

/// A signed notice to `host` that the coordinator holds no session key for its session
/// `session` (a Welcome with rekey number 0, answering no Hello): the agent handshakes
/// again. Replaying one only makes the agent handshake once more.
pub fn rehandshake_notice(keys: &BundleKeys, host: &str, session: u64) -> Vec<u8> {
    signed::sign(
        keys,
        &Welcome {
            host: host.to_string(),
            session,
            rekey: 0,
            hello_hash: [0; 32],
            ephemeral: [0; 32],
            sealed_at_ms: crate::time::now_ms(),
        },
    )
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

    /// The latest session of `host` seen on any channel.
    pub fn session(&self, host: &str) -> Option<u64> {
        [
            AgentChannel::Metrics,
            AgentChannel::Status,
            AgentChannel::Actions,
            AgentChannel::Events,
        ]
        .into_iter()
        .filter_map(|channel| self.windows.get(&(host.to_string(), channel)))
        .map(|w| w.session)
        .max()
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

    /// A sealer with a session key from a handshake with `coordinator`, and that key as
    /// the coordinator holds it.
    fn handshaken(coordinator: &BundleKeys) -> (Sealer, AgentPublicKey, SessionKey) {
        let key = AgentKey::generate();
        let public = AgentPublicKey::from_hex(&key.public_hex()).unwrap();
        let sealer = Sealer::new("web-01", key).with_coordinator_key(Some(
            CoordinatorKey::from_hex(&coordinator.public_hex()).unwrap(),
        ));
        let hello = decode::<SignedHello>(&sealer.hello().unwrap()).unwrap();
        let opened = open_hello(&hello, &public, "web-01").unwrap();
        assert_eq!(opened.rekey, 1);
        let (answer, key) = welcome(coordinator, &opened, &hello.signed).unwrap();
        assert_eq!(
            sealer.accept_welcome(&answer).unwrap(),
            Taken::Key(key.id())
        );
        (sealer, public, key)
    }

    fn open_mac_payload(
        payload: &[u8],
        key: &SessionKey,
        channel: AgentChannel,
    ) -> Result<Seal, Refusal> {
        let sealed = decode::<SealedMessage>(payload).unwrap();
        let seal = peek(&sealed)?;
        open_mac(&sealed, seal, key, "web-01", channel)
    }

    #[test]
    fn both_sides_derive_the_same_key_and_messages_are_maced_with_it() {
        let coordinator = BundleKeys::generate();
        let (sealer, public, key) = handshaken(&coordinator);
        assert_eq!(sealer.session_key(), Some(key.id()));
        let payload = sealer.seal(AgentChannel::Metrics, vec![1, 2, 3]);
        let sealed = decode::<SealedMessage>(&payload).unwrap();
        assert!(matches!(sealed.auth, Authenticator::Mac(_)));
        let seal = open_mac_payload(&payload, &key, AgentChannel::Metrics).unwrap();
        assert_eq!(seal.body, vec![1, 2, 3]);
        assert_eq!(seal.key_id(), Some(key.id()));
        // Not a signature: the ed25519 path refuses it.
        assert_eq!(
            open(&sealed, &public, "web-01", AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        // The will stays signed, whatever key is current.
        let will = decode::<SealedMessage>(&sealer.seal_will(vec![9])).unwrap();
        assert!(matches!(will.auth, Authenticator::Signature(_)));
        assert_eq!(
            open(&will, &public, "web-01", AgentChannel::Status)
                .unwrap()
                .rekey,
            0
        );
        // So does a message sealed on purpose with the signature (benchmarks).
        let signed = sealer.seal_signed(AgentChannel::Metrics, vec![4]);
        open_payload(&signed, &public, AgentChannel::Metrics).unwrap();
    }

    #[test]
    fn a_forged_or_moved_mac_is_refused() {
        let coordinator = BundleKeys::generate();
        let (sealer, _, key) = handshaken(&coordinator);
        let (_, _, other) = handshaken(&coordinator);
        let payload = sealer.seal(AgentChannel::Metrics, vec![1, 2, 3]);
        // Another session key (same id, other secret).
        assert_eq!(other.id().rekey, key.id().rekey);
        let mut sealed = decode::<SealedMessage>(&payload).unwrap();
        let seal = peek(&sealed).unwrap();
        let mut under_other = other.clone();
        under_other.id = key.id();
        assert_eq!(
            open_mac(
                &sealed,
                seal.clone(),
                &under_other,
                "web-01",
                AgentChannel::Metrics
            )
            .unwrap_err()
            .reason(),
            "bad_signature"
        );
        // An altered body.
        let last = sealed.signed.len() - 1;
        sealed.signed[last] ^= 1;
        let altered = peek(&sealed).unwrap();
        assert_eq!(
            open_mac(&sealed, altered, &key, "web-01", AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        // An altered MAC.
        let mut sealed = decode::<SealedMessage>(&payload).unwrap();
        if let Authenticator::Mac(mac) = &mut sealed.auth {
            mac[0] ^= 1;
        }
        assert_eq!(
            open_mac(&sealed, seal.clone(), &key, "web-01", AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        // Moved to another channel's topic.
        assert_eq!(
            open_mac_payload(&payload, &key, AgentChannel::Status)
                .unwrap_err()
                .reason(),
            "host_mismatch"
        );
        // A seal naming another key than the one checked with.
        let mut renamed = key.clone();
        renamed.id.rekey += 1;
        let sealed = decode::<SealedMessage>(&payload).unwrap();
        assert_eq!(
            open_mac(&sealed, seal, &renamed, "web-01", AgentChannel::Metrics)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
    }

    #[test]
    fn the_key_schedule_binds_the_transcript() {
        let id = KeyId {
            session: 7,
            rekey: 1,
        };
        let shared = [5u8; 32];
        let base = SessionKey::derive(id, &shared, b"hello", b"welcome");
        assert_eq!(
            base.key,
            SessionKey::derive(id, &shared, b"hello", b"welcome").key
        );
        for other in [
            SessionKey::derive(id, &[6u8; 32], b"hello", b"welcome"),
            SessionKey::derive(id, &shared, b"hellO", b"welcome"),
            SessionKey::derive(id, &shared, b"hello", b"welcomE"),
            // The lengths are part of the transcript: moving bytes across is another key.
            SessionKey::derive(id, &shared, b"hellow", b"elcome"),
        ] {
            assert_ne!(base.key, other.key);
        }
        // Its bytes are not printed.
        assert_eq!(
            format!("{base:?}"),
            "SessionKey { id: KeyId { session: 7, rekey: 1 } }"
        );
    }

    #[test]
    fn a_welcome_is_taken_only_from_the_coordinator_and_for_the_pending_hello() {
        let coordinator = BundleKeys::generate();
        let key = AgentKey::generate();
        let public = AgentPublicKey::from_hex(&key.public_hex()).unwrap();
        let sealer = Sealer::new("web-01", key).with_coordinator_key(Some(
            CoordinatorKey::from_hex(&coordinator.public_hex()).unwrap(),
        ));
        let first = decode::<SignedHello>(&sealer.hello().unwrap()).unwrap();
        let first = (open_hello(&first, &public, "web-01").unwrap(), first.signed);
        // Signed by another key.
        let (forged, _) = welcome(&BundleKeys::generate(), &first.0, &first.1).unwrap();
        assert!(matches!(
            sealer.accept_welcome(&forged),
            Err(WelcomeRefusal::Refused(
                signed::Refusal::BadSignature { .. }
            ))
        ));
        // A second Hello replaces the first: the first's Welcome is no longer wanted.
        let (stale, _) = welcome(&coordinator, &first.0, &first.1).unwrap();
        let second = decode::<SignedHello>(&sealer.hello().unwrap()).unwrap();
        let second = (
            open_hello(&second, &public, "web-01").unwrap(),
            second.signed,
        );
        assert_eq!(second.0.rekey, 2);
        assert!(matches!(
            sealer.accept_welcome(&stale),
            Err(WelcomeRefusal::NotPending(_))
        ));
        assert_eq!(sealer.session_key(), None);
        let (answer, key) = welcome(&coordinator, &second.0, &second.1).unwrap();
        assert_eq!(sealer.accept_welcome(&answer), Ok(Taken::Key(key.id())));
        // The coordinator's notice that it lost the key asks for a new handshake; one for
        // another session, or not signed by the coordinator, does not.
        assert_eq!(
            sealer.accept_welcome(&rehandshake_notice(
                &coordinator,
                "web-01",
                sealer.session()
            )),
            Ok(Taken::HandshakeAgain)
        );
        assert!(sealer
            .accept_welcome(&rehandshake_notice(
                &coordinator,
                "web-01",
                sealer.session() + 1
            ))
            .is_err());
        assert!(matches!(
            sealer.accept_welcome(&rehandshake_notice(
                &BundleKeys::generate(),
                "web-01",
                sealer.session()
            )),
            Err(WelcomeRefusal::Refused(
                signed::Refusal::BadSignature { .. }
            ))
        ));
        // Taken once.
        assert!(matches!(
            sealer.accept_welcome(&answer),
            Err(WelcomeRefusal::NotPending(_))
        ));
        // A Hello's signature is no message signature, and the other way round.
        let as_message = SealedMessage {
            host: "web-01".into(),
            signed: second.1.clone(),
            auth: Authenticator::Signature(
                decode::<SignedHello>(&sealer.hello().unwrap())
                    .unwrap()
                    .signature,
            ),
        };
        assert!(open(&as_message, &public, "web-01", AgentChannel::Metrics).is_err());
        let message = decode::<SealedMessage>(&sealer.seal_will(vec![1])).unwrap();
        let Authenticator::Signature(signature) = message.auth else {
            panic!("the will is signed");
        };
        let as_hello = SignedHello {
            host: "web-01".into(),
            signed: message.signed,
            signature,
        };
        assert_eq!(
            open_hello(&as_hello, &public, "web-01")
                .unwrap_err()
                .reason(),
            "malformed_seal"
        );
    }

    #[test]
    fn without_a_coordinator_key_every_message_is_signed() {
        let (sealer, public) = new_sealer();
        assert!(!sealer.can_handshake());
        assert!(sealer.hello().is_none());
        assert_eq!(
            sealer.accept_welcome(&[3, 0]),
            Err(WelcomeRefusal::NoCoordinatorKey)
        );
        let payload = sealer.seal(AgentChannel::Metrics, vec![1]);
        open_payload(&payload, &public, AgentChannel::Metrics).unwrap();
    }
}
