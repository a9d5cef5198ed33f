//! Delivery of what the agent must not lose: the outbox (action transitions and policy
//! events, in the agent store) and the metric spool ([`super::spool`]), sent to the
//! broker on their own MQTT connection and forgotten only when the coordinator says it
//! has *stored* them ([`vigil_shared::delivery`]).
//!
//! Each message is sealed when it is sent, with its place in its queue (stream, epoch,
//! sequence number, and the queue's floor), by the agent's shared sealer: MAC'd under the
//! session key the link's handshake made ([`super::link`]), or signed before there is one. The coordinator publishes a signed
//! acknowledgement on `vigil/v1/agents/{host}/acks` after each commit; this task deletes
//! what it covers. At most [`IN_FLIGHT`] messages per queue go out unacknowledged. After
//! a reconnection, or when nothing has been acknowledged for a while although messages
//! wait ([`ResendTimer`]: 10 s, or longer when acknowledgements have come slowly, up to
//! 80 s; doubling while resends bring nothing),
//! everything not acknowledged is sent again from the floor (after such a timeout, 16
//! at first, then as many more as are acknowledged): the coordinator stores each
//! message once, however often it comes.
//!
//! The acknowledgements also carry the coordinator's clock: the difference to the
//! agent's is reported in its status ([`DeliveryReport`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use vigil_shared::agent_auth::{Sealer, MAX_CLOCK_SKEW_MS};
use vigil_shared::bundle::PublicKey;
use vigil_shared::delivery::{Delivery, DeliveryAck, ResendTimer, Stream};
use vigil_shared::signed;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::DeliveryStatus;

use super::spool::Spool;
use crate::acting::store::{AgentStore, OutboxSignal, StorageAlarm};

/// Most messages per queue sent and not yet acknowledged (well inside the coordinator's
/// window, [`vigil_shared::delivery::WINDOW`]).
pub const IN_FLIGHT: u64 = 256;

/// How often the spool's newest segment is synced to disk, when records were appended.
const SYNC_EVERY: Duration = Duration::from_secs(2);

/// Most messages read from a queue at once.
const READ_BATCH: usize = 64;

/// What the delivery task reports for the agent's status: shared, updated as it goes.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    outbox_pending: AtomicU64,
    metrics_buffered: AtomicU64,
    metrics_generated_total: AtomicU64,
    metrics_buffer_bytes: AtomicU64,
    metrics_dropped_total: AtomicU64,
    quarantined_segments_total: AtomicU64,
    /// The agent's clock minus the coordinator's; `i64::MIN`: not measured yet.
    clock_skew_ms: AtomicI64,
    /// Why the agent store cannot be written (set by the action queue).
    storage_error: StorageAlarm,
    /// Why the metric spool cannot be written.
    spool_error: Mutex<Option<String>>,
}

impl DeliveryReport {
    /// A report with nothing measured yet.
    pub fn new() -> DeliveryReport {
        DeliveryReport {
            clock_skew_ms: AtomicI64::new(i64::MIN),
            ..DeliveryReport::default()
        }
    }

    /// The report as it goes into the status.
    pub fn status(&self) -> DeliveryStatus {
        let skew = self.clock_skew_ms.load(Ordering::Relaxed);
        DeliveryStatus {
            outbox_pending: self.outbox_pending.load(Ordering::Relaxed),
            metrics_buffered: self.metrics_buffered.load(Ordering::Relaxed),
            metrics_generated_total: self.metrics_generated_total.load(Ordering::Relaxed),
            metrics_buffer_bytes: self.metrics_buffer_bytes.load(Ordering::Relaxed),
            metrics_dropped_total: self.metrics_dropped_total.load(Ordering::Relaxed),
            quarantined_segments_total: self.quarantined_segments_total.load(Ordering::Relaxed),
            clock_skew_ms: (skew != i64::MIN).then_some(skew),
            storage_error: self.storage_error.get().or_else(|| {
                self.spool_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            }),
        }
    }

