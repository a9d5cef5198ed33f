//! Agent-bound messages on the embedded broker: commands, acknowledgements, Welcomes,
//! lease grants and policy bundles, from the coordinator to each agent's connection.
//!
//! rumqttd keeps a log per subscription filter, matches each new filter against every
//! topic it has seen and each new topic against every filter, all on its router's one
//! thread. With a filter per agent and channel, bringing up n agents costs O(n²) there,
//! and a log per agent and channel. So an agent's subscriptions stay here: the
//! mailroom's one link to the router subscribes to each agent-bound channel of all
//! agents and to the bundles, and puts every message it gets into the sessions of its
//! host that subscribed to it. The front ([`crate::mqtt::front`]) attaches each agent
//! connection to its session ([`Mailroom::attach`]), answers the agent's SUBSCRIBE,
//! UNSUBSCRIBE and PUBACK here, and writes out what the session holds. Integrations
//! subscribe on the router as before, and see the same messages there.
//!
//! Sessions are per client id, as a broker's are:
//! - one that logged in with a clean session ends with its connection; one that did not
//!   (an agent's link) keeps its subscriptions while the agent is away and holds what
//!   arrives for it, at most [`MAX_QUEUED`] messages and [`MAX_QUEUED_BYTES`], the oldest
//!   dropped first (`vigil_mqtt_mail_dropped_total{reason="queue_full"}`); QoS 1
//!   messages written but not acknowledged are sent again, marked duplicate, when it
//!   returns;
//! - at most [`MAX_SESSIONS`] are kept: past that, the one away longest is forgotten
//!   (`reason="session_evicted"`);
//! - a login with the same client id takes the session over (the router ends the
//!   connection it replaces).
//!
//! Bundles are retained messages: the mailroom keeps the latest of each group and gives
//! them to every new subscription, so they are not queued for an agent away.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    self, Packet, QoS, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use rumqttd::Notification;
use tokio::sync::Notify;
use vigil_shared::topics::{self, AgentChannel};

use crate::telemetry::Telemetry;

/// Messages a session holds that its client has not been written yet.
pub(crate) const MAX_QUEUED: usize = 256;

/// Bytes of payload a session holds that its client has not been written yet.
pub(crate) const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// Sessions kept, attached or not (two per agent, an agent's link and its outbox).
pub(crate) const MAX_SESSIONS: usize = 50_000;

/// QoS 1 messages written to a client and not acknowledged yet; past this the session
/// waits for PUBACKs.
pub(crate) const MAX_INFLIGHT: usize = 100;

/// Most messages written to a client in one go.
const MAX_BATCH: usize = 500;

/// The channels the coordinator sends on to agents.
pub(crate) const AGENT_BOUND: [AgentChannel; 4] = [
    AgentChannel::Commands,
    AgentChannel::Acks,
    AgentChannel::Welcome,
    AgentChannel::Grants,
];

/// The client id of the mailroom's link to the router (the `vigil-coordinator` prefix is
/// reserved: no login at the front may take it).
pub(crate) const CLIENT_ID: &str = "vigil-coordinator-mailroom";

/// The agents' sessions on the embedded broker.
#[derive(Clone)]
pub(crate) struct Mailroom {
    rooms: Arc<Mutex<Rooms>>,
    telemetry: Arc<Telemetry>,
}

#[derive(Default)]
struct Rooms {
    /// By client id.
    sessions: HashMap<String, Session>,
    /// Client ids by host.
    hosts: HashMap<String, Vec<String>>,
    /// The latest bundle of each group, by topic.
    bundles: BTreeMap<String, Bytes>,
    /// Numbers the connections attached, so a connection that was taken over cannot
    /// detach its successor.
    attachments: u64,
}

struct Session {
    host: String,
    clean: bool,
    /// Filters with the QoS granted (0 or 1).
    filters: Vec<(String, QoS)>,
    queue: VecDeque<Mail>,
    queued_bytes: usize,
    /// Written, not acknowledged, by packet id.
    inflight: BTreeMap<u16, Mail>,
    last_pkid: u16,
    attached: Option<Attached>,
    away_since: Instant,
}

/// The connection a session is attached to.
struct Attached {
    id: u64,
    /// Woken when there may be something to write.
    notify: Arc<Notify>,
    /// Woken when another login with the same client id takes the session over, or the
    /// host is revoked ([`Mailroom::end_host`]).
    taken_over: Arc<Notify>,
}

