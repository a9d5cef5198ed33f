//! Helpers for the end-to-end tests. Starting the real binaries, free ports, waiting,
//! REST and MQTT helpers come from the test kit (`vigil-testkit`, shared with the
//! simulator) and are re-exported here, so a test imports everything from this crate; what
//! only the tests need is defined here:
//! - [`RawAgent`]: an enrolled identity for publishing agent messages by hand;
//!   [`KeyedAgent`]: one on a live connection that makes session key handshakes;
//! - [`write`], [`bundles_of`]: bundle directories as a deploy writes them, and the
//!   bundles a host reports;
//! - [`docker`], [`systemd`], [`packaging`]: containers, a systemd container, and the
//!   release artifacts;
//! - [`faults`]: the fault suite's delivery check (spool on disk against stored points);
//! - [`monitoring`]: Debian's real Prometheus and Alertmanager, and `promtool`.
//! - [`json_schema`]: the JSON topics' schemas and a validator.
//! - [`journal`]: a systemd container's journal, entry by entry (`journalctl -o json`).
//! - [`slow_link`]: a TCP link with latency, for clients on slow networks.

use std::path::Path;

use serde_json::Value;

pub use vigil_testkit::*;

pub mod docker;
pub mod faults;
pub mod journal;
pub mod json_schema;
pub mod monitoring;
pub mod packaging;
pub mod slow_link;
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
        RawAgent::enroll_as(dir, host, broker, false)
    }

    /// [`RawAgent::enroll`], with a sealer that can make session key handshakes: it
    /// trusts the key the test's coordinator wrote (`<dir>/data/bundle-signing.pub`).
    pub fn enroll_with_session_keys(dir: &Path, host: &str, broker: &str) -> RawAgent {
        RawAgent::enroll_as(dir, host, broker, true)
    }

    fn enroll_as(dir: &Path, host: &str, broker: &str, session_keys: bool) -> RawAgent {
        let identity_dir = dir.join(format!("raw-identity-{host}"));
        enroll_directly(host, &identity_dir, &dir.join("data"));
        let identity = vigil_shared::enrollment::Identity::load(&identity_dir)
            .expect("read identity")
            .expect("identity written");
        let coordinator = session_keys.then(|| {
            let path = dir.join("data").join("bundle-signing.pub");
            vigil_shared::bundle::PublicKey::load(&path.to_string_lossy())
                .expect("the coordinator's public key")
        });
        let sealer = vigil_shared::agent_auth::Sealer::new(host, identity.key().expect("key"))
            .with_coordinator_key(coordinator);
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

/// A [`RawAgent`] on a live connection whose event loop hands every Welcome on the
/// host's `welcome` topic to its sealer, as a real agent's link does.
pub struct KeyedAgent {
    /// The agent (its sealer holds the current session key).
    pub agent: std::sync::Arc<RawAgent>,
    /// The connection.
    pub client: rumqttc::AsyncClient,
    host: String,
}

impl KeyedAgent {
    /// Connects `agent` (subscribed to its `welcome` topic before returning).
    pub async fn connect(agent: RawAgent) -> KeyedAgent {
        use vigil_shared::topics::{self, AgentChannel};
        let agent = std::sync::Arc::new(agent);
        let host = agent.sealer.host().to_string();
        let (client, mut eventloop) = login(agent.options.clone())
            .await
            .unwrap_or_else(|e| panic!("broker refused {host}: {e}"));
        let welcome = topics::agent(&host, AgentChannel::Welcome);
        client
            .subscribe(welcome.as_str(), rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
        let mut subacked_tx = Some(subacked_tx);
        let sealer_of = agent.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = subacked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                        if p.topic == welcome =>
                    {
                        let _ = sealer_of.sealer.accept_welcome(&p.payload);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(30), subacked)
            .await
            .expect("SUBACK in time")
            .expect("event loop running");
        KeyedAgent {
            agent,
            client,
            host,
        }
    }

    /// Sends a Hello and waits (up to 30 s) until its Welcome made the sealer's key;
    /// returns the new key.
    pub async fn handshake(&self) -> vigil_shared::agent_auth::KeyId {
        let payload = self.hello();
        let before = self.agent.sealer.session_key();
        self.publish_hello(payload).await;
        wait_for(
            "the Welcome",
            std::time::Duration::from_secs(30),
            || async {
                self.agent
                    .sealer
                    .session_key()
                    .filter(|now| Some(*now) != before)
            },
        )
        .await
    }

    /// A new Hello payload (the sealer starts a handshake).
    pub fn hello(&self) -> Vec<u8> {
        self.agent
            .sealer
            .hello()
            .expect("the sealer has the coordinator's key")
    }

    /// Publishes a Hello payload on the host's `session` topic.
    pub async fn publish_hello(&self, payload: Vec<u8>) {
        use vigil_shared::topics::{self, AgentChannel};
        self.client
            .publish(
                topics::agent(&self.host, AgentChannel::Session),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish the Hello");
    }

    /// Publishes `payload` on the host's `channel` topic (QoS 1; the status retained).
    pub async fn publish(&self, channel: vigil_shared::topics::AgentChannel, payload: Vec<u8>) {
        use vigil_shared::topics::{self, AgentChannel};
        self.client
            .publish(
                topics::agent(&self.host, channel),
                rumqttc::QoS::AtLeastOnce,
                channel == AgentChannel::Status,
                payload,
            )
            .await
            .expect("publish");
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
