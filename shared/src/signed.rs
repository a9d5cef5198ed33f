//! Messages the coordinator signs for one agent: delivery acknowledgements
//! ([`crate::delivery`]), lease answers ([`crate::lease`]) and the handshake's Welcome
//! ([`crate::agent_auth`]).
//!
//! Each travels as one envelope, [`Signed`]: the message's postcard encoding and the
//! coordinator's ed25519 signature over it in the message's own [`SigningContext`] (so a
//! signature made for one kind never passes for another). [`sign`] makes the payload to
//! publish; [`open`] checks the signature (when the agent has the coordinator's key), the
//! message's rules and that it is addressed to this host, and says why it refused
//! ([`Refusal`]).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bundle::{BundleKeys, PublicKey, SigningContext};
use crate::validate::FieldError;
use crate::wire::{WireMessage, OLDEST_READABLE_VERSION};

/// A message the coordinator signs for one agent.
pub trait CoordinatorSigned: WireMessage {
    /// What it is called in refusals ("acknowledgement", "lease answer").
    const WHAT: &'static str;
    /// The signing context: a signature of one kind never verifies as another's.
    const CONTEXT: SigningContext;
    /// [`WireMessage::KIND`] of its envelope.
    const ENVELOPE_KIND: &'static str;
    /// [`WireMessage::MIN_VERSION`] of its envelope.
    const ENVELOPE_MIN_VERSION: u8 = OLDEST_READABLE_VERSION;
}

/// A [`CoordinatorSigned`] message as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// The postcard encoding of the message.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// The coordinator's ed25519 signature over `content` in `T::CONTEXT` (64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    #[serde(skip)]
    kind: PhantomData<fn() -> T>,
}

impl<T: CoordinatorSigned> WireMessage for Signed<T> {
    const KIND: &'static str = T::ENVELOPE_KIND;
    const MIN_VERSION: u8 = T::ENVELOPE_MIN_VERSION;

    fn host(&self) -> &str {
        ""
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.signature.len() != 64 {
            return Err(FieldError::new("signature", "must be 64 bytes"));
        }
        Ok(())
    }
}

/// Why an agent refused a signed message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Not signed by the coordinator's key.
    #[error("{what} not signed by the coordinator's key")]
    BadSignature {
        /// What was refused.
        what: &'static str,
    },
    /// Does not decode or breaks a rule.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was refused.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Addressed to another host.
    #[error("{what} for host `{host}`, not this host")]
    WrongHost {
        /// What was refused.
        what: &'static str,
        /// The host it was addressed to.
        host: String,
    },
}

/// A message that passed [`open_with_content`], with the bytes that were signed.
#[derive(Debug, Clone)]
pub struct Opened<T> {
    /// The message.
    pub message: T,
    /// Its signed encoding (the handshake derives its key from it).
    pub content: Vec<u8>,
}

/// Signs `message` with the coordinator's key; returns the payload to publish and the
/// signed encoding.
pub fn sign_with_content<T: CoordinatorSigned>(
    keys: &BundleKeys,
    message: &T,
) -> (Vec<u8>, Vec<u8>) {
    let content = match postcard::to_stdvec(message) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail to encode a {}: {e}", T::WHAT),
    };
    let payload = crate::wire::encode(&Signed::<T> {
        signature: keys.sign_in(T::CONTEXT, &content),
        content: content.clone(),
        kind: PhantomData,
    });
    (payload, content)
}

/// Signs `message` with the coordinator's key; returns the payload to publish.
pub fn sign<T: CoordinatorSigned>(keys: &BundleKeys, message: &T) -> Vec<u8> {
    sign_with_content(keys, message).0
}

/// Opens a payload for host `me`, checking the signature with `key` (`None`: the agent has
/// no coordinator key and trusts the broker's topic rules alone).
pub fn open<T: CoordinatorSigned>(
    payload: &[u8],
    key: Option<&PublicKey>,
    me: &str,
) -> Result<T, Refusal> {
    open_with_content(payload, key, me).map(|opened| opened.message)
}

