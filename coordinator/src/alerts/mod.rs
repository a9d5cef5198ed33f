//! Alertmanager as a source of actions: the webhook payload Alertmanager sends
//! ([`webhook`], version 4, checked field by field) and the routing file that maps an
//! alert to a Vigil action ([`routing`], `--alert-routes`). The REST handler that joins
//! them to the manual-action pipeline is `http::handlers::alertmanager`; this module knows
//! nothing of HTTP or the store.
//!
//! An alert is identified by Alertmanager's fingerprint and its `startsAt`: [`alert_ids`]
//! derives from them the id of the action it causes and of its audit events, so a repeat
//! of the same firing alert (Alertmanager re-sends on every group interval, and after a
//! restart) finds what the first one stored.

pub mod routing;
pub mod webhook;

use sha2::{Digest, Sha256};

/// The ids an alert's records get, derived from its fingerprint and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertIds {
    /// The action a firing alert causes (a ULID whose time is the alert's start).
    pub action: String,
    /// The audit event recording that the alert fired and was routed.
    pub fired: String,
    /// The audit event recording that the alert resolved.
    pub resolved: String,
}

/// The ids of the alert with `fingerprint` that started at `starts_at_ms`: ULIDs with the
/// start as their time and a digest of both as their randomness, so the same alert always
/// gets the same ids and another alert (or another firing of it) different ones.
pub fn alert_ids(fingerprint: &str, starts_at_ms: i64) -> AlertIds {
    let id = |what: &str| {
        let digest = Sha256::new()
            .chain_update(what.as_bytes())
            .chain_update([0])
            .chain_update(fingerprint.as_bytes())
            .chain_update([0])
            .chain_update(starts_at_ms.to_be_bytes())
            .finalize();
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&digest[..10]);
        let time = u64::try_from(starts_at_ms).unwrap_or(0);
        ulid::Ulid::from_parts(time, u128::from_be_bytes(random)).to_string()
    };
    AlertIds {
        action: id("action"),
        fired: id("fired"),
        resolved: id("resolved"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_alert_and_distinct_between_alerts() {
        let a = alert_ids("4a1d2c3b4a1d2c3b", 1_700_000_000_000);
        assert_eq!(a, alert_ids("4a1d2c3b4a1d2c3b", 1_700_000_000_000));
        assert_ne!(
            a.action,
            alert_ids("4a1d2c3b4a1d2c3c", 1_700_000_000_000).action
        );
        assert_ne!(
            a.action,
            alert_ids("4a1d2c3b4a1d2c3b", 1_700_000_000_001).action
        );
        assert_ne!(a.action, a.fired);
        assert_ne!(a.fired, a.resolved);
        let ulid: ulid::Ulid = a.action.parse().expect("a ULID");
        assert_eq!(ulid.timestamp_ms(), 1_700_000_000_000);
    }
}
