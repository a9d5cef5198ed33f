//! The embedded broker's front door. Every MQTT client from outside the coordinator
//! connects here; what passes goes to rumqttd's router in-process (a link per
//! integration, [`EmbeddedBroker::open`]; a few links shared by all agents,
//! [`EmbeddedBroker::agent_link`]), so a client costs the coordinator one socket.
//!
//! rumqttd has no topic ACLs and accepts sockets without bounds, so the front is where
//! the embedded broker gets the rules the shipped Mosquitto ACL gives an external one:
//! - **Bounded sockets.** At most [`FrontLimits::max_connections`] connections in all;
//!   a connection that has not logged in yet is one of at most
//!   [`FrontLimits::max_pending`] (and [`FrontLimits::max_pending_per_address`] per
//!   client address) and must send its CONNECT (after its TLS handshake, if any)
//!   within [`FrontLimits::connect_timeout`]. Accept errors back off.
//! - **Logins.** [`BrokerAuth`] decides who the login is ([`Role`]): an agent with
//!   exactly its own client ids, or a read-only integration.
//! - **What each login may send**, checked packet by packet, decoded with rumqttd's MQTT
//!   3.1.1 codec: an agent publishes only on its own `metrics`, `events`, `actions`,
//!   `status` and `session` (handshake) topics, retains only its status (at most
//!   [`MAX_RETAINED_BYTES`]), and subscribes only to its own commands, acknowledgements
//!   and Welcomes (`welcome`) and to the bundles; an integration publishes
//!   nothing (no will either) and subscribes only under `vigil/v1/`. A packet outside
//!   these rules closes the connection (MQTT 3.1.1 cannot refuse a single PUBLISH), is
//!   logged and counted in `vigil_mqtt_acl_refusals_total{role,reason}`.
//!
//! - **Keep-alive.** A client silent for one and a half keep-alive periods is dropped (a
//!   keep-alive of 0 is refused), as is one that leaves written packets unread for
//!   [`WRITE_TIMEOUT`].
//!
//! Packets that pass go to the router as decoded. For an integration, what the router
//! sends back is encoded for it. An agent only publishes into the router: the front
//! acknowledges each QoS 1 PUBLISH once handed over, answers its pings, and its
//! subscriptions and what it is sent are its session's in the
//! [`mailroom`](crate::mqtt::mailroom) (the front answers its SUBSCRIBE, UNSUBSCRIBE
//! and PUBACK there and writes out what the session holds). The front publishes a
//! client's will when its connection ends without a DISCONNECT. While ingest is far
//! behind what agents published, an agent's publishes are held, unacknowledged, until it
//! catches up ([`backlog`](crate::mqtt::backlog)).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rumqttd::local::LinkTx;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, PingResp,
    Protocol, PubAck, PubAckReason,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use vigil_shared::topics::{self, AgentChannel};

use crate::events::audience::{Audience, Seat};
use crate::mqtt::backlog::{Backlog, Held};
use crate::mqtt::broker::{BrokerAuth, EmbeddedBroker, LinkRefused, Role, MAX_PACKET_BYTES};
use crate::mqtt::mailroom::Attachment;
use crate::per_address::{AddressSlot, PerAddress};
use crate::telemetry::Telemetry;

/// Largest retained message (an agent's status or last will) a client may leave.
pub const MAX_RETAINED_BYTES: usize = 64 * 1024;

/// How many sockets the front holds, and for how long before a login.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// Connections in all (logged in or not).
    pub max_connections: usize,
    /// Connections that have not logged in yet, in all.
    pub max_pending: usize,
    /// Connections that have not logged in yet, per client address.
    pub max_pending_per_address: usize,
    /// Time from accept to a complete CONNECT (TLS handshake included).
    pub connect_timeout: Duration,
}

