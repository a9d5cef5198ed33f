//! MQTT ingest: subscribes to every agent's topics, decodes and checks each message,
//! hands the good ones to the store writer, and acknowledges each delivery to the broker
//! only once the store has committed it.
//!
//! Every agent message is sealed with the agent's own key
//! ([`vigil_shared::agent_auth`]): the topic name is never trusted. A message is signed
//! (ed25519) or MAC'd under a session key from a handshake ([`super::handshake`], which
//! answers Hellos on its own connection and fills the key table read here). A MAC'd
//! message under a key this coordinator does not hold (it restarted) is refused
//! (`unknown_session`) and the agent is sent a signed notice to handshake again (at most
//! every [`NUDGE_EVERY`] per host). Nothing an agent (or
//! anyone else) publishes can crash this loop: a payload that does not decode, speaks an
//! unknown protocol version, is not sealed by the enrolled key of the host in its topic
//! (unknown or revoked host, bad signature, replayed), breaks a content rule
//! (`invalid`), carries a time outside 2000–2200 (`implausible_time`, see
//! [`vigil_shared::validate::timestamp`]), claims a host other than the one in its
//! topic, or comes on a queued channel (metrics, actions, events) without its place in
//! the agent's queue (`no_delivery`) is logged with its topic, counted in
//! `vigil_mqtt_messages_rejected_total{channel,reason}`, and dropped. A redelivered
//! duplicate, and the last will of an earlier connection arriving after the agent
//! reconnected, are dropped quietly and counted in `vigil_mqtt_messages_duplicate_total`.
//! A seal time more than five minutes from the coordinator's clock is no reason to
//! refuse: the message is stored, the skew counted (`vigil_agent_clock_skewed_total`),
//! logged, and kept in the host record.
//!
//! Checking runs on several threads at once (`--ingest-threads`, by default
//! [`default_threads`]: one per core): whatever takes the deliveries from the broker
//! hands each to the shard that owns its host (by a hash of
//! the host in the topic), so one host's messages are checked and queued for the store
//! in the order they came, while different hosts' are decoded, authenticated and
//! validated in parallel. Each shard owns the replay windows and logging state of its
//! hosts; the enrolled-key cache is per shard too, the session keys are shared.
//!
//! On an external broker, deliveries come at QoS 1 and are acknowledged to the broker
//! (manual acks, in the order received) once the store has committed what they carry,
//! or at once when they carry nothing to store. When the store cannot take them (a full
//! disk), they stay unacknowledged and, after [`REDELIVER_AFTER`], the connection is
//! dropped and resumed, so that the broker sends them again. On the embedded broker
//! they come at QoS 0 over a link into its router, in process, taken by a thread of
//! their own ([`Hop`]). Either way the agents keep everything until the store
//! acknowledges it to them ([`super::acks`]) and send it again if it does not.
//!
//! The ingest MQTT connection carries the coordinator's commands to agents (on the
//! embedded broker, only those): see [`super::publisher`], whose
//! [`connect`](super::publisher::connect) makes the connection that [`run`] drives.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::{oneshot, watch};
use vigil_shared::agent_auth::{
    self, Authenticator, Refusal, ReplayGuard, Seal, SealedMessage, MAX_CLOCK_SKEW_MS,
};
use vigil_shared::bundle::BundleKeys;
use vigil_shared::delivery::{Delivery, Stream};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    self, ActionEvent, DecodeError, MetricBatch, PolicyEvent, StatusReport, WireMessage,
};

use super::backlog::{Backlog, CHANNELS};
use super::broker::{LinkRefused, RouterLink};
use super::handshake::SharedSessionKeys;
use super::mailroom::Mailroom;
use super::publisher::Publisher;
use crate::deadman::Deadman;
use crate::events::mirror::MetricsTap;
use crate::security::agent_keys::AgentKeys;
use crate::store::writer::{StatusOrder, WriteReply};
use crate::store::{Points, Source, Store, StoreError, StoreWriter, Write};
use crate::telemetry::Telemetry;

