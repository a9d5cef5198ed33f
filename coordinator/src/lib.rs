//! `vigil-coordinator`: the fleet's meeting point.
//!
//! - [`agents`]: agent identities (join tokens, enrollment, revocation);
//!   [`agent_keys`]: their public keys as ingest checks seals with.
//! - [`broker`]: the embedded MQTT broker (rumqttd), or none when an external one is used.
//! - [`ingest`]: subscribes to agents' topics, checks every message, feeds the store.
//! - [`batch_gaps`]: notices metric batches lost on the way (sequence gaps).
//! - [`store`]: LMDB (heed): hosts, latest values, metric history with retention.
//! - [`api`]: the REST API (warp) and `/metrics`.
//! - [`policies`]: the coordinator's policy registry (a directory plus REST-created ones).
//! - [`bundles`]: signed, versioned policy bundles per host group, published retained.
//! - [`telemetry`]: the coordinator's own Prometheus metrics.
//! - [`tokens`]: REST API tokens and roles (checked by [`api::auth`]).
//! - [`config`]: flags, `VIGIL_…` environment variables and the TOML file.
//! - [`app`]: starts and stops all of the above as one [`app::Coordinator`].
//! - [`install_cli`]: `install`/`uninstall` as a systemd service.

pub mod agent_keys;
pub mod agents;
pub mod agents_cli;
pub mod api;
pub mod app;
pub mod batch_gaps;
pub mod broker;
pub mod bundles;
pub mod certs;
pub mod certs_cli;
pub mod cli;
pub mod config;
pub mod feed;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_server;
pub mod ingest;
pub mod install_cli;
pub mod json_mirror;
pub mod local_agent;
pub mod mqtt_front;
mod per_address;
pub mod policies;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod tokens_cli;

pub use app::Coordinator;
pub use bundles::keys::public_path as bundle_public_key_path;
pub use config::CoordinatorConfig;
pub use tokens::ADMIN_TOKEN_FILE;
