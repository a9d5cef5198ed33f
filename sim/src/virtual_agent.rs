//! One virtual agent: its own MQTT connection, host name and labels; a retained online
//! status with an offline last will, as a real agent has; metric batches every tick and
//! an action's transitions every few batches, all at QoS 1; and the faults of its
//! [`Chaos`] injected along the way.
//!
//! Like a real agent it logs in with the MQTT login it got at enrollment
//! ([`crate::enroll`]), as client `vigil-agent-{host}`, and seals every message with its
//! enrolled key ([`Sealer`]): the last will first on each connection (every later status
//! names the armed will), then the online status, batches and action transitions. A
//! virtual agent without an enrollment seals with a key of its own that no coordinator
//! knows (for load on a bare broker).
//!
//! Action transitions are never lost, as with a real agent's durable outbox: each one
//! stays outstanding until the broker acknowledges it, and whatever is outstanding when a
//! connection dies is published again on the next one (a redelivery the coordinator must
//! store only once). Metric batches are fire-and-count, as a real agent's are.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vigil_shared::broker_url::BrokerUrl;
use vigil_shared::mqtt::client_options;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    self, ActionEvent, ActionState, AgentState, AgentStatus, MetricBatch, PolicyRunnerStatus,
    QueueStatus, Sample, Tag,
};

use vigil_shared::agent_auth::{AgentKey, Sealer};

use crate::chaos::{Chaos, Ingredient, Malformed};
use crate::enroll::AgentLogin;
use crate::mode::Mode;
use crate::report::Counters;

/// Metric names a virtual agent reports; each batch cycles through them, with a
/// `core` tag to make distinct series.
const METRICS: [&str; 10] = [
    "cpu_percent",
    "memory_used_percent",
    "disk_used_percent",
    "load1",
    "load5",
    "load15",
    "net_rx_bytes_per_second",
    "net_tx_bytes_per_second",
    "process_count",
    "swap_used_percent",
];

/// How long a finished agent waits for its outstanding action transitions to be
/// acknowledged before it disconnects.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before reconnecting after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Requests a connection's queue holds before publishing waits (backpressure).
const CLIENT_QUEUE: usize = 256;

/// What every virtual agent of a fleet does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The broker.
    pub broker: BrokerUrl,
    /// MQTT credentials for every agent, instead of each agent's enrolled login (for an
    /// external broker with accounts of its own).
    pub credentials: Option<(String, String)>,
    /// The load shape.
    pub mode: Mode,
    /// Faults to inject.
    pub chaos: Chaos,
    /// Time between ticks; zero sends as fast as the connection takes.
    pub interval: Duration,
    /// Samples per metric batch.
    pub samples_per_batch: usize,
    /// An action's transitions are published every this many batches; 0 for none.
    pub action_every: u64,
    /// How long the fleet runs (ignored once `batches_per_agent` are sent).
    pub duration: Duration,
    /// Stop after this many well-formed batches, if set.
    pub batches_per_agent: Option<u64>,
    /// Seed for the fault dice (each agent adds its index).
    pub seed: u64,
}

/// Who one virtual agent is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its host name.
    pub host: String,
    /// Its labels.
    pub labels: Vec<Tag>,
    /// Its index in the fleet.
    pub index: usize,
    /// Its enrollment at the coordinator, if it has one.
    pub login: Option<AgentLogin>,
}

/// What a fleet's agents share: counters, and the ledger of well-formed action
/// transitions for checking that each was stored exactly once.
#[derive(Debug, Default)]
pub struct Shared {
    /// The counters.
    pub counters: Counters,
    /// Action id → (host, distinct transitions published).
    pub ledger: Mutex<HashMap<String, (String, u32)>>,
}

impl Shared {
    fn record_transition(&self, event: &ActionEvent) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        ledger
            .entry(event.id.clone())
            .or_insert_with(|| (event.host.clone(), 0))
            .1 += 1;
    }
}

/// Matches broker acknowledgements to the action transitions they acknowledge.
///
/// rumqttc reports each publish it writes (`Outgoing::Publish(pkid)`) in the order they
/// were queued, so a FIFO of what was queued tells which packet id carries which
/// transition; a PUBACK for that id settles it.
#[derive(Debug, Default)]
struct Tracker {
    /// What each queued, not yet written publish carries (an outstanding key or nothing).
    queued: VecDeque<Option<u64>>,
    /// Written, not yet acknowledged publishes by packet id.
    in_flight: HashMap<u16, Option<u64>>,
    /// Action transitions not yet acknowledged, by local key.
    outstanding: BTreeMap<u64, ActionEvent>,
    next_key: u64,
}

