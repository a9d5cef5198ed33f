//! The fleet's events as integrations see them. The store keeps the event feed (policy
//! decisions, action transitions, hosts, bundles, drift: [`crate::store::feed`]); this
//! folder gives it one JSON form ([`json`]), used alike by the REST API, the
//! Server-Sent Events stream and the MQTT JSON topics ([`mirror`]; on the embedded broker
//! the `metrics` stream is made only while someone listens: [`audience`]).

pub mod audience;
pub mod json;
pub mod mirror;
