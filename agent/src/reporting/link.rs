//! The agent's MQTT connection to the broker.
//!
//! [`Link::connect`] sets the agent's last will (its status, marked offline, retained) and
//! drives the connection in a background task that reconnects on its own. After every
//! (re)connection it publishes the agent's status, retained, so the coordinator and anyone
//! subscribing later see the host as online. [`Link::close`] publishes the offline status
//! itself before disconnecting, since a broker sends the last will only on an unclean end.
//!
//! On every connection it subscribes to the agent's commands, the coordinator's answers
//! to its lease requests and, when a bundle key is
//! configured, to every group's policy bundle (`vigil/v1/bundles/+`); what arrives is
//! forwarded to the runner as [`Inbound`] messages.
//!
//! Everything it publishes (status, the last will) is sealed with the agent's key
//! ([`Sealer`]): the coordinator accepts nothing else. Metric batches, action transitions
//! and policy events go through [`super::delivery`], which keeps them until stored.
//!
//! This connection also makes the agent's session key handshakes, for every connection
//! of the agent (they share the [`Sealer`], which holds the current key): with the
//! coordinator's key configured, it subscribes to `vigil/v1/agents/{host}/welcome` and
//! sends a Hello on `vigil/v1/agents/{host}/session` after every (re)connection and every
//! [`REKEY_EVERY`] (one left unanswered is sent again after [`HANDSHAKE_RETRY`], then
//! twice as long each time), and again when the coordinator's signed notice says it lost
//! the key (it restarted); each Welcome that verifies becomes the key every message is MAC'd
//! with. Until the first one (and whenever no Welcome comes), messages stay signed with
//! the agent's ed25519 key, which the coordinator always accepts; the last will is
//! always signed. Without a coordinator key there is no handshake (logged once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vigil_shared::agent_auth::{Sealer, Taken, WelcomeRefusal, REKEY_EVERY};
use vigil_shared::mqtt::MissingTls;
use vigil_shared::tls::ClientTls;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, AgentState, AgentStatus, RunningPolicies, StatusReport};

use crate::acting::store::OutboxSignal;
use crate::config::AgentConfig;

/// How many publish requests may wait for the connection before new ones are dropped.
const REQUEST_QUEUE: usize = 1024;

/// The shortest time between two Hellos asked for by the coordinator.
const HANDSHAKE_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// How often the link checks whether a Hello is due.
const HANDSHAKE_CHECK: Duration = Duration::from_secs(1);

/// How long a Hello may stay unanswered before it is sent again (the first time; then
/// twice as long each time, up to [`REKEY_EVERY`]).
const HANDSHAKE_RETRY: Duration = Duration::from_secs(5);

/// A message from the coordinator, forwarded to the runner.
#[derive(Debug)]
pub enum Inbound {
    /// A payload from this host's command topic (checked by the runner's
    /// [`crate::reporting::command_guard::CommandGuard`]).
    Command(Vec<u8>),
    /// A payload from this host's lease-answer topic (opened by the runner with
    /// [`vigil_shared::signed::open`]).
    Grant(Vec<u8>),
    /// A policy bundle's payload as published on `vigil/v1/bundles/{group}` (decoded and
    /// verified by the runner's [`crate::policy::bundles::Bundles`]).
    Bundle {
        /// The group named by the topic.
        group: String,
        /// The raw payload.
        payload: Vec<u8>,
    },
}

/// The MQTT client and the sealer: what publishes.
#[derive(Clone)]
struct Publisher {
    client: AsyncClient,
    sealer: Arc<Sealer>,
    /// Woken when a new session key is taken: the delivery task then sends what is
    /// unacknowledged again under it, without waiting for other news.
    new_key: OutboxSignal,
}

impl Publisher {
    /// Seals the status report (stamped now) and queues it, retained.
    fn try_status(&self, report: &StatusReport) {
        let mut report = report.clone();
        report.status.sent_at_ms = vigil_shared::time::now_ms();
        let topic = topics::agent(&report.status.host, AgentChannel::Status);
        let payload = self
            .sealer
            .seal(AgentChannel::Status, wire::encode(&report));
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
        {
            tracing::warn!("cannot queue status: {e}");
        }
    }

    /// Starts a new session key handshake (nothing without a coordinator key).
    fn try_hello(&self) {
        let Some(payload) = self.sealer.hello() else {
            return;
        };
        let topic = topics::agent(self.sealer.host(), AgentChannel::Session);
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            tracing::warn!("cannot queue the session key handshake: {e}");
        }
    }
}

