//! The embedded broker's front: whatever bytes a client sends, decoding them as MQTT
//! 3.1.1 packets (rumqttd's codec) and checking each against what an agent and an
//! integration may send never panics; an agent's publishes stay on its own topics and an
//! integration's never pass.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [agent, integration] = vigil_coordinator::fuzzing::mqtt_front(data);
    assert_eq!(agent.foreign, 0, "an agent publishes only on its own topics");
    assert_eq!(integration.publishes, 0, "an integration publishes nothing");
});
