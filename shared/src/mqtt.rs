//! MQTT client settings both agents and the coordinator use, so that keep-alive, packet
//! size limits and credentials are handled one way.

use std::time::Duration;

use rumqttc::MqttOptions;

use crate::broker_url::BrokerUrl;
use crate::wire::MAX_PAYLOAD_BYTES;

/// Keep-alive interval: a dead client is noticed (and its last will sent) within 1.5× this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Client options for `broker`, with Vigil's keep-alive and packet limits.
pub fn client_options(
    client_id: &str,
    broker: &BrokerUrl,
    username: Option<&str>,
    password: Option<&str>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PAYLOAD_BYTES + 1024, MAX_PAYLOAD_BYTES + 1024);
    if let Some(user) = username {
        options.set_credentials(user, password.unwrap_or_default());
    }
    options
}
