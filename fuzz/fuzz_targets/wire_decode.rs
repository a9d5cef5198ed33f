//! Every message kind the wire carries, decoded from the same bytes: `decode` never
//! panics, and a message it accepts encodes back to bytes that decode to the same
//! message. The MQTT topic parser gets the bytes too, as a topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_shared::agent_auth::SealedMessage;
use vigil_shared::bundle::SignedBundle;
use vigil_shared::command_auth::SignedCommand;
use vigil_shared::topics;
use vigil_shared::wire::{
    decode, encode, ActionEvent, AgentStatus, Command, MetricBatch, PolicyEvent, StatusReport,
    WireMessage,
};

/// Decodes `data` as a `T`; if that works, the re-encoding decodes to an equal message
/// and encodes to the same bytes (messages with floats compare by bytes: NaN is not
/// equal to itself, though `MetricBatch` refuses it anyway).
fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(message) = decode::<T>(data) else {
        return;
    };
    let bytes = encode(&message);
    let again = decode::<T>(&bytes).expect("a decoded message re-encodes to a valid one");
    assert_eq!(encode(&again), bytes, "{} encodes stably", T::KIND);
    assert_eq!(again, message, "{} round-trips", T::KIND);
    let _ = message.host();
}

fuzz_target!(|data: &[u8]| {
    round_trip::<MetricBatch>(data);
    round_trip::<AgentStatus>(data);
    round_trip::<StatusReport>(data);
    round_trip::<ActionEvent>(data);
    round_trip::<PolicyEvent>(data);
    round_trip::<Command>(data);
    round_trip::<SealedMessage>(data);
    round_trip::<SignedCommand>(data);
    round_trip::<SignedBundle>(data);
    if let Ok(topic) = std::str::from_utf8(data) {
        if let Some((host, channel)) = topics::parse_agent(topic) {
            assert_eq!(topics::agent(host, channel), topic, "topics round-trip");
        }
    }
});
