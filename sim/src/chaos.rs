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

/// The kinds of malformed payload injected; the coordinator must refuse each, with the
/// reason in parentheses (`vigil_mqtt_messages_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Zero bytes (`empty`).
    Empty,
    /// A protocol version byte no one speaks (`unknown_version`).
    UnknownVersion,
    /// A well-formed batch cut in half (`malformed`).
    Truncated,
    /// The right version byte, then bytes that are no batch (`malformed`).
    Garbage,
    /// A batch that decodes but breaks a content rule: a sample with an empty name
    /// (`invalid`).
    Invalid,
    /// A well-formed batch naming another host than the topic's (`host_mismatch`).
    HostMismatch,
}

impl Malformed {
    /// Every kind, in a fixed order.
    pub const ALL: [Malformed; 6] = [
        Malformed::Empty,
        Malformed::UnknownVersion,
        Malformed::Truncated,
        Malformed::Garbage,
        Malformed::Invalid,
        Malformed::HostMismatch,
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
        }
    }

    /// One kind, chosen uniformly.
    pub fn pick(rng: &mut impl Rng) -> Malformed {
        Malformed::ALL[rng.random_range(0..Malformed::ALL.len())]
    }

    /// Turns a well-formed encoded batch (`good`) into this kind of bad payload.
    /// `invalid` and `other_host` are the encodings of an invalid batch and of a batch
    /// from another host, made by the caller (which owns the types).
    pub fn payload(self, good: &[u8], invalid: &[u8], other_host: &[u8]) -> Vec<u8> {
        match self {
            Malformed::Empty => Vec::new(),
            Malformed::UnknownVersion => {
                let mut bytes = good.to_vec();
                if let Some(first) = bytes.first_mut() {
                    *first = 0xEE;
                }
                bytes
            }
            Malformed::Truncated => good[..good.len() / 2].to_vec(),
            // A varint that never ends: no postcard message starts like this.
            Malformed::Garbage => {
                let mut bytes = vec![vigil_shared::wire::PROTOCOL_VERSION];
                bytes.extend([0xFF; 16]);
                bytes
            }
            Malformed::Invalid => invalid.to_vec(),
            Malformed::HostMismatch => other_host.to_vec(),
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
        let good = [1u8, 2, 3, 4, 5, 6];
        for kind in Malformed::ALL {
            let bad = kind.payload(&good, &[9], &[8]);
            assert_ne!(bad, good, "{kind:?}");
        }
        assert_eq!(Malformed::Truncated.payload(&good, &[], &[]), vec![1, 2, 3]);
        assert_eq!(Malformed::UnknownVersion.payload(&good, &[], &[])[0], 0xEE);
    }
}