/// How often one host is asked to handshake again at most (its messages name a session
/// key this coordinator does not hold).
pub const NUDGE_EVERY: Duration = Duration::from_secs(2);

/// The ingest connection's MQTT keep-alive. rumqttc reads the broker's answer to its
/// ping only while ingest polls the connection, and ingest stops polling while its
/// checking threads' queues and the store writer's are full: a few seconds of work under
/// a burst. With the agents' 5 s ([`vigil_shared::mqtt::KEEP_ALIVE`]), a 1,000-agent burst
/// through Mosquitto cost the connection (`Last pingreq isn't acked`), a resumed session
/// and a wave of resends.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How long deliveries the store could not take stay unacknowledged before the
/// connection is resumed to have the broker send them again.
pub const REDELIVER_AFTER: Duration = Duration::from_secs(3);

/// How often the clock skew of one host is logged at most.
const SKEW_LOG_EVERY_MS: i64 = 60_000;

/// How many deliveries may wait for one shard before the connection's task waits.
const SHARD_QUEUE: usize = 1024;

/// How many checking threads ingest runs unless configured: one per core the process may
/// use, 1 to 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8))
}

/// A delivery waiting for its acknowledgement to the broker.
struct Pending {
    publish: Publish,
    /// Its outcome: stored (or nothing to store), or not.
    answer: Option<oneshot::Receiver<Result<u64, Arc<StoreError>>>>,
}

/// One delivery for a shard to check, and where its outcome goes, if anyone waits for
/// it: `Ok` once the store has it or when there is nothing to store (refused,
/// duplicate, a status); dropped unanswered when the store could not queue it.
struct Job {
    publish: Publish,
    reply: Option<WriteReply>,
}

/// The shard that checks `topic`'s messages: all of one host's go to one shard.
fn shard_of(topic: &str, shards: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let host = topics::parse_agent(topic).map_or("", |(host, _)| host);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    host.hash(&mut hasher);
    usize::try_from(hasher.finish() % shards.max(1) as u64).unwrap_or(0)
}

/// Checks the deliveries of the hosts one shard owns, in order, until the connection's
/// task goes away. Runs on a thread of its own: the checks are CPU work, and on the
/// runtime's workers they would hold up the broker front's and the API's tasks.
fn check_shard(
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    client: AsyncClient,
    mut gate: Gate,
    writer: StoreWriter,
    telemetry: Arc<Telemetry>,
    listeners: Arc<Listeners>,
) {
    while let Some(Job { publish, reply }) = jobs.blocking_recv() {
        handle(
            &publish, &client, &mut gate, &writer, &telemetry, &listeners, reply,
        );
    }
}

/// Who else hears of what ingest takes and accepts, as it is taken or accepted.
pub(crate) struct Listeners {
    /// On the embedded broker, the count of what agents published that ingest has yet to
    /// take: told of every delivery as it arrives.
    pub backlog: Option<Arc<Backlog>>,
    /// The JSON mirror's tap for metric batches, when that stream is mirrored.
    pub metrics_tap: Option<MetricsTap>,
    /// The deadman, told of every status and metric batch.
    pub deadman: Deadman,
    /// On the embedded broker, the agents' sessions: a host found revoked (or no longer
    /// enrolled) when its message is checked has its connections ended and its kept
    /// sessions forgotten.
    pub mailroom: Option<Mailroom>,
}