    /// Notes why the metric spool cannot be written (`None`: it can again).
    fn set_spool_error(&self, error: Option<String>) {
        *self
            .spool_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// The slot where the action queue says why the agent store cannot be written.
    pub fn storage_alarm(&self) -> StorageAlarm {
        self.storage_error.clone()
    }

    /// Takes in the spool's figures.
    pub fn note_spool(&self, spool: &Spool, quarantined_at_open: u64) {
        let stats = spool.stats();
        self.metrics_buffered
            .store(stats.records, Ordering::Relaxed);
        self.metrics_generated_total
            .store(spool.next_seq().saturating_sub(1), Ordering::Relaxed);
        self.metrics_buffer_bytes
            .store(stats.bytes, Ordering::Relaxed);
        self.metrics_dropped_total
            .store(stats.dropped_total, Ordering::Relaxed);
        self.quarantined_segments_total.store(
            quarantined_at_open.max(stats.quarantined_total),
            Ordering::Relaxed,
        );
    }
}

/// A message read from a queue: sequence number, topic, channel, encoded message.
type QueuedMessage = (u64, String, AgentChannel, Vec<u8>);

/// The metric spool, shared by the runner (which appends) and the delivery task.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// Where one queue's sending stands.
struct Cursor {
    stream: Stream,
    /// The next sequence number to send.
    next: u64,
    /// When to send the unacknowledged messages again.
    resend: ResendTimer,
    /// Whether messages sent wait for an acknowledgement (as of the last fill).
    waiting: bool,
}

/// When to send everything unacknowledged again because the session key changed. A
/// restarted coordinator holds none of the keys before its restart: what was sealed under
/// the old key is refused (after a reconnection the link makes a new key, but this
/// connection may have sent under the old one before it came; with an external broker the
/// connections even stay up while the coordinator restarts, and its refusal asks the link
/// for a new key). Whatever was in flight when a new key arrives is therefore sent again
/// under it, at once rather than after the resend timeout. After a regular rekey that
/// resends what the coordinator would still have taken (it keeps the key before a rekey
/// for a while): a few duplicates every [`vigil_shared::agent_auth::REKEY_EVERY`], which
/// it stores once.
struct AfterRekey {
    /// The keys taken when last looked.
    keys_seen: u64,
}

impl AfterRekey {
    fn new(sealer: &Sealer) -> AfterRekey {
        AfterRekey {
            keys_seen: sealer.keys_taken(),
        }
    }

    /// Whether everything unacknowledged should go again now (once per new key).
    fn due(&mut self, sealer: &Sealer) -> bool {
        let taken = sealer.keys_taken();
        let changed = taken != self.keys_seen;
        self.keys_seen = taken;
        changed
    }
}

/// Everything the task needs.
pub struct DeliveryTask {
    /// The agent store (the outbox).
    pub store: AgentStore,
    /// The metric spool.
    pub spool: SharedSpool,
    /// Segments set aside when the spool was opened.
    pub quarantined_at_open: u64,
    /// The connection's options (client id `vigil-outbox-{host}`).
    pub options: MqttOptions,
    /// Seals every message as it is sent.
    pub sealer: Arc<Sealer>,
    /// Woken when either queue has news, or the link took a new session key.
    pub signal: OutboxSignal,
    /// The coordinator's key, to check acknowledgements with (`None`: trusted as the
    /// broker delivers them).
    pub coordinator_key: Option<PublicKey>,
    /// What it reports.
    pub report: Arc<DeliveryReport>,
}

impl DeliveryTask {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let host = self.sealer.host().to_string();
        let acks_topic = topics::agent(&host, AgentChannel::Acks);
        if self.coordinator_key.is_none() {
            tracing::warn!(
                "no coordinator key: acknowledgements of stored data are trusted on the \
                 broker's topic rules alone"
            );
        }
        let mut failures: u32 = 0;
        let mut cursors = [Stream::Outbox, Stream::Metrics].map(|stream| Cursor {
            stream,
            next: 0,
            resend: ResendTimer::default(),
            waiting: false,
        });
        let mut last_sync = Instant::now();
        let mut rekeyed = AfterRekey::new(&self.sealer);
        loop {
            if *stop.borrow() {
                return;
            }
            let (client, mut eventloop) = vigil_shared::mqtt::client(self.options.clone(), 512);
            let mut connected = false;
            // No timer runs while nothing is due: the task wakes for news (the signal: a
            // new message, or a new session key), an acknowledgement, or the next sync or
            // resend deadline.
            let mut due: Option<Instant> = None;
            let result: Result<(), String> = loop {
                tokio::select! {
                    _ = stop.changed() => {
                        // Let what is queued go out, then leave.
                        let _ = tokio::time::timeout(Duration::from_millis(300), async {
                            loop {
                                match eventloop.poll().await {
                                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == acks_topic => {
                                        self.on_ack(&p.payload, &host, &mut cursors);
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        })
                        .await;
                        self.sync_spool();
                        let _ = client.disconnect().await;
                        return;
                    }
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected = true;
                            failures = 0;
                            if let Err(e) = client.try_subscribe(acks_topic.clone(), QoS::AtLeastOnce) {
                                tracing::warn!("cannot subscribe to acknowledgements: {e}");
                            }
                            // Whatever was sent before may be lost: send it all again.
                            for cursor in &mut cursors {
                                cursor.next = 0;
                                cursor.resend.restarted();
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == acks_topic => {
                            self.on_ack(&p.payload, &host, &mut cursors);
                        }
                        Ok(_) => {}
                        Err(e) => break Err(e.to_string()),
                    },
                    // Only while connected: a poll that is connecting must not be
                    // cancelled (vigil_shared::mqtt, "Polling").
                    _ = self.signal.notified(), if connected => {}
                    _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()),
                        if connected && due.is_some() => {}
                }
                if connected {
                    if rekeyed.due(&self.sealer) {
                        // Sent under a key the coordinator may not hold: send it again
                        // under the new one now, not after the resend timeout.
                        tracing::debug!(
                            key = ?self.sealer.session_key(),
                            "new session key: sending what is unacknowledged again"
                        );
                        for cursor in &mut cursors {
                            cursor.next = 0;
                        }
                    }
                    if last_sync.elapsed() >= SYNC_EVERY && self.lock_spool().needs_sync() {
                        last_sync = Instant::now();
                        self.sync_spool();
                    }
                    for cursor in &mut cursors {
                        self.fill(&client, cursor);
                    }
                    due = self.next_due(&cursors, last_sync);
                }
            };
            if let Err(e) = result {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(
                        failures,
                        "delivery lost the broker (messages stay queued on disk): {e}"
                    );
                }
            }
            self.sync_spool();
            tokio::time::sleep(Duration::from_millis(
                200 * u64::from(failures.clamp(1, 10)),
            ))
            .await;
        }
    }

