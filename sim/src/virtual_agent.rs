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
//! Like a real agent, an enrolled virtual agent whose enrollment names the coordinator's
//! key makes session key handshakes ([`vigil_shared::agent_auth`]): a Hello on every
//! connection and every [`REKEY_EVERY`], so that after the first Welcome its messages are
//! MAC'd rather than signed. [`Plan::signatures_only`] keeps every message signed (the
//! per-message ed25519 path, as a benchmark's baseline).
//!
//! Like a real agent ([`vigil_shared::delivery`]), each virtual agent keeps what it must
//! not lose in two queues held in memory — the outbox (action transitions) and the
//! metrics queue (well-formed batches) — each with a random epoch and sequence numbers
//! from 1, and seals every message taken from one with its place there
//! ([`Sealer::seal_queued`]). It subscribes to its own `acks` topic on every connection
//! and forgets only what the coordinator's acknowledgements say is stored (checked with
//! the coordinator's key when the enrollment named it). At most [`IN_FLIGHT`] messages
//! per queue are out unacknowledged (more keep queueing); after a reconnection, and
//! when the shared [`ResendTimer`] says so (as a real agent's), everything
//! unacknowledged is sent again from the queue's floor: the coordinator stores each
//! message once. A finished agent drains:
//! it waits until both queues are acknowledged, giving up after [`DRAIN_TIMEOUT`]
//! without an acknowledgement.
//!
//! With [`Plan::follow_bundles`] it also follows the coordinator's policy bundles as a
//! real agent does: it subscribes to `vigil/v1/bundles/+`, checks each bundle's signature
//! with the coordinator's key (once per distinct message in the process: every agent gets
//! the same one), keeps the newest version of each group its labels put it in, and
//! reports those in a new online status, which is what `/api/v1/drift` compares.
//!
//! What the fleet generated is written down in [`Shared`]'s ledgers (each action's
//! transitions, each host's batch timestamps), for [`crate::verify`] to look up one by
//! one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use vigil_shared::agent_auth::{AgentKey, Sealer, Taken, REKEY_EVERY};

use vigil_shared::broker_url::BrokerUrl;
use vigil_shared::bundle::{self, PublicKey, Release, SignedBundle};
use vigil_shared::delivery::{Delivery, DeliveryAck, ResendTimer, Stream};
use vigil_shared::mqtt::client_options;
use vigil_shared::signed;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    self, ActionEvent, ActionState, AgentState, AgentStatus, AppliedBundle, MetricBatch,
    PolicyRunnerStatus, QueueStatus, Sample, Tag,
};

use crate::chaos::{Chaos, Ingredient, Malformed};
use crate::enroll::AgentLogin;
use crate::mode::Mode;
use crate::pattern::{Decided, LiveEvaluator, Pattern};
use crate::report::Counters;

/// Metric names a virtual agent reports; each batch cycles through them, with a
/// `core` tag to make distinct series.
pub const METRICS: [&str; 10] = [
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

/// Most messages per queue sent and not yet acknowledged (as a real agent; well inside
/// the coordinator's window, [`vigil_shared::delivery::WINDOW`]).
pub const IN_FLIGHT: u64 = 256;
/// How long a finished agent waits for an acknowledgement of its queues before it
/// gives up on them and disconnects (it waits on while acknowledgements come).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before reconnecting after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Requests a connection's queue holds before publishing waits (backpressure).
const CLIENT_QUEUE: usize = 256;
/// How often an agent waiting for acknowledgements looks at its queues anyway (resends
/// due, a lost connection).
const IDLE_CHECK: Duration = Duration::from_millis(100);

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
    /// Time between ticks; zero generates as fast as the agent's loop turns.
    pub interval: Duration,
    /// Samples per metric batch.
    pub samples_per_batch: usize,
    /// An action's transitions are generated every this many batches; 0 for none.
    pub action_every: u64,
    /// How long the fleet runs (ignored once `batches_per_agent` are generated).
    pub duration: Duration,
    /// Stop after this many well-formed batches, if set.
    pub batches_per_agent: Option<u64>,
    /// Seed for the fault dice (each agent adds its index).
    pub seed: u64,
    /// Sign every message with the agent's ed25519 key: no session key handshake.
    pub signatures_only: bool,
    /// A known pattern for one metric, and policies each agent evaluates on what it
    /// publishes ([`Pattern`]); `None`: random values, no evaluation.
    pub pattern: Option<Pattern>,
    /// Follow the coordinator's policy bundles as a real agent does: subscribe to them,
    /// check each, and report the versions of the groups it is in in its status (what
    /// `/api/v1/drift` compares).
    pub follow_bundles: bool,
    /// Hold every agent's first batch until the whole fleet is connected, each with its
    /// session key when it makes handshakes, then start at once ([`StartLine`]): a load
    /// that measures what the coordinator stores, not how it takes connections.
    pub start_together: bool,
}