impl Tracker {
    fn queue(&mut self, action: Option<ActionEvent>) {
        let key = action.map(|event| {
            let key = self.next_key;
            self.next_key += 1;
            self.outstanding.insert(key, event);
            key
        });
        self.queued.push_back(key);
    }

    fn written(&mut self, pkid: u16) {
        let key = self.queued.pop_front().flatten();
        self.in_flight.insert(pkid, key);
    }

    fn acked(&mut self, pkid: u16) {
        if let Some(Some(key)) = self.in_flight.remove(&pkid) {
            self.outstanding.remove(&key);
        }
    }

    /// Takes every unacknowledged transition, for resending on a new connection.
    fn take_outstanding(&mut self) -> Vec<ActionEvent> {
        self.queued.clear();
        self.in_flight.clear();
        std::mem::take(&mut self.outstanding)
            .into_values()
            .collect()
    }
}

type SharedTracker = Arc<Mutex<Tracker>>;

fn lock(tracker: &SharedTracker) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One MQTT connection: the client and the task that drives its event loop.
struct Session {
    client: AsyncClient,
    driver: JoinHandle<()>,
    dead: watch::Receiver<bool>,
    connected: Arc<AtomicBool>,
    /// Set before a clean disconnect, so the connection's end is not counted as an error.
    closing: Arc<AtomicBool>,
}

impl Session {
    /// Opens a connection; its last will is sealed (and armed) here, so the caller's
    /// online status, sealed after, names it.
    fn open(
        me: &Identity,
        plan: &Plan,
        shared: &Arc<Shared>,
        tracker: &SharedTracker,
        sealer: &Sealer,
    ) -> Session {
        let (user, pass) = match (&plan.credentials, &me.login) {
            (Some((u, p)), _) => (Some(u.as_str()), Some(p.as_str())),
            (None, Some(login)) => (Some(login.username.as_str()), Some(login.password.as_str())),
            (None, None) => (None, None),
        };
        // Plain MQTT only (main refuses mqtts:// brokers), so this cannot fail.
        let mut options = client_options(
            &vigil_shared::mqtt::agent_client_id(&me.host),
            &plan.broker.without_tls(),
            user,
            pass,
            None,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let offline = status(me, AgentState::Offline);
        options.set_last_will(LastWill::new(
            topics::agent(&me.host, AgentChannel::Status),
            sealer.seal_will(wire::encode(&offline)),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
        let (dead_tx, dead) = watch::channel(false);
        let connected = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let driver = {
            let shared = Arc::clone(shared);
            let tracker = Arc::clone(tracker);
            let connected = Arc::clone(&connected);
            let closing = Arc::clone(&closing);
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected.store(true, Ordering::Relaxed);
                            Counters::inc(&shared.counters.connected);
                            Counters::inc(&shared.counters.connects);
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            lock(&tracker).acked(ack.pkid);
                            Counters::inc(&shared.counters.acked);
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            lock(&tracker).written(pkid)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !closing.load(Ordering::Relaxed) {
                                tracing::debug!("virtual agent connection lost: {e}");
                                Counters::inc(&shared.counters.connection_errors);
                            }
                            break;
                        }
                    }
                }
                let _ = dead_tx.send(true);
            })
        };
        Session {
            client,
            driver,
            dead,
            connected,
            closing,
        }
    }

    /// Ends the session; `abrupt` drops the socket without an MQTT DISCONNECT.
    async fn close(self, shared: &Shared, abrupt: bool) {
        self.closing.store(true, Ordering::Relaxed);
        if !abrupt {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), self.driver).await;
        } else {
            self.driver.abort();
            let _ = self.driver.await;
        }
        if self.connected.swap(false, Ordering::Relaxed) {
            shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }
}

/// The retained status a virtual agent publishes (and its last will).
fn status(me: &Identity, state: AgentState) -> AgentStatus {
    AgentStatus {
        host: me.host.clone(),
        state,
        agent_version: concat!("vigil-sim ", env!("CARGO_PKG_VERSION")).into(),
        started_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        interval_ms: 1000,
        labels: me.labels.clone(),
        bundles: Vec::new(),
        bundle_error: None,
        remediation_paused: false,
        detail: Some("simulated".into()),
        policies: PolicyRunnerStatus::default(),
        queue: QueueStatus::default(),
        delivery: None,
    }
}

/// A metric batch of `size` samples.
fn batch(me: &Identity, seq: u64, size: usize, rng: &mut StdRng, ts_ms: i64) -> MetricBatch {
    let samples = (0..size)
        .map(|i| Sample {
            name: METRICS[i % METRICS.len()].to_string(),
            value: rng.random_range(0.0..100.0),
            ts_ms,
            tags: vec![("core".to_string(), (i / METRICS.len()).to_string())],
        })
        .collect();
    MetricBatch {
        host: me.host.clone(),
        seq,
        sent_at_ms: now_ms(),
        labels: me.labels.clone(),
        samples,
    }
}

