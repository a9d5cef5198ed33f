//! The coordinator's server side of TLS: the certificate and key both listeners serve
//! (HTTPS through rustls here, MQTT over TLS through rumqttd, which reads the same files),
//! checked once at start so that a bad file stops the start with its name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use vigil_shared::tls::{load_certificates, load_private_key, provider, TlsError};

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
