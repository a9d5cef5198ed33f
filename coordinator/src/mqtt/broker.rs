//! The embedded MQTT broker (rumqttd), started by default so that one process gives a
//! working Vigil. It runs on its own threads for the life of the process, on a loopback
//! port: clients from outside reach it through the front ([`crate::mqtt::front`]), which
//! bounds sockets, checks logins with [`BrokerAuth`] and enforces what each may send.
//!
//! rumqttd itself admits only logins with the coordinator's internal password (made at
//! start-up and never written down): the coordinator's own clients, and the front on
//! behalf of a client it has checked. A local user who finds the loopback port gets
//! nothing from it.
//!
//! [`BrokerAuth`] admits two kinds of login at the front:
//! - an enrolled, unrevoked agent: user name = its host, its MQTT password
//!   ([`crate::security::agents`]), and exactly one of its two client ids, `vigil-agent-{host}`
//!   (its link) and `vigil-outbox-{host}` (its outbox), so that no login can push
//!   another's session off the broker or inherit it;
//! - integrations: user `api`, any unrevoked REST API token as the password; read only.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use subtle::ConstantTimeEq;
use thiserror::Error;
use vigil_shared::broker_url::BrokerUrl;
use vigil_shared::mqtt::{agent_client_id, outbox_client_id};
use vigil_shared::wire::MAX_PAYLOAD_BYTES;

use crate::security::agents::{self, API_MQTT_USER, COORDINATOR_MQTT_USER};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Largest MQTT packet a client may send: a full payload plus topic and header room.
pub const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 1024;

/// The user name the front logs in to rumqttd with, on behalf of a checked client.
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

/// rumqttd's own check: only the coordinator's internal password gets in.
fn internal_login_ok(internal_password: &str, client_id: &str, user: &str, password: &str) -> bool {
    let ok: bool = password
        .as_bytes()
        .ct_eq(internal_password.as_bytes())
        .into();
    ok && match user {
        COORDINATOR_MQTT_USER => client_id.starts_with("vigil-coordinator"),
        FRONT_MQTT_USER => true,
        _ => false,
    }
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

/// The rumqttd configuration Vigil uses: one MQTT 3.1.1 listener, payloads up to the
/// protocol's limit, room for 10,000 agents (two connections each), internal logins only.
fn config(listen: SocketAddr, internal_password: Arc<String>) -> Config {
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
    let server = ServerSettings {
        name: "vigil-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 21_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("vigil".to_string(), server)])),
        ..Config::default()
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

/// Starts the broker on `listen` (a loopback address) and waits until it accepts TCP
/// connections; it admits only `internal_password`.
pub fn start(listen: SocketAddr, internal_password: String) -> Result<(), BrokerError> {
    // rumqttd reports a failed bind only in its log; find out first, with a clear error.
    drop(
        TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?,
    );
    let probe_password = Arc::new(internal_password);
    let config = config(listen, Arc::clone(&probe_password));
    std::thread::Builder::new()
        .name("vigil-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    let probe = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if mqtt_handshake(probe, &probe_password).is_ok() {
            tracing::info!(%listen, "embedded MQTT broker listening");
            return Ok(());
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