/// The transitions of one action: pending, running, then completed — or, one time in
/// five, a failed first attempt and a completed second.
fn action_lifecycle(me: &Identity, rng: &mut StdRng) -> Vec<ActionEvent> {
    let id = ulid::Ulid::generate().to_string();
    let created = now_ms();
    let event = |state, attempt, offset| ActionEvent {
        id: id.clone(),
        host: me.host.clone(),
        policy: Some("sim-service-down".into()),
        target: format!("sim-{}.service", rng_target(me.index)),
        action: "restart".into(),
        state,
        attempt,
        dry_run: false,
        detail: None,
        created_at_ms: created,
        at_ms: created + offset,
        max_attempts: 3,
        executor: Some("systemd".into()),
        step: Some(0),
        params: None,
    };
    let mut events = vec![
        event(ActionState::Pending, 1, 0),
        event(ActionState::Running, 1, 1),
    ];
    if rng.random_bool(0.2) {
        events.push(event(ActionState::Failed, 1, 2));
        events.push(event(ActionState::Running, 2, 3));
        events.push(event(ActionState::Completed, 2, 4));
    } else {
        events.push(event(ActionState::Completed, 1, 2));
    }
    events
}

fn rng_target(index: usize) -> usize {
    index % 7
}

/// Publishes at QoS 1, tracking action transitions; false if the connection is gone.
async fn publish(
    session: &Session,
    tracker: &SharedTracker,
    topic: String,
    retain: bool,
    payload: Vec<u8>,
    action: Option<ActionEvent>,
) -> bool {
    lock(tracker).queue(action);
    session
        .client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .is_ok()
}

/// Publishes one action transition, sealed now (a resend or an injected duplicate is a
/// new seal, as a real agent's outbox seals at send time: the coordinator's idempotent
/// store is what keeps it from being stored twice), tracked until acknowledged. A failed
/// hand-over leaves it outstanding: it is resent on the next connection.
async fn publish_action(
    session: &Session,
    tracker: &SharedTracker,
    sealer: &Sealer,
    topic: &str,
    event: ActionEvent,
) {
    let payload = sealer.seal(AgentChannel::Actions, wire::encode(&event));
    let _ = publish(
        session,
        tracker,
        topic.to_string(),
        false,
        payload,
        Some(event),
    )
    .await;
}

