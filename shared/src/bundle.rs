//! Policy bundles: a versioned, signed set of policy files (and an optional desired-state
//! manifest) for one host group, as the coordinator publishes it (retained) on
//! `vigil/v1/bundles/{group}` and agents verify before use.
//!
//! - [`Bundle`] is the content: group, label selector, version, files.
//! - [`Tombstone`] says a group was removed, at a version above its last bundle's: agents
//!   drop the group's policies and refuse every older bundle of it.
//! - [`SignedBundle`] is what travels on the topic: which of the two it carries
//!   ([`BundleKind`]), the content's bytes (postcard), their SHA-256, and an ed25519
//!   signature.
//! - [`BundleKeys`] signs (coordinator); [`open`] (and [`verify`] for a bundle only)
//!   checks signature, hash and version order against the group's version floor (agent),
//!   and says exactly why a message is refused.
//!
//! Every signature the coordinator's key makes is domain-separated
//! ([`SigningContext`]): the signed bytes are a context string naming the purpose
//! (bundle, tombstone, command, delivery acknowledgement, session welcome), a zero byte, then the content. A signature made for one
//! purpose never verifies as another, even over identical content bytes.
//!
//! Keys on disk are 32 raw bytes written as 64 hex characters (private: the seed; public:
//! the verifying key).

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::validate::{self, FieldError};
use crate::wire::{Tag, WireMessage};

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// File name (`web.yaml`, `manifest.yaml`).
    pub name: String,
    /// Its text.
    pub text: String,
}

/// The name of the desired-state manifest inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// A bundle's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The host group (a folder of the bundle directory).
    pub group: String,
    /// Labels a host must all have to be in the group (empty: every host).
    pub selector: Vec<Tag>,
    /// Increases with every change published for the group.
    pub version: u64,
    /// When this version was built, epoch ms.
    pub created_at_ms: i64,
    /// Policy files (`*.yaml`) and the optional [`MANIFEST_FILE`], sorted by name.
    pub files: Vec<BundleFile>,
    /// The group's disruption budget (`budget:` in its `group.yaml`): it applies to every
    /// policy of the bundle that remediates and has no budget of its own
    /// ([`crate::policy::budget::group_budget_applies`]), all of them counted against one
    /// pool. Last, and optional: a bundle from an older coordinator ends before it and
    /// reads as `None` ([`decode_bundle`]); an older agent reading a newer bundle ignores
    /// it.
    pub budget: Option<crate::policy::budget::Budget>,
}

/// Decodes a bundle's signed content; content that ends just before the optional
/// `budget` (an older coordinator's) reads with no group budget.
pub fn decode_bundle(content: &[u8]) -> Result<Bundle, postcard::Error> {
    match postcard::from_bytes(content) {
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            let mut padded = content.to_vec();
            padded.push(0);
            postcard::from_bytes(&padded)
        }
        other => other,
    }
}

impl Bundle {
    /// Whether a host with `labels` belongs to this bundle's group.
    pub fn selects(&self, labels: &[Tag]) -> bool {
        selects(&self.selector, labels)
    }
}

/// Whether `labels` carry every label of `selector` (an empty selector selects all).
pub fn selects(selector: &[Tag], labels: &[Tag]) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// A group's removal: published (signed, retained) on the group's bundle topic in place
/// of its last bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The group removed.
    pub group: String,
    /// Above the group's last bundle version: the version floor agents keep for it.
    pub version: u64,
    /// When the group was removed, epoch ms.
    pub removed_at_ms: i64,
}

/// What a [`SignedBundle`] carries; it also picks the [`SigningContext`] its signature is
/// checked in, so relabelling one kind as the other breaks the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleKind {
    /// `content` is a [`Bundle`].
    Bundle,
    /// `content` is a [`Tombstone`].
    Tombstone,
}

impl BundleKind {
    fn context(self) -> SigningContext {
        match self {
            BundleKind::Bundle => SigningContext::Bundle,
            BundleKind::Tombstone => SigningContext::Tombstone,
        }
    }
}

