//! Session key handshakes ([`vigil_shared::agent_auth`]), answered on a connection and a
//! task of their own, beside [`super::ingest`].
//!
//! An agent's Hello on `vigil/v1/agents/{host}/session` is checked with its enrolled key,
//! must be newer than any handshake of the host ([`SessionKeys::admit_hello`]; the floor
//! is the session of the host's stored status), and is answered with a Welcome signed with
//! the coordinator's key on `vigil/v1/agents/{host}/welcome`. The new key is installed in
//! the table ingest reads ([`SharedSessionKeys`]) before the Welcome is sent, so the
//! agent's first message under it is accepted. Each Hello is counted in
//! `vigil_agent_handshakes_total{outcome}`.
//!
//! Why apart from ingest: a handshake is three public-key operations (an ed25519 check,
//! an X25519 agreement, an ed25519 signature), a hundred times the work of checking one
//! MAC'd message. A thousand agents connecting at once would stall the ingest task (and
//! its acknowledgements to the broker) for as long; here they run on another core, and
//! Welcomes never queue in front of ingest's acknowledgements. On an external broker the
//! connection keeps a persistent session (a fixed client id), so Hellos sent while the
//! coordinator was down are answered when it is back; on the embedded broker they are
//! lost with it. Either way an agent sends a new Hello when one goes unanswered (and when
//! ingest finds its messages under a key this coordinator does not hold).

use std::sync::{Arc, Mutex, MutexGuard};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;
use vigil_shared::agent_auth::{self, Refusal, SignedHello};
use vigil_shared::bundle::BundleKeys;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, DecodeError};

use crate::security::agent_keys::AgentKeys;
use crate::security::session_keys::SessionKeys;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// The session key table, shared by this task (which installs keys) and ingest (which
/// checks messages with them).
#[derive(Clone, Default)]
pub struct SharedSessionKeys(Arc<Mutex<SessionKeys>>);

impl SharedSessionKeys {
    /// The table, locked (a poisoned lock is taken over: the table holds no invariant a
    /// panic elsewhere could break halfway).
    pub fn lock(&self) -> MutexGuard<'_, SessionKeys> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many Welcomes may wait for the connection.
const QUEUE: usize = 4096;

/// Answers Hellos on a connection made with `options` until `stop` turns true;
/// `subscribed` turns true once the first connection has subscribed to the Hellos.
pub async fn run(
    options: MqttOptions,
    store: Store,
    sessions: SharedSessionKeys,
    coordinator: Arc<BundleKeys>,
    telemetry: Arc<Telemetry>,
    subscribed: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let (client, mut eventloop) = vigil_shared::mqtt::client(options, QUEUE);
    let mut handshakes = Handshakes {
        keys: AgentKeys::new(store.clone()),
        store,
        sessions,
        coordinator,
    };
    let mut reconnect = crate::reconnect::Reconnect::new("handshake connection");
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                reconnect.connected();
                let filter = topics::all_agents(AgentChannel::Session);
                if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                    tracing::error!("cannot subscribe to session key Hellos: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subscribed.send_replace(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                handshakes.answer(&publish, &client, &telemetry);
            }
            Ok(_) => {}
            Err(e) => {
                reconnect.failed(&e).await;
            }
        }
    }
    let _ = client.try_disconnect();
}

/// What answering a Hello needs.
struct Handshakes {
    keys: AgentKeys,
    /// For the hosts' stored status order (a Hello's session floor).
    store: Store,
    sessions: SharedSessionKeys,
    /// Signs Welcomes.
    coordinator: Arc<BundleKeys>,
}

/// Why a Hello was not answered.
enum Unanswered {
    Decode(DecodeError),
    Refused(Refusal),
    /// A good Hello whose Welcome could not be queued.
    Busy(String),
}

impl Unanswered {
    fn reason(&self) -> &'static str {
        match self {
            Unanswered::Decode(e) => e.reason(),
            Unanswered::Refused(refusal) => refusal.reason(),
            Unanswered::Busy(_) => "unanswered",
        }
    }
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::Decode(e) => e.fmt(f),
            Unanswered::Refused(refusal) => refusal.fmt(f),
            Unanswered::Busy(problem) => f.write_str(problem),
        }
    }
}

impl Handshakes {
    /// Answers one message on a session topic, and counts it by outcome (a refused one
    /// also in `vigil_mqtt_messages_rejected_total{channel="session"}`).
    fn answer(&mut self, publish: &Publish, client: &AsyncClient, telemetry: &Telemetry) {
        let Some((host, AgentChannel::Session)) = topics::parse_agent(&publish.topic) else {
            return;
        };
        let outcome = self.hello(host, publish).and_then(|payload| {
            client
                .try_publish(
                    topics::agent(host, AgentChannel::Welcome),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .map_err(|e| Unanswered::Busy(format!("cannot queue the Welcome: {e}")))
        });
        let outcome = match outcome {
            Ok(()) => "accepted",
            Err(unanswered) => {
                let reason = unanswered.reason();
                telemetry
                    .mqtt_rejected
                    .with_label_values(&[AgentChannel::Session.as_str(), reason])
                    .inc();
                tracing::warn!(topic = %publish.topic, reason, "session key Hello refused: {unanswered}");
                reason
            }
        };
        telemetry
            .agent_handshakes
            .with_label_values(&[outcome])
            .inc();
    }

    /// Checks a Hello and makes (and installs) the session key; returns the Welcome.
    fn hello(&mut self, host: &str, publish: &Publish) -> Result<Vec<u8>, Unanswered> {
        let signed = wire::decode::<SignedHello>(&publish.payload).map_err(Unanswered::Decode)?;
        let checked = self.keys.check(host, |key| {
            agent_auth::open_hello(&signed, key, host).map(|hello| (hello, key.clone()))
        });
        let (hello, enrolled) = match checked {
            Ok(checked) => checked,
            Err(refusal) => {
                if matches!(refusal, Refusal::Revoked(_) | Refusal::UnknownAgent(_)) {
                    self.sessions.lock().forget(host);
                }
                return Err(Unanswered::Refused(refusal));
            }
        };
        let id = hello.key_id();
        // A Hello is never retained by an agent: a retained one is a copy.
        if publish.retain {
            return Err(Unanswered::Refused(Refusal::ReplayedHandshake(id)));
        }
        let floor = match self.store.host_record(host) {
            Ok(record) => record
                .and_then(|r| r.status_order)
                .map_or(0, |(session, _)| session),
            Err(e) => {
                tracing::error!(%host, "cannot read the host's status order: {e}");
                0
            }
        };
        self.sessions
            .lock()
            .admit_hello(host, &enrolled, id, floor)
            .map_err(Unanswered::Refused)?;
        let (payload, key) = agent_auth::welcome(&self.coordinator, &hello, &signed.signed)
            .map_err(Unanswered::Refused)?;
        self.sessions.lock().install(host, &enrolled, key);
        tracing::debug!(%host, key = %id, "session key made");
        Ok(payload)
    }
}
