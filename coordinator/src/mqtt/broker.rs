//! The embedded MQTT broker (rumqttd), started by default so that one process gives a
//! working Vigil. Its router runs on its own thread for the life of the process.
//! Clients from outside reach it through the front ([`crate::mqtt::front`]), which
//! bounds sockets, checks logins with [`BrokerAuth`], enforces what each may send and
//! hands each checked connection's packets to the router in-process: an integration's
//! through a link of its own ([`EmbeddedBroker::open`]), agents' through a few links they
//! share ([`EmbeddedBroker::agent_link`]; their subscriptions are the mailroom's). No
//! socket between the front and the router.
//!
//! Ingest takes agents' messages from the router over a link of its own too
//! ([`RouterLink`], made by [`start`]): in process, so nothing waits on a socket. The
//! coordinator's other MQTT clients use a loopback port of rumqttd's, which admits
//! only logins with the coordinator's internal password (made at start-up and never
//! written down). A local user who finds the loopback port gets nothing from it.
//! (rumqttd does not turn Nagle's algorithm off on the sockets it accepts. A client that
//! only reads, as ingest did on that port, acknowledges late (TCP's delayed ACK), and
//! the router's next write then waits for that acknowledgement: up to 40 ms whenever
//! two writes come close together.)
//!
//! [`BrokerAuth`] admits two kinds of login at the front:
//! - an enrolled, unrevoked agent: user name = its host, its MQTT password
//!   ([`crate::security::agents`]), and exactly one of its two client ids, `vigil-agent-{host}`
//!   (its link) and `vigil-outbox-{host}` (its outbox), so that no login can push
//!   another's session off the broker or inherit it;
//! - integrations: user `api`, any unrevoked REST API token as the password; read only.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, SegmentConfig, Server,
    ServerSettings,
};
use subtle::ConstantTimeEq;
use thiserror::Error;
use vigil_shared::broker_url::BrokerUrl;
use vigil_shared::mqtt::{agent_client_id, outbox_client_id};
use vigil_shared::wire::MAX_PAYLOAD_BYTES;

use crate::mqtt::backlog::Backlog;
use crate::mqtt::mailroom::{self, Mailroom};
use crate::security::agents::{self, API_MQTT_USER, COORDINATOR_MQTT_USER};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Largest MQTT packet a client may send: a full payload plus topic and header room.
pub const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 1024;

/// A user name reserved inside the coordinator: no login at the front may take it.
pub const FRONT_MQTT_USER: &str = "vigil-front";

/// Who a login at the front is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The agent of this host.
    Agent(String),
    /// An integration (a REST API token): reads only.
    Integration,
}

impl Role {
    /// The `role` label of this login's counters.
    pub fn label(&self) -> &'static str {
        match self {
            Role::Agent(_) => "agent",
            Role::Integration => "integration",
        }
    }
}

/// Decides who may log in to the embedded broker.
#[derive(Clone)]
pub struct BrokerAuth {
    store: Store,
    telemetry: Arc<Telemetry>,
}

impl BrokerAuth {
    /// Checks logins against `store`.
    pub fn new(store: Store, telemetry: Arc<Telemetry>) -> Self {
        BrokerAuth { store, telemetry }
    }

    /// Logs and counts a refused login by reason.
    pub fn count_refusal(&self, client_id: &str, user: &str, reason: &'static str) {
        self.telemetry
            .mqtt_auth_failures
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(%client_id, %user, reason, "MQTT login refused");
    }

    /// Who the login is, or why it is refused (the `reason` label of
    /// `vigil_mqtt_auth_failures_total`).
    pub fn check(&self, client_id: &str, user: &str, password: &str) -> Result<Role, &'static str> {
        let reserved_id = client_id.starts_with("vigil-agent-")
            || client_id.starts_with("vigil-outbox-")
            || client_id.starts_with("vigil-coordinator");
        if user == COORDINATOR_MQTT_USER || user == FRONT_MQTT_USER {
            // The coordinator's own clients use rumqttd's loopback port, never the front.
            return Err("bad_password");
        }
        if user == API_MQTT_USER {
            let record = self
                .store
                .token(&crate::security::tokens::hash(password))
                .map_err(|_| "store_error")?;
            return match record {
                Some(r) if r.revoked_ms.is_none() && !reserved_id => Ok(Role::Integration),
                Some(r) if r.revoked_ms.is_none() => Err("client_id"),
                Some(_) => Err("revoked"),
                None => Err("bad_password"),
            };
        }
        let record = self
            .store
            .agent(user)
            .map_err(|_| "store_error")?
            .ok_or("unknown_user")?;
        if record.revoked_ms.is_some() {
            return Err("revoked");
        }
        if !agents::mqtt_login_ok(&record, password) {
            return Err("bad_password");
        }
        if client_id == agent_client_id(user) || client_id == outbox_client_id(user) {
            Ok(Role::Agent(user.to_string()))
        } else {
            Err("client_id")
        }
    }
}