impl Default for FrontLimits {
    /// Room for 10,000 agents (two connections each) and their integrations.
    fn default() -> Self {
        FrontLimits {
            max_connections: 21_000,
            max_pending: 1_024,
            max_pending_per_address: 512,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything one listener of the front needs.
#[derive(Clone)]
pub struct Front {
    /// The broker the checked connections are handed to.
    pub broker: EmbeddedBroker,
    /// Who may log in.
    pub auth: BrokerAuth,
    /// Socket bounds.
    pub limits: FrontLimits,
    /// Counters.
    pub telemetry: Arc<Telemetry>,
    /// The integrations subscribed to the `metrics` JSON stream.
    pub audience: Audience,
    connections: Arc<Semaphore>,
    pending: Arc<PerAddress>,
}

impl Front {
    /// A front for `broker`. Listeners started from clones of it share its bounds.
    pub fn new(
        broker: EmbeddedBroker,
        auth: BrokerAuth,
        limits: FrontLimits,
        telemetry: Arc<Telemetry>,
        audience: Audience,
    ) -> Front {
        Front {
            broker,
            auth,
            limits,
            telemetry,
            audience,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            pending: Arc::new(PerAddress::default()),
        }
    }

    /// Accepts connections on `listener` (TLS first when `tls` is given) until `stop`
    /// changes.
    pub async fn run(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        mut stop: watch::Receiver<bool>,
    ) {
        let what = if tls.is_some() {
            "MQTT over TLS"
        } else {
            "MQTT"
        };
        while let Some((stream, client)) =
            crate::security::tls::accept(&listener, &mut stop, what).await
        {
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                self.refuse(client, "max_connections");
                continue;
            };
            let Some(slot) = self.pending.take(
                client.ip(),
                self.limits.max_pending_per_address,
                self.limits.max_pending,
            ) else {
                self.refuse(client, "max_pending");
                continue;
            };
            let front = self.clone();
            let tls = tls.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                front.serve(stream, client, tls, permit, slot, stop).await;
            });
        }
    }

    fn refuse(&self, client: SocketAddr, reason: &'static str) {
        self.telemetry
            .connections_refused
            .with_label_values(&["mqtt", reason])
            .inc();
        tracing::debug!(%client, reason, "MQTT connection refused");
    }

    /// One connection: handshake, CONNECT, login, then its session on the router.
    async fn serve(
        self,
        stream: TcpStream,
        client: SocketAddr,
        tls: Option<TlsAcceptor>,
        _permit: OwnedSemaphorePermit,
        slot: AddressSlot,
        stop: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
        match tls {
            None => {
                self.serve_stream(stream, client, deadline, slot, stop)
                    .await
            }
            Some(acceptor) => {
                let handshake = crate::security::tls::handshake(
                    &acceptor,
                    stream,
                    client,
                    "mqtt",
                    &self.telemetry,
                );
                let Some(stream) = handshake.await else {
                    return;
                };
                self.serve_stream(stream, client, deadline, slot, stop)
                    .await
            }
        }
    }

    async fn serve_stream<S>(
        self,
        stream: S,
        client: SocketAddr,
        deadline: tokio::time::Instant,
        slot: AddressSlot,
        stop: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buffer = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout_at(deadline, read_packet(&mut reader, &mut buffer)).await;
        let (connect, will, login) = match first {
            Ok(Ok(Packet::Connect(connect, _, will, _, login))) => (connect, will, login),
            Ok(Ok(_)) => return self.close(client, None, "not_connect"),
            Ok(Err(_)) => return self.close(client, None, "malformed"),
            Err(_) => return self.close(client, None, "connect_timeout"),
        };
        let (user, password) = match &login {
            Some(login) => (login.username.as_str(), login.password.as_str()),
            None => ("", ""),
        };
        let role = match self.auth.check(&connect.client_id, user, password) {
            Ok(role) => role,
            Err(reason) => {
                self.auth.count_refusal(&connect.client_id, user, reason);
                let code = match reason {
                    "bad_password" | "unknown_user" => ConnectReturnCode::BadUserNamePassword,
                    _ => ConnectReturnCode::NotAuthorized,
                };
                let _ = write_packets(&mut writer, [connack(code)]).await;
                return;
            }
        };
        if connect.client_id.is_empty() && !connect.clean_session {
            // An integration without a client id gets one made up below, which cannot
            // name a session kept from before.
            let refusal = connack(ConnectReturnCode::ClientIdentifierNotValid);
            let _ = write_packets(&mut writer, [refusal]).await;
            return self.close(client, Some(&role), "client_id");
        }
        if connect.keep_alive == 0 {
            // Without a keep-alive a silent, half-open connection would be held for ever.
            return self.close(client, Some(&role), "no_keep_alive");
        }
        if let Some(will) = &will {
            let Ok(topic) = std::str::from_utf8(&will.topic) else {
                return self.close(client, Some(&role), "malformed");
            };
            if let Err(reason) = role.may_publish(topic, will.retain, will.message.len()) {
                return self.close(client, Some(&role), reason);
            }
        }
        drop(slot);
        let mut session = Connection {
            reader,
            writer,
            buffer,
            client,
            silence: Duration::from_millis(u64::from(connect.keep_alive) * 1500),
            will,
            stop,
        };
        match &role {
            Role::Agent(host) => {
                self.serve_agent(
                    &mut session,
                    &role,
                    host,
                    &connect.client_id,
                    connect.clean_session,
                )
                .await
            }
            Role::Integration => {
                self.serve_integration(
                    &mut session,
                    &role,
                    connect.client_id,
                    connect.clean_session,
                )
                .await
            }
        }
    }

