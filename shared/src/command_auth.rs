//! Signed commands. Whoever can publish on an agent's command topic could make it restart
//! services or stop remediating, so the coordinator signs every [`Command`] with its
//! ed25519 key (the same key that signs policy bundles, in its own signing context,
//! [`SigningContext::Command`], so a bundle signature never passes as a command's) and
//! an agent acts only on one that
//! - verifies with the coordinator's public key it was given (`--bundle-key`),
//! - is addressed to it (the host inside the signed bytes, not only the topic),
//! - has not expired, and was not issued implausibly far in the future, and
//! - is newer than every command it accepted before (`issued_at_ms` above the agent's
//!   persisted watermark): a captured command replayed later, even after the agent
//!   restarted, is refused. The coordinator issues strictly increasing `issued_at_ms`.
//!
//! Each refusal is a [`CommandRefusal`] that says why.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bundle::{BundleKeys, PublicKey, SigningContext};
use crate::validate::{self, FieldError};
use crate::wire::{Command, WireMessage};

/// Clock difference between coordinator and agent tolerated for `issued_at_ms`.
pub const CLOCK_SKEW_MS: i64 = 60_000;
/// Longest lifetime (`expires_at_ms - issued_at_ms`) an agent accepts.
pub const MAX_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// A command as it travels on `vigil/v1/agents/{host}/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The host it is for (outside the signed bytes for routing; checked against them).
    pub host: String,
    /// The postcard encoding of the [`Command`].
    pub content: Vec<u8>,
    /// ed25519 signature over `content` in [`SigningContext::Command`] (64 bytes).
    pub signature: Vec<u8>,
}

impl WireMessage for SignedCommand {
    const KIND: &'static str = "signed_command";

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

/// Why an agent refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandRefusal {
    /// The agent has no coordinator key to check signatures with.
    #[error("no coordinator key configured (--bundle-key): commands cannot be verified")]
    NoKey,
    /// Not a signed command at all (e.g. an unsigned or garbled payload).
    #[error("not a signed command: {0}")]
    Malformed(String),
    /// The signature does not verify with the coordinator's key.
    #[error("command for `{host}`: bad signature (not signed by the coordinator's key)")]
    BadSignature {
        /// The host it claimed to be for.
        host: String,
    },
    /// Signed for another host.
    #[error("command {id} is for host `{addressed}`, not this host `{me}`")]
    WrongHost {
        /// The command id.
        id: String,
        /// The host inside the signed bytes.
        addressed: String,
        /// This agent's host.
        me: String,
    },
    /// Past its expiry.
    #[error("command {id} expired {late_ms} ms ago")]
    Expired {
        /// The command id.
        id: String,
        /// How long ago.
        late_ms: i64,
    },
    /// Issued in the future, or valid for longer than [`MAX_LIFETIME_MS`].
    #[error("command {id}: implausible times (issued {issued_at_ms}, expires {expires_at_ms}, now {now_ms})")]
    BadTimes {
        /// The command id.
        id: String,
        /// When it claims to be issued.
        issued_at_ms: i64,
        /// When it claims to expire.
        expires_at_ms: i64,
        /// The agent's clock.
        now_ms: i64,
    },
    /// Not newer than a command already accepted: a replay.
    #[error(
        "command {id} replayed: issued at {issued_at_ms}, not after the last accepted command ({watermark_ms})"
    )]
    Replayed {
        /// The command id.
        id: String,
        /// When it claims to be issued.
        issued_at_ms: i64,
        /// The newest `issued_at_ms` accepted so far.
        watermark_ms: i64,
    },
}

impl CommandRefusal {
    /// A short label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CommandRefusal::NoKey => "no_key",
            CommandRefusal::Malformed(_) => "malformed",
            CommandRefusal::BadSignature { .. } => "bad_signature",
            CommandRefusal::WrongHost { .. } => "wrong_host",
            CommandRefusal::Expired { .. } => "expired",
            CommandRefusal::BadTimes { .. } => "bad_times",
            CommandRefusal::Replayed { .. } => "replayed",
        }
    }
}