/// rumqttd's own check on its loopback port: only the coordinator's clients, with the
/// internal password, get in.
fn internal_login_ok(internal_password: &str, client_id: &str, user: &str, password: &str) -> bool {
    let ok: bool = password
        .as_bytes()
        .ct_eq(internal_password.as_bytes())
        .into();
    ok && user == COORDINATOR_MQTT_USER && client_id.starts_with("vigil-coordinator")
}

/// A session opened on the router: the link's two halves and the router's CONNACK.
pub(crate) type Session = (LinkTx, LinkRx, Notification);

/// Why the router did not open a session.
#[derive(Debug, Error)]
pub enum LinkRefused {
    /// The router answered with an error (too many connections, a client id with `+`,
    /// `#`, `/` or `$`, or it is gone).
    #[error("the embedded broker did not open the session: {0}")]
    Router(String),
    /// [`OPEN_QUEUE`] sessions are already waiting to be opened.
    #[error("the embedded broker has {OPEN_QUEUE} sessions waiting to be opened")]
    Busy,
}

/// Sessions that may wait to be opened; a login beyond them is refused at once.
pub(crate) const OPEN_QUEUE: usize = 1024;

/// One session to open, and where its answer goes.
struct OpenRequest {
    client_id: String,
    clean_session: bool,
    answer: tokio::sync::oneshot::Sender<Result<Session, LinkRefused>>,
}

/// The running embedded broker, as the front sees it.
#[derive(Clone)]
pub struct EmbeddedBroker {
    opener: std::sync::mpsc::SyncSender<OpenRequest>,
    busy: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The agents' sessions: what the coordinator sends them.
    pub(crate) mailroom: Mailroom,
    /// The links agents' publishes reach the router by ([`AGENT_LINKS`]).
    agent_links: Arc<[std::sync::Mutex<LinkTx>]>,
    /// How far ingest is behind what agents published (the front waits on it).
    pub(crate) backlog: Arc<Backlog>,
}

/// Links to the router shared by all agents' connections. An agent only publishes into
/// the router (its subscriptions are the mailroom's), so it needs no link of its own,
/// and a link costs rumqttd ≈ 128 KB of queues. Each client id always uses the same
/// link, so its messages keep their order.
pub(crate) const AGENT_LINKS: usize = 2;

impl EmbeddedBroker {
    /// Opens the session of a client the front has checked, as rumqttd's own network
    /// links do (dynamic filters on; no will: the front publishes it), and waits for
    /// the router's CONNACK. Sessions are opened one at a time on a thread of their own
    /// (opening blocks until the router answers), so a slow router holds at most
    /// [`OPEN_QUEUE`] logins, never the runtime's threads; a caller that stops waiting
    /// (its client gave up) is skipped, or its session ended if it was already open.
    pub(crate) async fn open(
        &self,
        client_id: String,
        clean_session: bool,
    ) -> Result<Session, LinkRefused> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let request = OpenRequest {
            client_id,
            clean_session,
            answer,
        };
        self.opener
            .try_send(request)
            .map_err(|_| LinkRefused::Busy)?;
        answered
            .await
            .unwrap_or_else(|_| Err(LinkRefused::Router("the opening thread is gone".into())))
    }

    /// The link `client_id`'s publishes go to the router by.
    pub(crate) fn agent_link(&self, client_id: &str) -> &std::sync::Mutex<LinkTx> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(client_id);
        &self.agent_links[(hash % self.agent_links.len() as u64) as usize]
    }

    /// Whether the router's event queue is nearly full, so that handing it more may
    /// block for a while.
    pub(crate) fn busy(&self) -> bool {
        (self.busy)()
    }
}

