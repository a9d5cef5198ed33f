//! The coordinator's server side of TLS: the certificate and key both listeners serve
//! (HTTPS, [`crate::http::server`]; the MQTT front, [`crate::mqtt::front`]), checked once at
//! start so that a bad file stops the start with its name, and the handshake both
//! listeners do, with a deadline and a counter.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use vigil_shared::tls::{load_certificates, load_private_key, provider, TlsError};

use crate::telemetry::Telemetry;

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A loaded server certificate chain and key.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain file (PEM).
    pub cert: PathBuf,
    /// The private key file (PEM).
    pub key: PathBuf,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads and checks the chain and key (the key must match the certificate).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let chain = load_certificates(cert, "server certificate")?;
        let private_key = load_private_key(key)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| {
                TlsError::Config(format!(
                    "{} and {} do not make a usable certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            config: Arc::new(config),
        })
    }

    /// An acceptor for HTTPS connections.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config))
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ServerTls(cert {}, key {})",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// The server side of a TLS handshake on `listener` (`http` or `mqtt`). A failure (a
/// plaintext client, a client that does not trust the certificate, a timeout) is logged,
/// counted in `vigil_tls_handshake_failures_total{listener,reason}`, and the connection
/// dropped (`None`).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    client: SocketAddr,
    listener: &'static str,
    telemetry: &Telemetry,
) -> Option<TlsStream<TcpStream>> {
    let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%client, listener, "TLS handshake failed: {e}");
            "handshake"
        }
        Err(_) => {
            tracing::info!(%client, listener, "TLS handshake timed out");
            "timeout"
        }
    };
    telemetry
        .tls_handshake_failures
        .with_label_values(&[listener, reason])
        .inc();
    None
}

/// The next connection on `listener`, or `None` once `stop` changes. An accept error (out
/// of file descriptors, …) is logged and retried after a pause rather than spun on.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}