/// Signs `command` with the coordinator's key.
pub fn sign(keys: &BundleKeys, command: &Command) -> SignedCommand {
    let content = match postcard::to_stdvec(command) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail to encode a command: {e}"),
    };
    SignedCommand {
        host: command.host.clone(),
        signature: keys.sign_in(SigningContext::Command, &content),
        content,
    }
}

/// Checks a signed command for host `me` at `now_ms`, given the newest `issued_at_ms`
/// accepted before (`watermark_ms`). On success the caller acts on the command and
/// raises its watermark to the command's `issued_at_ms`.
pub fn verify(
    signed: &SignedCommand,
    key: &PublicKey,
    me: &str,
    now_ms: i64,
    watermark_ms: i64,
) -> Result<Command, CommandRefusal> {
    if !key.verifies(SigningContext::Command, &signed.content, &signed.signature) {
        return Err(CommandRefusal::BadSignature {
            host: signed.host.clone(),
        });
    }
    let command: Command = postcard::from_bytes(&signed.content)
        .map_err(|e| CommandRefusal::Malformed(format!("signed content: {e}")))?;
    command
        .validate()
        .map_err(|e| CommandRefusal::Malformed(e.to_string()))?;
    if command.host != me || signed.host != me {
        return Err(CommandRefusal::WrongHost {
            id: command.id,
            addressed: command.host,
            me: me.to_string(),
        });
    }
    if command.expires_at_ms < now_ms {
        return Err(CommandRefusal::Expired {
            late_ms: now_ms.saturating_sub(command.expires_at_ms),
            id: command.id,
        });
    }
    // Saturating: both times are the signer's to choose, up to i64::MIN and MAX.
    if command.issued_at_ms > now_ms.saturating_add(CLOCK_SKEW_MS)
        || command.expires_at_ms.saturating_sub(command.issued_at_ms) > MAX_LIFETIME_MS
    {
        return Err(CommandRefusal::BadTimes {
            id: command.id,
            issued_at_ms: command.issued_at_ms,
            expires_at_ms: command.expires_at_ms,
            now_ms,
        });
    }
    if command.issued_at_ms <= watermark_ms {
        return Err(CommandRefusal::Replayed {
            id: command.id,
            issued_at_ms: command.issued_at_ms,
            watermark_ms,
        });
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, CommandKind};

    const NOW: i64 = 1_800_000_000_000;

    fn command(host: &str, issued: i64) -> Command {
        Command {
            id: format!("cmd-{issued}"),
            host: host.into(),
            issued_at_ms: issued,
            expires_at_ms: issued + 300_000,
            kind: CommandKind::PauseRemediation(true),
        }
    }

    fn public(keys: &BundleKeys) -> PublicKey {
        PublicKey::from_hex(&keys.public_hex()).unwrap()
    }

    #[test]
    fn a_fresh_command_for_this_host_is_accepted_and_travels_intact() {
        let keys = BundleKeys::generate();
        let signed = sign(&keys, &command("web-1", NOW));
        let bytes = wire::encode(&signed);
        let decoded: SignedCommand = wire::decode(&bytes).unwrap();
        let got = verify(&decoded, &public(&keys), "web-1", NOW + 10, NOW - 1).unwrap();
        assert_eq!(got, command("web-1", NOW));
    }

    #[test]
    fn times_at_the_ends_of_i64_are_refused_not_a_panic() {
        let keys = BundleKeys::generate();
        let key = public(&keys);
        let mut long_expired = command("web-1", i64::MIN);
        long_expired.expires_at_ms = i64::MIN;
        let signed = sign(&keys, &long_expired);
        assert_eq!(
            verify(&signed, &key, "web-1", NOW, 0).unwrap_err().reason(),
            "expired"
        );
        let mut forever = command("web-1", i64::MIN);
        forever.expires_at_ms = NOW;
        let signed = sign(&keys, &forever);
        assert_eq!(
            verify(&signed, &key, "web-1", NOW, 0).unwrap_err().reason(),
            "bad_times"
        );
    }

    #[test]
    fn every_refusal_says_why() {
        let keys = BundleKeys::generate();
        let key = public(&keys);
        let reason = |signed: &SignedCommand, now: i64, watermark: i64| {
            verify(signed, &key, "web-1", now, watermark)
                .unwrap_err()
                .reason()
        };
        // Another key.
        let other = sign(&BundleKeys::generate(), &command("web-1", NOW));
        assert_eq!(reason(&other, NOW, 0), "bad_signature");
        // Altered after signing.
        let mut altered = sign(&keys, &command("web-1", NOW));
        let last = altered.content.len() - 1;
        altered.content[last] ^= 1;
        assert_eq!(reason(&altered, NOW, 0), "bad_signature");
        // For another host, even when re-addressed outside the signature.
        let mut elsewhere = sign(&keys, &command("db-1", NOW));
        elsewhere.host = "web-1".into();
        assert_eq!(reason(&elsewhere, NOW, 0), "wrong_host");
        // Expired.
        let fresh = sign(&keys, &command("web-1", NOW));
        assert_eq!(reason(&fresh, NOW + 300_001, 0), "expired");
        // Replayed: not newer than the last accepted.
        assert_eq!(reason(&fresh, NOW, NOW), "replayed");
        // From the future, or valid for too long.
        assert_eq!(reason(&fresh, NOW - CLOCK_SKEW_MS - 1, 0), "bad_times");
        let mut forever = command("web-1", NOW);
        forever.expires_at_ms = NOW + MAX_LIFETIME_MS + 1;
        assert_eq!(reason(&sign(&keys, &forever), NOW, 0), "bad_times");
        let text = verify(&fresh, &key, "web-1", NOW, NOW)
            .unwrap_err()
            .to_string();
        assert!(text.contains("replayed") && text.contains("cmd-"), "{text}");
    }

    #[test]
    fn command_and_bundle_signatures_do_not_stand_in_for_each_other() {
        use crate::bundle::{self, Bundle, BundleError, BundleKind, SignedBundle};
        let keys = BundleKeys::generate();
        let key = public(&keys);
        let command = command("web-1", NOW);
        let signed = sign(&keys, &command);
        assert!(verify(&signed, &key, "web-1", NOW, 0).is_ok());

        // The command's signed bytes and signature, offered as a bundle (or a tombstone).
        for kind in [BundleKind::Bundle, BundleKind::Tombstone] {
            let as_bundle = SignedBundle {
                group: "web-1".into(),
                kind,
                hash: bundle::content_hash(&signed.content),
                content: signed.content.clone(),
                signature: signed.signature.clone(),
            };
            assert!(matches!(
                bundle::open(&as_bundle, &key, None),
                Err(BundleError::BadSignature { .. })
            ));
        }

        // A bundle whose content bytes are exactly a command's: its bundle signature
        // does not make a command.
        let signed_bundle = keys.sign(&Bundle {
            group: "web-1".into(),
            selector: vec![],
            version: 1,
            created_at_ms: NOW,
            files: vec![],
            budget: None,
        });
        let as_command = SignedCommand {
            host: "web-1".into(),
            content: signed.content.clone(),
            signature: keys.sign_in(SigningContext::Bundle, &signed.content),
        };
        assert_eq!(
            verify(&as_command, &key, "web-1", NOW, 0)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
        let as_command = SignedCommand {
            host: "web-1".into(),
            content: signed_bundle.content.clone(),
            signature: signed_bundle.signature.clone(),
        };
        assert_eq!(
            verify(&as_command, &key, "web-1", NOW, 0)
                .unwrap_err()
                .reason(),
            "bad_signature"
        );
    }
}