/// A running MQTT connection.
pub struct Link {
    publisher: Publisher,
    status: watch::Sender<StatusReport>,
    connected: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts connecting to the configured broker (as `config.mqtt_username`); returns at
    /// once. Commands for this host (and bundles, if a bundle key is configured) arrive on
    /// `inbound`; everything published is sealed by `sealer`. `new_key` is woken whenever
    /// a new session key is taken.
    pub fn connect(
        config: &AgentConfig,
        tls: Option<&ClientTls>,
        status: AgentStatus,
        inbound: mpsc::Sender<Inbound>,
        sealer: Arc<Sealer>,
        new_key: OutboxSignal,
    ) -> Result<Link, MissingTls> {
        let mut options = vigil_shared::mqtt::client_options(
            &vigil_shared::mqtt::agent_client_id(&config.host),
            &config.broker,
            config.mqtt_username.as_deref(),
            config.mqtt_password.as_deref(),
            tls,
        )?;
        // A persistent session: commands (QoS 1) published while the agent is down or
        // restarting wait at the broker and arrive when it reconnects.
        options
            .set_clean_session(false)
            .set_inflight(vigil_shared::mqtt::AGENT_INFLIGHT);
        let will = AgentStatus {
            state: AgentState::Offline,
            ..status.clone()
        };
        // Sealed (and armed) once: every status this link publishes names this will, and
        // the options hand the same will to the broker on every reconnection.
        options.set_last_will(LastWill::new(
            topics::agent(&config.host, AgentChannel::Status),
            sealer.seal_will(wire::encode(&will)),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, eventloop) = vigil_shared::mqtt::client(options, REQUEST_QUEUE);
        let (status, status_rx) = watch::channel(StatusReport {
            status,
            running: None,
        });
        let connected = Arc::new(AtomicBool::new(false));
        let publisher = Publisher {
            client,
            sealer,
            new_key,
        };
        let task = tokio::spawn(drive(
            eventloop,
            publisher.clone(),
            status_rx,
            connected.clone(),
            config.broker.to_string(),
            config.bundle_key.is_some(),
            inbound,
        ));
        Ok(Link {
            publisher,
            status,
            connected,
            task,
        })
    }

    /// A sender of disruption-budget lease requests: each is signed (never MAC'd: they
    /// are few, and the coordinator's lease service checks signatures only) and queued
    /// (QoS 1) on this host's `leases` topic; one that cannot be queued is dropped (the
    /// lease book asks again).
    pub fn lease_sender(&self) -> crate::acting::leases::SendFn {
        let publisher = self.publisher.clone();
        Arc::new(move |request: vigil_shared::lease::LeaseRequest| {
            let topic = topics::agent(&request.host, AgentChannel::Leases);
            let payload = publisher
                .sealer
                .seal_signed(AgentChannel::Leases, wire::encode(&request));
            if let Err(e) = publisher
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
            {
                tracing::warn!("cannot queue a lease request: {e}");
            }
        })
    }

    /// Whether the broker has accepted the connection (and not lost it since).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The status as last set.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().status.clone()
    }

    /// Changes the status and publishes it (retained) if connected; it is also published
    /// after every reconnection.
    pub fn update_status(&self, change: impl FnOnce(&mut AgentStatus)) {
        self.status.send_modify(|report| change(&mut report.status));
        self.publish_status();
    }

    /// Sets the policies in force, reported with the status from now on, and publishes
    /// the status if connected.
    pub fn set_running(&self, running: RunningPolicies) {
        self.status
            .send_modify(|report| report.running = Some(running));
        self.publish_status();
    }

    fn publish_status(&self) {
        if !self.is_connected() {
            return;
        }
        let report = self.status.borrow().clone();
        self.publisher.try_status(&report);
    }

    /// Publishes the offline status, disconnects, and waits (at most `grace`) for both to
    /// reach the broker.
    pub async fn close(self, grace: Duration) {
        let mut report = self.status.borrow().clone();
        report.status.state = AgentState::Offline;
        report.status.sent_at_ms = vigil_shared::time::now_ms();
        let topic = topics::agent(&report.status.host, AgentChannel::Status);
        let payload = self
            .publisher
            .sealer
            .seal(AgentChannel::Status, wire::encode(&report));
        let _ = self
            .publisher
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await;
        let _ = self.publisher.client.disconnect().await;
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!("broker did not confirm the disconnect within {grace:?}");
        }
    }
}

