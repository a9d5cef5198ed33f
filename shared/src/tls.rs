//! TLS for Vigil's clients (agents, the coordinator's own MQTT client, the simulator): which
//! certificate authorities a connection trusts, read once into a rustls configuration that
//! both MQTT (rumqttc) and HTTPS (reqwest) use.
//!
//! An agent given `--ca FILE` *pins* that CA: only certificates it issued are accepted, the
//! system's public roots are not consulted. Without a CA file, public roots (Mozilla's, from
//! `webpki-roots`) are trusted, for coordinators behind a publicly issued certificate.
//! rustls with the ring provider only: no OpenSSL, so static builds stay simple.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

/// Why TLS material could not be read or used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("TLS {what} file {path}: {problem}")]
    File {
        /// What the file should hold ("CA certificate", "private key", …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the material (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Reads every certificate in a PEM file (at least one).
pub fn load_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |problem: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(pem_problem(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_problem(e)))?;
    if certs.is_empty() {
        return Err(fail("no `BEGIN CERTIFICATE` block in it".into()));
    }
    Ok(certs)
}

/// Reads the private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_path_buf(),
        problem: pem_problem(e),
    })
}

fn pem_problem(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM block of that kind in it".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The crypto provider every Vigil TLS configuration uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate authorities a client trusts.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    trusts: String,
}

impl ClientTls {
    /// Trusts only the CA certificate(s) in `ca_file` (pinning).
    pub fn pinned(ca_file: &Path) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in load_certificates(ca_file, "CA certificate")? {
            roots.add(cert).map_err(|e| TlsError::File {
                what: "CA certificate",
                path: ca_file.to_path_buf(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(ClientTls {
            config: client_config(roots)?,
            trusts: format!("CA {}", ca_file.display()),
        })
    }

    /// Trusts the public web PKI (Mozilla's root programme).
    pub fn public_roots() -> Result<ClientTls, TlsError> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Ok(ClientTls {
            config: client_config(roots)?,
            trusts: "public roots".into(),
        })
    }

    /// `pinned(ca)` when a CA file is given, else `public_roots()`.
    pub fn new(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        match ca_file {
            Some(path) => ClientTls::pinned(path),
            None => ClientTls::public_roots(),
        }
    }

    /// The rustls configuration, for rumqttc and reqwest.
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTls(trusts {})", self.trusts)
    }
}

fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = ClientTls::pinned(&missing).unwrap_err().to_string();
        assert!(
            err.contains("CA certificate") && err.contains("nope.pem"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let err = ClientTls::pinned(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem"), "{err}");

        let err = load_private_key(&empty).unwrap_err().to_string();
        assert!(err.contains("private key"), "{err}");
    }

    #[test]
    fn public_roots_load() {
        let tls = ClientTls::public_roots().unwrap();
        assert!(format!("{tls:?}").contains("public roots"));
    }
}