/// A bundle (or a group's tombstone) as it travels: content bytes, their hash, a
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBundle {
    /// The group (repeated outside the signed bytes so a receiver can route it; checked
    /// against the signed content).
    pub group: String,
    /// Whether `content` is a bundle or a tombstone.
    pub kind: BundleKind,
    /// The postcard encoding of the [`Bundle`] or [`Tombstone`].
    pub content: Vec<u8>,
    /// SHA-256 of `content`, hex.
    pub hash: String,
    /// ed25519 signature over `content` in the kind's [`SigningContext`] (64 bytes).
    pub signature: Vec<u8>,
}

/// What a signature by the coordinator's key is for. The signed bytes are the context's
/// [`label`](SigningContext::label), a zero byte, and the content: the labels differ and
/// none holds a zero byte, so the signed bytes of two purposes never coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningContext {
    /// A policy bundle ([`Bundle`]).
    Bundle,
    /// A group's removal ([`Tombstone`]).
    Tombstone,
    /// A command to one agent ([`crate::command_auth`]).
    Command,
    /// An acknowledgement of stored messages to one agent ([`crate::delivery`]).
    DeliveryAck,
    /// The coordinator's half of a session key handshake
    /// ([`crate::agent_auth::Welcome`], a [`crate::signed::Signed`] envelope).
    SessionWelcome,
    /// An answer to an agent's disruption-budget lease request ([`crate::lease`]).
    LeaseAnswer,
}

impl SigningContext {
    /// The context string.
    pub const fn label(self) -> &'static str {
        match self {
            SigningContext::Bundle => "vigil/v1/signed-bundle",
            SigningContext::Tombstone => "vigil/v1/signed-bundle-tombstone",
            SigningContext::Command => "vigil/v1/signed-command",
            SigningContext::DeliveryAck => "vigil/v1/signed-delivery-ack",
            SigningContext::SessionWelcome => "vigil/v1/signed-session-welcome",
            SigningContext::LeaseAnswer => "vigil/v1/signed-lease-answer",
        }
    }

    /// The bytes actually signed for `content` in this context.
    fn message(self, content: &[u8]) -> Vec<u8> {
        let label = self.label().as_bytes();
        let mut out = Vec::with_capacity(label.len() + 1 + content.len());
        out.extend_from_slice(label);
        out.push(0);
        out.extend_from_slice(content);
        out
    }
}

impl WireMessage for SignedBundle {
    const KIND: &'static str = "signed_bundle";

    fn host(&self) -> &str {
        // Bundles speak for a group, not a host; the topic names the group.
        &self.group
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.group).map_err(|e| FieldError::new("group", e.problem))?;
        if self.signature.len() != 64 {
            return Err(FieldError::new("signature", "must be 64 bytes"));
        }
        Ok(())
    }
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    /// The signature does not verify with the configured public key.
    #[error("bundle for group `{group}`: bad signature (not signed by the configured key)")]
    BadSignature {
        /// The group.
        group: String,
    },
    /// The content does not match its hash (altered in transit or at rest).
    #[error(
        "bundle for group `{group}`: content hash {actual} does not match the declared {declared}"
    )]
    HashMismatch {
        /// The group.
        group: String,
        /// The hash it claims.
        declared: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// Older than (or different content with the same version as) the newest version
    /// ever accepted for the group: a replay.
    #[error(
        "bundle for group `{group}`: version {offered} is not newer than the applied version \
         {floor} (the highest this host accepted for the group)"
    )]
    Replayed {
        /// The group.
        group: String,
        /// The version offered.
        offered: u64,
        /// The group's version floor: the highest version accepted for it (bundle or
        /// tombstone), whether or not the host is still in the group.
        floor: u64,
    },
    /// A tombstone where a bundle was expected (or the other way round).
    #[error("bundle for group `{group}`: a {found:?} where a {expected:?} was expected")]
    WrongKind {
        /// The group.
        group: String,
        /// What was expected.
        expected: BundleKind,
        /// What the message is.
        found: BundleKind,
    },
    /// The signed content cannot be decoded, or names another group than its envelope.
    #[error("bundle for group `{group}`: {reason}")]
    Malformed {
        /// The group.
        group: String,
        /// What is wrong.
        reason: String,
    },
    /// A key could not be read.
    #[error("bundle key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// SHA-256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The coordinator's signing key.
