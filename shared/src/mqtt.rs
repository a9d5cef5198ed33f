//! MQTT client settings both agents and the coordinator use, so that keep-alive, packet
//! size limits, credentials, TLS and the socket are handled one way.
//!
//! # Polling
//! A rumqttc `EventLoop::poll` that is connecting (TCP, TLS, CONNECT, CONNACK) is not
//! cancel safe: dropped before it returns, it drops the half-made connection, and the
//! next poll starts another. A loop that selects over the poll and a timer therefore
//! enables its other arms only while connected: else a timer shorter than a connection
//! takes (a slow link, a TLS handshake) cancels every attempt, and the broker sees the
//! client id log in twice (and drops one of the two sessions).

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions, TlsConfiguration, Transport};
use thiserror::Error;

use crate::broker_url::BrokerUrl;
use crate::tls::ClientTls;
use crate::wire::MAX_PAYLOAD_BYTES;

/// Keep-alive interval: a dead client is noticed (and its last will sent) within 1.5× this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Most QoS 1 messages an agent's connection has sent and not had acknowledged by the
/// broker. An agent sends a batch an interval, so this is room to spare; it also bounds
/// what the coordinator's front holds for a connection while ingest catches up (it reads
/// on, for the agent's pings, but acknowledges nothing until then).
pub const AGENT_INFLIGHT: u16 = 16;

/// The client id of `host`'s agent link (reports, commands, bundles). The embedded broker
/// admits an agent only under this id or [`outbox_client_id`], so no login can take
/// over another host's session.
pub fn agent_client_id(host: &str) -> String {
    format!("vigil-agent-{host}")
}

/// The client id of `host`'s agent outbox connection (action events). Its prefix differs
/// from [`agent_client_id`]'s, so no host's outbox id is another host's link id.
pub fn outbox_client_id(host: &str) -> String {
    format!("vigil-outbox-{host}")
}

/// An `mqtts://` broker was given without TLS settings to reach it with.
#[derive(Debug, Error)]
#[error("broker {0} uses TLS, but no TLS settings were given (a CA certificate to trust)")]
pub struct MissingTls(pub BrokerUrl);

/// Client options for `broker`, with Vigil's keep-alive and packet limits. An `mqtts://`
/// broker is reached over TLS trusting what `tls` trusts; `tls` is ignored for `mqtt://`.
pub fn client_options(
    client_id: &str,
    broker: &BrokerUrl,
    username: Option<&str>,
    password: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<MqttOptions, MissingTls> {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PAYLOAD_BYTES + 1024, MAX_PAYLOAD_BYTES + 1024);
    if let Some(user) = username {
        options.set_credentials(user, password.unwrap_or_default());
    }
    if broker.tls {
        let tls = tls.ok_or_else(|| MissingTls(broker.clone()))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config(),
        )));
    }
    Ok(options)
}

/// A client for `options` with a request queue of `capacity`, and its event loop. Its
/// socket sends each write at once (Nagle's algorithm off): MQTT packets are small and
/// someone waits for each, while a receiver that has nothing to answer (a QoS 0 stream)
/// acknowledges late, so a second write would wait up to 40 ms for that acknowledgement.
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}
