//! MQTT over TLS for the embedded broker: a TLS front on the public MQTT address that
//! hands each decrypted connection to rumqttd listening on a loopback port.
//!
//! rumqttd can terminate TLS itself, but it does the handshake inside its accept loop with
//! no timeout: one client that opens a connection and sends nothing would stop every
//! later client from connecting. Here each handshake runs in its own task with a
//! deadline, and failures (plaintext clients, clients that do not trust the certificate)
//! are counted in `vigil_tls_handshake_failures_total{listener="mqtt"}`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::telemetry::Telemetry;

/// Accepts TLS connections on `listener` and relays each to the broker at `broker`,
/// until `stop` changes.
pub async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    broker: SocketAddr,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, client)) =
        crate::tls::accept(&listener, &mut stop, "MQTT over TLS").await
    {
        let acceptor = acceptor.clone();
        let telemetry = Arc::clone(&telemetry);
        tokio::spawn(async move {
            relay(stream, client, acceptor, broker, &telemetry).await;
        });
    }
}

/// One connection: handshake, connect to the broker, copy both ways until either side
/// closes.
async fn relay(
    stream: TcpStream,
    client: SocketAddr,
    acceptor: TlsAcceptor,
    broker: SocketAddr,
    telemetry: &Telemetry,
) {
    let _ = stream.set_nodelay(true);
    let Some(mut tls) = crate::tls::handshake(&acceptor, stream, client, "mqtt", telemetry).await
    else {
        return;
    };
    let mut upstream = match TcpStream::connect(broker).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::error!(%client, %broker, "cannot reach the embedded broker: {e}");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await {
        tracing::debug!(%client, "MQTT TLS connection ended: {e}");
    }
}