/// The client id of ingest's link to the router (the `vigil-coordinator` prefix is
/// reserved: no login at the front may take it).
pub(crate) const INGEST_LINK_ID: &str = "vigil-coordinator-ingest";

/// How long [`RouterLink::subscribe`] waits for the router to confirm.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// How often [`RouterLink::forward`] looks whether it should stop, while nothing comes.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// A subscriber's link to the router, in process: what its filters match comes to it
/// as the router forwards it (at QoS 0), with no socket and no MQTT encoding between.
pub struct RouterLink {
    tx: LinkTx,
    rx: LinkRx,
}

impl RouterLink {
    /// Subscribes to `filters` and waits until the router has confirmed each. Blocks.
    pub(crate) fn subscribe(&mut self, filters: &[String]) -> Result<(), LinkRefused> {
        let refused = |e: LinkError| LinkRefused::Router(e.to_string());
        for filter in filters {
            self.tx.subscribe(filter.as_str()).map_err(refused)?;
        }
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        let mut confirmed = 0;
        while confirmed < filters.len() {
            let notification = match self.rx.recv_deadline(deadline) {
                Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {
                    return Err(LinkRefused::Router(format!(
                        "the router did not confirm the subscriptions within {SUBSCRIBE_WAIT:?}"
                    )))
                }
                got => got.map_err(refused)?,
            };
            match notification.and_then(Option::<rumqttd::protocol::Packet>::from) {
                Some(rumqttd::protocol::Packet::SubAck(ack, _)) => {
                    use rumqttd::protocol::SubscribeReasonCode as Code;
                    if let Some(code) = ack.return_codes.iter().find(|code| {
                        !matches!(
                            code,
                            Code::QoS0 | Code::QoS1 | Code::QoS2 | Code::Success(_)
                        )
                    }) {
                        return Err(LinkRefused::Router(format!(
                            "subscription refused: {code:?}"
                        )));
                    }
                    confirmed += ack.return_codes.len().max(1);
                }
                None => self.rx.ready().map_err(refused)?,
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Hands every message the router forwards (topic, payload, retain flag) to `take`,
    /// in the order the router forwards them, until the router is gone (an error) or
    /// `stop` says so (then the link is ended). Blocks: run it on a thread of its own.
    pub(crate) fn forward(
        mut self,
        stop: impl Fn() -> bool,
        mut take: impl FnMut(&[u8], bytes::Bytes, bool),
    ) -> Result<(), LinkRefused> {
        loop {
            match self.rx.recv_deadline(Instant::now() + STOP_CHECK) {
                Ok(Some(Notification::Forward(forward))) => {
                    let publish = forward.publish;
                    take(&publish.topic, publish.payload, publish.retain);
                }
                // The router waits for the link to take what it was given before it
                // gives more.
                Ok(Some(Notification::Unschedule)) => self
                    .rx
                    .ready()
                    .map_err(|e| LinkRefused::Router(e.to_string()))?,
                Ok(_) => {}
                Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {}
                Err(e) => return Err(LinkRefused::Router(e.to_string())),
            }
            if stop() {
                end_link(&mut self.tx);
                return Ok(());
            }
        }
    }
}

/// Ends a link's session in the router (a DISCONNECT, handed over without waiting).
fn end_link(link_tx: &mut LinkTx) {
    let disconnect = rumqttd::protocol::Disconnect {
        reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
    };
    let _ = link_tx
        .send(rumqttd::protocol::Packet::Disconnect(disconnect, None))
        .now_or_never();
}

/// Why the embedded broker could not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The MQTT port is taken (or not ours to bind).
    #[error("embedded MQTT broker cannot listen on {addr}: {source} (is another broker running? use --mqtt-listen, or --broker to use it)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The broker did not accept connections in time.
    #[error("embedded MQTT broker on {0} did not start accepting connections within 10 s")]
    NotReady(SocketAddr),
    /// The broker thread could not be created.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// The rumqttd router configuration Vigil uses: room for every connection the front
/// admits (agents share a few links, integrations have one each).
fn router_config() -> RouterConfig {
    // The mailroom reads what it subscribed to at once into bounded queues of its own: a
    // short log is enough for its filters. Every other filter's log is where messages
    // wait for a subscriber that fell behind (the coordinator's ingest under a burst).
    let mail_log = SegmentConfig {
        max_segment_size: 1024 * 1024,
        max_segment_count: 4,
    };
    RouterConfig {
        max_connections: 21_000,
        max_outgoing_packet_count: 1000,
        max_segment_size: 16 * 1024 * 1024,
        max_segment_count: 4,
        custom_segment: Some(
            mailroom::filters()
                .map(|filter| (filter, mail_log.clone()))
                .collect(),
        ),
        ..RouterConfig::default()
    }
}

/// rumqttd's loopback listener for the coordinator's own clients: MQTT 3.1.1, payloads
/// up to the protocol's limit, internal logins only.
fn loopback_server(listen: SocketAddr, internal_password: Arc<String>) -> ServerSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id, user, password| {
        let internal_password = Arc::clone(&internal_password);
        async move {
            let ok = internal_login_ok(&internal_password, &client_id, &user, &password);
            if !ok {
                tracing::warn!(%client_id, %user, "login on the broker's loopback port refused");
            }
            ok
        }
    });
    ServerSettings {
        name: "vigil-broker".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    }
}

/// A loopback address with a port free right now, for the broker behind the front.
pub fn free_loopback_address() -> Result<SocketAddr, BrokerError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    TcpListener::bind(addr)
        .and_then(|listener| listener.local_addr())
        .map_err(|source| BrokerError::Bind { addr, source })
}

