//! Reading a TOML config file into a settings shape, with errors that name the file (and,
//! from the TOML parser, the line, column and key). Agents and the coordinator both use it.
//!
//! A file that holds a secret (a key named `password`, `token` or `secret`, or ending in
//! `_password`, `_token`, `_secret`) must not be readable or writable by anyone but its
//! owner: such a file with a mode like 0644 is refused, naming the key and the fix.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a config file could not be used.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds a secret but others may read (or write) it.
    #[error(
        "config file {path} holds a secret (`{key}`) but its mode is {mode:04o}, so other users \
         can read it: run `chmod 600 {path}` (and keep it owned by the user Vigil runs as)"
    )]
    ExposedSecret {
        /// The file.
        path: PathBuf,
        /// The secret's key.
        key: String,
        /// The file's permission bits.
        mode: u32,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (with line, column and key).
        message: String,
    },
}

/// Reads and parses `path`, refusing a file that holds a secret and is open to others.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_error = |e: toml::de::Error| ConfigFileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
    if let Some(key) = secret_key(&table) {
        let mode = file_mode(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if mode & 0o077 != 0 {
            return Err(ConfigFileError::ExposedSecret {
                path: path.to_path_buf(),
                key,
                mode,
            });
        }
    }
    toml::from_str(&text).map_err(parse_error)
}

/// The first key (dotted path) in `table` that names a non-empty secret.
fn secret_key(table: &toml::Table) -> Option<String> {
    for (key, value) in table {
        let lower = key.to_ascii_lowercase();
        let is_secret = ["password", "token", "secret"].contains(&lower.as_str())
            || ["_password", "_token", "_secret"]
                .iter()
                .any(|suffix| lower.ends_with(suffix));
        match value {
            toml::Value::String(s) if is_secret && !s.is_empty() => return Some(key.clone()),
            toml::Value::Table(inner) => {
                if let Some(found) = secret_key(inner) {
                    return Some(format!("{key}.{found}"));
                }
            }
            _ => {}
        }
    }
    None
}

/// A file's permission bits (`0o600`, …), to refuse secrets others can read; on systems
/// without Unix modes, always `0o600`.
#[cfg(unix)]
pub fn file_mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// A file's permission bits; without Unix modes, always `0o600`.
#[cfg(not(unix))]
pub fn file_mode(_path: &Path) -> std::io::Result<u32> {
    Ok(0o600)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Shape {
        host: Option<String>,
        mqtt_password: Option<String>,
    }

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_in_a_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            dir.path(),
            "host = \"a\"\nmqtt_password = \"hunter2\"\n",
            0o644,
        );
        let err = load::<Shape>(&path).unwrap_err().to_string();
        assert!(
            err.contains("mqtt_password") && err.contains("0644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(
            !err.contains("hunter2"),
            "the secret itself is never printed: {err}"
        );
        let path = file(dir.path(), "[webhook]\nauth_token = \"t\"\n", 0o640);
        let err = load::<toml::Table>(&path).unwrap_err().to_string();
        assert!(err.contains("webhook.auth_token"), "{err}");
    }

    #[test]
    fn private_files_and_files_without_secrets_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "mqtt_password = \"hunter2\"\n", 0o600);
        let shape: Shape = load(&path).unwrap();
        assert_eq!(shape.mqtt_password.as_deref(), Some("hunter2"));
        let path = file(dir.path(), "host = \"a\"\nmqtt_password = \"\"\n", 0o644);
        let shape: Shape = load(&path).unwrap();
        assert_eq!(shape.host.as_deref(), Some("a"));
    }
}