/// How the broker's deliveries reach ingest, and what acknowledging them is worth.
pub enum Hop {
    /// An external broker keeps a persistent session for ingest: deliveries come at
    /// QoS 1 and are acknowledged once stored, so that what arrives while the
    /// coordinator is down, or while the store cannot take it, is sent again.
    External,
    /// The embedded broker lives and dies with this process, so a QoS 1 acknowledgement
    /// to it promises nothing an agent could rely on, while rumqttd lets at most 100
    /// deliveries per connection wait for one: that caps ingest at 100 messages per
    /// round trip through the store. Deliveries come at QoS 0. What is stored is
    /// promised to each agent by its delivery acknowledgements ([`super::acks`]): until
    /// then it keeps and sends again. The flow is bounded by the front's backlog
    /// ([`super::backlog`]) and the checking threads' queues.
    ///
    /// Deliveries come over this link into the router, not over the connection (which
    /// then only publishes): on a socket of rumqttd's they would wait for TCP's delayed
    /// acknowledgements (see [`super::broker`]).
    Embedded(RouterLink),
}

/// Runs the subscriber until `stop` turns true. Reconnects on its own. `subscribed`
/// turns true once the first connection has subscribed to every agent channel.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    publisher: Publisher,
    mut eventloop: EventLoop,
    hop: Hop,
    gates: Vec<Gate>,
    writer: StoreWriter,
    telemetry: Arc<Telemetry>,
    listeners: Listeners,
    mut stop: watch::Receiver<bool>,
) {
    let Publisher {
        client, connects, ..
    } = publisher;
    let listeners = Arc::new(listeners);
    let mut shards = Vec::with_capacity(gates.len());
    for (i, gate) in gates.into_iter().enumerate() {
        let (jobs, queue) = tokio::sync::mpsc::channel(SHARD_QUEUE);
        let (client, writer) = (client.clone(), writer.clone());
        let (telemetry, listeners) = (Arc::clone(&telemetry), Arc::clone(&listeners));
        let started = std::thread::Builder::new()
            .name(format!("vigil-ingest-{i}"))
            .spawn(move || check_shard(queue, client, gate, writer, telemetry, listeners));
        match started {
            Ok(_) => shards.push(jobs),
            Err(e) => tracing::error!("cannot start ingest checking thread {i}: {e}"),
        }
    }
    if shards.is_empty() {
        tracing::error!("no ingest checking thread runs: agent messages are not stored");
    }
    let external = matches!(hop, Hop::External);
    if let Hop::Embedded(link) = hop {
        let taking = take_from_router(
            link,
            shards.clone(),
            listeners.backlog.clone(),
            stop.clone(),
        );
        if let Err(e) = taking.await {
            tracing::error!(
                "ingest cannot take agent messages from the embedded broker: they are not stored ({e})"
            );
        }
    }
    let mut reconnect = crate::reconnect::Reconnect::new("ingest");
    let mut pending: VecDeque<Pending> = VecDeque::new();
    // Acknowledgements the client's queue had no room for, in order: sent first.
    let mut unsent: VecDeque<Publish> = VecDeque::new();
    let mut suback_wanted = 0usize;
    let mut redeliver_at: Option<tokio::time::Instant> = None;
    // The arms other than the poll wait while it connects: a connecting poll must not be
    // cancelled (vigil_shared::mqtt, "Polling").
    let mut connected = false;
    loop {
        while let Some(publish) = unsent.front() {
            if client.try_ack(publish).is_err() {
                break;
            }
            unsent.pop_front();
        }
        acknowledge_ready(
            &client,
            &mut pending,
            &mut unsent,
            &telemetry,
            &mut redeliver_at,
        );
        let front = pending.front_mut().and_then(|p| p.answer.as_mut());
        let event = tokio::select! {
            _ = stop.changed() => break,
            answer = async {
                match front {
                    Some(answer) => answer.await,
                    None => std::future::pending().await,
                }
            }, if connected => {
                if let Some(done) = pending.pop_front() {
                    let stored = matches!(answer, Ok(Ok(_)));
                    settle(&client, done.publish, stored, &mut unsent, &telemetry, &mut redeliver_at);
                }
                continue;
            }
            _ = async {
                match redeliver_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if connected => {
                redeliver_at = None;
                tracing::warn!(
                    unacknowledged = pending.len(),
                    "resuming the broker session to have it send again what the store could not take"
                );
                pending.clear();
                unsent.clear();
                // Dropped the connection: the next poll makes a new one.
                eventloop.clean();
                connected = false;
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                reconnect.connected();
                // What was waiting belongs to the old connection: the broker sends it again.
                pending.clear();
                unsent.clear();
                if !external {
                    // Deliveries come over the router link, subscribed already.
                    tracing::info!("coordinator connected to the embedded broker");
                    connects.send_modify(|n| *n += 1);
                    continue;
                }
                tracing::info!(
                    session_present = ack.session_present,
                    "ingest connected to broker; subscribing to agent topics"
                );
                suback_wanted = CHANNELS.len();
                for channel in CHANNELS {
                    if let Err(e) = client
                        .subscribe(topics::all_agents(channel), QoS::AtLeastOnce)
                        .await
                    {
                        tracing::error!("cannot subscribe to {channel:?}: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if suback_wanted > 0 => {
                suback_wanted -= 1;
                if suback_wanted == 0 {
                    connects.send_modify(|n| *n += 1);
                }
            }
            // Only on an external broker: on the embedded one the connection subscribes to
            // nothing (deliveries come over the router link).
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    publish: publish.clone(),
                    reply: Some(reply),
                };
                let Some(jobs) = shards.get(shard_of(&publish.topic, shards.len())) else {
                    tracing::error!("ingest runs no checking thread: the delivery waits for the broker to send it again");
                    continue;
                };
                if jobs.send(job).await.is_err() {
                    tracing::error!("an ingest checking thread has stopped");
                }
                pending.push_back(Pending {
                    publish,
                    answer: Some(answer),
                });
            }
            Ok(_) => {}
            Err(e) => {
                connected = false;
                pending.clear();
                unsent.clear();
                reconnect.failed(&e).await;
            }
        }
    }
    // Whatever the store already has is acknowledged; the rest the broker keeps.
    let _ = writer.flush().await;
    acknowledge_ready(
        &client,
        &mut pending,
        &mut unsent,
        &telemetry,
        &mut redeliver_at,
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(done) = pending.pop_front() {
            let stored = match done.answer {
                Some(answer) => matches!(answer.await, Ok(Ok(_))),
                None => true,
            };
            settle(
                &client,
                done.publish,
                stored,
                &mut unsent,
                &telemetry,
                &mut redeliver_at,
            );
        }
        for publish in unsent.drain(..) {
            let _ = client.try_ack(&publish);
        }
        // Let the event loop send the acknowledgements.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                if eventloop.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
    })
    .await;
    let _ = client.disconnect().await;
}

/// On the embedded broker: subscribes `link` to the agents' channels, then hands what
/// the router forwards, in order, to the shards that own its hosts, on a thread of its
/// own, until the router is gone or `stop` turns true. Returns once the router has
/// confirmed the subscriptions.
async fn take_from_router(
    mut link: RouterLink,
    shards: Vec<tokio::sync::mpsc::Sender<Job>>,
    backlog: Option<Arc<Backlog>>,
    stop: watch::Receiver<bool>,
) -> Result<(), LinkRefused> {
    let (subscribed, confirmed) = oneshot::channel();
    let take = move || {
        let filters: Vec<String> = CHANNELS.iter().map(|c| topics::all_agents(*c)).collect();
        let outcome = link.subscribe(&filters);
        let failed = outcome.is_err();
        let _ = subscribed.send(outcome);
        if failed {
            return;
        }
        let forwarded = link.forward(
            || *stop.borrow(),
            |topic, payload, retain| {
                // The front takes only UTF-8 topic names (MQTT's rule).
                let Ok(topic) = std::str::from_utf8(topic) else {
                    return;
                };
                if let Some(backlog) = &backlog {
                    backlog.taken(Backlog::size(topic.len(), payload.len()));
                }
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain,
                    topic: topic.to_string(),
                    pkid: 0,
                    payload,
                };
                let Some(jobs) = shards.get(shard_of(topic, shards.len())) else {
                    tracing::error!("ingest runs no checking thread: the message is not stored");
                    return;
                };
                let job = Job {
                    publish,
                    reply: None,
                };
                if jobs.blocking_send(job).is_err() {
                    tracing::error!("an ingest checking thread has stopped");
                }
            },
        );
        if let Err(e) = forwarded {
            tracing::error!("ingest takes no more agent messages from the embedded broker: {e}");
        }
    };
    std::thread::Builder::new()
        .name("vigil-ingest-link".into())
        .spawn(take)
        .map_err(|e| LinkRefused::Router(format!("cannot start ingest's link thread: {e}")))?;
    confirmed
        .await
        .unwrap_or_else(|_| Err(LinkRefused::Router("ingest's link thread ended".into())))
}

