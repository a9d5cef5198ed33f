//! Signed commands as an agent receives them: decode and `command_auth::verify`.
//!
//! The first byte picks the mode:
//! - even: the rest is a payload off the wire, verified with the coordinator key at a
//!   fixed clock and watermark (the seeds are validly signed, so mutations reach past the
//!   signature check);
//! - odd: the rest is a postcard `(Command, now, watermark)`: the command, with whatever
//!   times and fields the fuzzer chose, is signed with the coordinator key, sent through
//!   the wire encoding and verified. A valid signature always verifies, and an accepted
//!   command is for this host, unexpired, newer than the watermark and not from the
//!   future.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_fuzz::{mode, COORDINATOR, HOST, NOW_MS};
use vigil_shared::command_auth::{self, SignedCommand, CLOCK_SKEW_MS, MAX_LIFETIME_MS};
use vigil_shared::wire::{decode, encode, Command};

/// The agent's clock stays within ±2^50 ms (±35,000 years) of the epoch: only the
/// command's own fields are the sender's to choose.
const CLOCK_LIMIT: i64 = 1 << 50;

fn from_wire(payload: &[u8]) {
    let Ok(signed) = decode::<SignedCommand>(payload) else {
        return;
    };
    if let Ok(command) = command_auth::verify(
        &signed,
        &COORDINATOR.public,
        HOST,
        NOW_MS,
        NOW_MS - 3_600_000,
    ) {
        check_accepted(&command, NOW_MS, NOW_MS - 3_600_000);
    }
}

fn signed(bytes: &[u8]) {
    let Ok((command, now_ms, watermark_ms)) = postcard::from_bytes::<(Command, i64, i64)>(bytes)
    else {
        return;
    };
    let now_ms = now_ms.clamp(-CLOCK_LIMIT, CLOCK_LIMIT);
    let signed = command_auth::sign(&COORDINATOR.keys, &command);
    let Ok(signed) = decode::<SignedCommand>(&encode(&signed)) else {
        return;
    };
    match command_auth::verify(&signed, &COORDINATOR.public, HOST, now_ms, watermark_ms) {
        Ok(accepted) => {
            assert_eq!(accepted, command, "the command accepted is the one signed");
            check_accepted(&accepted, now_ms, watermark_ms);
        }
        Err(e) => assert_ne!(
            e.reason(),
            "bad_signature",
            "a valid signature verifies: {e}"
        ),
    }
}

fn check_accepted(command: &Command, now_ms: i64, watermark_ms: i64) {
    assert_eq!(command.host, HOST, "accepted only for this host");
    assert!(command.expires_at_ms >= now_ms, "accepted only unexpired");
    assert!(
        command.issued_at_ms > watermark_ms,
        "accepted only newer than the last"
    );
    assert!(
        i128::from(command.issued_at_ms) <= i128::from(now_ms) + i128::from(CLOCK_SKEW_MS),
        "accepted only if not from the future"
    );
    assert!(
        i128::from(command.expires_at_ms) - i128::from(command.issued_at_ms)
            <= i128::from(MAX_LIFETIME_MS),
        "accepted only if not valid for too long"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = mode(data) else {
        return;
    };
    if selector & 1 == 0 {
        from_wire(rest);
    } else {
        signed(rest);
    }
});
