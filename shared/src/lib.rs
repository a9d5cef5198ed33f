//! `vigil-shared`: everything Vigil's agents and coordinator both speak.
//!
//! - [`agent_auth`]: agent messages sealed with the agent's own key, and the coordinator's
//!   replay guard.
//! - [`wire`]: the versioned messages that travel over MQTT (postcard-encoded), and
//!   [`wire::decode`], which turns any byte string into a typed message or a typed error.
//! - [`topics`]: the v1 MQTT topic plan, as builders and a parser.
//! - [`validate`]: the rules a metric sample or host name must obey, shared by MQTT and HTTP
//!   ingest so both reject the same things with the same words.
//! - [`bundle`]: signed, versioned policy bundles for host groups.
//! - [`bundle_manifest`]: a bundle's desired-state manifest, as policies.
//! - [`command_auth`]: commands to agents, signed by the coordinator and checked by agents.
//! - [`delivery`]: end-to-end acknowledgement: sequence windows and the coordinator's
//!   signed acknowledgements of what it stored.
//! - [`lease`]: disruption-budget lease requests and the coordinator's signed answers.
//! - [`signed`]: the one envelope of what the coordinator signs for one agent
//!   (acknowledgements, lease answers, the handshake's Welcome).
//! - [`broker_url`]: `mqtt://host:port` as users write it.
//! - [`enrollment`]: the enrollment request and answer, and the identity file an enrolled
//!   agent keeps.
//! - [`config_file`]: TOML config files with errors naming file, line and key.
//! - [`mqtt`]: MQTT client options shared by agents and the coordinator.
//! - [`policy`]: the policy model, its YAML/JSON form, the evaluator and engine.
//! - [`time`]: millisecond timestamps and their RFC 3339 form.

// The crate is documented for the people who work on it (`cargo doc
// --document-private-items`): its public docs link the private layers they describe.
#![allow(rustdoc::private_intra_doc_links)]

pub mod agent_auth;
pub mod broker_url;
pub mod bundle;
pub mod bundle_manifest;
pub mod command_auth;
pub mod config_file;
pub mod delivery;
pub mod enrollment;
pub mod lease;
pub mod mqtt;
pub mod policy;
pub mod signed;
pub mod time;
pub mod tls;
pub mod topics;
pub mod validate;
pub mod wire;

pub use wire::{
    decode, encode, ActionEvent, ActionState, AgentState, AgentStatus, AppliedBundle, Command,
    CommandKind, DecodeError, DeliveryStatus, MetricBatch, PolicyEvent, PolicyRunnerStatus,
    QueueStatus, RunningPolicies, RunningPolicy, Sample, StatusReport, WireMessage,
    PROTOCOL_VERSION,
};
