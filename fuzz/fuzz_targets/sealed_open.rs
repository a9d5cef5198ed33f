//! Sealed agent messages as the coordinator receives them: decode, `open` (signature,
//! domain, host and channel) and the replay guard.
//!
//! The first byte picks the mode:
//! - even: the rest is a payload off the wire, opened with the enrolled agent key (the
//!   seeds are validly sealed, so mutations reach past the signature check);
//! - odd: the rest is a postcard list of steps, each a seal with a channel, a retained
//!   flag and the coordinator's clock. With bit 1 set, the first seal is signed with the
//!   agent key and must open as itself (one signature per input keeps the rate up); every
//!   seal then goes through one `ReplayGuard`, which must refuse a message it has just
//!   accepted when it is offered again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use vigil_fuzz::{mode, AGENT};
use vigil_shared::agent_auth::{open, Authenticator, ReplayGuard, Seal, SealedMessage};
use vigil_shared::topics::AgentChannel;
use vigil_shared::wire::{decode, encode};

const CHANNELS: [AgentChannel; 4] = [
    AgentChannel::Metrics,
    AgentChannel::Status,
    AgentChannel::Actions,
    AgentChannel::Events,
];

#[derive(Deserialize)]
struct Step {
    seal: Seal,
    channel: u8,
    retained: bool,
}

fn channel(n: u8) -> AgentChannel {
    CHANNELS[usize::from(n) % CHANNELS.len()]
}

fn from_wire(selector: u8, payload: &[u8]) {
    let Ok(sealed) = decode::<SealedMessage>(payload) else {
        return;
    };
    let channel = channel(selector >> 1);
    if let Ok(seal) = open(&sealed, &AGENT.public, &sealed.host, channel) {
        assert_eq!(
            seal.host, sealed.host,
            "an opened seal is for its envelope's host"
        );
        assert_eq!(
            seal.channel,
            channel.as_str(),
            "and for its topic's channel"
        );
        let mut guard = ReplayGuard::default();
        if guard
            .admit(&seal, channel, false)
            .is_ok()
        {
            assert!(
                guard
                    .admit(&seal, channel, false)
                    .is_err(),
                "the same message twice is refused"
            );
        }
    }
}

fn steps(selector: u8, mut bytes: &[u8]) {
    let mut guard = ReplayGuard::default();
    let mut first = true;
    while let Ok((step, rest)) = postcard::take_from_bytes::<Step>(bytes) {
        bytes = rest;
        let channel = channel(step.channel);
        if first && selector & 2 != 0 {
            sign_and_open(&step.seal, channel);
        }
        first = false;
        if guard
            .admit(&step.seal, channel, step.retained)
            .is_ok()
        {
            let again = guard.admit(&step.seal, channel, false);
            assert!(
                again.is_err(),
                "a message accepted once is refused the second time: {:?}",
                step.seal
            );
        }
        if step.channel == 0xff {
            guard.forget(&step.seal.host);
        }
    }
}

/// Seals `seal` as the agent would and opens it as the coordinator does.
fn sign_and_open(seal: &Seal, channel: AgentChannel) {
    let signed = postcard::to_stdvec(seal).expect("a seal encodes");
    let sealed = SealedMessage {
        host: seal.host.clone(),
        auth: Authenticator::Signature(AGENT.sign(&signed)),
        signed,
    };
    let Ok(sealed) = decode::<SealedMessage>(&encode(&sealed)) else {
        // Only a host name the wire refuses gets here.
        return;
    };
    match open(&sealed, &AGENT.public, &seal.host, channel) {
        Ok(opened) => assert_eq!(&opened, seal, "an opened seal is the one signed"),
        Err(e) => assert_ne!(e.reason(), "bad_signature", "a valid signature verifies"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = mode(data) else {
        return;
    };
    if selector & 1 == 0 {
        from_wire(selector, rest);
    } else {
        steps(selector, rest);
    }
});
