//! The agent's gate for commands from the coordinator: only a command signed with the
//! coordinator's key, addressed to this host, unexpired and newer than every command
//! accepted before gets through (see [`vigil_shared::command_auth`]).
//!
//! The newest accepted `issued_at_ms` (the watermark) is kept in
//! `<data-dir>/command-watermark`, so a captured command replayed after the agent restarts
//! is refused too.

use std::path::{Path, PathBuf};

use vigil_shared::bundle::PublicKey;
use vigil_shared::command_auth::{self, CommandRefusal, SignedCommand};
use vigil_shared::time::now_ms;
use vigil_shared::wire::{self, Command};

/// File name of the persisted watermark inside the data dir.
const WATERMARK_FILE: &str = "command-watermark";

/// Checks commands and remembers the newest one accepted.
#[derive(Debug)]
pub struct CommandGuard {
    key: Option<PublicKey>,
    host: String,
    watermark_ms: i64,
    path: PathBuf,
}

impl CommandGuard {
    /// A guard for `host` that checks signatures with `key` (none: every command is
    /// refused), with its watermark in `data_dir`.
    pub fn open(key: Option<PublicKey>, host: &str, data_dir: &Path) -> CommandGuard {
        let path = data_dir.join(WATERMARK_FILE);
        let watermark_ms = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<i64>().unwrap_or_else(|e| {
                // Unreadable: refuse anything issued before now rather than risk replays.
                tracing::error!(
                    file = %path.display(),
                    "command watermark is not a number ({e}); refusing commands issued before now"
                );
                now_ms()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::error!(
                    file = %path.display(),
                    "cannot read the command watermark ({e}); refusing commands issued before now"
                );
                now_ms()
            }
        };
        CommandGuard {
            key,
            host: host.to_string(),
            watermark_ms,
            path,
        }
    }

    /// Checks a command topic payload at `now_ms`; on success raises (and persists) the
    /// watermark and returns the command to carry out.
    pub fn check(&mut self, payload: &[u8], now_ms: i64) -> Result<Command, CommandRefusal> {
        let key = self.key.as_ref().ok_or(CommandRefusal::NoKey)?;
        let signed = wire::decode::<SignedCommand>(payload)
            .map_err(|e| CommandRefusal::Malformed(e.to_string()))?;
        let command = command_auth::verify(&signed, key, &self.host, now_ms, self.watermark_ms)?;
        self.watermark_ms = command.issued_at_ms;
        if let Err(e) = self.persist() {
            tracing::error!(
                file = %self.path.display(),
                "cannot persist the command watermark ({e}): a replay after a restart would not be detected"
            );
        }
        Ok(command)
    }

    /// Writes the watermark atomically (temporary file, then rename).
    fn persist(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, self.watermark_ms.to_string())?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::bundle::BundleKeys;
    use vigil_shared::wire::CommandKind;

    fn signed(keys: &BundleKeys, issued: i64) -> Vec<u8> {
        let command = Command {
            id: format!("c{issued}"),
            host: "web-1".into(),
            issued_at_ms: issued,
            expires_at_ms: issued + 60_000,
            kind: CommandKind::Resync,
        };
        wire::encode(&command_auth::sign(keys, &command))
    }

    #[test]
    fn a_replay_is_refused_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keys = BundleKeys::generate();
        let key = || Some(PublicKey::from_hex(&keys.public_hex()).unwrap());
        let now = now_ms();
        let first = signed(&keys, now);
        let mut guard = CommandGuard::open(key(), "web-1", dir.path());
        assert!(guard.check(&first, now).is_ok());
        assert_eq!(guard.check(&first, now).unwrap_err().reason(), "replayed");
        // A new agent process on the same data dir.
        let mut guard = CommandGuard::open(key(), "web-1", dir.path());
        assert_eq!(guard.check(&first, now).unwrap_err().reason(), "replayed");
        assert!(guard.check(&signed(&keys, now + 1), now).is_ok());
    }

    #[test]
    fn without_a_key_or_a_signature_nothing_gets_through() {
        let dir = tempfile::tempdir().unwrap();
        let keys = BundleKeys::generate();
        let mut keyless = CommandGuard::open(None, "web-1", dir.path());
        let now = now_ms();
        assert_eq!(
            keyless
                .check(&signed(&keys, now), now)
                .unwrap_err()
                .reason(),
            "no_key"
        );
        let key = Some(PublicKey::from_hex(&keys.public_hex()).unwrap());
        let mut guard = CommandGuard::open(key, "web-1", dir.path());
        let unsigned = wire::encode(&Command {
            id: "x".into(),
            host: "web-1".into(),
            issued_at_ms: now,
            expires_at_ms: now + 1000,
            kind: CommandKind::Resync,
        });
        assert_eq!(
            guard.check(&unsigned, now).unwrap_err().reason(),
            "malformed"
        );
        // A corrupt watermark refuses what was issued before the agent started.
        std::fs::write(dir.path().join(WATERMARK_FILE), "garbage").unwrap();
        let key = Some(PublicKey::from_hex(&keys.public_hex()).unwrap());
        let mut guard = CommandGuard::open(key, "web-1", dir.path());
        assert_eq!(
            guard
                .check(&signed(&keys, now - 10_000), now)
                .unwrap_err()
                .reason(),
            "replayed"
        );
    }
}