/// Where a fleet's agents wait for each other before their first batch
/// ([`Plan::start_together`]).
#[derive(Debug, Default)]
pub struct StartLine {
    /// Agents in the fleet.
    expected: AtomicUsize,
    /// Agents that are ready.
    ready: AtomicUsize,
    /// Set when the last one is ready (or one gave up waiting).
    go: AtomicBool,
    notify: Notify,
}

/// How long an agent waits at the start line for the rest of the fleet (or for its own
/// session key) before it starts anyway.
const START_LINE_TIMEOUT: Duration = Duration::from_secs(30);

impl StartLine {
    /// Sets how many agents the line waits for.
    pub(crate) fn expect(&self, agents: usize) {
        self.expected.store(agents, Ordering::SeqCst);
    }

    /// Counts this agent ready and waits for the rest, at most [`START_LINE_TIMEOUT`].
    async fn ready_and_wait(&self, host: &str) {
        let ready = self.ready.fetch_add(1, Ordering::SeqCst) + 1;
        if ready >= self.expected.load(Ordering::SeqCst) {
            self.open();
            return;
        }
        let waited = tokio::time::timeout(START_LINE_TIMEOUT, async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.go.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(%host, ready = self.ready.load(Ordering::SeqCst), "the fleet is not all ready: starting anyway");
            self.open();
        }
    }

    fn open(&self) {
        self.go.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
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

/// One action as generated: its host and its transitions, `(state, attempt)`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionLedger {
    /// The host it ran on.
    pub host: String,
    /// Its transitions.
    pub transitions: Vec<(ActionState, u32)>,
}

/// The metric batches one host generated: every batch holds the same series
/// (`samples_per_batch` samples, see [`series_of_batch`]) at one timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostBatches {
    /// Samples in each batch.
    pub samples_per_batch: usize,
    /// Each batch's sample timestamp, epoch ms (distinct: batches at the same time hold
    /// the same points).
    pub timestamps: BTreeSet<i64>,
    /// Batches generated (a timestamp may repeat: a late batch may land on an earlier one).
    pub batches: u64,
}

/// The series a batch of `size` samples holds: `(metric name, core tag)`.
pub fn series_of_batch(size: usize) -> Vec<(&'static str, String)> {
    (0..size)
        .map(|i| (METRICS[i % METRICS.len()], (i / METRICS.len()).to_string()))
        .collect()
}

/// What a fleet's agents share: counters, and the ledgers of what they generated, for
/// checking that each action transition and each batch was stored exactly once.
#[derive(Debug, Default)]
pub struct Shared {
    /// The counters.
    pub counters: Counters,
    /// Action id → what was generated.
    pub ledger: Mutex<HashMap<String, ActionLedger>>,
    /// Host → its metric batches.
    pub batches: Mutex<HashMap<String, HostBatches>>,
    /// Policy → what the agents' engines decided on the published batches (with a
    /// [`Plan::pattern`]).
    pub decided: Mutex<BTreeMap<String, Decided>>,
    /// (group, version) → how many agents applied that bundle, and when the last did
    /// (with [`Plan::follow_bundles`]).
    pub bundles: Mutex<BTreeMap<(String, u64), BundleTally>>,
    /// Every bundle message checked so far, by its bytes: the bundle if it verified.
    /// Agents in one process receive the same signed message; it is checked once.
    checked_bundles: Mutex<HashMap<Vec<u8>, Option<Arc<Checked>>>>,
    /// Where the agents wait for each other with [`Plan::start_together`].
    pub start_line: StartLine,
}

/// A bundle message that verified: what it releases, and its content hash.
#[derive(Debug)]
struct Checked {
    release: Release,
    hash: String,
}

/// How many virtual agents applied one bundle version.
#[derive(Debug, Clone, Copy)]
pub struct BundleTally {
    /// Agents that applied it.
    pub agents: u64,
    /// When the last of them did.
    pub last: Instant,
}

impl Shared {
    /// The bundle a message carries if it verifies with `key` (checked once per distinct
    /// message).
    fn checked_bundle(&self, payload: &[u8], key: &PublicKey) -> Option<Arc<Checked>> {
        let mut checked = self
            .checked_bundles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = checked.get(payload) {
            return known.clone();
        }
        let opened = wire::decode::<SignedBundle>(payload)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                let release = bundle::open(&signed, key, None).map_err(|e| e.to_string())?;
                Ok(Arc::new(Checked {
                    release,
                    hash: signed.hash,
                }))
            });
        let opened = match opened {
            Ok(checked) => Some(checked),
            Err(e) => {
                tracing::warn!("a bundle message does not verify: {e}");
                None
            }
        };
        if checked.len() >= 1024 {
            checked.clear();
        }
        checked.insert(payload.to_vec(), opened.clone());
        opened
    }

    fn record_bundle(&self, group: &str, version: u64) {
        let mut bundles = self.bundles.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = bundles
            .entry((group.to_string(), version))
            .or_insert(BundleTally {
                agents: 0,
                last: Instant::now(),
            });
        tally.agents += 1;
        tally.last = Instant::now();
    }

    fn record_transition(&self, event: &ActionEvent) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        ledger
            .entry(event.id.clone())
            .or_insert_with(|| ActionLedger {
                host: event.host.clone(),
                transitions: Vec::new(),
            })
            .transitions
            .push((event.state, event.attempt));
    }

    fn record_batch(&self, host: &str, samples_per_batch: usize, ts_ms: i64) {
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = batches.entry(host.to_string()).or_default();
        entry.samples_per_batch = samples_per_batch;
        entry.timestamps.insert(ts_ms);
        entry.batches += 1;
    }
}