/// Acknowledges, in order, every delivery at the front of `pending` whose outcome is
/// known.
fn acknowledge_ready(
    client: &AsyncClient,
    pending: &mut VecDeque<Pending>,
    unsent: &mut VecDeque<Publish>,
    telemetry: &Telemetry,
    redeliver_at: &mut Option<tokio::time::Instant>,
) {
    while let Some(front) = pending.front_mut() {
        let answer = match &mut front.answer {
            None => true,
            Some(answer) => match answer.try_recv() {
                Ok(result) => result.is_ok(),
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => false,
            },
        };
        let Some(done) = pending.pop_front() else {
            return;
        };
        settle(
            client,
            done.publish,
            answer,
            unsent,
            telemetry,
            redeliver_at,
        );
    }
}

/// Acknowledges `publish` to the broker if the store took it (queued in `unsent` when the
/// client has no room now, or behind others waiting there: a lost acknowledgement would
/// hold one of the broker's in-flight slots for good); otherwise leaves it for the broker
/// to send again after [`REDELIVER_AFTER`].
fn settle(
    client: &AsyncClient,
    publish: Publish,
    stored: bool,
    unsent: &mut VecDeque<Publish>,
    telemetry: &Telemetry,
    redeliver_at: &mut Option<tokio::time::Instant>,
) {
    if stored {
        if !unsent.is_empty() || client.try_ack(&publish).is_err() {
            unsent.push_back(publish);
        }
    } else {
        telemetry.mqtt_unacknowledged.inc();
        redeliver_at.get_or_insert_with(|| tokio::time::Instant::now() + REDELIVER_AFTER);
    }
}

