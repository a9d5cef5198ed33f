//! The embedded broker's front door. Every MQTT client from outside the coordinator
//! connects here; rumqttd itself listens only on a loopback port and admits only logins
//! that carry the coordinator's internal password (the coordinator's own clients, and
//! connections this front has already checked).
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
//! - **What each login may send**, checked packet by packet with rumqttc's MQTT 3.1.1
//!   codec: an agent publishes only on its own `metrics`, `events`, `actions`,
//!   `status` and `session` (handshake) topics, retains only its status (at most
//!   [`MAX_RETAINED_BYTES`]), and subscribes only to its own commands, acknowledgements
//!   and Welcomes (`welcome`) and to the bundles; an integration publishes
//!   nothing (no will either) and subscribes only under `vigil/v1/`. A packet outside
//!   these rules closes the connection (MQTT 3.1.1 cannot refuse a single PUBLISH), is
//!   logged and counted in `vigil_mqtt_acl_refusals_total{role,reason}`.
//!
//! Packets that pass are relayed unchanged, but for the CONNECT, whose login is replaced
//! by the internal one. The broker's replies are copied back byte for byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Login, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::{self, PacketType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use vigil_shared::topics::{self, AgentChannel};

use crate::mqtt::broker::{BrokerAuth, Role, FRONT_MQTT_USER, MAX_PACKET_BYTES};
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
    /// rumqttd's loopback address.
    pub upstream: SocketAddr,
    /// Who may log in.
    pub auth: BrokerAuth,
    /// The internal password the front logs in to rumqttd with.
    pub internal_password: Arc<String>,
    /// Socket bounds.
    pub limits: FrontLimits,
    /// Counters.
    pub telemetry: Arc<Telemetry>,
    connections: Arc<Semaphore>,
    pending: Arc<PerAddress>,
}

impl Front {
    /// A front for rumqttd at `upstream`. Listeners started from clones of it share its
    /// bounds.
    pub fn new(
        upstream: SocketAddr,
        auth: BrokerAuth,
        internal_password: String,
        limits: FrontLimits,
        telemetry: Arc<Telemetry>,
    ) -> Front {
        Front {
            upstream,
            auth,
            internal_password: Arc::new(internal_password),
            limits,
            telemetry,
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

    /// One connection: handshake, CONNECT, login, then the relay.
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
        mut stop: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buffer = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout_at(deadline, read_packet(&mut reader, &mut buffer)).await;
        let mut connect = match first {
            Ok(Ok(Packet::Connect(connect))) => connect,
            Ok(Ok(_)) => return self.close(client, None, "not_connect"),
            Ok(Err(_)) => return self.close(client, None, "malformed"),
            Err(_) => return self.close(client, None, "connect_timeout"),
        };
        let (user, password) = match &connect.login {
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
                let mut reply = BytesMut::new();
                if ConnAck::new(code, false).write(&mut reply).is_ok() {
                    let _ = writer.write_all(&reply).await;
                    let _ = writer.flush().await;
                }
                return;
            }
        };
        if let Some(will) = &connect.last_will {
            if let Err(reason) = role.may_publish(&will.topic, will.retain, will.message.len()) {
                return self.close(client, Some(&role), reason);
            }
        }
        drop(slot);
        let mut upstream = match TcpStream::connect(self.upstream).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::error!(%client, upstream = %self.upstream, "cannot reach the embedded broker: {e}");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        connect.login = Some(Login::new(FRONT_MQTT_USER, self.internal_password.as_str()));
        let mut out = BytesMut::new();
        if Packet::Connect(connect)
            .write(&mut out, usize::MAX)
            .is_err()
            || upstream.write_all(&out).await.is_err()
        {
            return;
        }
        let (mut up_reader, up_writer) = upstream.into_split();
        let mut up_writer = tokio::io::BufWriter::new(up_writer);
        let inbound = relay_checked(&mut reader, &mut up_writer, buffer, &role);
        let outbound = tokio::io::copy(&mut up_reader, &mut writer);
        tokio::select! {
            refused = inbound => {
                if let Some(reason) = refused {
                    self.close(client, Some(&role), reason);
                }
            }
            _ = outbound => {}
            _ = stop.changed() => {}
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

/// Reads one whole packet (at most [`MAX_PACKET_BYTES`]), reading more as needed.
async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Packet, mqttbytes::Error> {
    loop {
        match Packet::read(buffer, MAX_PACKET_BYTES) {
            Ok(packet) => return Ok(packet),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                if reader.read_buf(buffer).await.unwrap_or(0) == 0 {
                    return Err(mqttbytes::Error::InsufficientBytes(1));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies whole packets from the client to the broker while `role` allows them; returns
/// why it stopped when a packet was refused (`None`: either side closed).
async fn relay_checked<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut buffer: BytesMut,
    role: &Role,
) -> Option<&'static str>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        // Every whole packet in the buffer is checked, then they go out together.
        let mut any = false;
        loop {
            let header = match mqttbytes::check(buffer.iter(), MAX_PACKET_BYTES) {
                Ok(header) => header,
                Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => return Some("too_large"),
                Err(_) => return Some("malformed"),
            };
            let frame = buffer.split_to(header.frame_length()).freeze();
            if let Err(reason) = role.may_send(header, frame.clone()) {
                // What passed before the refused packet still reaches the broker.
                let _ = writer.flush().await;
                return Some(reason);
            }
            if writer.write_all(&frame).await.is_err() {
                return None;
            }
            any = true;
        }
        if any && writer.flush().await.is_err() {
            return None;
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

impl Role {
    /// Whether this login may send the packet `frame` (whole, fixed header included).
    fn may_send(
        &self,
        header: mqttbytes::FixedHeader,
        frame: bytes::Bytes,
    ) -> Result<(), &'static str> {
        match header.packet_type().map_err(|_| "malformed")? {
            PacketType::Publish => {
                let publish = Publish::read(header, frame).map_err(|_| "malformed")?;
                self.may_publish(&publish.topic, publish.retain, publish.payload.len())
            }
            PacketType::Subscribe => {
                let subscribe = Subscribe::read(header, frame).map_err(|_| "malformed")?;
                subscribe
                    .filters
                    .iter()
                    .try_for_each(|filter| self.may_subscribe(&filter.path))
            }
            PacketType::PubAck
            | PacketType::PubRec
            | PacketType::PubRel
            | PacketType::PubComp
            | PacketType::Unsubscribe
            | PacketType::PingReq
            | PacketType::Disconnect => Ok(()),
            PacketType::Connect => Err("second_connect"),
            PacketType::ConnAck
            | PacketType::SubAck
            | PacketType::UnsubAck
            | PacketType::PingResp => Err("server_packet"),
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