pub struct BundleKeys {
    signing: SigningKey,
}

impl BundleKeys {
    /// A new random key.
    pub fn generate() -> BundleKeys {
        let seed: [u8; 32] = rand::random();
        BundleKeys {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Reads a private key file (64 hex characters).
    pub fn load(path: &Path) -> Result<BundleKeys, BundleError> {
        let bytes = read_hex_key(path)?;
        Ok(BundleKeys {
            signing: SigningKey::from_bytes(&bytes),
        })
    }

    /// The private key as written to a key file.
    pub fn private_hex(&self) -> String {
        hex::encode(self.signing.to_bytes())
    }

    /// The public key, hex (what agents are configured with).
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }

    /// An ed25519 signature over `content` in `context` (64 bytes).
    pub fn sign_in(&self, context: SigningContext, content: &[u8]) -> Vec<u8> {
        self.signing
            .sign(&context.message(content))
            .to_bytes()
            .to_vec()
    }

    /// Signs a bundle.
    pub fn sign(&self, bundle: &Bundle) -> SignedBundle {
        self.envelope(&bundle.group, BundleKind::Bundle, encode(bundle))
    }

    /// Signs a group's tombstone.
    pub fn sign_tombstone(&self, tombstone: &Tombstone) -> SignedBundle {
        self.envelope(&tombstone.group, BundleKind::Tombstone, encode(tombstone))
    }

    fn envelope(&self, group: &str, kind: BundleKind, content: Vec<u8>) -> SignedBundle {
        SignedBundle {
            group: group.to_string(),
            kind,
            hash: content_hash(&content),
            signature: self.sign_in(kind.context(), &content),
            content,
        }
    }
}

/// A public key for verifying bundles.
#[derive(Debug, Clone)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Whether `signature` is this key's ed25519 signature over `content` in `context`.
    pub fn verifies(&self, context: SigningContext, content: &[u8], signature: &[u8]) -> bool {
        <[u8; 64]>::try_from(signature)
            .map(|sig| {
                self.0
                    .verify(&context.message(content), &Signature::from_bytes(&sig))
                    .is_ok()
            })
            .unwrap_or(false)
    }

    /// Reads a public key given as 64 hex characters.
    pub fn from_hex(text: &str) -> Result<PublicKey, BundleError> {
        let bytes = decode_hex_key(text.trim()).map_err(|reason| BundleError::Key {
            path: "(given inline)".into(),
            reason,
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| BundleError::Key {
                path: "(given inline)".into(),
                reason: e.to_string(),
            })
    }

    /// Reads a public key from a file (64 hex characters), or takes `spec` itself as the
    /// hex key if it is not a file.
    pub fn load(spec: &str) -> Result<PublicKey, BundleError> {
        let path = Path::new(spec);
        if path.is_file() {
            let bytes = read_hex_key(path)?;
            VerifyingKey::from_bytes(&bytes)
                .map(PublicKey)
                .map_err(|e| BundleError::Key {
                    path: spec.to_string(),
                    reason: e.to_string(),
                })
        } else {
            PublicKey::from_hex(spec)
        }
    }
}

fn decode_hex_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected 32 bytes (64 hex characters), got {}", bytes.len()))
}

fn read_hex_key(path: &Path) -> Result<[u8; 32], BundleError> {
    let text = std::fs::read_to_string(path).map_err(|e| BundleError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    decode_hex_key(text.trim()).map_err(|reason| BundleError::Key {
        path: path.display().to_string(),
        reason,
    })
}

/// The postcard encoding of a bundle or tombstone (strings, numbers and sequences: it
/// cannot fail).
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail to encode a bundle or tombstone: {e}"),
    }
}

/// A verified message of a group's bundle topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// A bundle to apply.
    Bundle(Bundle),
    /// The group was removed.
    Removed(Tombstone),
}