    /// An integration's session: a link of its own to the router, which holds its
    /// subscriptions; what the router sends it is encoded for it.
    async fn serve_integration<R, W>(
        &self,
        session: &mut Connection<R, W>,
        role: &Role,
        client_id: String,
        clean_session: bool,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let client = session.client;
        // An integration without a client id gets one made up, which cannot name a
        // session kept from before (refused above).
        let client_id = if client_id.is_empty() {
            format!("vigil-integration-{:016x}", rand::random::<u64>())
        } else {
            client_id
        };
        // The router answers within the rest of the login's time, or the login fails.
        let opened = tokio::time::timeout(
            self.limits.connect_timeout,
            self.broker.open(client_id, clean_session),
        )
        .await;
        let (mut link_tx, mut link_rx, accepted) = match opened {
            Ok(Ok(link)) => link,
            failed => {
                let reason = match failed {
                    Ok(Err(LinkRefused::Busy)) => "broker_busy",
                    Err(_) => "broker_timeout",
                    _ => "broker_refused",
                };
                self.close(client, Some(role), reason);
                let refusal = connack(ConnectReturnCode::ServiceUnavailable);
                let _ = write_packets(&mut session.writer, [refusal]).await;
                return;
            }
        };
        let mut out = BytesMut::new();
        if encode(accepted, &mut out).is_none()
            || write_out(&mut session.writer, &mut out).await.is_err()
        {
            return hang_up(&self.broker, &mut link_tx, None);
        }
        let mut heard = tokio::time::Instant::now();
        let mut packets = Vec::new();
        let mut acks = Vec::new();
        let mut seat = self.audience.seat();
        let end = loop {
            // Every whole packet in the buffer is checked, then they go to the router
            // together.
            let checked = take_checked(&mut session.buffer, role, &mut packets, &mut acks);
            take_seat(&mut seat, &packets);
            if hand_over(&self.broker, &mut link_tx, &mut packets).is_err() {
                break End::RouterGone;
            }
            if let Some(end) = self.ended_by(checked, client, role) {
                break end;
            }
            session.buffer.reserve(4096);
            tokio::select! {
                read = session.reader.read_buf(&mut session.buffer) => match read {
                    Ok(0) | Err(_) => break End::Lost,
                    Ok(_) => heard = tokio::time::Instant::now(),
                },
                notified = link_rx.next() => match notified {
                    Ok(Some(first)) => {
                        let mut wake = encode(first, &mut out).is_none();
                        // What else the router has queued goes out in the same write.
                        for _ in 0..MAX_BATCH {
                            match link_rx.next().now_or_never() {
                                Some(Ok(Some(next))) => wake |= encode(next, &mut out).is_none(),
                                Some(Err(_)) => break,
                                Some(Ok(None)) | None => break,
                            }
                        }
                        let written = tokio::time::timeout(WRITE_TIMEOUT, write_out(&mut session.writer, &mut out)).await;
                        if !matches!(written, Ok(Ok(()))) {
                            break End::Lost;
                        }
                        if wake && link_rx.wake().await.is_err() {
                            break End::RouterGone;
                        }
                    }
                    Ok(None) => {}
                    // The router ended the session: the same client id logged in again.
                    Err(_) => break End::RouterGone,
                },
                _ = tokio::time::sleep_until(heard + session.silence) => {
                    tracing::debug!(%client, role = ?role, "MQTT client silent past its keep-alive");
                    break End::Lost;
                }
                _ = session.stop.changed() => break End::Lost,
            }
        };
        if matches!(end, End::Lost) {
            hang_up(&self.broker, &mut link_tx, None);
        }
    }

