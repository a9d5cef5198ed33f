//! MQTT, in the order a message travels: the [`front`] every outside client connects to
//! (TLS, connection bounds, who may publish or subscribe to what), the embedded
//! [`broker`] behind it (rumqttd on loopback, or none with an external broker; its
//! [`mailroom`] keeps the agents' sessions and what is sent to them; the front holds
//! agents back while ingest is far behind, by the count in [`backlog`]), then
//! [`ingest`], which checks every agent message, hands it to the store writer and
//! acknowledges it to the broker once stored (with the session keys [`handshake`] makes
//! on a connection of its own), and the [`publisher`] that sends signed
//! commands, retained bundles and acknowledgements of what is stored ([`acks`]) back to
//! agents.

pub mod acks;
pub(crate) mod backlog;
pub mod broker;
pub mod front;
pub mod handshake;
pub mod ingest;
pub(crate) mod mailroom;
pub mod publisher;
