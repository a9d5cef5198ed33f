//! Failure injection: which faults a virtual agent injects, and how often.
//!
//! Each rate is a probability per opportunity: per batch for malformed payloads and
//! out-of-order timestamps, per action transition for duplicates, per tick for abrupt
//! disconnects. [`Mode::Chaos`](crate::mode::Mode::Chaos) turns on [`Chaos::DEFAULT`].

use rand::Rng;

/// Fault rates, each a probability in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chaos {
    /// A batch is replaced by a malformed payload (one of [`Malformed`]).
    pub malformed_rate: f64,
    /// An action transition is published twice (a redelivery).
    pub duplicate_rate: f64,
    /// A batch carries timestamps from up to an hour ago, and an older sequence number.
    pub out_of_order_rate: f64,
    /// The connection is dropped without an MQTT DISCONNECT (the broker sends the
    /// agent's last will) and re-established.
    pub disconnect_rate: f64,
}

impl Chaos {
    /// No faults.
    pub const NONE: Chaos = Chaos {
        malformed_rate: 0.0,
        duplicate_rate: 0.0,
        out_of_order_rate: 0.0,
        disconnect_rate: 0.0,
    };

    /// What CHAOS mode injects unless told otherwise.
    pub const DEFAULT: Chaos = Chaos {
        malformed_rate: 0.05,
        duplicate_rate: 0.2,
        out_of_order_rate: 0.1,
        disconnect_rate: 0.01,
    };

    /// Checks every rate is a probability.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("malformed-rate", self.malformed_rate),
            ("duplicate-rate", self.duplicate_rate),
            ("out-of-order-rate", self.out_of_order_rate),
            ("disconnect-rate", self.disconnect_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("--{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

/// The kinds of malformed payload injected on the metrics topic; the coordinator must
/// refuse each, counted under the reason [`Malformed::reason`] names
/// (`vigil_mqtt_messages_rejected_total{reason}`). The first four never get past the
/// seal layer (the payload is not a sealed message); `Invalid` and `HostMismatch` are
/// sealed properly and refused for what they carry; `Forged` is sealed with a key the
/// coordinator never enrolled; `Unqueued` is a good batch sealed without its place in the
/// agent's metrics queue. All are sealed without a delivery header (they are not queued:
/// the content rules are checked before the header, so each is refused for its own
/// reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Zero bytes (`empty`).
    Empty,
    /// A sealed batch whose protocol version byte no one speaks (`unknown_version`).
    UnknownVersion,
    /// A sealed batch cut in half (`malformed`).
    Truncated,
    /// The right version byte, then bytes that are no sealed message (`malformed`).
    Garbage,
    /// A properly sealed batch that breaks a content rule: a sample with an empty name
    /// (`invalid`).
    Invalid,
    /// A properly sealed batch naming another host than the topic's (`host_mismatch`).
    HostMismatch,
    /// A batch sealed for this host with a key that is not the one it enrolled
    /// (`bad_signature`).
    Forged,
    /// A well-formed batch, properly sealed but without its place in the agent's metrics
    /// queue (`no_delivery`).
    Unqueued,
}

/// What a [`Malformed`] kind is made from (the caller seals; see [`Malformed::payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingredient {
    /// A well-formed batch, sealed with the agent's key (without a delivery header).
    Sealed,
    /// A batch breaking a content rule, sealed with the agent's key.
    SealedInvalid,
    /// A batch naming another host, sealed with the agent's key.
    SealedOtherHost,
    /// A well-formed batch sealed with a key that was never enrolled.
    Forged,
}

impl Malformed {
    /// Every kind, in a fixed order.
    pub const ALL: [Malformed; 8] = [
        Malformed::Empty,
        Malformed::UnknownVersion,
        Malformed::Truncated,
        Malformed::Garbage,
        Malformed::Invalid,
        Malformed::HostMismatch,
        Malformed::Forged,
        Malformed::Unqueued,
    ];

    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Empty => "empty",
            Malformed::UnknownVersion => "unknown_version",
            Malformed::Truncated => "truncated",
            Malformed::Garbage => "garbage",
            Malformed::Invalid => "invalid",
            Malformed::HostMismatch => "host_mismatch",
            Malformed::Forged => "forged",
            Malformed::Unqueued => "unqueued",
        }
    }

    /// The reason the coordinator counts it under in
    /// `vigil_mqtt_messages_rejected_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::Empty => "empty",
            Malformed::UnknownVersion => "unknown_version",
            Malformed::Truncated | Malformed::Garbage => "malformed",
            Malformed::Invalid => "invalid",
            Malformed::HostMismatch => "host_mismatch",
            Malformed::Forged => "bad_signature",
            Malformed::Unqueued => "no_delivery",
        }
    }

    /// One kind, chosen uniformly.
    pub fn pick(rng: &mut impl Rng) -> Malformed {
        Malformed::ALL[rng.random_range(0..Malformed::ALL.len())]
    }

    /// This kind of bad payload. `make` seals what the kind is made from (asked at most
    /// once; a seal is fresh each time, so nothing is refused as a mere duplicate).
    pub fn payload(self, make: impl FnOnce(Ingredient) -> Vec<u8>) -> Vec<u8> {
        match self {
            Malformed::Empty => Vec::new(),
            Malformed::UnknownVersion => {
                let mut bytes = make(Ingredient::Sealed);
                if let Some(first) = bytes.first_mut() {
                    *first = 0xEE;
                }
                bytes
            }
            Malformed::Truncated => {
                let bytes = make(Ingredient::Sealed);
                bytes[..bytes.len() / 2].to_vec()
            }
            // A varint that never ends: no sealed message starts like this.
            Malformed::Garbage => {
                let mut bytes = vec![vigil_shared::wire::PROTOCOL_VERSION];
                bytes.extend([0xFF; 16]);
                bytes
            }
            Malformed::Invalid => make(Ingredient::SealedInvalid),
            Malformed::HostMismatch => make(Ingredient::SealedOtherHost),
            Malformed::Forged => make(Ingredient::Forged),
            Malformed::Unqueued => make(Ingredient::Sealed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_probabilities_and_bad_rates_are_named() {
        assert!(Chaos::DEFAULT.validate().is_ok());
        assert!(Chaos::NONE.validate().is_ok());
        let bad = Chaos {
            duplicate_rate: 1.5,
            ..Chaos::NONE
        };
        let err = bad.validate().unwrap_err();
        assert!(
            err.contains("--duplicate-rate") && err.contains("1.5"),
            "{err}"
        );
    }

    #[test]
    fn every_kind_changes_the_payload() {
        let good = vec![1u8, 2, 3, 4, 5, 6];
        let make = |what: Ingredient| match what {
            Ingredient::Sealed => good.clone(),
            Ingredient::SealedInvalid => vec![9],
            Ingredient::SealedOtherHost => vec![8],
            Ingredient::Forged => vec![7],
        };
        for kind in Malformed::ALL {
            let bad = kind.payload(make);
            if kind == Malformed::Unqueued {
                // Whole and well-sealed: only the missing delivery header is wrong.
                assert_eq!(bad, good);
                continue;
            }
            assert_ne!(bad, good, "{kind:?}");
            assert!(!kind.reason().is_empty());
        }
        assert_eq!(Malformed::Truncated.payload(make), vec![1, 2, 3]);
        assert_eq!(Malformed::UnknownVersion.payload(make)[0], 0xEE);
        assert_eq!(Malformed::Forged.payload(make), vec![7]);
        assert_eq!(Malformed::Garbage.reason(), Malformed::Truncated.reason());
    }
}