    /// An agent's session. Its publishes go to the router by a link shared with other
    /// agents ([`EmbeddedBroker::agent_link`]) and are acknowledged to it once handed
    /// over; its subscriptions, and what it is sent, are its session's in the mailroom;
    /// its pings are answered here.
    async fn serve_agent<R, W>(
        &self,
        session: &mut Connection<R, W>,
        role: &Role,
        host: &str,
        client_id: &str,
        clean_session: bool,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let client = session.client;
        let link = self.broker.agent_link(client_id);
        let (mail, present) = self.broker.mailroom.attach(host, client_id, clean_session);
        let mut out = BytesMut::new();
        let ack = ConnAck {
            session_present: present,
            code: ConnectReturnCode::Success,
        };
        if V4.write(Packet::ConnAck(ack, None), &mut out).is_err()
            || write_out(&mut session.writer, &mut out).await.is_err()
        {
            return publish_will(&self.broker, link, session.will.take());
        }
        let mut heard = tokio::time::Instant::now();
        let mut packets = Vec::new();
        let mut acks = Vec::new();
        // Publishes read while ingest is far behind, held unacknowledged (see `backlog`).
        let mut held = Held::new(&self.broker.backlog);
        // Its place in line while it holds publishes and ingest is far behind: kept across
        // the loop's turns (reading a ping must not send it to the back).
        let mut in_line: Option<BoxFuture<'_, bool>> = None;
        // Its turn came after a wait: what it holds goes over even if the backlog filled.
        let mut turn = false;
        let end = loop {
            let checked = take_checked(&mut session.buffer, role, &mut packets, &mut acks);
            answer_mail(&mail, &mut packets, &mut out);
            packets.retain(|packet| match packet {
                Packet::Publish(..) => true,
                Packet::PingReq(_) => {
                    let _ = V4.write(Packet::PingResp(PingResp), &mut out);
                    false
                }
                // DISCONNECT ends the loop below; an agent has no QoS 2 exchanges.
                _ => false,
            });
            let wait = !turn && self.broker.backlog.full();
            if wait && checked == Ok(false) {
                held.set(packets.iter().map(publish_bytes).sum());
            } else {
                if hand_over_shared(&self.broker, link, &mut packets).is_err() {
                    break End::RouterGone;
                }
                held.set(0);
                turn = false;
                for pkid in acks.drain(..) {
                    let ack = PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    };
                    let _ = V4.write(Packet::PubAck(ack, None), &mut out);
                }
            }
            if let Some(end) = self.ended_by(checked, client, role) {
                break end;
            }
            mail.take(&mut out);
            if !out.is_empty() {
                let written =
                    tokio::time::timeout(WRITE_TIMEOUT, write_out(&mut session.writer, &mut out))
                        .await;
                if !matches!(written, Ok(Ok(()))) {
                    break End::Lost;
                }
            }
            session.buffer.reserve(4096);
            // While ingest is far behind, what the agent publishes is held without its
            // PUBACK (its client's in-flight window then stops it) and the socket is read
            // on, for its pings, until the connection holds its share; then the socket
            // waits too, and the keep-alive counts from when reading resumes.
            let read = !wait || held.may_grow();
            if !wait || packets.is_empty() {
                in_line = None;
            } else if in_line.is_none() {
                in_line = Some(self.broker.backlog.room().boxed());
            }
            tokio::select! {
                got = session.reader.read_buf(&mut session.buffer), if read => match got {
                    Ok(0) | Err(_) => break End::Lost,
                    Ok(_) => heard = tokio::time::Instant::now(),
                },
                forgot = async {
                    match in_line.as_mut() {
                        Some(place) => place.await,
                        None => std::future::pending().await,
                    }
                }, if in_line.is_some() => {
                    heard = tokio::time::Instant::now();
                    in_line = None;
                    turn = true;
                    let outcome = if forgot { "forgotten" } else { "room" };
                    self.telemetry.mqtt_front_waits.with_label_values(&[outcome]).inc();
                }
                () = mail.notified() => {}
                // The same client id logged in again (this connection ends without its
                // will, as rumqttd's router ends a connection taken over), or the host
                // was revoked.
                () = mail.taken_over() => break End::RouterGone,
                _ = tokio::time::sleep_until(heard + session.silence), if read => {
                    tracing::debug!(%client, role = ?role, "MQTT client silent past its keep-alive");
                    break End::Lost;
                }
                _ = session.stop.changed() => break End::Lost,
            }
        };
        if matches!(end, End::Lost) {
            publish_will(&self.broker, link, session.will.take());
        }
    }

    /// How the connection ends after [`take_checked`] said `checked`: on a DISCONNECT,
    /// or on a refused packet (closed and counted); `None` to go on.
    fn ended_by(
        &self,
        checked: Result<bool, &'static str>,
        client: SocketAddr,
        role: &Role,
    ) -> Option<End> {
        match checked {
            Ok(false) => None,
            Ok(true) => Some(End::Disconnected),
            Err(reason) => {
                self.close(client, Some(role), reason);
                Some(End::Lost)
            }
        }
    }

    fn close(&self, client: SocketAddr, role: Option<&Role>, reason: &'static str) {
        let role_label = role.map_or("none", Role::label);
        self.telemetry
            .mqtt_acl_refusals
            .with_label_values(&[role_label, reason])
            .inc();
        tracing::warn!(%client, role = ?role, reason, "MQTT connection closed by the front");
    }
}

/// A logged-in connection: its socket, what is read and not yet handled, and what the
/// login said.
struct Connection<R, W> {
    reader: R,
    writer: W,
    buffer: BytesMut,
    client: SocketAddr,
    /// One and a half keep-alive periods: a client silent this long is gone.
    silence: Duration,
    will: Option<LastWill>,
    stop: watch::Receiver<bool>,
}

