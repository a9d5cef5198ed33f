//! Helpers for the end-to-end tests. Starting the real binaries, free ports, waiting,
//! REST and MQTT helpers come from the test kit (`vigil-testkit`, shared with the
//! simulator) and are re-exported here, so a test imports everything from this crate; what
//! only the tests need is defined here:
//! - [`RawAgent`]: an enrolled identity for publishing agent messages by hand;
//! - [`write`], [`bundles_of`]: bundle directories as a deploy writes them, and the
//!   bundles a host reports;
//! - [`docker`], [`systemd`], [`packaging`]: containers, a systemd container, and the
//!   release artifacts;
//! - [`faults`]: the fault suite's delivery check (spool on disk against stored points);
//! - [`json_schema`]: the JSON topics' schemas and a validator.

use std::path::Path;

use serde_json::Value;

pub use vigil_testkit::*;

pub mod docker;
pub mod faults;
pub mod json_schema;
pub mod packaging;
pub mod systemd;

/// A test's stand-in for an agent: an enrolled identity, its MQTT login and its sealer,
/// for publishing agent messages by hand.
pub struct RawAgent {
    /// Seals messages as this host.
    pub sealer: vigil_shared::agent_auth::Sealer,
    /// MQTT options for `broker` with the host's login and its agent's client id
    /// (`vigil-agent-{host}`: the only other id the embedded broker admits for the host
    /// is its outbox's).
    pub options: rumqttc::MqttOptions,
    /// The epoch of its (imaginary) queues.
    epoch: u64,
    /// The next sequence number of its outbox and metric queues.
    next: [std::sync::atomic::AtomicU64; 2],
}

impl RawAgent {
    /// Enrolls `host` with the coordinator store in `<dir>/data` and prepares its login to
    /// `broker` (`mqtt://127.0.0.1:PORT`).
    pub fn enroll(dir: &Path, host: &str, broker: &str) -> RawAgent {
        let identity_dir = dir.join(format!("raw-identity-{host}"));
        enroll_directly(host, &identity_dir, &dir.join("data"));
        let identity = vigil_shared::enrollment::Identity::load(&identity_dir)
            .expect("read identity")
            .expect("identity written");
        let sealer = vigil_shared::agent_auth::Sealer::new(host, identity.key().expect("key"));
        let mut options = rumqttc::MqttOptions::new(
            vigil_shared::mqtt::agent_client_id(host),
            "127.0.0.1",
            broker_port(broker),
        );
        options.set_credentials(identity.mqtt_username, identity.mqtt_password);
        options.set_max_packet_size(2 << 20, 2 << 20);
        RawAgent {
            sealer,
            options,
            epoch: rand::random(),
            next: [
                std::sync::atomic::AtomicU64::new(1),
                std::sync::atomic::AtomicU64::new(1),
            ],
        }
    }

    /// `message` encoded and sealed for `channel`: the payload to publish. A message for
    /// a queued channel (metrics, actions, events) gets the next place in its queue, as
    /// a real agent's does; the queue claims to hold everything from 1 (so the
    /// coordinator never takes one it refused as dropped).
    pub fn seal<T: vigil_shared::wire::WireMessage>(
        &self,
        channel: vigil_shared::topics::AgentChannel,
        message: &T,
    ) -> Vec<u8> {
        use vigil_shared::delivery::{Delivery, Stream};
        use vigil_shared::topics::AgentChannel;
        let body = vigil_shared::wire::encode(message);
        let stream = match channel {
            AgentChannel::Metrics => Stream::Metrics,
            AgentChannel::Actions | AgentChannel::Events => Stream::Outbox,
            _ => return self.sealer.seal(channel, body),
        };
        let seq = self.next[usize::from(stream == Stream::Metrics)]
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delivery = Delivery {
            stream,
            epoch: self.epoch,
            seq,
            floor: 1,
        };
        self.sealer.seal_queued(channel, body, delivery)
    }
}

/// Writes `dir/path` atomically, creating its folders, as an editor or a deploy would.
pub fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

/// `group:version` of every bundle a host entry reports, sorted.
pub fn bundles_of(host: &Value) -> Vec<String> {
    let mut out: Vec<String> = host["bundles"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| format!("{}:{}", b["group"].as_str().unwrap_or("?"), b["version"]))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
