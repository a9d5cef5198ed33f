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
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::telemetry::Telemetry;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS connections on `listener` and relays each to the broker at `broker`,
/// until `stop` changes.
pub async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    broker: SocketAddr,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("MQTT TLS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
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
    let failed = |reason| {
        telemetry
            .tls_handshake_failures
            .with_label_values(&["mqtt", reason])
            .inc();
    };
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%client, "MQTT TLS handshake failed: {e}");
            return failed("handshake");
        }
        Err(_) => {
            tracing::info!(%client, "MQTT TLS handshake timed out");
            return failed("timeout");
        }
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
