//! Enrollment, as both sides see it: the request an agent sends with its join token, the
//! answer it gets, and the identity file (`{data_dir}/identity.json`, mode 0600) it keeps
//! afterwards. The agent writes that file when it enrolls over HTTP; the coordinator
//! writes it for agents it enrolls directly (`vigil up`'s own agent, `vigil-coordinator
//! agent add`). Both read and write it only through [`Identity`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::agent_auth::AgentKey;
use crate::config_file::file_mode;

/// The path of the enrollment endpoint, after the coordinator's URL.
pub const ENROLL_PATH: &str = "/api/v1/agents/enroll";

/// The identity file's name inside the data directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// An enrollment request, as an agent sends it (`POST` [`ENROLL_PATH`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The join token.
    pub join_token: String,
    /// The host name the agent will report as.
    pub host: String,
    /// Its ed25519 public key, 64 hex characters.
    pub public_key: String,
}

/// What an enrolled agent gets back (HTTP 201).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Enrollment {
    /// The host it is enrolled as.
    pub host: String,
    /// Its MQTT user name (the host name).
    pub mqtt_username: String,
    /// Its MQTT password (shown only this once).
    pub mqtt_password: String,
    /// Labels from the join token.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The coordinator's public key, hex: bundles and commands are signed with it. Always
    /// sent; an answer without it leaves the agent trusting only its configured key.
    #[serde(default)]
    pub coordinator_key: Option<String>,
}

/// What an enrolled agent is: kept in [`IDENTITY_FILE`].
#[derive(Serialize, Deserialize, Clone)]
pub struct Identity {
    /// The host name it enrolled as (and publishes under).
    pub host: String,
    /// The agent's private ed25519 key, 64 hex characters.
    pub private_key: String,
    /// Its MQTT user name at the coordinator's broker.
    pub mqtt_username: String,
    /// Its MQTT password at the coordinator's broker.
    pub mqtt_password: String,
    /// The coordinator's public signing key (64 hex), for commands and policy bundles.
    #[serde(default)]
    pub coordinator_key: Option<String>,
    /// Labels the join token gave this host.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it enrolled, epoch ms.
    pub enrolled_at_ms: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("host", &self.host)
            .field("private_key", &"<redacted>")
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &"<redacted>")
            .field("coordinator_key", &self.coordinator_key)
            .field("labels", &self.labels)
            .field("enrolled_at_ms", &self.enrolled_at_ms)
            .finish()
    }
}

/// Why an identity file cannot be read, written or used.
#[derive(Debug, Error)]
pub enum IdentityFileError {
    /// The identity file could not be read.
    #[error("cannot read identity file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity file could not be written.
    #[error("cannot write identity file {path}: {source}")]
    Write {
        /// The file (or its directory).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity file holds the private key but others may read (or write) it.
    #[error(
        "identity file {path} holds this agent's private key but its mode is {mode:04o}, so \
         other users can read it: run `chmod 600 {path}` (and keep it owned by the user Vigil \
         runs as)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The identity file is not an identity.
    #[error("identity file {path} is malformed: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The identity's private key is not a key.
    #[error("the identity of host `{host}` has an unusable private key: {problem}")]
    BadKey {
        /// The identity's host.
        host: String,
        /// What is wrong.
        problem: String,
    },
}

impl Identity {
    /// Where the identity file of `data_dir` is.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(IDENTITY_FILE)
    }

    /// Reads the identity from `data_dir` (`None` if there is none yet), refusing a file
    /// that others can read.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityFileError> {
        let path = Identity::path(data_dir);
        let read_error = |source| IdentityFileError::Read {
            path: path.clone(),
            source,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let mode = file_mode(&path).map_err(read_error)?;
        if mode & 0o077 != 0 {
            return Err(IdentityFileError::Exposed { path, mode });
        }
        let identity: Identity =
            serde_json::from_str(&text).map_err(|e| IdentityFileError::Malformed {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        if let Err(e) = crate::validate::host_name(&identity.host) {
            return Err(IdentityFileError::Malformed {
                path,
                problem: format!("host: {}", e.problem),
            });
        }
        if let Err(e) = AgentKey::from_hex(&identity.private_key) {
            return Err(IdentityFileError::Malformed {
                path,
                problem: format!("private_key: {e}"),
            });
        }
        Ok(Some(identity))
    }

    /// Writes the identity to `data_dir` (created if missing) atomically, mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityFileError> {
        let path = Identity::path(data_dir);
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityFileError::Write { path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(write_error(data_dir))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| IdentityFileError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let temp = data_dir.join(format!(".{IDENTITY_FILE}.{}.tmp", std::process::id()));
        let written =
            write_private(&temp, text.as_bytes()).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(write_error(&path)(e));
        }
        Ok(())
    }

    /// The agent's signing key.
    pub fn key(&self) -> Result<AgentKey, IdentityFileError> {
        AgentKey::from_hex(&self.private_key).map_err(|e| IdentityFileError::BadKey {
            host: self.host.clone(),
            problem: e.to_string(),
        })
    }
}

/// Writes `bytes` to a new file only its owner may read, and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode above applies only to a new file; a leftover temp file gets it too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn identity() -> Identity {
        let key = AgentKey::generate();
        Identity {
            host: "web-01".into(),
            private_key: key.private_hex(),
            mqtt_username: "web-01".into(),
            mqtt_password: "s3cret-password".into(),
            coordinator_key: Some(crate::bundle::BundleKeys::generate().public_hex()),
            labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
            enrolled_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested/data");
        assert!(Identity::load(&data_dir).unwrap().is_none());
        let original = identity();
        original.save(&data_dir).unwrap();
        let mode = std::fs::metadata(Identity::path(&data_dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Identity::load(&data_dir).unwrap().unwrap();
        assert_eq!(loaded.host, original.host);
        assert_eq!(loaded.private_key, original.private_key);
        assert_eq!(loaded.mqtt_password, original.mqtt_password);
        assert_eq!(loaded.coordinator_key, original.coordinator_key);
        assert_eq!(loaded.labels, original.labels);
        assert_eq!(loaded.enrolled_at_ms, original.enrolled_at_ms);
        assert_eq!(
            loaded.key().unwrap().public_hex(),
            original.key().unwrap().public_hex()
        );
        // Saving again replaces the file and leaves no temp file behind.
        loaded.save(&data_dir).unwrap();
        let names: Vec<_> = std::fs::read_dir(&data_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(IDENTITY_FILE)]);
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let original = identity();
        original.save(dir.path()).unwrap();
        let path = Identity::path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("0640") && err.contains("chmod 600") && err.contains(IDENTITY_FILE),
            "{err}"
        );
        assert!(!err.contains(&original.private_key), "{err}");
    }

    #[test]
    fn a_malformed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = Identity::path(dir.path());
        write_private(&path, b"{\"host\": \"h\"}").unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(IDENTITY_FILE) && err.contains("malformed"),
            "{err}"
        );
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let identity = identity();
        let text = format!("{identity:?}");
        assert!(!text.contains(&identity.private_key), "{text}");
        assert!(!text.contains(&identity.mqtt_password), "{text}");
        assert!(
            text.contains("<redacted>") && text.contains("web-01"),
            "{text}"
        );
    }
}