#[derive(Clone)]
struct Mail {
    topic: Arc<str>,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    dup: bool,
}

impl Mailroom {
    /// An empty mailroom; [`Mailroom::run`] fills it.
    pub(crate) fn new(telemetry: Arc<Telemetry>) -> Mailroom {
        Mailroom {
            rooms: Arc::default(),
            telemetry,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes the mailroom's link to what agents are sent: every agent's
    /// agent-bound channels, and the bundles.
    pub(crate) fn subscribe(link_tx: &mut LinkTx) -> Result<(), String> {
        for filter in filters() {
            link_tx.subscribe(filter).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Posts what the router forwards to the mailroom's link until the router is gone.
    /// Blocks: run it on a thread of its own, with `_link_tx` (the link ends with it).
    pub(crate) fn run(self, _link_tx: LinkTx, mut link_rx: LinkRx) {
        loop {
            match link_rx.recv() {
                Ok(Some(Notification::Forward(forward))) => {
                    self.post(&forward.publish.topic, forward.publish.payload);
                }
                Ok(Some(Notification::Unschedule)) => {
                    if link_rx.ready().is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tracing::error!("the embedded broker's router is gone: agents get no more messages");
    }

    /// Puts a message the router forwarded into the sessions subscribed to it.
    fn post(&self, topic: &[u8], payload: Bytes) {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return;
        };
        let dropped = &self.telemetry.mqtt_mail_dropped;
        let mut rooms = self.lock();
        let Rooms {
            sessions,
            hosts,
            bundles,
            ..
        } = &mut *rooms;
        if let Some((host, channel)) = topics::parse_agent(topic) {
            if !AGENT_BOUND.contains(&channel) {
                return;
            }
            let mail = Mail::new(topic, payload, false);
            for client_id in hosts.get(host).into_iter().flatten() {
                if let Some(session) = sessions.get_mut(client_id) {
                    session.deliver(&mail, dropped);
                }
            }
        } else if topic.starts_with(&topics::bundle("")) {
            if payload.is_empty() {
                bundles.remove(topic);
            } else {
                bundles.insert(topic.to_string(), payload.clone());
            }
            let mail = Mail::new(topic, payload, false);
            for session in sessions.values_mut() {
                // One away gets the latest when it subscribes again.
                if session.attached.is_some() {
                    session.deliver(&mail, dropped);
                }
            }
        }
    }

    /// Attaches a connection of `host`'s, logged in as `client_id`, to its session: a
    /// new one when `clean` or when there is none, else the one kept (its unacknowledged
    /// messages first). Also says whether a session was kept (the CONNACK's "session
    /// present").
    pub(crate) fn attach(&self, host: &str, client_id: &str, clean: bool) -> (Attachment, bool) {
        let notify = Arc::new(Notify::new());
        let taken_over = Arc::new(Notify::new());
        let mut rooms = self.lock();
        rooms.attachments += 1;
        let id = rooms.attachments;
        let before = rooms.sessions.get_mut(client_id);
        if let Some(previous) = before.and_then(|session| session.attached.take()) {
            // The connection this login replaces ends (MQTT: one connection per client id).
            previous.taken_over.notify_one();
        }
        if clean {
            rooms.remove(client_id);
        }
        let present = rooms.sessions.contains_key(client_id);
        if !present {
            if rooms.sessions.len() >= MAX_SESSIONS && rooms.evict_one() {
                self.telemetry
                    .mqtt_mail_dropped
                    .with_label_values(&["session_evicted"])
                    .inc();
            }
            rooms.sessions.insert(
                client_id.to_string(),
                Session {
                    host: host.to_string(),
                    clean,
                    filters: Vec::new(),
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    inflight: BTreeMap::new(),
                    last_pkid: 0,
                    attached: None,
                    away_since: Instant::now(),
                },
            );
            let ids = rooms.hosts.entry(host.to_string()).or_default();
            if !ids.iter().any(|known| known == client_id) {
                ids.push(client_id.to_string());
            }
        }
        if let Some(session) = rooms.sessions.get_mut(client_id) {
            // A connection taken over leaves what it was not acknowledged to this one.
            session.requeue_inflight();
            session.clean = clean;
            session.attached = Some(Attached {
                id,
                notify: Arc::clone(&notify),
                taken_over: Arc::clone(&taken_over),
            });
            if !session.queue.is_empty() {
                notify.notify_one();
            }
        }
        let attachment = Attachment {
            mailroom: self.clone(),
            client_id: client_id.to_string(),
            id,
            notify,
            taken_over,
        };
        (attachment, present)
    }

    /// Ends every connection of `host` and forgets its sessions, with what they hold:
    /// the host is revoked (or no longer enrolled), so it may not log in again and
    /// nothing kept for it is ever delivered. Returns how many sessions were forgotten.
    pub(crate) fn end_host(&self, host: &str) -> usize {
        let mut rooms = self.lock();
        let client_ids = rooms.hosts.remove(host).unwrap_or_default();
        for client_id in &client_ids {
            let Some(session) = rooms.sessions.remove(client_id) else {
                continue;
            };
            if let Some(attached) = session.attached {
                attached.taken_over.notify_one();
            }
        }
        client_ids.len()
    }

    /// How many sessions are kept (attached or not).
    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }
}

/// What the mailroom's link subscribes to: every agent's agent-bound channels, and the
/// bundles.
pub(crate) fn filters() -> impl Iterator<Item = String> {
    AGENT_BOUND
        .iter()
        .map(|channel| topics::all_agents(*channel))
        .chain([topics::bundle("#")])
}

impl Rooms {
    fn remove(&mut self, client_id: &str) {
        let Some(session) = self.sessions.remove(client_id) else {
            return;
        };
        if let Some(ids) = self.hosts.get_mut(&session.host) {
            ids.retain(|known| known != client_id);
            if ids.is_empty() {
                self.hosts.remove(&session.host);
            }
        }
    }

    /// Forgets the session away longest; `false` when every session is attached.
    fn evict_one(&mut self) -> bool {
        let oldest = self
            .sessions
            .iter()
            .filter(|(_, session)| session.attached.is_none())
            .min_by_key(|(_, session)| session.away_since)
            .map(|(client_id, _)| client_id.clone());
        match oldest {
            Some(client_id) => {
                self.remove(&client_id);
                true
            }
            None => false,
        }
    }
}

impl Mail {
    fn new(topic: &str, payload: Bytes, retain: bool) -> Mail {
        Mail {
            topic: Arc::from(topic),
            payload,
            qos: QoS::AtMostOnce,
            retain,
            dup: false,
        }
    }

    /// Encodes the message as a PUBLISH with packet id `pkid` (rumqttd's own types only
    /// make a QoS 1 PUBLISH by decoding one, so rumqttc's codec writes it).
    fn write(&self, pkid: u16, out: &mut BytesMut) {
        let qos = match self.qos {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            _ => rumqttc::QoS::AtLeastOnce,
        };
        let publish = rumqttc::mqttbytes::v4::Publish {
            dup: self.dup,
            qos,
            retain: self.retain,
            topic: self.topic.to_string(),
            pkid,
            payload: self.payload.clone(),
        };
        if let Err(e) = publish.write(out) {
            tracing::warn!(topic = %self.topic, "cannot encode a message for an agent: {e:?}");
        }
    }
}

impl Session {
    /// The QoS this session gets `topic` at, if it subscribed to it.
    fn granted(&self, topic: &str) -> Option<QoS> {
        self.filters
            .iter()
            .filter(|(filter, _)| filter == topic || protocol::matches(topic, filter))
            .map(|(_, qos)| *qos)
            .max_by_key(|qos| *qos as u8)
    }

    /// Queues `mail` if the session subscribed to its topic, the oldest dropped past the
    /// bounds, and wakes the connection attached.
    fn deliver(&mut self, mail: &Mail, dropped: &prometheus::IntCounterVec) {
        let Some(qos) = self.granted(&mail.topic) else {
            return;
        };
        let mut mail = mail.clone();
        mail.qos = qos;
        self.queued_bytes += mail.payload.len();
        self.queue.push_back(mail);
        while self.queue.len() > MAX_QUEUED || self.queued_bytes > MAX_QUEUED_BYTES {
            let Some(oldest) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= oldest.payload.len();
            dropped.with_label_values(&["queue_full"]).inc();
        }
        if let Some(attached) = &self.attached {
            attached.notify.notify_one();
        }
    }

    /// Puts what was written and not acknowledged back at the head of the queue, marked
    /// duplicate.
    fn requeue_inflight(&mut self) {
        for (_, mut mail) in std::mem::take(&mut self.inflight).into_iter().rev() {
            mail.dup = true;
            self.queued_bytes += mail.payload.len();
            self.queue.push_front(mail);
        }
    }

    /// The next packet id not in flight (the window is far smaller than the id space).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }
}

/// A connection attached to its session; detaches on drop.
pub(crate) struct Attachment {
    mailroom: Mailroom,
    client_id: String,
    id: u64,
    notify: Arc<Notify>,
    taken_over: Arc<Notify>,
}

impl Attachment {
    fn with_session<T>(
        &self,
        f: impl FnOnce(&mut Session, &BTreeMap<String, Bytes>) -> T,
    ) -> Option<T> {
        let mut rooms = self.mailroom.lock();
        let Rooms {
            sessions, bundles, ..
        } = &mut *rooms;
        let session = sessions.get_mut(&self.client_id)?;
        let ours = session
            .attached
            .as_ref()
            .is_some_and(|attached| attached.id == self.id);
        ours.then(|| f(session, bundles))
    }

    /// Resolves when the session may have something to write.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Resolves when another login with the same client id took the session over, or
    /// the host was revoked: this connection must end.
    pub(crate) async fn taken_over(&self) {
        self.taken_over.notified().await;
    }

    /// Takes the subscription (at QoS 1 at most), queues the bundles it matches, and
    /// answers it. Filters are checked by the front before they come here.
    pub(crate) fn subscribe(&self, subscribe: &Subscribe) -> Packet {
        let dropped = &self.mailroom.telemetry.mqtt_mail_dropped;
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        self.with_session(|session, bundles| {
            for filter in &subscribe.filters {
                let qos = match filter.qos {
                    QoS::AtMostOnce => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                };
                session.filters.retain(|(known, _)| *known != filter.path);
                session.filters.push((filter.path.clone(), qos));
                for (topic, payload) in bundles.iter() {
                    if protocol::matches(topic, &filter.path) {
                        session.deliver(&Mail::new(topic, payload.clone(), true), dropped);
                    }
                }
                return_codes.push(SubscribeReasonCode::Success(qos));
            }
        });
        // A connection taken over gets refusals; the router is ending it.
        return_codes.resize(subscribe.filters.len(), SubscribeReasonCode::Failure);
        Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        )
    }

    /// Drops the filters and answers.
    pub(crate) fn unsubscribe(&self, unsubscribe: &Unsubscribe) -> Packet {
        self.with_session(|session, _| {
            session
                .filters
                .retain(|(known, _)| !unsubscribe.filters.contains(known));
        });
        Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons: vec![UnsubAckReason::Success; unsubscribe.filters.len()],
            },
            None,
        )
    }

    /// The client acknowledged packet `pkid`.
    pub(crate) fn acked(&self, pkid: u16) {
        self.with_session(|session, _| {
            session.inflight.remove(&pkid);
            if !session.queue.is_empty() {
                self.notify.notify_one();
            }
        });
    }

    /// Encodes into `out` what the session holds, as far as its in-flight window allows;
    /// QoS 1 messages stay in flight until acknowledged.
    pub(crate) fn take(&self, out: &mut BytesMut) {
        self.with_session(|session, _| {
            for _ in 0..MAX_BATCH {
                if session.inflight.len() >= MAX_INFLIGHT {
                    break;
                }
                let Some(mail) = session.queue.pop_front() else {
                    break;
                };
                session.queued_bytes -= mail.payload.len();
                if mail.qos == QoS::AtMostOnce {
                    mail.write(0, out);
                } else {
                    let pkid = session.next_pkid();
                    mail.write(pkid, out);
                    session.inflight.insert(pkid, mail);
                }
            }
        });
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut rooms = self.mailroom.lock();
        let Some(session) = rooms.sessions.get_mut(&self.client_id) else {
            return;
        };
        if session
            .attached
            .as_ref()
            .is_none_or(|attached| attached.id != self.id)
        {
            return;
        }
        if session.clean {
            rooms.remove(&self.client_id);
        } else {
            session.attached = None;
            session.away_since = Instant::now();
            session.requeue_inflight();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use rumqttd::protocol::{Filter, RetainForwardRule};

    fn subscribe(filter: &str) -> Subscribe {
        Subscribe {
            pkid: 7,
            filters: vec![Filter {
                path: filter.into(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            }],
        }
    }

    /// The PUBLISHes `take` wrote: (topic, packet id, dup, retain).
    fn taken(attachment: &Attachment) -> Vec<(String, u16, bool, bool)> {
        let mut out = BytesMut::new();
        attachment.take(&mut out);
        let mut publishes = Vec::new();
        while !out.is_empty() {
            let packet =
                rumqttc::mqttbytes::v4::Packet::read(&mut out, usize::MAX).expect("a packet");
            if let rumqttc::mqttbytes::v4::Packet::Publish(p) = packet {
                publishes.push((p.topic, p.pkid, p.dup, p.retain));
            }
        }
        publishes
    }

    fn room() -> Mailroom {
        Mailroom::new(Arc::new(Telemetry::new()))
    }

    fn dropped(room: &Mailroom, reason: &str) -> u64 {
        room.telemetry
            .mqtt_mail_dropped
            .with_label_values(&[reason])
            .get()
    }

    #[test]
    fn a_message_reaches_only_the_sessions_of_its_host_that_subscribed() {
        let room = room();
        let commands = topics::agent("web", AgentChannel::Commands);
        let (web, present) = room.attach("web", "vigil-agent-web", false);
        assert!(!present);
        let (outbox, _) = room.attach("web", "vigil-outbox-web", true);
        let (db, _) = room.attach("db", "vigil-agent-db", false);
        web.subscribe(&subscribe(&commands));
        db.subscribe(&subscribe(&topics::agent("db", AgentChannel::Commands)));
        room.post(commands.as_bytes(), Bytes::from_static(b"restart"));
        room.post(
            topics::agent("web", AgentChannel::Metrics).as_bytes(),
            Bytes::from_static(b"not agent-bound"),
        );
        assert_eq!(taken(&web), vec![(commands.clone(), 1, false, false)]);
        assert!(taken(&outbox).is_empty());
        assert!(taken(&db).is_empty());
    }

    #[test]
    fn a_kept_session_holds_messages_while_away_and_resends_the_unacknowledged() {
        let room = room();
        let commands = topics::agent("web", AgentChannel::Commands);
        let (web, _) = room.attach("web", "vigil-agent-web", false);
        web.subscribe(&subscribe(&commands));
        room.post(commands.as_bytes(), Bytes::from_static(b"one"));
        room.post(commands.as_bytes(), Bytes::from_static(b"two"));
        let written = taken(&web);
        assert_eq!(written.len(), 2);
        web.acked(written[0].1);
        drop(web);
        room.post(commands.as_bytes(), Bytes::from_static(b"three"));
        let (web, present) = room.attach("web", "vigil-agent-web", false);
        assert!(present, "the session was kept");
        let again = taken(&web);
        assert_eq!(
            again.len(),
            2,
            "the unacknowledged one and the new one: {again:?}"
        );
        assert!(again[0].2, "the unacknowledged one is a duplicate");
        assert!(!again[1].2);

        // A clean login starts afresh.
        drop(web);
        room.post(commands.as_bytes(), Bytes::from_static(b"four"));
        let (web, present) = room.attach("web", "vigil-agent-web", true);
        assert!(!present);
        assert!(taken(&web).is_empty());
        drop(web);
        assert_eq!(
            room.sessions(),
            0,
            "a clean session ends with its connection"
        );
    }

    #[test]
    fn a_session_away_holds_at_most_its_bound_and_counts_what_it_drops() {
        let room = room();
        let commands = topics::agent("web", AgentChannel::Commands);
        let (web, _) = room.attach("web", "vigil-agent-web", false);
        web.subscribe(&subscribe(&commands));
        drop(web);
        for _ in 0..MAX_QUEUED + 10 {
            room.post(commands.as_bytes(), Bytes::from_static(b"x"));
        }
        assert_eq!(dropped(&room, "queue_full"), 10);
        let (web, _) = room.attach("web", "vigil-agent-web", false);
        let mut written = 0;
        loop {
            let batch = taken(&web);
            if batch.is_empty() {
                break;
            }
            written += batch.len();
            for (_, pkid, _, _) in batch {
                web.acked(pkid);
            }
        }
        assert_eq!(written, MAX_QUEUED);
    }

    #[test]
    fn the_in_flight_window_waits_for_acknowledgements() {
        let room = room();
        let acks = topics::agent("web", AgentChannel::Acks);
        let (web, _) = room.attach("web", "vigil-outbox-web", true);
        web.subscribe(&subscribe(&acks));
        for _ in 0..MAX_INFLIGHT + 5 {
            room.post(acks.as_bytes(), Bytes::from_static(b"ack"));
        }
        let first = taken(&web);
        assert_eq!(first.len(), MAX_INFLIGHT);
        assert!(taken(&web).is_empty(), "the window is full");
        web.acked(first[0].1);
        assert_eq!(taken(&web).len(), 1);
    }

    #[test]
    fn bundles_are_retained_for_every_new_subscription_and_live_for_the_attached() {
        let room = room();
        let group = topics::bundle("web");
        room.post(group.as_bytes(), Bytes::from_static(b"v1"));
        let (web, _) = room.attach("web", "vigil-agent-web", false);
        web.subscribe(&subscribe(&topics::bundle("+")));
        assert_eq!(taken(&web), vec![(group.clone(), 1, false, true)]);
        room.post(group.as_bytes(), Bytes::from_static(b"v2"));
        assert_eq!(taken(&web), vec![(group.clone(), 2, false, false)]);
        drop(web);
        room.post(group.as_bytes(), Bytes::from_static(b"v3"));
        let (web, _) = room.attach("web", "vigil-agent-web", false);
        // The unacknowledged ones come again; v3 only with the new subscription.
        let again: Vec<_> = taken(&web).into_iter().map(|(_, _, dup, _)| dup).collect();
        assert_eq!(again, vec![true, true]);
        web.subscribe(&subscribe(&topics::bundle("+")));
        assert_eq!(taken(&web).len(), 1, "the latest bundle, retained");
    }

    #[test]
    fn a_connection_taken_over_cannot_detach_its_successor() {
        let room = room();
        let commands = topics::agent("web", AgentChannel::Commands);
        let (first, _) = room.attach("web", "vigil-agent-web", false);
        first.subscribe(&subscribe(&commands));
        room.post(commands.as_bytes(), Bytes::from_static(b"one"));
        assert_eq!(taken(&first).len(), 1);
        let (second, present) = room.attach("web", "vigil-agent-web", false);
        assert!(present);
        assert!(
            first.taken_over().now_or_never().is_some(),
            "the first connection is told to end"
        );
        assert!(second.taken_over().now_or_never().is_none());
        drop(first);
        let written = taken(&second);
        assert_eq!(written.len(), 1, "the first's unacknowledged message");
        room.post(commands.as_bytes(), Bytes::from_static(b"two"));
        assert_eq!(taken(&second).len(), 1, "still attached");
    }

    #[test]
    fn a_revoked_host_has_its_connections_ended_and_its_sessions_forgotten() {
        let room = room();
        let commands = topics::agent("web", AgentChannel::Commands);
        let (link, _) = room.attach("web", "vigil-agent-web", false);
        link.subscribe(&subscribe(&commands));
        let (outbox, _) = room.attach("web", "vigil-outbox-web", false);
        drop(outbox);
        let (db, _) = room.attach("db", "vigil-agent-db", false);
        room.post(commands.as_bytes(), Bytes::from_static(b"restart"));
        assert_eq!(room.end_host("web"), 2, "the attached and the away session");
        assert!(
            link.taken_over().now_or_never().is_some(),
            "the attached connection is told to end"
        );
        assert!(db.taken_over().now_or_never().is_none(), "other hosts stay");
        assert_eq!(room.sessions(), 1);
        drop(link);
        assert_eq!(
            room.sessions(),
            1,
            "the ended connection leaves nothing behind"
        );
        let (again, present) = room.attach("web", "vigil-agent-web", false);
        assert!(!present, "nothing kept for the host");
        again.subscribe(&subscribe(&commands));
        assert!(taken(&again).is_empty(), "what was queued is gone");
        assert_eq!(room.end_host("nobody"), 0);
    }
}