/// Checks one message and queues what it carries for the store; `reply` hears when the
/// delivery may be acknowledged: at once when there is nothing to wait for, else when
/// the store has committed it.
fn handle(
    publish: &Publish,
    client: &AsyncClient,
    gate: &mut Gate,
    writer: &StoreWriter,
    telemetry: &Telemetry,
    listeners: &Listeners,
    reply: Option<WriteReply>,
) {
    let (write, reply) = match check(publish, client, gate, telemetry, listeners) {
        // Refused or a duplicate: nothing to keep, the delivery is done.
        None => {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(0));
            }
            return;
        }
        Some(Wait::Nothing(write)) => (write, reply),
        Some(Wait::Queued {
            host,
            delivery,
            write,
        }) => (
            Write::Queued {
                host,
                delivery,
                write: Box::new(write),
                reply,
            },
            None,
        ),
    };
    if let Err(e) = writer.send_blocking(write) {
        telemetry
            .store_errors
            .with_label_values(&[e.reason()])
            .inc();
        tracing::error!(topic = %publish.topic, "cannot queue message for the store: {e}");
    }
    if let Some(reply) = reply {
        let _ = reply.send(Ok(0));
    }
}

/// What a checked message asks of the store.
enum Wait {
    /// A write from one of the agent's durable queues: acknowledged once committed.
    Queued {
        host: String,
        delivery: Delivery,
        write: Write,
    },
    /// A write the delivery need not wait for.
    Nothing(Write),
}

