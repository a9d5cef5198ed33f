//! Every record the coordinator reads back from LMDB, decoded from the same bytes, and
//! rendered the way the REST API, the event stream and the JSON mirror serve it: a
//! corrupt or hostile record is an error or is served, never a panic. A record that
//! decodes re-encodes to bytes that decode to it again (postcard records compare by
//! bytes, since a stored NaN is not equal to itself). The key decoders get the bytes too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vigil_coordinator::fuzzing::BundleRecord;
use vigil_coordinator::fuzzing::{actions, hosts};
use vigil_coordinator::store::actions::ActionRecord;
use vigil_coordinator::store::agents::{AgentRecord, JoinTokenRecord};
use vigil_coordinator::store::feed::FeedEntry;
use vigil_coordinator::store::records::{HostRecord, LatestPoint, StoredPoint};
use vigil_coordinator::store::tokens::TokenRecord;
use vigil_coordinator::store::{codec, keys};
use vigil_fuzz::NOW_MS;
use vigil_shared::bundle;
use vigil_shared::policy::PolicySpec;
use vigil_shared::wire::PolicyEvent;

/// Decodes a postcard record; if it decodes, checks that its encoding is stable.
fn record<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value = codec::decode::<T>("fuzz", data).ok()?;
    let bytes = codec::encode(&value);
    let again = codec::decode::<T>("fuzz", &bytes).expect("a decoded record re-encodes");
    assert_eq!(codec::encode(&again), bytes, "a record encodes stably");
    Some(value)
}

/// Decodes a JSON record (tokens, agents, join tokens); if it decodes, it round-trips.
fn json_record<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    data: &[u8],
) -> Option<T> {
    let value = serde_json::from_slice::<T>(data).ok()?;
    let bytes = serde_json::to_vec(&value).expect("a record serializes");
    let again: T = serde_json::from_slice(&bytes).expect("a decoded record re-encodes");
    assert_eq!(again, value, "a JSON record round-trips");
    Some(value)
}

fn serve(value: &serde_json::Value) {
    serde_json::to_vec(value).expect("a rendered record serializes");
}

fuzz_target!(|data: &[u8]| {
    if let Some(host) = record::<HostRecord>(data) {
        serve(&hosts::host_json(&host, NOW_MS));
        let _ = host.is_online(NOW_MS);
    }
    if let Some(point) = record::<LatestPoint>(data) {
        serve(&vigil_coordinator::fuzzing::tags_json(&point.tags));
    }
    if let Some(point) = record::<StoredPoint>(data) {
        serve(&vigil_coordinator::fuzzing::tags_json(&point.tags));
    }
    if let Some(event) = record::<PolicyEvent>(data) {
        serve(&vigil_coordinator::fuzzing::event_json(&event));
    }
    if let Some(entry) = record::<FeedEntry>(data) {
        serve(&vigil_coordinator::fuzzing::entry_json(&entry));
    }
    if let Some(action) = record::<ActionRecord>(data) {
        serde_json::to_vec(&actions::action_json(&action)).expect("an action serializes");
    }
    if let Some(group) = record::<BundleRecord>(data) {
        let _ = bundle::content_hash(&postcard::to_stdvec(&group.bundle()).expect("encodes"));
    }
    let _ = json_record::<TokenRecord>(data);
    let _ = json_record::<AgentRecord>(data);
    let _ = json_record::<JoinTokenRecord>(data);
    if let Ok(spec) = serde_json::from_slice::<PolicySpec>(data) {
        let _ = spec.check();
    }
    let _ = keys::split_series(data);
    let _ = keys::history_time(data);
});
