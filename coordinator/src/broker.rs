//! The embedded MQTT broker (rumqttd), started by default so that one process gives a
//! working Vigil. It runs on its own threads for the life of the process.
//!
//! It refuses anonymous clients. [`BrokerAuth`] admits three kinds of login:
//! - an enrolled, unrevoked agent: user name = its host, its MQTT password
//!   ([`crate::agents`]), client id `vigil-agent-{host}` or `vigil-agent-{host}-…` (so one
//!   agent cannot push another off the broker by taking its client id);
//! - the coordinator itself ([`crate::agents::COORDINATOR_MQTT_USER`], a password made at
//!   start-up and never written down);
//! - integrations: user `api`, any unrevoked REST API token as the password.
//!
//! rumqttd has no topic ACLs, so a login says nothing about what its messages may claim:
//! ingest checks every agent message's seal ([`crate::ingest`]).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use subtle::ConstantTimeEq;
use thiserror::Error;
use vigil_shared::broker_url::BrokerUrl;
use vigil_shared::wire::MAX_PAYLOAD_BYTES;

use crate::agents::{self, API_MQTT_USER, COORDINATOR_MQTT_USER};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Decides who may log in to the embedded broker.
#[derive(Clone)]
pub struct BrokerAuth {
    store: Store,
    telemetry: Arc<Telemetry>,
    coordinator_password: Arc<String>,
}

impl BrokerAuth {
    /// Checks logins against `store`; the coordinator logs in with `coordinator_password`.
    pub fn new(store: Store, telemetry: Arc<Telemetry>, coordinator_password: String) -> Self {
        BrokerAuth {
            store,
            telemetry,
            coordinator_password: Arc::new(coordinator_password),
        }
    }

    /// Whether the login may connect; a refusal is logged and counted by reason.
    pub fn admit(&self, client_id: &str, user: &str, password: &str) -> bool {
        match self.check(client_id, user, password) {
            Ok(()) => true,
            Err(reason) => {
                self.telemetry
                    .mqtt_auth_failures
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(%client_id, %user, reason, "MQTT login refused");
                false
            }
        }
    }

    fn check(&self, client_id: &str, user: &str, password: &str) -> Result<(), &'static str> {
        let is_agent_id = client_id.starts_with("vigil-agent-");
        let is_coordinator_id = client_id.starts_with("vigil-coordinator");
        if user == COORDINATOR_MQTT_USER {
            let ok: bool = password
                .as_bytes()
                .ct_eq(self.coordinator_password.as_bytes())
                .into();
            return match (ok, is_coordinator_id) {
                (true, true) => Ok(()),
                (false, _) => Err("bad_password"),
                (true, false) => Err("client_id"),
            };
        }
        if user == API_MQTT_USER {
            let record = self
                .store
                .token(&crate::tokens::hash(password))
                .map_err(|_| "store_error")?;
            return match record {
                Some(r) if r.revoked_ms.is_none() && !is_agent_id && !is_coordinator_id => Ok(()),
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
        let own = format!("vigil-agent-{user}");
        if client_id == own || client_id.starts_with(&format!("{own}-")) {
            Ok(())
        } else {
            Err("client_id")
        }
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
/// protocol's limit, room for 10,000 agents, logins checked by `auth`.
fn config(listen: SocketAddr, auth: BrokerAuth) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD_BYTES + 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id, user, password| {
        let auth = auth.clone();
        async move { auth.admit(&client_id, &user, &password) }
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
            max_connections: 10_100,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("vigil".to_string(), server)])),
        ..Config::default()
    }
}

/// A loopback address with a port free right now, for a broker that only the TLS front
/// ([`crate::mqtt_tls`]) and local clients reach.
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

/// Starts the broker and waits until it accepts TCP connections.
pub fn start(listen: SocketAddr, auth: BrokerAuth) -> Result<(), BrokerError> {
    // rumqttd reports a failed bind only in its log; find out first, with a clear error.
    drop(
        TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?,
    );
    let probe_password = Arc::clone(&auth.coordinator_password);
    let config = config(listen, auth);
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
