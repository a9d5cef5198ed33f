//! Reading a TOML config file into a settings shape, with errors that name the file (and,
//! from the TOML parser, the line, column and key). Agents and the coordinator both use it.
//!
//! A file that holds a secret (a key named `password`, `token` or `secret`, or ending in
//! `_password`, `_token`, `_secret`) must not be readable or writable by anyone but its
//! owner: such a file with a mode like 0644 is refused, naming the key and the fix.
//!
//! A file that decides what a privileged process may do (the agent's allowlists, policy
//! directory, bundle key) is read with [`load_trusted`]: it must also be owned by root or
//! by the user reading it, and writable by no one else, whatever it holds.

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
    /// Someone other than root and this process's user owns the file, or may write it.
    #[error(
        "config file {path} has mode {mode:04o} and is owned by uid {owner}: it decides what \
         this process may run, so it must be owned by root or uid {me} and writable by no one \
         else: run `chown root: {path} && chmod 600 {path}`"
    )]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
        /// The file's owner (uid).
        owner: u32,
        /// This process's effective uid.
        me: u32,
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

/// [`load`] for a file that widens what this process may do: refused (before it is
/// parsed) unless [`check_trusted`] passes.
pub fn load_trusted<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    check_trusted(path)?;
    load(path)
}

/// Refuses `path` unless it is owned by root or by this process's effective user, and
/// neither its group nor others may write it. The error names the file, its mode and its
/// owner.
#[cfg(unix)]
pub fn check_trusted(path: &Path) -> Result<(), ConfigFileError> {
    use std::os::unix::fs::MetadataExt;
    let read_error = |source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    // Without /proc (a bare container), only root's files pass.
    let me = effective_uid().unwrap_or(0);
    let mode = meta.mode() & 0o7777;
    let owner = meta.uid();
    if (owner != 0 && owner != me) || mode & 0o022 != 0 {
        return Err(ConfigFileError::Untrusted {
            path: path.to_path_buf(),
            mode,
            owner,
            me,
        });
    }
    Ok(())
}

/// Without Unix owners and modes there is nothing to check.
#[cfg(not(unix))]
pub fn check_trusted(_path: &Path) -> Result<(), ConfigFileError> {
    Ok(())
}

/// This process's effective uid: the owner of `/proc/self` (Linux).
#[cfg(unix)]
fn effective_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid())
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

/// Reads a size such as `1GiB`, `512MiB`, `64KiB`, `4096` (bytes). Also takes KB/MB/GB/TB
/// as powers of 1024, since that is what people mean for memory maps.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 1GiB, 512MiB or 4096"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    number
        .checked_mul(1usize << shift)
        .filter(|&n| n >= 64 * 1024)
        .ok_or_else(|| format!("`{text}` must be at least 64KiB and fit in memory addresses"))
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

    #[test]
    fn a_trusted_file_must_be_writable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o644, 0o640, 0o400] {
            let path = file(dir.path(), "host = \"a\"\n", mode);
            let shape: Shape = load_trusted(&path).unwrap();
            assert_eq!(shape.host.as_deref(), Some("a"), "mode {mode:o}");
        }
        for mode in [0o666, 0o646, 0o620, 0o602] {
            let path = file(dir.path(), "host = \"a\"\n", mode);
            let err = load_trusted::<Shape>(&path).unwrap_err().to_string();
            let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).unwrap());
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains(&format!("mode {mode:04o}"))
                    && err.contains(&format!("owned by uid {owner}")),
                "{err}"
            );
        }
        // Owned by another user (only root can give a file away): refused even at 0600.
        if effective_uid().unwrap() == 0 {
            let path = file(dir.path(), "host = \"a\"\n", 0o600);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let err = load_trusted::<Shape>(&path).unwrap_err().to_string();
            assert!(
                err.contains("owned by uid 65534") && err.contains("0600"),
                "{err}"
            );
        }
        assert!(matches!(
            check_trusted(&dir.path().join("missing.toml")),
            Err(ConfigFileError::Read { .. })
        ));
    }
}