/// Runs one virtual agent until the plan's duration has passed, its batches are sent,
/// or `stop` turns true; then waits for its outstanding action transitions to be
/// acknowledged and disconnects cleanly.
pub async fn run(
    me: Identity,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(me.index as u64));
    let sealer = Sealer::new(
        me.host.clone(),
        me.login
            .as_ref()
            .map_or_else(AgentKey::generate, AgentLogin::key),
    );
    // Seals with a key the coordinator never enrolled (the `forged` fault).
    let forger = Sealer::new(me.host.clone(), AgentKey::generate());
    let tracker: SharedTracker = Arc::default();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(plan.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let mut sent_batches: u64 = 0;
    let mut resend: Vec<ActionEvent> = Vec::new();
    let mut drain_deadline: Option<Instant> = None;
    let mut last_ts_ms: i64 = 0;
    let metrics_topic = topics::agent(&me.host, AgentChannel::Metrics);
    let actions_topic = topics::agent(&me.host, AgentChannel::Actions);
    let status_topic = topics::agent(&me.host, AgentChannel::Status);
    // Encodings used for the malformed kinds that need whole messages (sealed when sent).
    let invalid = {
        let mut b = batch(&me, 0, 1, &mut rng, now_ms());
        b.samples[0].name.clear();
        wire::encode(&b)
    };
    let other_host = {
        let mut b = batch(&me, 0, 1, &mut rng, now_ms());
        b.host = format!("{}-impostor", me.host);
        wire::encode(&b)
    };

    'sessions: loop {
        let session = Session::open(&me, &plan, &shared, &tracker, &sealer);
        let online = sealer.seal(
            AgentChannel::Status,
            wire::encode(&status(&me, AgentState::Online)),
        );
        if publish(&session, &tracker, status_topic.clone(), true, online, None).await {
            Counters::inc(&shared.counters.statuses);
        }
        for event in resend.drain(..) {
            Counters::inc(&shared.counters.action_redeliveries);
            publish_action(&session, &tracker, &sealer, &actions_topic, event).await;
        }
        loop {
            if session.is_dead() {
                session.close(&shared, true).await;
                resend = lock(&tracker).take_outstanding();
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue 'sessions;
            }
            let finished = started.elapsed() >= plan.duration
                || plan.batches_per_agent.is_some_and(|n| sent_batches >= n)
                || *stop.borrow();
            if finished {
                // Wait for outstanding action transitions to be acknowledged (a lost
                // connection meanwhile resends them), then leave cleanly.
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                let outstanding = lock(&tracker).outstanding.len();
                if outstanding == 0 || Instant::now() > deadline {
                    if outstanding > 0 {
                        tracing::warn!(host = %me.host, outstanding, "action transitions still unacknowledged after {DRAIN_TIMEOUT:?}");
                    }
                    let offline = sealer.seal(
                        AgentChannel::Status,
                        wire::encode(&status(&me, AgentState::Offline)),
                    );
                    if publish(
                        &session,
                        &tracker,
                        status_topic.clone(),
                        true,
                        offline,
                        None,
                    )
                    .await
                    {
                        Counters::inc(&shared.counters.statuses);
                    }
                    session.close(&shared, false).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if plan.interval.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => continue,
                }
            }
            if plan.chaos.disconnect_rate > 0.0 && rng.random_bool(plan.chaos.disconnect_rate) {
                Counters::inc(&shared.counters.abrupt_disconnects);
                session.close(&shared, true).await;
                resend = lock(&tracker).take_outstanding();
                // As a real agent backs off: the broker sends the last will of this
                // connection before the next one's online status arrives.
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue 'sessions;
            }
            let rate = plan.mode.batches_per_tick(started.elapsed(), plan.duration);
            let whole = rate.floor();
            let count = whole as u64 + u64::from(rng.random_bool((rate - whole).clamp(0.0, 1.0)));
            for _ in 0..count {
                if plan.batches_per_agent.is_some_and(|n| sent_batches >= n) {
                    break;
                }
                // One point per series and millisecond, as a real agent sends: batches
                // sent faster than that get the next free millisecond.
                last_ts_ms = now_ms().max(last_ts_ms + 1);
                let mut ts_ms = last_ts_ms;
                let mut batch_seq = seq;
                let late = plan.chaos.out_of_order_rate > 0.0
                    && rng.random_bool(plan.chaos.out_of_order_rate);
                if late {
                    ts_ms -= rng.random_range(1_000..3_600_000);
                    batch_seq = seq.saturating_sub(rng.random_range(1..10));
                }
                let encoded = wire::encode(&batch(
                    &me,
                    batch_seq,
                    plan.samples_per_batch,
                    &mut rng,
                    ts_ms,
                ));
                seq += 1;
                if plan.chaos.malformed_rate > 0.0 && rng.random_bool(plan.chaos.malformed_rate) {
                    let kind = Malformed::pick(&mut rng);
                    let bad = kind.payload(|what| match what {
                        Ingredient::Sealed => sealer.seal(AgentChannel::Metrics, encoded),
                        Ingredient::SealedInvalid => {
                            sealer.seal(AgentChannel::Metrics, invalid.clone())
                        }
                        Ingredient::SealedOtherHost => {
                            sealer.seal(AgentChannel::Metrics, other_host.clone())
                        }
                        Ingredient::Forged => forger.seal(AgentChannel::Metrics, encoded),
                    });
                    if publish(&session, &tracker, metrics_topic.clone(), false, bad, None).await {
                        shared.counters.malformed_sent(kind);
                    } else {
                        Counters::inc(&shared.counters.send_failures);
                    }
                    continue;
                }
                let good = sealer.seal(AgentChannel::Metrics, encoded);
                if publish(&session, &tracker, metrics_topic.clone(), false, good, None).await {
                    sent_batches += 1;
                    Counters::inc(&shared.counters.batches);
                    if late {
                        Counters::inc(&shared.counters.out_of_order);
                    }
                    shared
                        .counters
                        .samples
                        .fetch_add(plan.samples_per_batch as u64, Ordering::Relaxed);
                } else {
                    Counters::inc(&shared.counters.send_failures);
                }
                if plan.action_every > 0 && seq % plan.action_every == 0 {
                    for event in action_lifecycle(&me, &mut rng) {
                        shared.record_transition(&event);
                        Counters::inc(&shared.counters.action_transitions);
                        let copies = if plan.chaos.duplicate_rate > 0.0
                            && rng.random_bool(plan.chaos.duplicate_rate)
                        {
                            2
                        } else {
                            1
                        };
                        for copy in 0..copies {
                            if copy > 0 {
                                Counters::inc(&shared.counters.action_redeliveries);
                            }
                            publish_action(
                                &session,
                                &tracker,
                                &sealer,
                                &actions_topic,
                                event.clone(),
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }
}