/// Checks one message; `None` when it is refused or a duplicate (counted and logged
/// here), else what to write.
fn check(
    publish: &Publish,
    client: &AsyncClient,
    gate: &mut Gate,
    telemetry: &Telemetry,
    listeners: &Listeners,
) -> Option<Wait> {
    let Listeners {
        metrics_tap,
        deadman,
        ..
    } = listeners;
    let Some((host, channel)) = topics::parse_agent(&publish.topic) else {
        reject(
            telemetry,
            "unknown",
            "topic",
            &publish.topic,
            "not an agent topic",
        );
        return None;
    };
    let received_ms = now_ms();
    if matches!(
        channel,
        AgentChannel::Commands
            | AgentChannel::Acks
            | AgentChannel::Session
            | AgentChannel::Welcome
            | AgentChannel::Leases
            | AgentChannel::Grants
    ) {
        return None;
    }
    let seal = match gate.open(host, channel, publish) {
        Ok(seal) => seal,
        Err(Rejection::Seal(Refusal::Duplicate { .. } | Refusal::SupersededWill { .. })) => {
            telemetry
                .mqtt_duplicates
                .with_label_values(&[channel.as_str()])
                .inc();
            return None;
        }
        Err(rejection) => {
            match &rejection {
                Rejection::Seal(Refusal::UnknownSession(id)) => {
                    gate.nudge(host, id.session, client);
                }
                Rejection::Seal(Refusal::Revoked(_) | Refusal::UnknownAgent(_)) => {
                    if let Some(mailroom) = &listeners.mailroom {
                        let ended = mailroom.end_host(host);
                        if ended > 0 {
                            tracing::warn!(%host, sessions = ended, "connections of a revoked agent ended");
                        }
                    }
                }
                _ => {}
            }
            rejection.report(telemetry, channel, &publish.topic);
            return None;
        }
    };
    let clock_skew_ms = gate.skew(host, channel, &seal, publish.retain, received_ms, telemetry);
    let body = &seal.body;
    let write = match channel {
        AgentChannel::Metrics => match checked::<MetricBatch>(host, body) {
            Ok(batch) => {
                let points = Points::new(&batch.host, &batch.labels, &batch.samples);
                let host = match metrics_tap {
                    Some(tap) => {
                        let host = batch.host.clone();
                        tap.offer(batch, received_ms);
                        host
                    }
                    None => batch.host,
                };
                Write::Samples {
                    points,
                    host,
                    source: Source::Mqtt,
                    received_ms,
                    reply: None,
                }
            }
            Err(rejection) => {
                rejection.report(telemetry, channel, &publish.topic);
                return None;
            }
        },
        AgentChannel::Status => match checked::<StatusReport>(host, body) {
            Ok(StatusReport { status, running }) => {
                deadman.status(&status, received_ms);
                Write::Status {
                    status,
                    running,
                    received_ms,
                    clock_skew_ms,
                    order: Some(StatusOrder {
                        session: seal.session,
                        seq: seal.seq,
                        will: seal.will,
                    }),
                }
            }
            Err(rejection) => {
                rejection.report(telemetry, channel, &publish.topic);
                return None;
            }
        },
        AgentChannel::Actions => match checked::<ActionEvent>(host, body) {
            Ok(event) => Write::Action { event },
            Err(rejection) => {
                rejection.report(telemetry, channel, &publish.topic);
                return None;
            }
        },
        AgentChannel::Events => match checked::<PolicyEvent>(host, body) {
            Ok(event) => Write::Event { event },
            Err(rejection) => {
                rejection.report(telemetry, channel, &publish.topic);
                return None;
            }
        },
        // Handshakes and lease requests have their own subscriptions
        // (`super::handshake`, `crate::budgets`).
        AgentChannel::Commands
        | AgentChannel::Acks
        | AgentChannel::Session
        | AgentChannel::Welcome
        | AgentChannel::Leases
        | AgentChannel::Grants => return None,
    };
    let expected = match channel {
        AgentChannel::Metrics => Some(Stream::Metrics),
        AgentChannel::Actions | AgentChannel::Events => Some(Stream::Outbox),
        _ => None,
    };
    let wait = match (expected, seal.delivery) {
        (None, _) => Wait::Nothing(write),
        (Some(stream), Some(delivery)) if delivery.stream == stream => Wait::Queued {
            host: host.to_string(),
            delivery,
            write,
        },
        (Some(stream), _) => {
            reject(
                telemetry,
                channel.as_str(),
                "no_delivery",
                &publish.topic,
                &format!(
                    "not sealed with its place in the agent's {} queue",
                    stream.as_str()
                ),
            );
            return None;
        }
    };
    if channel == AgentChannel::Metrics {
        deadman.sample(host, received_ms);
    }
    telemetry
        .mqtt_messages
        .with_label_values(&[channel.as_str()])
        .inc();
    Some(wait)
}