/// The plaintext URL a client on this machine reaches a broker listening on `listen` by.
pub fn loopback_url(listen: SocketAddr) -> BrokerUrl {
    BrokerUrl {
        host: if listen.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            listen.ip().to_string()
        },
        port: listen.port(),
        tls: false,
    }
}

/// Starts the broker's router, its mailroom (agents' sessions), and its listener for the
/// coordinator's clients on `listen` (a loopback address, admitting only
/// `internal_password`), and waits until that listener takes logins. Returns the broker
/// and ingest's link to the router, not subscribed yet.
///
/// The coordinator's links are opened before anything connects over a socket: rumqttd
/// gives a closed connection's id to the next one, and the closed connection's late
/// disconnect event (a client that sends DISCONNECT and closes makes two) then ends
/// the link that took its id.
pub fn start(
    listen: SocketAddr,
    internal_password: String,
    telemetry: Arc<Telemetry>,
) -> Result<(EmbeddedBroker, RouterLink), BrokerError> {
    // rumqttd reports a failed bind only in its log; find out first, with a clear error.
    drop(
        TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?,
    );
    let probe_password = Arc::new(internal_password);
    let settings = loopback_server(listen, Arc::clone(&probe_password));
    let router_tx = Router::new(0, router_config()).spawn();
    let mut server = Server::new(settings, router_tx.clone(), V4);
    std::thread::Builder::new()
        .name("vigil-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!("embedded MQTT broker cannot start its runtime: {e}");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(server.start(LinkType::Remote)) {
                tracing::error!("embedded MQTT broker's loopback listener stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    let mailroom = Mailroom::new(telemetry);
    let link_failed = |e: LinkError| BrokerError::Thread(std::io::Error::other(e.to_string()));
    let (mut mail_tx, mail_rx, _) = LinkBuilder::new(mailroom::CLIENT_ID, router_tx.clone())
        .clean_session(true)
        .dynamic_filters(true)
        .build()
        .map_err(link_failed)?;
    Mailroom::subscribe(&mut mail_tx).map_err(|e| BrokerError::Thread(std::io::Error::other(e)))?;
    let posting = mailroom.clone();
    std::thread::Builder::new()
        .name("vigil-broker-mail".into())
        .spawn(move || posting.run(mail_tx, mail_rx))
        .map_err(BrokerError::Thread)?;
    let mut agent_links = Vec::with_capacity(AGENT_LINKS);
    for n in 0..AGENT_LINKS {
        let client_id = format!("vigil-coordinator-agents-{n}");
        let (link_tx, mut link_rx, _) = LinkBuilder::new(&client_id, router_tx.clone())
            .clean_session(true)
            .dynamic_filters(true)
            .build()
            .map_err(link_failed)?;
        // What the router sends back (its PUBACKs: the front has acknowledged each
        // publish to its agent already) is read and let go.
        std::thread::Builder::new()
            .name(format!("vigil-broker-agents-{n}"))
            .spawn(move || loop {
                match link_rx.recv() {
                    Ok(Some(Notification::Unschedule)) => {
                        if link_rx.ready().is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            })
            .map_err(BrokerError::Thread)?;
        agent_links.push(std::sync::Mutex::new(link_tx));
    }
    let (tx, rx, _) = LinkBuilder::new(INGEST_LINK_ID, router_tx.clone())
        .clean_session(true)
        .dynamic_filters(true)
        .build()
        .map_err(link_failed)?;
    let ingest = RouterLink { tx, rx };
    let busy_tx = router_tx.clone();
    let (opener, requests) = std::sync::mpsc::sync_channel::<OpenRequest>(OPEN_QUEUE);
    std::thread::Builder::new()
        .name("vigil-broker-open".into())
        .spawn(move || {
            for request in requests {
                if request.answer.is_closed() {
                    continue;
                }
                let opened = LinkBuilder::new(&request.client_id, router_tx.clone())
                    .clean_session(request.clean_session)
                    .dynamic_filters(true)
                    .build()
                    .map_err(|e: LinkError| LinkRefused::Router(e.to_string()));
                if let Err(Ok((mut link_tx, _, _))) = request.answer.send(opened) {
                    // Nobody waits for it any more: end it, or it would stay in the
                    // router until its client id logs in again.
                    end_link(&mut link_tx);
                }
            }
        })
        .map_err(BrokerError::Thread)?;
    let broker = EmbeddedBroker {
        opener,
        busy: Arc::new(move || {
            busy_tx
                .capacity()
                .is_some_and(|capacity| busy_tx.len() * 10 >= capacity * 9)
        }),
        mailroom,
        agent_links: agent_links.into(),
        backlog: Arc::default(),
    };
    let probe = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if mqtt_handshake(probe, &probe_password).is_ok() {
            tracing::info!(%listen, "embedded MQTT broker listening");
            return Ok((broker, ingest));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotReady(listen))
}

/// Connects with a minimal MQTT 3.1.1 CONNECT (as the coordinator), expects a CONNACK,
/// and disconnects politely (a bare TCP probe makes rumqttd log an error).
fn mqtt_handshake(addr: SocketAddr, password: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut packet = vec![0x10, 0];
    // Protocol name, level 4, flags: user name + password + clean session, keep-alive 10 s.
    packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 10]);
    for field in [
        b"vigil-coordinator-probe".as_slice(),
        COORDINATOR_MQTT_USER.as_bytes(),
        password.as_bytes(),
    ] {
        packet.extend_from_slice(&(field.len() as u16).to_be_bytes());
        packet.extend_from_slice(field);
    }
    // Remaining length fits one byte: the password is short (agents::generate_password).
    packet[1] = (packet.len() - 2) as u8;
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other("broker refused the probe"));
    }
    stream.write_all(&[0xE0, 0])
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Ingest's link is opened before the readiness probe connects and leaves (a client
    /// that sends DISCONNECT and closes makes two disconnect events, and the second would
    /// end a link opened after it under the same connection id): after more such clients,
    /// it still subscribes, gets what an agent publishes in order, and ends when told.
    #[test]
    fn the_ingest_link_outlives_clients_that_come_and_go_and_forwards_in_order() {
        let listen = free_loopback_address().expect("a free port");
        let (broker, mut link) =
            start(listen, "internal".into(), Arc::new(Telemetry::new())).expect("started");
        for _ in 0..3 {
            mqtt_handshake(listen, "internal").expect("a login on the loopback port");
        }
        link.subscribe(&["vigil/v1/agents/+/metrics".to_string()])
            .expect("subscribed");
        for i in 0..5u8 {
            broker
                .agent_link("vigil-agent-a")
                .lock()
                .expect("the link")
                .publish("vigil/v1/agents/a/metrics", vec![i])
                .expect("handed to the router");
        }
        // Not subscribed: not forwarded.
        broker
            .agent_link("vigil-agent-a")
            .lock()
            .expect("the link")
            .publish("vigil/v1/agents/a/status", vec![9])
            .expect("handed to the router");
        let got = RefCell::new(Vec::new());
        let began = Instant::now();
        link.forward(
            || got.borrow().len() == 5 || began.elapsed() > Duration::from_secs(10),
            |topic, payload, retain| {
                assert_eq!(topic, b"vigil/v1/agents/a/metrics");
                assert!(!retain);
                got.borrow_mut().push(payload[0]);
            },
        )
        .expect("forwarded until told to stop");
        assert_eq!(got.into_inner(), vec![0, 1, 2, 3, 4]);
    }
}
