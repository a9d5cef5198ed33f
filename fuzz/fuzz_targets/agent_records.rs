//! Every record the agent reads back from its own store: the action queue's jobs, the
//! counters, the last finished jobs, outbox entries, and stored bundle files. Decoding
//! never panics, and a record that decodes is written back to bytes that decode to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_agent::job::Job;
use vigil_agent::store::{self, Counters};
use vigil_shared::bundle::SignedBundle;
use vigil_shared::wire::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(job) = serde_json::from_slice::<Job>(data) {
        let bytes = serde_json::to_vec(&job).expect("a job serializes");
        let again: Job = serde_json::from_slice(&bytes).expect("a job reads back");
        assert_eq!(
            serde_json::to_vec(&again).expect("serializes"),
            bytes,
            "stable job"
        );
        let _ = job.is_final();
    }
    if let Ok(counters) = serde_json::from_slice::<Counters>(data) {
        let bytes = serde_json::to_vec(&counters).expect("counters serialize");
        let again: Counters = serde_json::from_slice(&bytes).expect("counters read back");
        assert_eq!(again, counters, "counters round-trip");
    }
    if let Ok(recent) = serde_json::from_slice::<Vec<Job>>(data) {
        let _ = recent.iter().filter(|j| j.is_final()).count();
    }
    if let Some((key, value)) = data.split_at_checked(8) {
        if let Ok(entry) = store::decode_outbox_entry(key, value) {
            let bytes = store::encode_outbox_value(&entry.topic, &entry.payload);
            let again = store::decode_outbox_entry(key, &bytes).expect("an entry reads back");
            assert_eq!(again, entry, "outbox entries round-trip");
        }
    }
    let _ = decode::<SignedBundle>(data);
});