/// Checks seals: the enrolled agents' keys, their session keys, and what each has
/// already sent.
pub struct Gate {
    keys: AgentKeys,
    sessions: SharedSessionKeys,
    /// Signs the notices to handshake again.
    coordinator: Arc<BundleKeys>,
    /// When each host was last asked to handshake again.
    nudged: HashMap<String, std::time::Instant>,
    guard: ReplayGuard,
    /// When each host's clock skew was last logged, epoch ms.
    skew_logged: HashMap<String, i64>,
}

impl Gate {
    /// A gate over the enrolled keys in `store` and the session keys [`super::handshake`]
    /// makes; `coordinator` signs notices to handshake again.
    pub fn new(store: Store, sessions: SharedSessionKeys, coordinator: Arc<BundleKeys>) -> Gate {
        Gate {
            keys: AgentKeys::new(store),
            sessions,
            coordinator,
            nudged: HashMap::new(),
            guard: ReplayGuard::default(),
            skew_logged: HashMap::new(),
        }
    }

    /// Opens a sealed payload from `host`'s `channel` topic and returns its seal (the
    /// message inside still encoded), or why it is refused.
    fn open(
        &mut self,
        host: &str,
        channel: AgentChannel,
        publish: &Publish,
    ) -> Result<Seal, Rejection> {
        let sealed = wire::decode::<SealedMessage>(&publish.payload).map_err(Rejection::Decode)?;
        let seal = match &sealed.auth {
            Authenticator::Signature(_) => self
                .keys
                .check(host, |key| agent_auth::open(&sealed, key, host, channel)),
            Authenticator::Mac(_) => self.open_mac(host, channel, &sealed),
        }
        .map_err(Rejection::Seal)?;
        self.guard
            .admit(&seal, channel, publish.retain)
            .map_err(Rejection::Seal)?;
        Ok(seal)
    }

    /// Checks a MAC'd message with the session key it names. The host's enrolled key
    /// is looked up (cached, [`AgentKeys`]) for every message, so that a revocation drops
    /// its session keys as soon as the cache sees it.
    fn open_mac(
        &mut self,
        host: &str,
        channel: AgentChannel,
        sealed: &SealedMessage,
    ) -> Result<Seal, Refusal> {
        let enrolled = match self.keys.check(host, |key| Ok(key.clone())) {
            Ok(enrolled) => enrolled,
            Err(refusal) => {
                self.sessions.lock().forget(host);
                return Err(refusal);
            }
        };
        let seal = agent_auth::peek(sealed)?;
        let Some(id) = seal.key_id() else {
            return Err(Refusal::Malformed("MAC'd, yet names no session key".into()));
        };
        let key = self
            .sessions
            .lock()
            .lookup(host, &enrolled, id, channel, std::time::Instant::now())?
            .clone();
        agent_auth::open_mac(sealed, seal, &key, host, channel)
    }