/// How a checked connection ended.
enum End {
    /// The client sent DISCONNECT, which went to the router: no will.
    Disconnected,
    /// The session was ended for the connection: a new login with the same client id
    /// took it over, or the router dropped it (it refused a packet).
    RouterGone,
    /// The connection broke, fell silent, was refused a packet or the coordinator is
    /// stopping: the will is published and the session ends.
    Lost,
}

/// Most notifications written to a client in one go.
const MAX_BATCH: usize = 500;

/// How long a client may leave written packets unread before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// Ends a session that did not end with a DISCONNECT: publishes the client's will (as
/// MQTT 3.1.1 asks of a broker), then ends the session in the router, which keeps it if
/// it is not clean.
fn hang_up(broker: &EmbeddedBroker, link_tx: &mut LinkTx, will: Option<LastWill>) {
    let mut packets: Vec<Packet> = will.as_ref().and_then(will_publish).into_iter().collect();
    packets.push(Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    ));
    let _ = hand_over(broker, link_tx, &mut packets);
}

/// The bytes of a PUBLISH's topic and payload (0 for any other packet).
fn publish_bytes(packet: &Packet) -> u64 {
    match packet {
        Packet::Publish(publish, _) => Backlog::size(publish.topic.len(), publish.payload.len()),
        _ => 0,
    }
}

/// Publishes the will of an agent whose connection ended without a DISCONNECT.
fn publish_will(broker: &EmbeddedBroker, link: &Mutex<LinkTx>, will: Option<LastWill>) {
    let mut packets: Vec<Packet> = will.as_ref().and_then(will_publish).into_iter().collect();
    let _ = hand_over_shared(broker, link, &mut packets);
}

/// The PUBLISH a will stands for, with the will's QoS. rumqttd only lets a PUBLISH with
/// a QoS above 0 be made by decoding one, so the will is encoded with rumqttc's codec and
/// read back with rumqttd's.
fn will_publish(will: &LastWill) -> Option<Packet> {
    let qos = match will.qos {
        rumqttd::protocol::QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        rumqttd::protocol::QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        rumqttd::protocol::QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    };
    let topic = std::str::from_utf8(&will.topic).ok()?;
    let mut publish = rumqttc::mqttbytes::v4::Publish::from_bytes(topic, qos, will.message.clone());
    publish.retain = will.retain;
    publish.pkid = u16::from(qos != rumqttc::QoS::AtMostOnce);
    let mut bytes = BytesMut::new();
    publish.write(&mut bytes).ok()?;
    V4.read_mut(&mut bytes, usize::MAX).ok()
}

/// Gives `packets` to the router: all but the last go into the link's buffer, the last
/// with the notification. That notification waits when the router's queue is full;
/// when it nearly is, the wait happens off the runtime's worker.
fn hand_over(
    broker: &EmbeddedBroker,
    link_tx: &mut LinkTx,
    packets: &mut Vec<Packet>,
) -> Result<(), RouterGone> {
    if packets.is_empty() {
        return Ok(());
    }
    off_the_worker_if_busy(broker, || send_packets(link_tx, packets))
}

/// [`hand_over`] on a link shared by agents' connections.
fn hand_over_shared(
    broker: &EmbeddedBroker,
    link: &Mutex<LinkTx>,
    packets: &mut Vec<Packet>,
) -> Result<(), RouterGone> {
    if packets.is_empty() {
        return Ok(());
    }
    let bytes: u64 = packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish, _) => Backlog::counted(&publish.topic, publish.payload.len()),
            _ => None,
        })
        .sum();
    broker.backlog.handed(bytes);
    off_the_worker_if_busy(broker, || {
        let mut link_tx = link.lock().unwrap_or_else(PoisonError::into_inner);
        send_packets(&mut link_tx, packets)
    })
}

/// Runs `send` in place, or, when the router's queue is nearly full (so that it may
/// wait), off the runtime's worker.
fn off_the_worker_if_busy<T>(broker: &EmbeddedBroker, send: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if multi_thread && broker.busy() {
        tokio::task::block_in_place(send)
    } else {
        send()
    }
}

fn send_packets(link_tx: &mut LinkTx, packets: &mut Vec<Packet>) -> Result<(), RouterGone> {
    let Some(last) = packets.pop() else {
        return Ok(());
    };
    link_tx.buffer().extend(packets.drain(..));
    // `send` blocks in place (it does not yield), so one poll completes it.
    match link_tx.send(last).now_or_never() {
        Some(Err(_)) => Err(RouterGone),
        Some(Ok(_)) | None => Ok(()),
    }
}

/// The router has dropped the session (its end of the link is gone).
struct RouterGone;