impl Release {
    /// The group.
    pub fn group(&self) -> &str {
        match self {
            Release::Bundle(b) => &b.group,
            Release::Removed(t) => &t.group,
        }
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        match self {
            Release::Bundle(b) => b.version,
            Release::Removed(t) => t.version,
        }
    }
}

/// Verifies a signed bundle or tombstone against `key` and the group's version floor
/// (`floor`: the highest version accepted for the group and the hash of what carried it):
/// signature (in its kind's context), hash, content, group, and version order. The
/// message that set the floor, seen again (same version and hash), is accepted (a
/// retained message after a reconnect); the caller may skip re-applying it. Anything
/// older, or different content with the floor's version, is [`BundleError::Replayed`].
pub fn open(
    signed: &SignedBundle,
    key: &PublicKey,
    floor: Option<(u64, &str)>,
) -> Result<Release, BundleError> {
    let group = signed.group.clone();
    if !key.verifies(signed.kind.context(), &signed.content, &signed.signature) {
        return Err(BundleError::BadSignature { group });
    }
    let actual = content_hash(&signed.content);
    if actual != signed.hash {
        return Err(BundleError::HashMismatch {
            group,
            declared: signed.hash.clone(),
            actual,
        });
    }
    let malformed = |e: postcard::Error| BundleError::Malformed {
        group: group.clone(),
        reason: format!("content does not decode: {e}"),
    };
    let release = match signed.kind {
        BundleKind::Bundle => Release::Bundle(decode_bundle(&signed.content).map_err(malformed)?),
        BundleKind::Tombstone => {
            Release::Removed(postcard::from_bytes(&signed.content).map_err(malformed)?)
        }
    };
    if release.group() != signed.group {
        return Err(BundleError::Malformed {
            group,
            reason: format!("signed content is for group `{}`", release.group()),
        });
    }
    if let Some((version, hash)) = floor {
        let offered = release.version();
        if offered < version || (offered == version && hash != signed.hash) {
            return Err(BundleError::Replayed {
                group,
                offered,
                floor: version,
            });
        }
    }
    Ok(release)
}