    /// When the loop must wake up with nothing else happening: the spool's next sync, if
    /// it has something to sync, and the resend deadline of each queue with messages
    /// waiting for an acknowledgement.
    fn next_due(&self, cursors: &[Cursor; 2], last_sync: Instant) -> Option<Instant> {
        let sync = self
            .lock_spool()
            .needs_sync()
            .then_some(last_sync + SYNC_EVERY);
        cursors
            .iter()
            .filter(|c| c.waiting)
            .map(|c| c.resend.deadline())
            .chain(sync)
            .min()
    }

    /// The lowest sequence number `stream`'s queue holds.
    fn floor(&self, stream: Stream) -> u64 {
        match stream {
            Stream::Outbox => self.store.outbox_floor().unwrap_or_else(|e| {
                tracing::error!("outbox: cannot read its floor: {e}");
                u64::MAX
            }),
            Stream::Metrics => self.lock_spool().floor(),
        }
    }

    fn lock_spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sync_spool(&self) {
        let mut spool = self.lock_spool();
        match spool.sync() {
            Ok(()) => {}
            Err(e) => tracing::debug!("spool: cannot sync: {e}"),
        }
        self.report.note_spool(&spool, self.quarantined_at_open);
        self.report.set_spool_error(spool.degraded());
        drop(spool);
        if let Ok(pending) = self.store.outbox_len() {
            self.report.outbox_pending.store(pending, Ordering::Relaxed);
        }
    }