/// Follows an integration's subscriptions to the `metrics` JSON stream in `packets`.
fn take_seat(seat: &mut Seat, packets: &[Packet]) {
    for packet in packets {
        match packet {
            Packet::Subscribe(subscribe, _) => subscribe
                .filters
                .iter()
                .for_each(|filter| seat.subscribed(&filter.path)),
            Packet::Unsubscribe(unsubscribe, _) => unsubscribe
                .filters
                .iter()
                .for_each(|filter| seat.unsubscribed(filter)),
            _ => {}
        }
    }
}

/// Answers an agent's SUBSCRIBE and UNSUBSCRIBE into `out` and takes its PUBACKs: its
/// session is the mailroom's. What else it sent stays in `packets` for the router.
fn answer_mail(mail: &Attachment, packets: &mut Vec<Packet>, out: &mut BytesMut) {
    packets.retain(|packet| {
        let answer = match packet {
            Packet::Subscribe(subscribe, _) => mail.subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe, _) => mail.unsubscribe(unsubscribe),
            Packet::PubAck(ack, _) => {
                mail.acked(ack.pkid);
                return false;
            }
            _ => return true,
        };
        if let Err(e) = V4.write(answer, out) {
            tracing::warn!("cannot encode a packet for an MQTT client: {e}");
        }
        false
    });
}

/// Appends what the router sent to `out`, as MQTT 3.1.1 bytes; `None` when it is not a
/// packet for the client (the router's "unscheduled": it waits for a wake-up).
fn encode(notification: Notification, out: &mut BytesMut) -> Option<()> {
    let packet = match Option::<Packet>::from(notification)? {
        Packet::ConnAck(ack, _) => Packet::ConnAck(ack, None),
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(ack, _) => Packet::PubAck(ack, None),
        Packet::SubAck(ack, _) => Packet::SubAck(ack, None),
        Packet::UnsubAck(ack, _) => Packet::UnsubAck(ack, None),
        Packet::PubRec(rec, _) => Packet::PubRec(rec, None),
        Packet::PubRel(rel, _) => Packet::PubRel(rel, None),
        Packet::PubComp(comp, _) => Packet::PubComp(comp, None),
        Packet::PingResp(resp) => Packet::PingResp(resp),
        // A 3.1.1 server never sends DISCONNECT (the router only does for MQTT 5), nor
        // a client's packets.
        _ => return Some(()),
    };
    if let Err(e) = V4.write(packet, out) {
        tracing::warn!("cannot encode a packet for an MQTT client: {e}");
    }
    Some(())
}

async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    writer.write_all(out).await?;
    out.clear();
    writer.flush().await
}

async fn write_packets<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packets: impl IntoIterator<Item = Packet>,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    for packet in packets {
        V4.write(packet, &mut out).map_err(std::io::Error::other)?;
    }
    write_out(writer, &mut out).await
}