/// Polls the event loop for as long as the connection is wanted, publishing the status
/// after every connection and backing off after errors.
async fn drive(
    mut eventloop: EventLoop,
    publisher: Publisher,
    status: watch::Receiver<StatusReport>,
    connected: Arc<AtomicBool>,
    broker: String,
    bundles: bool,
    inbound: mpsc::Sender<Inbound>,
) {
    let client = &publisher.client;
    let mut failures: u32 = 0;
    let host = status.borrow().status.host.clone();
    let command_topic = topics::agent(&host, AgentChannel::Commands);
    let welcome_topic = topics::agent(&host, AgentChannel::Welcome);
    let grant_topic = topics::agent(&host, AgentChannel::Grants);
    let bundle_filter = topics::bundle("+");
    let bundle_prefix = topics::bundle("");
    let handshakes = publisher.sealer.can_handshake();
    if !handshakes {
        tracing::warn!(
            "no coordinator key (--bundle-key or the enrollment's coordinator_key): no session \
             keys, every message is signed with the agent's key"
        );
    }
    // Checked every HANDSHAKE_CHECK: a new key every REKEY_EVERY, and a Hello left
    // unanswered (lost, or sent before the coordinator listened) is sent again after
    // HANDSHAKE_RETRY, doubling up to REKEY_EVERY.
    let mut check = tokio::time::interval(HANDSHAKE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_hello = tokio::time::Instant::now();
    let mut answered = true;
    let mut retry = HANDSHAKE_RETRY;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            // Only while connected: a poll that is connecting must not be cancelled.
            _ = check.tick(), if handshakes && connected.load(Ordering::Relaxed) => {
                let since = last_hello.elapsed();
                let due = since >= REKEY_EVERY || (!answered && since >= retry);
                if due && connected.load(Ordering::Relaxed) {
                    if !answered {
                        retry = (retry * 2).min(REKEY_EVERY);
                    }
                    publisher.try_hello();
                    last_hello = tokio::time::Instant::now();
                    answered = false;
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected.store(true, Ordering::Relaxed);
                failures = 0;
                tracing::info!(%broker, "connected to broker");
                let online = status.borrow().clone();
                publisher.try_status(&online);
                if let Err(e) = client.try_subscribe(command_topic.clone(), QoS::AtLeastOnce) {
                    tracing::warn!("cannot subscribe to commands: {e}");
                }
                if let Err(e) = client.try_subscribe(grant_topic.clone(), QoS::AtLeastOnce) {
                    tracing::warn!("cannot subscribe to lease answers: {e}");
                }
                if bundles {
                    if let Err(e) = client.try_subscribe(bundle_filter.clone(), QoS::AtLeastOnce) {
                        tracing::warn!("cannot subscribe to policy bundles: {e}");
                    }
                }
                if handshakes {
                    // Subscribed before the Hello goes out: the broker handles both in
                    // order, so the Welcome finds the subscription.
                    if let Err(e) = client.try_subscribe(welcome_topic.clone(), QoS::AtLeastOnce) {
                        tracing::warn!("cannot subscribe to session key answers: {e}");
                    }
                    publisher.try_hello();
                    last_hello = tokio::time::Instant::now();
                    answered = false;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == welcome_topic => {
                match publisher.sealer.accept_welcome(&publish.payload) {
                    Ok(Taken::Key(id)) => {
                        tracing::debug!(key = %id, "new session key");
                        publisher.new_key.wake();
                        answered = true;
                        retry = HANDSHAKE_RETRY;
                    }
                    Ok(Taken::HandshakeAgain) => {
                        if last_hello.elapsed() >= HANDSHAKE_AGAIN_AFTER {
                            tracing::info!(
                                "the coordinator holds no session key for this agent; \
                                 handshaking again"
                            );
                            publisher.try_hello();
                            last_hello = tokio::time::Instant::now();
                            answered = false;
                        }
                    }
                    // A Welcome for an earlier Hello (a reconnection sent a newer one).
                    Err(e @ WelcomeRefusal::NotPending(_)) => tracing::debug!("{e}"),
                    Err(e) => tracing::warn!("refused a session key answer: {e}"),
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish)))
                if bundles && publish.topic.starts_with(&bundle_prefix) =>
            {
                let group = publish.topic[bundle_prefix.len()..].to_string();
                let message = Inbound::Bundle {
                    group,
                    payload: publish.payload.to_vec(),
                };
                if inbound.send(message).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == command_topic => {
                if inbound
                    .send(Inbound::Command(publish.payload.to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == grant_topic => {
                if inbound
                    .send(Inbound::Grant(publish.payload.to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                connected.store(false, Ordering::Relaxed);
                // Let the disconnect flush, then stop.
                let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                connected.store(false, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    if matches!(e, rumqttc::ConnectionError::Tls(_)) {
                        // Most often a certificate that does not chain to --ca: the agent
                        // will not talk to a broker it cannot authenticate.
                        tracing::error!(
                            %broker,
                            failures,
                            "refusing the broker: TLS failed ({e}); is --ca the coordinator's CA?"
                        );
                    } else {
                        tracing::warn!(%broker, failures, "broker connection failed: {e}");
                    }
                }
                let backoff = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
