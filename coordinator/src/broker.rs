//! The embedded MQTT broker (rumqttd), started by default so that one process gives a
//! working Vigil. It runs on its own threads for the life of the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;
use vigil_shared::wire::MAX_PAYLOAD_BYTES;

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
/// protocol's limit, room for 10,000 agents.
fn config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD_BYTES + 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
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

/// Starts the broker and waits until it accepts TCP connections.
pub fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd reports a failed bind only in its log; find out first, with a clear error.
    drop(
        TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?,
    );
    let config = config(listen);
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
        if mqtt_handshake(probe).is_ok() {
            tracing::info!(%listen, "embedded MQTT broker listening");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotReady(listen))
}

/// Connects with a minimal MQTT 3.1.1 CONNECT, expects a CONNACK, and disconnects
/// politely (a bare TCP probe makes rumqttd log an error).
fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    const CLIENT_ID: &[u8] = b"vigil-broker-probe";
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut packet = vec![0x10, 0];
    packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    packet.extend_from_slice(&(CLIENT_ID.len() as u16).to_be_bytes());
    packet.extend_from_slice(CLIENT_ID);
    packet[1] = (packet.len() - 2) as u8;
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other("broker refused the probe"));
    }
    stream.write_all(&[0xE0, 0])
}