    /// Asks `host` to handshake again (its message named a key this coordinator does
    /// not hold), at most every [`NUDGE_EVERY`].
    fn nudge(&mut self, host: &str, session: u64, client: &AsyncClient) {
        let now = std::time::Instant::now();
        if let Some(at) = self.nudged.get(host) {
            if now.duration_since(*at) < NUDGE_EVERY {
                return;
            }
        }
        if self.nudged.len() >= 100_000 {
            self.nudged.clear();
        }
        self.nudged.insert(host.to_string(), now);
        let notice = agent_auth::rehandshake_notice(&self.coordinator, host, session);
        if let Err(e) = client.try_publish(
            topics::agent(host, AgentChannel::Welcome),
            QoS::AtLeastOnce,
            false,
            notice,
        ) {
            tracing::debug!(%host, "cannot queue the request to handshake again: {e}");
        }
    }

    /// The host's clock minus ours, from a fresh message's seal (`None` for the last
    /// will and retained messages, sealed long before they arrive). Counted and logged
    /// (once a minute per host) when more than [`MAX_CLOCK_SKEW_MS`].
    fn skew(
        &mut self,
        host: &str,
        channel: AgentChannel,
        seal: &Seal,
        retained: bool,
        received_ms: i64,
        telemetry: &Telemetry,
    ) -> Option<i64> {
        if seal.will || retained {
            return None;
        }
        let skew_ms = seal.sealed_at_ms.saturating_sub(received_ms);
        if skew_ms.saturating_abs() > MAX_CLOCK_SKEW_MS {
            telemetry
                .clock_skewed
                .with_label_values(&[channel.as_str()])
                .inc();
            let last = self.skew_logged.get(host).copied().unwrap_or(i64::MIN);
            if received_ms.saturating_sub(last) >= SKEW_LOG_EVERY_MS {
                if self.skew_logged.len() >= 100_000 {
                    self.skew_logged.clear();
                }
                self.skew_logged.insert(host.to_string(), received_ms);
                tracing::warn!(
                    %host,
                    skew_ms,
                    "the agent's clock is off; its data is stored with its own times \
                     and the coordinator's receive time"
                );
            }
        }
        Some(skew_ms)
    }
}

/// Why a message was refused.
enum Rejection {
    Decode(DecodeError),
    Seal(Refusal),
    HostMismatch { claimed: String },
}

impl Rejection {
    fn report(self, telemetry: &Telemetry, channel: AgentChannel, topic: &str) {
        match self {
            Rejection::Decode(e) => reject(
                telemetry,
                channel.as_str(),
                e.reason(),
                topic,
                &e.to_string(),
            ),
            Rejection::Seal(refusal) => reject(
                telemetry,
                channel.as_str(),
                refusal.reason(),
                topic,
                &refusal.to_string(),
            ),
            Rejection::HostMismatch { claimed } => reject(
                telemetry,
                channel.as_str(),
                "host_mismatch",
                topic,
                &format!("payload speaks for host `{claimed}`"),
            ),
        }
    }
}

/// Decodes a message and checks that it speaks for the host named in its topic.
fn checked<T: WireMessage>(topic_host: &str, payload: &[u8]) -> Result<T, Rejection> {
    let message = wire::decode::<T>(payload).map_err(Rejection::Decode)?;
    if message.host() != topic_host {
        return Err(Rejection::HostMismatch {
            claimed: message.host().to_string(),
        });
    }
    Ok(message)
}

fn reject(telemetry: &Telemetry, channel: &str, reason: &str, topic: &str, message: &str) {
    telemetry
        .mqtt_rejected
        .with_label_values(&[channel, reason])
        .inc();
    tracing::warn!(%topic, reason, "rejected MQTT message: {message}");
}
