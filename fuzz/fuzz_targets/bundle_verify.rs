//! Signed policy bundles as an agent receives them: decode and `bundle::verify`.
//!
//! The first byte picks the mode:
//! - even: the rest is a payload off the wire (or an agent's bundle file), verified with
//!   the coordinator key, with no bundle in force (bit 1 clear) or version 2 in force
//!   (bit 1 set); the seeds are validly signed, so mutations reach past the signature;
//! - odd: the rest is a postcard `(Bundle, Option<(version, hash)>)`: the bundle, with
//!   whatever content the fuzzer chose, is signed with the coordinator key, sent through
//!   the wire encoding and verified against that version in force. A valid signature
//!   and hash always pass those checks, and an accepted bundle is the one signed and not
//!   older than the one in force (the same version only with the same hash).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_fuzz::{mode, COORDINATOR};
use vigil_shared::bundle::{self, Bundle, SignedBundle};
use vigil_shared::wire::{decode, encode};

const APPLIED_HASH: &str = "00";

fn from_wire(selector: u8, payload: &[u8]) {
    let Ok(signed) = decode::<SignedBundle>(payload) else {
        return;
    };
    let applied = (selector & 2 != 0).then_some((2, APPLIED_HASH));
    if let Ok(bundle) = bundle::verify(&signed, &COORDINATOR.public, applied) {
        assert_eq!(
            bundle.group, signed.group,
            "accepted only for its envelope's group"
        );
        check_order(&bundle, &signed, applied);
    }
}

fn signed(bytes: &[u8]) {
    let Ok((bundle, applied)) = postcard::from_bytes::<(Bundle, Option<(u64, String)>)>(bytes)
    else {
        return;
    };
    let signed = COORDINATOR.keys.sign(&bundle);
    let Ok(signed) = decode::<SignedBundle>(&encode(&signed)) else {
        // Only a group name the wire refuses gets here.
        return;
    };
    let applied = applied.as_ref().map(|(v, h)| (*v, h.as_str()));
    match bundle::verify(&signed, &COORDINATOR.public, applied) {
        Ok(accepted) => {
            assert_eq!(accepted, bundle, "the bundle accepted is the one signed");
            check_order(&accepted, &signed, applied);
        }
        Err(e) => assert!(
            matches!(e, bundle::BundleError::Replayed { .. }),
            "a validly signed bundle is refused only as a replay: {e}"
        ),
    }
}

fn check_order(bundle: &Bundle, signed: &SignedBundle, applied: Option<(u64, &str)>) {
    if let Some((version, hash)) = applied {
        assert!(
            bundle.version > version || (bundle.version == version && signed.hash == hash),
            "an older bundle, or another one with the same version, is refused"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = mode(data) else {
        return;
    };
    if selector & 1 == 0 {
        from_wire(selector, rest);
    } else {
        signed(rest);
    }
});