/// [`open`], also returning the signed bytes.
pub fn open_with_content<T: CoordinatorSigned>(
    payload: &[u8],
    key: Option<&PublicKey>,
    me: &str,
) -> Result<Opened<T>, Refusal> {
    let malformed = |detail: String| Refusal::Malformed {
        what: T::WHAT,
        detail,
    };
    let signed = crate::wire::decode::<Signed<T>>(payload).map_err(|e| malformed(e.to_string()))?;
    if let Some(key) = key {
        if !key.verifies(T::CONTEXT, &signed.content, &signed.signature) {
            return Err(Refusal::BadSignature { what: T::WHAT });
        }
    }
    let message: T = postcard::from_bytes(&signed.content).map_err(|e| malformed(e.to_string()))?;
    message.validate().map_err(|e| malformed(e.to_string()))?;
    if message.host() != me {
        return Err(Refusal::WrongHost {
            what: T::WHAT,
            host: message.host().to_string(),
        });
    }
    Ok(Opened {
        message,
        content: signed.content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{DeliveryAck, Stream, StreamAck};
    use crate::lease::{LeaseAnswer, LeaseOutcome};

    fn answer() -> LeaseAnswer {
        LeaseAnswer {
            host: "web-01".into(),
            request_id: "r1".into(),
            action_id: "a1".into(),
            key: "p/role=web".into(),
            outcome: LeaseOutcome::Granted,
            ttl_ms: 60_000,
            held: 1,
            max: 2,
            reason: None,
            coordinator_ms: 1_700_000_000_000,
        }
    }

    fn ack() -> DeliveryAck {
        DeliveryAck {
            host: "web-01".into(),
            coordinator_ms: 1_800_000_000_000,
            streams: vec![StreamAck {
                stream: Stream::Metrics,
                epoch: 3,
                upto: 99,
            }],
        }
    }

    #[test]
    fn a_message_opens_only_with_the_coordinators_key_its_kind_and_for_its_host() {
        let keys = BundleKeys::generate();
        let public = PublicKey::from_hex(&keys.public_hex()).unwrap();
        let payload = sign(&keys, &answer());
        assert_eq!(open(&payload, Some(&public), "web-01"), Ok(answer()));
        assert_eq!(
            open::<LeaseAnswer>(&payload, Some(&public), "web-02"),
            Err(Refusal::WrongHost {
                what: "lease answer",
                host: "web-01".into()
            })
        );
        let forged = sign(&BundleKeys::generate(), &answer());
        assert_eq!(
            open::<LeaseAnswer>(&forged, Some(&public), "web-01"),
            Err(Refusal::BadSignature {
                what: "lease answer"
            })
        );
        // The same bytes signed for another purpose do not pass.
        let content = postcard::to_stdvec(&answer()).unwrap();
        let relabelled = crate::wire::encode(&Signed::<LeaseAnswer> {
            signature: keys.sign_in(SigningContext::DeliveryAck, &content),
            content,
            kind: PhantomData,
        });
        assert_eq!(
            open::<LeaseAnswer>(&relabelled, Some(&public), "web-01"),
            Err(Refusal::BadSignature {
                what: "lease answer"
            })
        );
        // Another kind's envelope is not this kind's.
        let ack_payload = sign(&keys, &ack());
        assert_eq!(open(&ack_payload, Some(&public), "web-01"), Ok(ack()));
        assert!(matches!(
            open::<LeaseAnswer>(&ack_payload, Some(&public), "web-01"),
            Err(Refusal::Malformed { .. } | Refusal::BadSignature { .. })
        ));
        assert!(matches!(
            open::<DeliveryAck>(b"\x02junk", Some(&public), "web-01"),
            Err(Refusal::Malformed { .. })
        ));
    }
}