/// An agent following the coordinator's bundles ([`Plan::follow_bundles`]): the version
/// of each group it is in that it applied, as a real agent reports them in its status.
struct Follower {
    /// Who the agent is (its labels pick its groups; its status names them).
    me: Identity,
    /// The coordinator's key, bundles are checked with.
    key: PublicKey,
    /// `vigil/v1/bundles/`: where bundles arrive.
    prefix: String,
    /// The interval its statuses announce.
    interval_ms: u64,
    /// Group → the version applied.
    applied: Mutex<BTreeMap<String, AppliedBundle>>,
}

impl Follower {
    /// The bundles applied, for a status.
    fn applied(&self) -> Vec<AppliedBundle> {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Takes a bundle message: true if it changed what is applied (a newer version of a
    /// group the agent is in, or a group it left or that was removed).
    fn take(&self, payload: &[u8], shared: &Shared) -> bool {
        let Some(checked) = shared.checked_bundle(payload, &self.key) else {
            return false;
        };
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        match &checked.release {
            Release::Bundle(b) if b.selects(&self.me.labels) => {
                if applied
                    .get(&b.group)
                    .is_some_and(|a| a.version >= b.version)
                {
                    return false;
                }
                applied.insert(
                    b.group.clone(),
                    AppliedBundle {
                        group: b.group.clone(),
                        version: b.version,
                        hash: checked.hash.clone(),
                    },
                );
                drop(applied);
                shared.record_bundle(&b.group, b.version);
                true
            }
            Release::Bundle(b) => applied.remove(&b.group).is_some(),
            Release::Removed(t) => applied.remove(&t.group).is_some(),
        }
    }
}

/// How long a Hello may stay unanswered before it is sent again (then twice as long
/// each time, up to [`REKEY_EVERY`]), as a real agent does.
const HELLO_RETRY: Duration = Duration::from_secs(5);

/// A queued message: where it goes and what it carries (sealed each time it is sent).
#[derive(Debug)]
struct Entry {
    channel: AgentChannel,
    body: Vec<u8>,
}

/// One of an agent's queues, in memory.
#[derive(Debug)]
struct Queue {
    stream: Stream,
    epoch: u64,
    /// The sequence number the next message gets.
    next_seq: u64,
    /// Unacknowledged messages by sequence number: always a run from the floor up.
    held: BTreeMap<u64, Entry>,
    /// The next sequence number to send.
    next_send: u64,
    /// The highest sequence number ever sent (what is sent at or below it is a resend).
    sent_high: u64,
    /// When to send the unacknowledged messages again.
    resend: ResendTimer,
}

/// A message due to be sent now.
struct Due {
    delivery: Delivery,
    channel: AgentChannel,
    body: Vec<u8>,
    /// Sent before.
    resend: bool,
}

impl Queue {
    fn new(stream: Stream, epoch: u64) -> Queue {
        Queue {
            stream,
            epoch,
            next_seq: 1,
            held: BTreeMap::new(),
            next_send: 1,
            sent_high: 0,
            resend: ResendTimer::default(),
        }
    }

    fn push(&mut self, channel: AgentChannel, body: Vec<u8>) {
        self.held.insert(self.next_seq, Entry { channel, body });
        self.next_seq += 1;
    }

    /// The lowest sequence number still held (the next one when nothing is).
    fn floor(&self) -> u64 {
        self.held.keys().next().copied().unwrap_or(self.next_seq)
    }

    /// Forgets everything up to `upto` if `epoch` is this queue's; returns how many.
    fn ack(&mut self, epoch: u64, upto: u64) -> u64 {
        if epoch != self.epoch {
            return 0;
        }
        let before = self.held.len();
        self.held = self.held.split_off(&upto.saturating_add(1));
        let forgotten = (before - self.held.len()) as u64;
        if forgotten > 0 {
            self.resend.progressed(forgotten);
        }
        forgotten
    }

    /// Sends everything again from the floor (a new connection).
    fn restart(&mut self) {
        self.next_send = self.floor();
        self.resend.restarted();
    }

    /// Takes what may be sent now: from the cursor up to [`IN_FLIGHT`] above the floor,
    /// starting over at the floor when nothing was acknowledged for a while (then it
    /// returns true: the queue stalled).
    fn due(&mut self, out: &mut Vec<Due>) -> bool {
        let mut stalled = false;
        let floor = self.floor();
        if self.next_send < floor {
            self.next_send = floor;
        }
        if self.next_send > floor {
            if let Some(waited) = self.resend.expired() {
                tracing::info!(
                    stream = self.stream.as_str(),
                    from = floor,
                    unacknowledged = self.next_send - floor,
                    "no acknowledgement for {waited:?}: sending again"
                );
                self.next_send = floor;
                stalled = true;
            }
        }
        let limit = floor.saturating_add(self.resend.allowance(IN_FLIGHT));
        for (&seq, entry) in self.held.range(self.next_send..limit) {
            if self.next_send <= floor {
                // The first message of a new run of sends: acknowledgements are due.
                self.resend.restarted();
            }
            out.push(Due {
                delivery: Delivery {
                    stream: self.stream,
                    epoch: self.epoch,
                    seq,
                    floor,
                },
                channel: entry.channel,
                body: entry.body.clone(),
                resend: seq <= self.sent_high,
            });
            self.next_send = seq + 1;
            self.sent_high = self.sent_high.max(seq);
        }
        stalled
    }
}

/// An agent's two queues, shared by its main loop (which fills and sends) and its
/// connection's driver (which takes in acknowledgements).
#[derive(Debug)]
struct Queues {
    outbox: Queue,
    metrics: Queue,
}

impl Queues {
    fn get(&mut self, stream: Stream) -> &mut Queue {
        match stream {
            Stream::Outbox => &mut self.outbox,
            Stream::Metrics => &mut self.metrics,
        }
    }

    /// Messages held in both queues.
    fn held(&self) -> u64 {
        (self.outbox.held.len() + self.metrics.held.len()) as u64
    }

    /// Takes in an acknowledgement; returns how many messages it let go.
    fn take_ack(&mut self, ack: &DeliveryAck) -> u64 {
        ack.streams
            .iter()
            .map(|s| self.get(s.stream).ack(s.epoch, s.upto))
            .sum()
    }
}

type SharedQueues = Arc<Mutex<Queues>>;

fn lock(queues: &SharedQueues) -> MutexGuard<'_, Queues> {
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a connection's driver needs to take in acknowledgements.
struct AckInbox {
    topic: String,
    host: String,
    /// The coordinator's key (`None`: acknowledgements are trusted as the broker
    /// delivers them).
    key: Option<PublicKey>,
    queues: SharedQueues,
    /// Woken when an acknowledgement let messages go (room to send more).
    wake: Arc<Notify>,
}

impl AckInbox {
    fn take(&self, payload: &[u8], shared: &Shared) {
        match signed::open::<DeliveryAck>(payload, self.key.as_ref(), &self.host) {
            Ok(ack) => {
                let forgotten = lock(&self.queues).take_ack(&ack);
                if forgotten > 0 {
                    shared
                        .counters
                        .stored
                        .fetch_add(forgotten, Ordering::Relaxed);
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                Counters::inc(&shared.counters.acks_refused);
                tracing::warn!(host = %self.host, "refused an acknowledgement: {e}");
            }
        }
    }
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
    /// Opens a connection and subscribes to the agent's acknowledgements (queued first,
    /// so the subscription is in place before anything this connection sends is
    /// stored); its last will is sealed (and armed) here, so the caller's online status,
    /// sealed after, names it.
    fn open(
        me: &Identity,
        plan: &Plan,
        shared: &Arc<Shared>,
        inbox: &Arc<AckInbox>,
        sealer: &Arc<Sealer>,
        follower: Option<&Arc<Follower>>,
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
        options.set_inflight(vigil_shared::mqtt::AGENT_INFLIGHT);
        let offline = status(
            me,
            AgentState::Offline,
            announced_interval_ms(plan),
            follower.map(|f| f.applied()).unwrap_or_default(),
        );
        options.set_last_will(LastWill::new(
            topics::agent(&me.host, AgentChannel::Status),
            sealer.seal_will(wire::encode(&offline)),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = vigil_shared::mqtt::client(options, CLIENT_QUEUE);
        if let Err(e) = client.try_subscribe(inbox.topic.clone(), QoS::AtLeastOnce) {
            tracing::warn!(host = %me.host, "cannot subscribe to acknowledgements: {e}");
        }
        let welcome_topic = topics::agent(&me.host, AgentChannel::Welcome);
        let session_topic = topics::agent(&me.host, AgentChannel::Session);
        let handshakes = sealer.can_handshake();
        if handshakes {
            if let Err(e) = client.try_subscribe(welcome_topic.clone(), QoS::AtLeastOnce) {
                tracing::warn!(host = %me.host, "cannot subscribe to session key answers: {e}");
            }
        }
        if follower.is_some() {
            let filter = topics::bundle("+");
            if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                tracing::warn!(host = %me.host, "cannot subscribe to policy bundles: {e}");
            }
        }
        let (dead_tx, dead) = watch::channel(false);
        let connected = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let driver = {
            let shared = Arc::clone(shared);
            let inbox = Arc::clone(inbox);
            let connected = Arc::clone(&connected);
            let closing = Arc::clone(&closing);
            let hello_sealer = Arc::clone(sealer);
            let client = client.clone();
            let status_client = client.clone();
            let hello = move || {
                if let Some(payload) = hello_sealer.hello() {
                    let _ =
                        client.try_publish(session_topic.clone(), QoS::AtLeastOnce, false, payload);
                }
            };
            let sealer = Arc::clone(sealer);
            let follower = follower.cloned();
            let status_topic = topics::agent(&me.host, AgentChannel::Status);
            tokio::spawn(async move {
                // A Hello is due at `due`: every REKEY_EVERY, and again after an
                // unanswered one (HELLO_RETRY, doubling up to REKEY_EVERY), as a real
                // agent does. `None`: waiting for the connection.
                let mut due: Option<tokio::time::Instant> = None;
                let mut retry = HELLO_RETRY;
                let send_hello = |retry: &mut Duration| {
                    hello();
                    let next = tokio::time::Instant::now() + *retry;
                    *retry = (*retry * 2).min(REKEY_EVERY);
                    Some(next)
                };
                loop {
                    let event = tokio::select! {
                        event = eventloop.poll() => event,
                        _ = async {
                            match due {
                                Some(at) => tokio::time::sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        }, if handshakes && connected.load(Ordering::Relaxed) => {
                            // (Only while connected: a connecting poll is not cancelled.)
                            due = send_hello(&mut retry);
                            continue;
                        }
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected.store(true, Ordering::Relaxed);
                            Counters::inc(&shared.counters.connected);
                            Counters::inc(&shared.counters.connects);
                            if handshakes {
                                retry = HELLO_RETRY;
                                due = send_hello(&mut retry);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == welcome_topic => {
                            match sealer.accept_welcome(&p.payload) {
                                Ok(Taken::Key(_)) => {
                                    retry = HELLO_RETRY;
                                    due = Some(tokio::time::Instant::now() + REKEY_EVERY);
                                }
                                Ok(Taken::HandshakeAgain) => {
                                    retry = HELLO_RETRY;
                                    due = send_hello(&mut retry);
                                }
                                Err(e) => {
                                    tracing::debug!(host = %sealer.host(), "session key answer refused: {e}")
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            Counters::inc(&shared.counters.acked);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == inbox.topic => {
                            inbox.take(&p.payload, &shared);
                        }
                        Ok(Event::Incoming(Packet::Publish(p)))
                            if follower
                                .as_ref()
                                .is_some_and(|f| p.topic.starts_with(&f.prefix)) =>
                        {
                            let Some(follower) = &follower else { continue };
                            if follower.take(&p.payload, &shared) {
                                let online = status(
                                    &follower.me,
                                    AgentState::Online,
                                    follower.interval_ms,
                                    follower.applied(),
                                );
                                let payload =
                                    sealer.seal(AgentChannel::Status, wire::encode(&online));
                                if status_client
                                    .try_publish(
                                        status_topic.clone(),
                                        QoS::AtLeastOnce,
                                        true,
                                        payload,
                                    )
                                    .is_ok()
                                {
                                    Counters::inc(&shared.counters.statuses);
                                }
                            }
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
                inbox.wake.notify_one();
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

    /// Publishes at QoS 1; false if the connection is gone.
    async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> bool {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .is_ok()
    }
}

/// The interval a status announces: the plan's (the coordinator takes a host that says
/// nothing for three intervals as silent), within what the coordinator accepts; 1 s for
/// an agent generating as fast as it can.
fn announced_interval_ms(plan: &Plan) -> u64 {
    if plan.interval.is_zero() {
        return 1000;
    }
    u64::try_from(plan.interval.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(100, 86_400_000)
}

fn status(
    me: &Identity,
    state: AgentState,
    interval_ms: u64,
    bundles: Vec<AppliedBundle>,
) -> AgentStatus {
    AgentStatus {
        host: me.host.clone(),
        state,
        agent_version: concat!("vigil-sim ", env!("CARGO_PKG_VERSION")).into(),
        started_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        interval_ms,
        labels: me.labels.clone(),
        bundles,
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

/// The topics one agent publishes on.
struct AgentTopics {
    metrics: String,
    actions: String,
    status: String,
}

impl AgentTopics {
    fn of(&self, channel: AgentChannel) -> &str {
        match channel {
            AgentChannel::Actions => &self.actions,
            AgentChannel::Status => &self.status,
            _ => &self.metrics,
        }
    }
}

/// Sends what both queues have due, each message sealed with its place in its queue; an
/// action transition sent for the first time goes out twice when the duplicate dice say
/// so (the coordinator must store it once). An agent that expects no acknowledgements
/// (not enrolled: nothing stores what it sends) forgets each message once sent. False if
/// the connection is gone.
#[allow(clippy::too_many_arguments)]
async fn send_due(
    session: &Session,
    queues: &SharedQueues,
    sealer: &Sealer,
    topics: &AgentTopics,
    chaos: &Chaos,
    rng: &mut StdRng,
    shared: &Shared,
    acknowledged: bool,
) -> bool {
    let mut due = Vec::new();
    {
        let mut queues = lock(queues);
        for stalled in [queues.outbox.due(&mut due), queues.metrics.due(&mut due)] {
            if stalled {
                Counters::inc(&shared.counters.stalls);
            }
        }
    }
    for item in due {
        let stream = item.delivery.stream;
        let copies = if stream == Stream::Outbox
            && !item.resend
            && chaos.duplicate_rate > 0.0
            && rng.random_bool(chaos.duplicate_rate)
        {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let payload = sealer.seal_queued(item.channel, item.body.clone(), item.delivery);
            if !session
                .publish(topics.of(item.channel), false, payload)
                .await
            {
                Counters::inc(&shared.counters.send_failures);
                return false;
            }
            if item.resend || copy > 0 {
                Counters::inc(match stream {
                    Stream::Outbox => &shared.counters.action_redeliveries,
                    Stream::Metrics => &shared.counters.batch_resends,
                });
            }
        }
        if !acknowledged {
            lock(queues)
                .get(stream)
                .ack(item.delivery.epoch, item.delivery.seq);
        }
    }
    true
}

/// The coordinator's key from an enrollment, if it names one that reads.
fn coordinator_key(me: &Identity) -> Option<PublicKey> {
    let hex = me.login.as_ref()?.coordinator_key.as_deref()?;
    match PublicKey::from_hex(hex) {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!(host = %me.host, "the enrollment's coordinator key does not read ({e}); acknowledgements are not checked");
            None
        }
    }
}

/// Runs one virtual agent until the plan's duration has passed, its batches are
/// generated, or `stop` turns true; then waits for its queues to be acknowledged (giving
/// up after [`DRAIN_TIMEOUT`] without an acknowledgement) and disconnects cleanly.
pub async fn run(
    me: Identity,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(me.index as u64));
    let sealer = Arc::new(
        Sealer::new(
            me.host.clone(),
            me.login
                .as_ref()
                .map_or_else(AgentKey::generate, AgentLogin::key),
        )
        .with_coordinator_key(if plan.signatures_only {
            None
        } else {
            coordinator_key(&me)
        }),
    );
    // Seals with a key the coordinator never enrolled (the `forged` fault).
    let forger = Sealer::new(me.host.clone(), AgentKey::generate());
    // Only an enrolled agent has a coordinator to store (and acknowledge) what it sends.
    let acknowledged = me.login.is_some();
    // Epochs are random, not from the seeded dice: a later run under the same host names
    // is a new stream, not a repeat of the earlier one.
    let queues: SharedQueues = Arc::new(Mutex::new(Queues {
        outbox: Queue::new(Stream::Outbox, rand::random()),
        metrics: Queue::new(Stream::Metrics, rand::random()),
    }));
    let inbox = Arc::new(AckInbox {
        topic: topics::agent(&me.host, AgentChannel::Acks),
        host: me.host.clone(),
        key: coordinator_key(&me),
        queues: Arc::clone(&queues),
        wake: Arc::new(Notify::new()),
    });
    let agent_topics = AgentTopics {
        metrics: topics::agent(&me.host, AgentChannel::Metrics),
        actions: topics::agent(&me.host, AgentChannel::Actions),
        status: topics::agent(&me.host, AgentChannel::Status),
    };
    let follower = if plan.follow_bundles {
        match coordinator_key(&me) {
            Some(key) => Some(Arc::new(Follower {
                me: me.clone(),
                key,
                prefix: topics::bundle(""),
                interval_ms: announced_interval_ms(&plan),
                applied: Mutex::new(BTreeMap::new()),
            })),
            None => {
                tracing::warn!(host = %me.host, "no coordinator key from enrollment: bundles are not followed");
                None
            }
        }
    } else {
        None
    };
    let applied = || follower.as_ref().map(|f| f.applied()).unwrap_or_default();
    let started = Instant::now();
    // As a real agent's evaluator: the engine on every batch published.
    let mut live = plan
        .pattern
        .as_ref()
        .map(|p| LiveEvaluator::new(&me.host, p.policies.clone(), now_ms()));
    let mut ticker = tokio::time::interval(plan.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let mut generated_batches: u64 = 0;
    // Whether it has been past the start line ([`Plan::start_together`]).
    let mut past_start_line = false;
    // While draining: when it gives up, and how many messages were held when that was set.
    let mut drain: Option<(Instant, u64)> = None;
    let mut last_ts_ms: i64 = 0;
    // Connections in a row that ended before they came up.
    let mut failures: u32 = 0;
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
        let session = Session::open(&me, &plan, &shared, &inbox, &sealer, follower.as_ref());
        let online = sealer.seal(
            AgentChannel::Status,
            wire::encode(&status(
                &me,
                AgentState::Online,
                announced_interval_ms(&plan),
                applied(),
            )),
        );
        if session.publish(&agent_topics.status, true, online).await {
            Counters::inc(&shared.counters.statuses);
        }
        // Whatever was sent on an earlier connection may be lost: all of it again.
        {
            let mut queues = lock(&queues);
            queues.outbox.restart();
            queues.metrics.restart();
        }
        loop {
            if session.is_dead() {
                // As a real agent backs off: longer after each connection that never
                // came up (a broker that is down or overwhelmed), up to ten pauses.
                if session.connected.load(Ordering::Relaxed) {
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                }
                session.close(&shared, true).await;
                tokio::time::sleep(RECONNECT_PAUSE * failures.clamp(1, 10)).await;
                continue 'sessions;
            }
            let finished = started.elapsed() >= plan.duration
                || plan
                    .batches_per_agent
                    .is_some_and(|n| generated_batches >= n)
                || *stop.borrow();
            if finished {
                // Wait for both queues to be acknowledged (a lost connection meanwhile
                // sends them again), then leave cleanly; give up after DRAIN_TIMEOUT
                // without an acknowledgement.
                let held = if acknowledged {
                    lock(&queues).held()
                } else {
                    0
                };
                let deadline = match drain {
                    Some((deadline, before)) if held >= before => deadline,
                    // The first look, or some were acknowledged since the last.
                    _ => Instant::now() + DRAIN_TIMEOUT,
                };
                drain = Some((deadline, held));
                if held == 0 || Instant::now() > deadline {
                    if held > 0 {
                        tracing::warn!(host = %me.host, held, "queued messages still unacknowledged, none acknowledged for {DRAIN_TIMEOUT:?}");
                        shared
                            .counters
                            .unacknowledged
                            .fetch_add(held, Ordering::Relaxed);
                    }
                    let offline = sealer.seal(
                        AgentChannel::Status,
                        wire::encode(&status(
                            &me,
                            AgentState::Offline,
                            announced_interval_ms(&plan),
                            applied(),
                        )),
                    );
                    if session.publish(&agent_topics.status, true, offline).await {
                        Counters::inc(&shared.counters.statuses);
                    }
                    session.close(&shared, false).await;
                    return;
                }
                send_due(
                    &session,
                    &queues,
                    &sealer,
                    &agent_topics,
                    &plan.chaos,
                    &mut rng,
                    &shared,
                    acknowledged,
                )
                .await;
                tokio::select! {
                    _ = inbox.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                }
                continue;
            }
            let tick = if plan.interval.is_zero() {
                // As fast as the coordinator stores: generate only while little waits.
                if lock(&queues).metrics.held.len() as u64 >= 2 * IN_FLIGHT {
                    tokio::select! {
                        _ = inbox.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_CHECK) => {}
                        _ = stop.changed() => {}
                    }
                    false
                } else {
                    tokio::task::yield_now().await;
                    true
                }
            } else {
                tokio::select! {
                    _ = ticker.tick() => true,
                    _ = inbox.wake.notified() => false,
                    _ = tokio::time::sleep(IDLE_CHECK) => false,
                    _ = stop.changed() => continue,
                }
            };
            if tick && plan.start_together && !past_start_line {
                past_start_line = true;
                let keyed_by = Instant::now() + START_LINE_TIMEOUT;
                while !session.connected.load(Ordering::Relaxed)
                    || (sealer.can_handshake() && sealer.session_key().is_none())
                {
                    if Instant::now() > keyed_by || *stop.borrow() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                shared.start_line.ready_and_wait(&me.host).await;
            }
            if tick {
                if plan.chaos.disconnect_rate > 0.0 && rng.random_bool(plan.chaos.disconnect_rate) {
                    Counters::inc(&shared.counters.abrupt_disconnects);
                    session.close(&shared, true).await;
                    // As a real agent backs off: the broker sends the last will of this
                    // connection before the next one's online status arrives.
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue 'sessions;
                }
                let rate = plan.mode.batches_per_tick(started.elapsed(), plan.duration);
                let whole = rate.floor();
                let count =
                    whole as u64 + u64::from(rng.random_bool((rate - whole).clamp(0.0, 1.0)));
                for _ in 0..count {
                    if plan
                        .batches_per_agent
                        .is_some_and(|n| generated_batches >= n)
                    {
                        break;
                    }
                    // One point per series and millisecond, as a real agent sends: batches
                    // made faster than that get the next free millisecond.
                    last_ts_ms = now_ms().max(last_ts_ms + 1);
                    let mut ts_ms = last_ts_ms;
                    let mut batch_seq = seq;
                    let late = plan.chaos.out_of_order_rate > 0.0
                        && rng.random_bool(plan.chaos.out_of_order_rate);
                    if late {
                        ts_ms -= rng.random_range(1_000..3_600_000);
                        batch_seq = seq.saturating_sub(rng.random_range(1..10));
                    }
                    let mut made = batch(&me, batch_seq, plan.samples_per_batch, &mut rng, ts_ms);
                    if let Some(pattern) = &plan.pattern {
                        for sample in made.samples.iter_mut().filter(|s| s.name == pattern.metric) {
                            sample.value = pattern.value(me.index, batch_seq);
                        }
                    }
                    let encoded = wire::encode(&made);
                    seq += 1;
                    if plan.chaos.malformed_rate > 0.0 && rng.random_bool(plan.chaos.malformed_rate)
                    {
                        // Not queued: published once, as it is, to be refused.
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
                        if session.publish(&agent_topics.metrics, false, bad).await {
                            shared.counters.malformed_sent(kind);
                        } else {
                            Counters::inc(&shared.counters.send_failures);
                        }
                        continue;
                    }
                    lock(&queues).metrics.push(AgentChannel::Metrics, encoded);
                    shared.record_batch(&me.host, plan.samples_per_batch, ts_ms);
                    if let Some(live) = live.as_mut() {
                        let mut decided = shared
                            .decided
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        live.tick(&made.samples, ts_ms, &mut decided);
                    }
                    generated_batches += 1;
                    Counters::inc(&shared.counters.batches);
                    if late {
                        Counters::inc(&shared.counters.out_of_order);
                    }
                    shared
                        .counters
                        .samples
                        .fetch_add(plan.samples_per_batch as u64, Ordering::Relaxed);
                    if plan.action_every > 0 && seq % plan.action_every == 0 {
                        for event in action_lifecycle(&me, &mut rng) {
                            shared.record_transition(&event);
                            Counters::inc(&shared.counters.action_transitions);
                            lock(&queues)
                                .outbox
                                .push(AgentChannel::Actions, wire::encode(&event));
                        }
                    }
                }
            }
            send_due(
                &session,
                &queues,
                &sealer,
                &agent_topics,
                &plan.chaos,
                &mut rng,
                &shared,
                acknowledged,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with(n: u64) -> Queue {
        let mut q = Queue::new(Stream::Metrics, 7);
        for i in 0..n {
            q.push(AgentChannel::Metrics, vec![i as u8]);
        }
        q
    }

    fn seqs(due: &[Due]) -> Vec<u64> {
        due.iter().map(|d| d.delivery.seq).collect()
    }

    #[test]
    fn at_most_the_in_flight_bound_goes_out_and_acks_make_room() {
        let mut q = queue_with(IN_FLIGHT + 10);
        let mut due = Vec::new();
        q.due(&mut due);
        assert_eq!(seqs(&due), (1..=IN_FLIGHT).collect::<Vec<_>>());
        assert!(due.iter().all(|d| d.delivery.floor == 1 && !d.resend));
        due.clear();
        q.due(&mut due);
        assert!(due.is_empty());
        // Another epoch's acknowledgement changes nothing.
        assert_eq!(q.ack(8, 100), 0);
        assert_eq!(q.ack(7, 5), 5);
        assert_eq!(q.floor(), 6);
        q.due(&mut due);
        assert_eq!(
            seqs(&due),
            (IN_FLIGHT + 1..=IN_FLIGHT + 5).collect::<Vec<_>>()
        );
        assert!(due.iter().all(|d| d.delivery.floor == 6));
    }

    #[test]
    fn a_new_connection_sends_everything_unacknowledged_again() {
        let mut q = queue_with(4);
        let mut due = Vec::new();
        q.due(&mut due);
        assert_eq!(q.ack(7, 2), 2);
        q.restart();
        due.clear();
        q.due(&mut due);
        assert_eq!(seqs(&due), vec![3, 4]);
        assert!(due.iter().all(|d| d.resend));
        assert_eq!(q.ack(7, 4), 2);
        assert_eq!(q.floor(), 5);
        q.push(AgentChannel::Metrics, vec![9]);
        due.clear();
        q.due(&mut due);
        assert_eq!(seqs(&due), vec![5]);
        assert!(!due[0].resend);
    }

    #[test]
    fn a_batch_holds_one_sample_per_series() {
        let series = series_of_batch(25);
        assert_eq!(series.len(), 25);
        assert_eq!(series[0], ("cpu_percent", "0".to_string()));
        assert_eq!(series[24], ("load5", "2".to_string()));
        let distinct: BTreeSet<_> = series.iter().collect();
        assert_eq!(distinct.len(), 25);
    }
}
