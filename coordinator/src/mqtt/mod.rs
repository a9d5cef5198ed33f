//! MQTT, in the order a message travels: the [`front`] every outside client connects to
//! (TLS, connection bounds, who may publish or subscribe to what), the embedded
//! [`broker`] behind it (rumqttd on loopback, or none with an external broker), then
//! [`ingest`], which checks every agent message and hands it to the store writer
//! ([`batch_gaps`] notices metric batches lost on the way), and the [`publisher`] that
//! sends signed commands and retained bundles back to agents.

pub mod batch_gaps;
pub mod broker;
pub mod front;
pub mod ingest;
pub mod publisher;
