//! Policy bundles: a versioned, signed set of policy files (and an optional desired-state
//! manifest) for one host group, as the coordinator publishes it (retained) on
//! `vigil/v1/bundles/{group}` and agents verify before use.
//!
//! - [`Bundle`] is the content: group, label selector, version, files.
//! - [`SignedBundle`] is what travels: the content's bytes (postcard), their SHA-256, and
//!   an ed25519 signature over those bytes.
//! - [`BundleKeys`] signs (coordinator); [`verify`] checks signature, hash and version
//!   order (agent), and says exactly why a bundle is refused.
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

/// A bundle as it travels: content bytes, their hash, a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBundle {
    /// The group (repeated outside the signed bytes so a receiver can route it; checked
    /// against the signed content).
    pub group: String,
    /// The postcard encoding of the [`Bundle`].
    pub content: Vec<u8>,
    /// SHA-256 of `content`, hex.
    pub hash: String,
    /// ed25519 signature over `content` (64 bytes).
    pub signature: Vec<u8>,
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
    /// Older than (or a different bundle with the same version as) the one in force: a
    /// replay.
    #[error("bundle for group `{group}`: version {offered} is not newer than the applied version {applied}")]
    Replayed {
        /// The group.
        group: String,
        /// The version offered.
        offered: u64,
        /// The version in force.
        applied: u64,
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

    /// Signs a bundle.
    /// An ed25519 signature over `bytes` (64 bytes): for other signed messages, such as
    /// commands ([`crate::command_auth`]).
    pub(crate) fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.signing.sign(bytes).to_bytes().to_vec()
    }

    pub fn sign(&self, bundle: &Bundle) -> SignedBundle {
        let content = match postcard::to_stdvec(bundle) {
            Ok(bytes) => bytes,
            Err(e) => unreachable!("postcard cannot fail to encode a bundle: {e}"),
        };
        let signature = self.signing.sign(&content).to_bytes().to_vec();
        SignedBundle {
            group: bundle.group.clone(),
            hash: content_hash(&content),
            content,
            signature,
        }
    }
}

/// A public key for verifying bundles.
#[derive(Debug, Clone)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Whether `signature` is this key's ed25519 signature over `bytes`.
    pub(crate) fn verifies(&self, bytes: &[u8], signature: &[u8]) -> bool {
        <[u8; 64]>::try_from(signature)
            .map(|sig| self.0.verify(bytes, &Signature::from_bytes(&sig)).is_ok())
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

/// Verifies a signed bundle against `key` and the version in force for its group
/// (`applied`): signature, hash, content, group, and version order. A bundle with the
/// applied version and the same hash is accepted (a retained message seen again); the
/// caller may skip re-applying it.
pub fn verify(
    signed: &SignedBundle,
    key: &PublicKey,
    applied: Option<(u64, &str)>,
) -> Result<Bundle, BundleError> {
    let group = signed.group.clone();
    let signature = <[u8; 64]>::try_from(signed.signature.as_slice())
        .map(|bytes| Signature::from_bytes(&bytes))
        .map_err(|_| BundleError::BadSignature {
            group: group.clone(),
        })?;
    key.0
        .verify(&signed.content, &signature)
        .map_err(|_| BundleError::BadSignature {
            group: group.clone(),
        })?;
    let actual = content_hash(&signed.content);
    if actual != signed.hash {
        return Err(BundleError::HashMismatch {
            group,
            declared: signed.hash.clone(),
            actual,
        });
    }
    let bundle: Bundle =
        postcard::from_bytes(&signed.content).map_err(|e| BundleError::Malformed {
            group: group.clone(),
            reason: format!("content does not decode: {e}"),
        })?;
    if bundle.group != signed.group {
        return Err(BundleError::Malformed {
            group,
            reason: format!("signed content is for group `{}`", bundle.group),
        });
    }
    if let Some((version, hash)) = applied {
        let same = bundle.version == version && hash == signed.hash;
        if bundle.version < version || (bundle.version == version && !same) {
            return Err(BundleError::Replayed {
                group,
                offered: bundle.version,
                applied: version,
            });
        }
    }
    Ok(bundle)
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
                applied: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("not newer"), "{err}");
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
