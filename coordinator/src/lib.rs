//! `vigil-coordinator`: the fleet's meeting point. Its folders, in the order data flows:
//!
//! - [`mqtt`]: the broker front every client connects to, the embedded broker (rumqttd),
//!   ingest (checks every agent message, feeds the store) and the publisher of commands
//!   and bundles.
//! - [`store`]: LMDB (heed): hosts, latest values, metric history, the audit trail, the
//!   event feed, agents and tokens. Its records are defined there; it knows nothing of
//!   HTTP or MQTT.
//! - [`events`]: the event feed's one JSON form, for REST, Server-Sent Events and the
//!   MQTT JSON topics.
//! - [`http`]: the REST API (warp): its server, routes, auth, errors, OpenAPI document
//!   and handlers, and `/metrics`.
//! - [`alerts`]: Alertmanager's webhook payload and the routing file that maps alerts to
//!   actions.
//! - [`budgets`]: fleet-wide disruption budgets: the lease table and the service that
//!   answers agents' lease requests.
//! - [`deadman`]: finds hosts that stopped reporting while their agent said online
//!   (`silent`), with an optional webhook.
//! - [`reconnect`]: how the coordinator's own MQTT connections wait and log after losing
//!   the broker.
//! - [`bundles`]: signed, versioned policy bundles per host group, published retained.
//! - [`policies`]: the coordinator's policy registry (a directory plus REST-created ones).
//! - [`security`]: agent identities, REST tokens, certificates and TLS.
//! - [`cli`]: the command line, including the offline tools and `install`.
//! - [`telemetry`]: the coordinator's own Prometheus metrics (a leaf: it imports nothing
//!   of the coordinator).
//! - [`config`]: flags, `VIGIL_…` environment variables and the TOML file.
//! - [`app`]: starts and stops all of the above as one [`Coordinator`].

// The crate is documented for the people who work on it (`cargo doc
// --document-private-items`): its public docs link the private layers they describe.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod alerts;
pub(crate) mod app;
pub(crate) mod budgets;
pub(crate) mod bundles;
pub mod cli;
pub(crate) mod config;
pub(crate) mod deadman;
pub(crate) mod events;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub(crate) mod mqtt;
mod per_address;
pub(crate) mod policies;
pub(crate) mod reconnect;
pub(crate) mod security;
pub mod store;
pub mod telemetry;

pub use app::Coordinator;
pub use bundles::keys::public_path as bundle_public_key_path;
pub use config::CoordinatorConfig;
pub use security::tokens::ADMIN_TOKEN_FILE;