/// Reads one whole packet (at most [`MAX_PACKET_BYTES`]), reading more as needed.
async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Packet, protocol::Error> {
    loop {
        match V4.read_mut(buffer, MAX_PACKET_BYTES) {
            Ok(packet) => return Ok(packet),
            Err(protocol::Error::InsufficientBytes(_)) => {
                buffer.reserve(4096);
                if reader.read_buf(buffer).await.unwrap_or(0) == 0 {
                    return Err(protocol::Error::InsufficientBytes(1));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Decodes every whole packet in `buffer` into `packets` while `role` allows them, and
/// the packet id of each QoS 1 PUBLISH among them into `acks`. `Ok(true)` when the last
/// one is a DISCONNECT (nothing after it is read); `Err` with the reason when a packet
/// is refused (the ones before it are kept).
pub(crate) fn take_checked(
    buffer: &mut BytesMut,
    role: &Role,
    packets: &mut Vec<Packet>,
    acks: &mut Vec<u16>,
) -> Result<bool, &'static str> {
    loop {
        let qos_and_id = publish_qos_and_id(buffer);
        let packet = match V4.read_mut(buffer, MAX_PACKET_BYTES) {
            Ok(packet) => packet,
            Err(protocol::Error::InsufficientBytes(_)) => return Ok(false),
            Err(protocol::Error::PayloadSizeLimitExceeded(_)) => return Err("too_large"),
            Err(_) => return Err("malformed"),
        };
        role.may_send(&packet)?;
        match qos_and_id {
            Some((1, pkid)) => acks.push(pkid),
            // Nothing Vigil sends is QoS 2, and an agent's exchanges are not kept.
            Some((2, _)) => return Err("qos2"),
            _ => {}
        }
        let packet = match packet {
            // The decoded topic and payload are slices of the read buffer, and the broker
            // keeps what it routes in its log for a while: each message kept would hold
            // the whole buffer it was read into. A copy of its own holds only itself.
            Packet::Publish(mut publish, properties) => {
                publish.topic = Bytes::copy_from_slice(&publish.topic);
                publish.payload = Bytes::copy_from_slice(&publish.payload);
                Packet::Publish(publish, properties)
            }
            packet => packet,
        };
        let disconnect = matches!(packet, Packet::Disconnect(..));
        packets.push(packet);
        if disconnect {
            return Ok(true);
        }
    }
}

/// The QoS and packet id of the PUBLISH at the start of `bytes`, read off its header
/// (rumqttd's decoded `Publish` keeps them to itself); `None` for another packet, a QoS
/// 0 PUBLISH or too few bytes. Used only for a packet the codec then reads whole.
fn publish_qos_and_id(bytes: &[u8]) -> Option<(u8, u16)> {
    let first = *bytes.first()?;
    let qos = (first >> 1) & 0b11;
    if first >> 4 != 3 || qos == 0 {
        return None;
    }
    // The remaining length: one to four bytes, seven bits each, the high bit "more".
    let mut at = 1;
    while bytes.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    at += 1;
    let topic_len = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
    let id = at + 2 + topic_len;
    Some((
        qos,
        u16::from_be_bytes([*bytes.get(id)?, *bytes.get(id + 1)?]),
    ))
}

impl Role {
    /// Whether this login may send `packet`.
    fn may_send(&self, packet: &Packet) -> Result<(), &'static str> {
        match packet {
            Packet::Publish(publish, _) => {
                let topic = std::str::from_utf8(&publish.topic).map_err(|_| "malformed")?;
                self.may_publish(topic, publish.retain, publish.payload.len())
            }
            Packet::Subscribe(subscribe, _) => subscribe
                .filters
                .iter()
                .try_for_each(|filter| self.may_subscribe(&filter.path)),
            Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubRel(..)
            | Packet::PubComp(..)
            | Packet::Unsubscribe(..)
            | Packet::PingReq(..)
            | Packet::Disconnect(..) => Ok(()),
            Packet::Connect(..) => Err("second_connect"),
            Packet::ConnAck(..)
            | Packet::SubAck(..)
            | Packet::UnsubAck(..)
            | Packet::PingResp(..) => Err("server_packet"),
        }
    }

    /// Whether this login may publish (or leave as its will) `len` bytes on `topic`.
    pub(crate) fn may_publish(
        &self,
        topic: &str,
        retain: bool,
        len: usize,
    ) -> Result<(), &'static str> {
        match self {
            Role::Integration => Err("read_only"),
            Role::Agent(host) => {
                let channel = match topics::parse_agent(topic) {
                    Some((owner, channel)) if owner == host => channel,
                    _ => return Err("foreign_topic"),
                };
                match channel {
                    AgentChannel::Commands
                    | AgentChannel::Acks
                    | AgentChannel::Welcome
                    | AgentChannel::Grants => Err("foreign_topic"),
                    AgentChannel::Status if retain && len > MAX_RETAINED_BYTES => {
                        Err("retained_too_large")
                    }
                    AgentChannel::Status => Ok(()),
                    _ if retain => Err("retain"),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Whether this login may subscribe to `filter`.
    fn may_subscribe(&self, filter: &str) -> Result<(), &'static str> {
        let allowed = match self {
            Role::Integration => filter.starts_with(&format!("{}/", topics::ROOT)),
            Role::Agent(host) => {
                filter == topics::agent(host, AgentChannel::Commands)
                    || filter == topics::agent(host, AgentChannel::Acks)
                    || filter == topics::agent(host, AgentChannel::Welcome)
                    || filter == topics::agent(host, AgentChannel::Grants)
                    || filter
                        .strip_prefix(&topics::bundle(""))
                        .is_some_and(|group| !group.contains('/') || group == "#")
            }
        };
        if allowed {
            Ok(())
        } else {
            Err("foreign_filter")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_publishes_only_on_its_own_topics() {
        let web = Role::Agent("web".into());
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/metrics", false, 10),
            Ok(())
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/status", true, 10),
            Ok(())
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web-01/metrics", false, 10),
            Err("foreign_topic")
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/commands", false, 10),
            Err("foreign_topic")
        );
        assert_eq!(
            web.may_publish("vigil/v1/json/hosts/web", true, 10),
            Err("foreign_topic")
        );
        // Lease requests are its own; the answers are the coordinator's.
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/leases", false, 10),
            Ok(())
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/grants", false, 10),
            Err("foreign_topic")
        );
        assert_eq!(web.may_subscribe("vigil/v1/agents/web/grants"), Ok(()));
        assert_eq!(
            web.may_subscribe("vigil/v1/agents/web-01/grants"),
            Err("foreign_filter")
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/metrics", true, 10),
            Err("retain")
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/status", true, MAX_RETAINED_BYTES + 1),
            Err("retained_too_large")
        );
    }

    #[test]
    fn an_integration_publishes_nothing_and_reads_under_the_root() {
        let api = Role::Integration;
        assert_eq!(
            api.may_publish("vigil/v1/json/hosts/web", false, 1),
            Err("read_only")
        );
        assert_eq!(api.may_subscribe("vigil/v1/json/#"), Ok(()));
        assert_eq!(api.may_subscribe("#"), Err("foreign_filter"));
        assert_eq!(api.may_subscribe("$SYS/#"), Err("foreign_filter"));
    }

    #[test]
    fn an_agent_subscribes_to_its_commands_and_the_bundles() {
        let web = Role::Agent("web".into());
        assert_eq!(web.may_subscribe("vigil/v1/agents/web/commands"), Ok(()));
        assert_eq!(web.may_subscribe("vigil/v1/agents/web/acks"), Ok(()));
        assert_eq!(web.may_subscribe("vigil/v1/agents/web/welcome"), Ok(()));
        assert_eq!(
            web.may_subscribe("vigil/v1/agents/web-01/welcome"),
            Err("foreign_filter")
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/welcome", false, 10),
            Err("foreign_topic")
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/session", false, 10),
            Ok(())
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/session", true, 10),
            Err("retain")
        );
        assert_eq!(
            web.may_subscribe("vigil/v1/agents/web-01/acks"),
            Err("foreign_filter")
        );
        assert_eq!(
            web.may_publish("vigil/v1/agents/web/acks", false, 10),
            Err("foreign_topic")
        );
        assert_eq!(web.may_subscribe("vigil/v1/bundles/+"), Ok(()));
        assert_eq!(web.may_subscribe("vigil/v1/bundles/#"), Ok(()));
        assert_eq!(
            web.may_subscribe("vigil/v1/agents/web-01/commands"),
            Err("foreign_filter")
        );
        assert_eq!(
            web.may_subscribe("vigil/v1/agents/+/commands"),
            Err("foreign_filter")
        );
        assert_eq!(web.may_subscribe("vigil/v1/#"), Err("foreign_filter"));
    }

    #[test]
    fn the_qos_and_packet_id_of_a_publish_are_read_off_its_header() {
        let mut bytes = BytesMut::new();
        let topic = "vigil/v1/agents/web/metrics";
        for (qos, id, len) in [
            (rumqttc::QoS::AtLeastOnce, 7, 10),
            (rumqttc::QoS::AtLeastOnce, 65_535, 300),
            (rumqttc::QoS::ExactlyOnce, 2, 20_000),
            (rumqttc::QoS::AtMostOnce, 0, 5),
        ] {
            let mut publish = rumqttc::mqttbytes::v4::Publish::new(topic, qos, vec![0u8; len]);
            publish.pkid = id;
            bytes.clear();
            publish.write(&mut bytes).expect("encoded");
            let expected = (qos != rumqttc::QoS::AtMostOnce).then_some((qos as u8, id));
            assert_eq!(publish_qos_and_id(&bytes), expected, "{qos:?} {len}");
            assert_eq!(publish_qos_and_id(&bytes[..3]), None, "too few bytes");
        }
        assert_eq!(publish_qos_and_id(&[0xC0, 0]), None, "PINGREQ");

        let web = Role::Agent("web".into());
        let (mut packets, mut acks) = (Vec::new(), Vec::new());
        let mut publish =
            rumqttc::mqttbytes::v4::Publish::new(topic, rumqttc::QoS::AtLeastOnce, "x");
        publish.pkid = 9;
        let mut buffer = BytesMut::new();
        publish.write(&mut buffer).expect("encoded");
        assert_eq!(
            take_checked(&mut buffer, &web, &mut packets, &mut acks),
            Ok(false)
        );
        assert_eq!(acks, vec![9]);
        publish.qos = rumqttc::QoS::ExactlyOnce;
        publish.write(&mut buffer).expect("encoded");
        assert_eq!(
            take_checked(&mut buffer, &web, &mut packets, &mut acks),
            Err("qos2")
        );
    }

    #[test]
    fn pending_connections_are_bounded_per_address_and_freed_on_drop() {
        let pending = Arc::new(PerAddress::default());
        let a: std::net::IpAddr = [127, 0, 0, 2].into();
        let b: std::net::IpAddr = [127, 0, 0, 3].into();
        let first = pending.take(a, 2, 3).expect("first");
        let _second = pending.take(a, 2, 3).expect("second");
        assert!(pending.take(a, 2, 3).is_none(), "third from one address");
        let _third = pending.take(b, 2, 3).expect("other address");
        assert!(pending.take(b, 2, 3).is_none(), "total reached");
        drop(first);
        assert!(pending.take(a, 2, 3).is_some(), "freed on drop");
    }
}