/// [`open`] for a bundle only: a tombstone is [`BundleError::WrongKind`].
pub fn verify(
    signed: &SignedBundle,
    key: &PublicKey,
    floor: Option<(u64, &str)>,
) -> Result<Bundle, BundleError> {
    match open(signed, key, floor)? {
        Release::Bundle(bundle) => Ok(bundle),
        Release::Removed(_) => Err(BundleError::WrongKind {
            group: signed.group.clone(),
            expected: BundleKind::Bundle,
            found: BundleKind::Tombstone,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(version: u64) -> Bundle {
        Bundle {
            group: "web".into(),
            selector: vec![("role".into(), "web".into())],
            version,
            created_at_ms: 1,
            files: vec![BundleFile {
                name: "p.yaml".into(),
                text: "policies: []\n".into(),
            }],
            budget: None,
        }
    }

    #[test]
    fn a_signed_bundle_verifies_and_tampering_is_named() {
        let keys = BundleKeys::generate();
        let public = PublicKey::from_hex(&keys.public_hex()).unwrap();
        let signed = keys.sign(&bundle(2));
        assert_eq!(verify(&signed, &public, None).unwrap(), bundle(2));
        assert!(
            verify(&signed, &public, Some((2, &signed.hash))).is_ok(),
            "same version again"
        );

        let other = PublicKey::from_hex(&BundleKeys::generate().public_hex()).unwrap();
        assert!(matches!(
            verify(&signed, &other, None),
            Err(BundleError::BadSignature { .. })
        ));

        let mut altered = signed.clone();
        let last = altered.content.len() - 1;
        altered.content[last] ^= 1;
        assert!(matches!(
            verify(&altered, &public, None),
            Err(BundleError::BadSignature { .. })
        ));

        let mut wrong_hash = signed.clone();
        wrong_hash.hash = content_hash(b"other");
        assert!(matches!(
            verify(&wrong_hash, &public, None),
            Err(BundleError::HashMismatch { .. })
        ));

        let old = keys.sign(&bundle(1));
        let err = verify(&old, &public, Some((2, &signed.hash))).unwrap_err();
        assert!(matches!(
            err,
            BundleError::Replayed {
                offered: 1,
                floor: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("not newer"), "{err}");
    }

    #[test]
    fn a_tombstone_verifies_raises_the_floor_and_cannot_pass_as_a_bundle() {
        let keys = BundleKeys::generate();
        let public = PublicKey::from_hex(&keys.public_hex()).unwrap();
        let v2 = keys.sign(&bundle(2));
        let tombstone = Tombstone {
            group: "web".into(),
            version: 3,
            removed_at_ms: 5,
        };
        let signed = keys.sign_tombstone(&tombstone);
        assert_eq!(signed.kind, BundleKind::Tombstone);
        let wire = crate::wire::encode(&signed);
        let decoded: SignedBundle = crate::wire::decode(&wire).unwrap();
        assert_eq!(
            open(&decoded, &public, Some((2, &v2.hash))).unwrap(),
            Release::Removed(tombstone.clone())
        );
        // Seen again: accepted (a retained message); anything older after it is a replay.
        assert!(open(&signed, &public, Some((3, &signed.hash))).is_ok());
        let err = open(&v2, &public, Some((3, &signed.hash))).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::Replayed {
                    offered: 2,
                    floor: 3,
                    ..
                }
            ),
            "{err}"
        );
        // Same version, other content: a replay too.
        let other = keys.sign(&bundle(3));
        assert!(matches!(
            open(&other, &public, Some((3, &signed.hash))),
            Err(BundleError::Replayed { .. })
        ));
        // `verify` wants a bundle.
        assert!(matches!(
            verify(&signed, &public, None),
            Err(BundleError::WrongKind { .. })
        ));
    }

    #[test]
    fn a_signature_for_one_kind_never_verifies_as_the_other() {
        let keys = BundleKeys::generate();
        let public = PublicKey::from_hex(&keys.public_hex()).unwrap();
        // A bundle relabelled as a tombstone (and back): the signature was made in the
        // other context.
        let mut relabelled = keys.sign(&bundle(4));
        relabelled.kind = BundleKind::Tombstone;
        assert!(matches!(
            open(&relabelled, &public, None),
            Err(BundleError::BadSignature { .. })
        ));
        let mut relabelled = keys.sign_tombstone(&Tombstone {
            group: "web".into(),
            version: 4,
            removed_at_ms: 1,
        });
        relabelled.kind = BundleKind::Bundle;
        assert!(matches!(
            open(&relabelled, &public, None),
            Err(BundleError::BadSignature { .. })
        ));
        // A plain signature over the content (no context) is no bundle signature either.
        let mut plain = keys.sign(&bundle(4));
        plain.signature = keys.signing.sign(&plain.content).to_bytes().to_vec();
        assert!(matches!(
            open(&plain, &public, None),
            Err(BundleError::BadSignature { .. })
        ));
        let content = b"same bytes";
        let all = [
            SigningContext::Bundle,
            SigningContext::Tombstone,
            SigningContext::Command,
            SigningContext::DeliveryAck,
            SigningContext::SessionWelcome,
        ];
        let pairs = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a != b);
        for (a, b) in pairs {
            let signature = keys.sign_in(a, content);
            assert!(public.verifies(a, content, &signature));
            assert!(!public.verifies(b, content, &signature), "{a:?} as {b:?}");
            let signature = keys.sign_in(b, content);
            assert!(!public.verifies(a, content, &signature), "{b:?} as {a:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_hex_files() {
        let keys = BundleKeys::generate();
        let dir = std::env::temp_dir().join(format!("vigil-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        std::fs::write(&path, keys.private_hex()).unwrap();
        let again = BundleKeys::load(&path).unwrap();
        assert_eq!(again.public_hex(), keys.public_hex());
        assert!(PublicKey::load("nothex").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn selectors_need_every_label() {
        let b = bundle(1);
        assert!(b.selects(&[("role".into(), "web".into()), ("env".into(), "prod".into())]));
        assert!(!b.selects(&[("role".into(), "db".into())]));
        let all = Bundle {
            selector: vec![],
            ..bundle(1)
        };
        assert!(all.selects(&[]));
    }
}
