//! Entry points for the fuzz targets in `fuzz/`, not an API: the REST request-body checks
//! that are private to their handlers' modules, run exactly as the handlers run them
//! (minus the store writes that follow).

use crate::http::handlers::agents as agents_api;
use crate::security::agents::{self, EnrollRequest};

/// `POST /api/v1/actions`: reads and checks the body; the error is the 4xx message.
pub fn new_action(body: &[u8]) -> Result<(), String> {
    actions::parse_new_action(body)
        .map(|_| ())
        .map_err(|e| e.message)
}

/// `POST /api/v1/agents/enroll`: reads the body and checks host and public key.
pub fn enroll(body: &[u8]) -> Result<(), String> {
    let request: EnrollRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    agents::check_request(&request).map_err(|e| e.to_string())
}

/// `POST /api/v1/join-tokens`: reads and checks the body; on success, the token's
/// lifetime in ms.
pub fn join_token(body: &[u8]) -> Result<i64, String> {
    agents_api::join_token_spec(body)
        .map(|spec| spec.ttl_ms)
        .map_err(|e| e.message)
}

/// `POST /api/v1/alertmanager`: reads and checks Alertmanager's payload; on success, the
/// number of alerts.
pub fn alertmanager(body: &[u8]) -> Result<usize, String> {
    crate::alerts::webhook::parse(body)
        .map(|n| n.alerts.len())
        .map_err(|e| e.to_string())
}

/// What the front let through of some bytes, for one login.
#[derive(Debug, Default)]
pub struct FrontPass {
    /// Packets that passed.
    pub passed: usize,
    /// Of those, publishes.
    pub publishes: usize,
    /// Of those, publishes outside the agent `web-01`'s own topics.
    pub foreign: usize,
    /// Why the first refused packet was refused.
    pub refused: Option<&'static str>,
}

/// The embedded broker's front: decodes and checks every whole MQTT packet in `bytes`,
/// as the agent `web-01` and as an integration would send them.
pub fn mqtt_front(bytes: &[u8]) -> [FrontPass; 2] {
    use crate::mqtt::broker::Role;
    use rumqttd::protocol::Packet;
    [Role::Agent("web-01".into()), Role::Integration].map(|role| {
        let mut buffer = bytes::BytesMut::from(bytes);
        let mut packets = Vec::new();
        let refused =
            crate::mqtt::front::take_checked(&mut buffer, &role, &mut packets, &mut Vec::new())
                .err();
        let mut pass = FrontPass {
            passed: packets.len(),
            refused,
            ..FrontPass::default()
        };
        for packet in &packets {
            if let Packet::Publish(publish, _) = packet {
                pass.publishes += 1;
                if !publish.topic.starts_with(b"vigil/v1/agents/web-01/") {
                    pass.foreign += 1;
                }
            }
        }
        pass
    })
}

/// What the fuzz targets decode and render, from the coordinator's private modules.
pub use crate::bundles::store::BundleRecord;
pub use crate::events::json::{entry_json, event_json, tags_json};
pub use crate::http::handlers::{actions, events, hosts, ingest, policies, query, violations};
pub use crate::policies::json as spec_json;
