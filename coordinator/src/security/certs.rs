//! A small certificate authority for users with no PKI: `vigil-coordinator certs init`
//! makes a CA and a server certificate signed by it, in `<data-dir>/tls/`. The coordinator
//! then serves HTTPS and MQTT over TLS with the server certificate, and agents pin the CA
//! (`vigil-agent --ca ca.pem`).
//!
//! Keys are ECDSA P-256 (rcgen on ring). The CA is valid for 10 years, the server
//! certificate for 2; `certs init --force` makes new ones (agents then need the new CA).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

/// The folder under the data dir that holds the files.
pub const TLS_DIR: &str = "tls";
/// The CA certificate agents pin.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (0600; needed only to issue a new server certificate).
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate chain (server certificate, then the CA).
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server's private key (0600).
pub const SERVER_KEY_FILE: &str = "server.key";

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The four files of a data dir's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// CA private key (PEM, 0600).
    pub ca_key: PathBuf,
    /// Server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// Server private key (PEM, 0600).
    pub server_key: PathBuf,
}

impl CertPaths {
    /// The files' places in `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> CertPaths {
        let dir = data_dir.join(TLS_DIR);
        CertPaths {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
        }
    }

    /// Whether the server certificate and key both exist (TLS turns on by itself then).
    pub fn server_files_exist(&self) -> bool {
        self.server_cert.is_file() && self.server_key.is_file()
    }
}

/// Why the certificates could not be made.
#[derive(Debug, Error)]
pub enum CertsError {
    /// Files already exist and `--force` was not given.
    #[error("{0} already exists; pass --force to replace the CA and server certificate (every agent then needs the new ca.pem)")]
    Exists(PathBuf),
    /// A name is neither a DNS name nor an IP address.
    #[error("`{name}` cannot go in a certificate: {problem}")]
    BadName {
        /// The name.
        name: String,
        /// What rcgen said.
        problem: String,
    },
    /// rcgen failed.
    #[error("cannot make the {what}: {problem}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// What rcgen said.
        problem: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What `init` made.
#[derive(Debug)]
pub struct Issued {
    /// The names the server certificate is valid for.
    pub names: Vec<String>,
    /// SHA-256 of the CA certificate (DER), hex: operators compare it on agents.
    pub ca_fingerprint: String,
}

/// The names every server certificate carries: loopback (the coordinator's own client and a
/// local agent use it) and this machine's host name.
pub fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = vigil_service::process::local_host_name() {
        names.push(host);
    }
    names
}

/// Makes a CA and a server certificate for `default_names()` plus `extra_names` (DNS
/// names or IP addresses), written to `paths`. Refuses to replace existing files unless
/// `force`.
pub fn init(paths: &CertPaths, extra_names: &[String], force: bool) -> Result<Issued, CertsError> {
    if !force {
        for existing in [&paths.ca_cert, &paths.server_cert] {
            if existing.exists() {
                return Err(CertsError::Exists(existing.clone()));
            }
        }
    }
    let mut names = default_names();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let generate = |what| {
        move |e: rcgen::Error| CertsError::Generate {
            what,
            problem: e.to_string(),
        }
    };
    let now = SystemTime::now();

    let ca_key = KeyPair::generate().map_err(generate("CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = distinguished_name("Vigil CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = (now - DAY).into();
    ca_params.not_after = (now + 3650 * DAY).into();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate("CA certificate"))?;

    let server_key = KeyPair::generate().map_err(generate("server key"))?;
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = distinguished_name("Vigil coordinator");
    server_params.subject_alt_names = names
        .iter()
        .map(|name| san(name))
        .collect::<Result<_, _>>()?;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    server_params.not_before = (now - DAY).into();
    server_params.not_after = (now + 730 * DAY).into();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(generate("server certificate"))?;

    let dir = paths.ca_cert.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write(&paths.ca_key, &ca_key.serialize_pem(), true)?;
    write(&paths.server_key, &server_key.serialize_pem(), true)?;
    write(&paths.ca_cert, &ca_cert.pem(), false)?;
    write(
        &paths.server_cert,
        &format!("{}{}", server_cert.pem(), ca_cert.pem()),
        false,
    )?;
    Ok(Issued {
        names,
        ca_fingerprint: fingerprint(ca_cert.der()),
    })
}

/// SHA-256 of a DER certificate, hex (what `openssl x509 -fingerprint -sha256` shows,
/// without the colons).
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(der))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Vigil");
    name.push(DnType::CommonName, common_name);
    name
}

fn san(name: &str) -> Result<SanType, CertsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if name.len() > 253 || !rest.split('.').all(label_ok) || (wildcard && !rest.contains('.')) {
        return Err(CertsError::BadName {
            name: name.to_string(),
            problem: "neither an IP address nor a DNS name (letters, digits, `-` and dots)".into(),
        });
    }
    let dns = name
        .try_into()
        .map_err(|e: rcgen::Error| CertsError::BadName {
            name: name.to_string(),
            problem: e.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

/// Writes `text` to `path` through a temporary file; keys get mode 0600.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertsError> {
    let fail = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if secret {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(fail)?;
        file.write_all(text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::tls::{load_certificates, load_private_key, ClientTls};

    #[test]
    fn init_makes_a_ca_and_a_server_certificate_rustls_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::in_data_dir(dir.path());
        let issued = init(&paths, &["coord.example".into(), "10.1.2.3".into()], false).unwrap();
        assert!(issued.names.contains(&"coord.example".to_string()));
        assert!(issued.names.contains(&"127.0.0.1".to_string()));
        assert_eq!(issued.ca_fingerprint.len(), 64);
        assert!(paths.server_files_exist());

        use std::os::unix::fs::PermissionsExt as _;
        for key in [&paths.ca_key, &paths.server_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert_eq!(
            load_certificates(&paths.server_cert, "server")
                .unwrap()
                .len(),
            2
        );
        load_private_key(&paths.server_key).unwrap();
        ClientTls::pinned(&paths.ca_cert).unwrap();
        let server =
            crate::security::tls::ServerTls::load(&paths.server_cert, &paths.server_key).unwrap();
        assert!(format!("{server:?}").contains("server.pem"));
    }

    #[test]
    fn existing_files_are_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::in_data_dir(dir.path());
        let first = init(&paths, &[], false).unwrap();
        let err = init(&paths, &[], false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        let second = init(&paths, &[], true).unwrap();
        assert_ne!(first.ca_fingerprint, second.ca_fingerprint);
    }

    #[test]
    fn bad_names_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::in_data_dir(dir.path());
        let err = init(&paths, &["not a name!".into()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a name!"), "{err}");
    }
}
