//! The coordinator's own MQTT client, as a sender: signed commands to agents
//! (`vigil/v1/agents/{host}/commands`) and retained messages (policy bundles). It shares
//! one connection with [`super::ingest`], which drives the event loop.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use thiserror::Error;
use tokio::sync::watch;
use vigil_shared::bundle::BundleKeys;
use vigil_shared::command_auth;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, Command};

/// How long [`Publisher::command`] waits for room in the MQTT client's queue.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// Why a command could not be handed to the MQTT connection.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The connection's queue stayed full (the broker is unreachable or slow).
    #[error(
        "cannot publish to `{topic}`: the MQTT queue stayed full for {PUBLISH_WAIT:?} \
         (is the broker reachable?)"
    )]
    Busy {
        /// The topic.
        topic: String,
    },
    /// The connection is gone (the coordinator is shutting down).
    #[error("cannot publish to `{topic}`: the MQTT connection has stopped")]
    Stopped {
        /// The topic.
        topic: String,
    },
}

/// Publishes commands to agents (`vigil/v1/agents/{host}/commands`, QoS 1) over the
/// ingest connection, each signed with the coordinator's key
/// ([`vigil_shared::command_auth`]). Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    pub(super) client: AsyncClient,
    /// Counts the connection's (re)connects, so retained state can be republished.
    pub(super) connects: Arc<watch::Sender<u64>>,
    /// Signs commands.
    pub(super) keys: Arc<BundleKeys>,
    /// The last `issued_at_ms` given to a command: each is strictly later, so agents can
    /// refuse any command not newer than the last they accepted (replays).
    last_issued_ms: Arc<AtomicI64>,
}

impl Publisher {
    /// Signs `command` and hands it to the MQTT connection for its host's command topic.
    /// Its `issued_at_ms` is moved later if needed to be strictly after the previous
    /// command's (its expiry moves with it). Returns once queued; the connection delivers
    /// it (QoS 1) when the broker is reachable.
    pub async fn command(&self, command: &Command) -> Result<(), PublishError> {
        let topic = topics::agent(&command.host, AgentChannel::Commands);
        let mut command = command.clone();
        let wanted = command.issued_at_ms;
        let previous = self
            .last_issued_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(wanted.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        let issued = wanted.max(previous.saturating_add(1));
        command.expires_at_ms = command
            .expires_at_ms
            .saturating_add(issued.saturating_sub(command.issued_at_ms));
        command.issued_at_ms = issued;
        let payload = wire::encode(&command_auth::sign(&self.keys, &command));
        match tokio::time::timeout(
            PUBLISH_WAIT,
            self.client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(PublishError::Stopped { topic }),
            Err(_) => Err(PublishError::Busy { topic }),
        }
    }

    /// Hands a retained QoS 1 message to the MQTT connection (an empty payload clears
    /// the topic's retained message).
    pub async fn retained(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        match tokio::time::timeout(
            PUBLISH_WAIT,
            self.client.publish(topic, QoS::AtLeastOnce, true, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(PublishError::Stopped {
                topic: topic.to_string(),
            }),
            Err(_) => Err(PublishError::Busy {
                topic: topic.to_string(),
            }),
        }
    }

    /// A receiver that changes every time the connection is (re)established and has
    /// subscribed to every agent channel.
    pub fn connects(&self) -> watch::Receiver<u64> {
        self.connects.subscribe()
    }
}

/// Creates the coordinator's MQTT client: a [`Publisher`] for commands (signed with
/// `keys`), and the event loop that [`super::ingest::run`] drives (nothing is sent or received until it
/// runs).
pub fn connect(options: MqttOptions, keys: Arc<BundleKeys>) -> (Publisher, EventLoop) {
    let (client, eventloop) = vigil_shared::mqtt::client(options, 1024);
    let connects = Arc::new(watch::channel(0).0);
    (
        Publisher {
            client,
            connects,
            keys,
            last_issued_ms: Arc::new(AtomicI64::new(0)),
        },
        eventloop,
    )
}