    /// Sends from `cursor`'s queue while the in-flight bound and the client's queue allow.
    fn fill(&self, client: &AsyncClient, cursor: &mut Cursor) {
        let floor = self.floor(cursor.stream);
        if floor == u64::MAX {
            // The queue cannot be read (logged): no resend deadline to wait for; the next
            // message or acknowledgement tries again.
            cursor.waiting = false;
            return;
        }
        if cursor.next < floor {
            cursor.next = floor;
        }
        // Nothing acknowledged for a while although messages wait: send them again.
        if cursor.next > floor {
            if let Some(waited) = cursor.resend.expired() {
                tracing::info!(
                    stream = cursor.stream.as_str(),
                    from = floor,
                    unacknowledged = cursor.next - floor,
                    "no acknowledgement for {waited:?}: sending again"
                );
                cursor.next = floor;
            }
        }
        let epoch = self.epoch(cursor.stream);
        let limit = floor.saturating_add(cursor.resend.allowance(IN_FLIGHT));
        // Set again below if a message is sent: waiting means sent and not acknowledged.
        cursor.waiting = cursor.next > floor;
        while cursor.next < limit {
            let room = (limit - cursor.next).min(READ_BATCH as u64) as usize;
            let entries = match self.read(cursor.stream, cursor.next, room) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(
                        stream = cursor.stream.as_str(),
                        "cannot read queued messages: {e}"
                    );
                    return;
                }
            };
            if entries.is_empty() {
                return;
            }
            for (seq, topic, channel, body) in entries {
                let delivery = Delivery {
                    stream: cursor.stream,
                    epoch,
                    seq,
                    floor,
                };
                let payload = self.sealer.seal_queued(channel, body, delivery);
                if client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    return;
                }
                if cursor.next <= floor {
                    // The first message of a new run of sends: acknowledgements are due
                    // from now on.
                    cursor.resend.restarted();
                }
                cursor.next = seq + 1;
                cursor.waiting = true;
            }
        }
    }

    fn epoch(&self, stream: Stream) -> u64 {
        match stream {
            Stream::Outbox => self.store.outbox_epoch(),
            Stream::Metrics => self.lock_spool().epoch(),
        }
    }

    /// Up to `max` messages of `stream` from `from` on: sequence number, topic, channel
    /// and the encoded message.
    fn read(&self, stream: Stream, from: u64, max: usize) -> Result<Vec<QueuedMessage>, String> {
        match stream {
            Stream::Outbox => {
                let entries = self
                    .store
                    .outbox_from(from, max)
                    .map_err(|e| e.to_string())?;
                let mut out = Vec::with_capacity(entries.len());
                for entry in entries {
                    match topics::parse_agent(&entry.topic) {
                        Some((_, channel)) => {
                            out.push((entry.seq, entry.topic, channel, entry.payload))
                        }
                        None => {
                            // Never written by this agent; it would block the queue forever.
                            tracing::error!(
                                topic = %entry.topic,
                                seq = entry.seq,
                                "outbox: entry for a topic that is not an agent channel, skipped"
                            );
                        }
                    }
                }
                Ok(out)
            }
            Stream::Metrics => {
                let topic = topics::agent(self.sealer.host(), AgentChannel::Metrics);
                let records = self
                    .lock_spool()
                    .read_from(from, max)
                    .map_err(|e| e.to_string())?;
                Ok(records
                    .into_iter()
                    .map(|(seq, body)| (seq, topic.clone(), AgentChannel::Metrics, body))
                    .collect())
            }
        }
    }

    /// Takes in an acknowledgement: forgets what it covers.
    fn on_ack(&self, payload: &[u8], host: &str, cursors: &mut [Cursor; 2]) {
        let ack = match signed::open::<DeliveryAck>(payload, self.coordinator_key.as_ref(), host) {
            Ok(ack) => ack,
            Err(e) => {
                tracing::warn!("refused an acknowledgement: {e}");
                return;
            }
        };
        let skew_ms = vigil_shared::time::now_ms().saturating_sub(ack.coordinator_ms);
        let before = self.report.clock_skew_ms.swap(skew_ms, Ordering::Relaxed);
        if skew_ms.saturating_abs() > MAX_CLOCK_SKEW_MS
            && (before == i64::MIN || before.saturating_abs() <= MAX_CLOCK_SKEW_MS)
        {
            tracing::warn!(
                skew_ms,
                "this host's clock is off from the coordinator's; data is kept, with both times"
            );
        }
        for stream_ack in ack.streams {
            let Some(cursor) = cursors.iter_mut().find(|c| c.stream == stream_ack.stream) else {
                continue;
            };
            if stream_ack.epoch != self.epoch(stream_ack.stream) {
                continue;
            }
            let floor_before = self.floor(stream_ack.stream);
            match stream_ack.stream {
                Stream::Outbox => match self.store.outbox_ack(stream_ack.upto) {
                    Ok(_) => {
                        let pending = self.store.outbox_len().unwrap_or(0);
                        self.report.outbox_pending.store(pending, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!("outbox: cannot remove stored entries: {e}"),
                },
                Stream::Metrics => {
                    let mut spool = self.lock_spool();
                    spool.ack(stream_ack.upto);
                    self.report.note_spool(&spool, self.quarantined_at_open);
                }
            }
            let floor_after = self.floor(stream_ack.stream);
            if floor_after > floor_before {
                cursor.resend.progressed(floor_after - floor_before);
            }
        }
    }
}
