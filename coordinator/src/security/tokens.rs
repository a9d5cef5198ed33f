//! REST API tokens and their roles.
//!
//! A token is `vigil_` and 64 hex characters of randomness, shown once when created; the
//! store keeps only its SHA-256 ([`hash`]) with a [`TokenRecord`] (name, role, when
//! created and revoked). Roles are ordered: a [`Role::Viewer`] reads, an
//! [`Role::Operator`] also runs manual actions, enables and disables policies and pulls
//! the kill switch, an [`Role::Admin`] also changes policies and bundles. Tokens are made
//! and revoked with `vigil-coordinator token …`; on first start the coordinator makes an
//! admin token and writes it to [`ADMIN_TOKEN_FILE`] in its data dir (mode 0600).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::store::tokens::{Role, TokenRecord};

/// File in the data dir holding the admin token made on first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A new random token.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("vigil_{}", hex::encode(bytes))
}

/// The SHA-256 of a token: its key in the store.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The record for a new token with hash `digest`.
pub fn record(digest: &[u8; 32], name: &str, role: Role, now_ms: i64) -> TokenRecord {
    TokenRecord {
        id: hex::encode(&digest[..4]),
        name: name.to_string(),
        role,
        created_ms: now_ms,
        revoked_ms: None,
    }
}

/// Makes the first admin token when the store holds none: stores its hash and writes the
/// token to `<data_dir>/admin.token` (mode 0600). Returns the file's path when it made
/// one.
pub fn bootstrap_admin(
    store: &crate::store::Store,
    data_dir: &Path,
    now_ms: i64,
) -> Result<Option<PathBuf>, String> {
    let existing = store
        .tokens()
        .map_err(|e| format!("cannot read tokens: {e}"))?;
    if !existing.is_empty() {
        return Ok(None);
    }
    let token = generate();
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &token)?;
    let digest = hash(&token);
    store
        .put_token(&digest, &record(&digest, "admin", Role::Admin, now_ms))
        .map_err(|e| format!("cannot store the admin token: {e}"))?;
    Ok(Some(path))
}

/// Writes `secret` and a newline to `path`, readable by its owner only.
pub fn write_secret(path: &Path, secret: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(file, "{secret}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed_and_roles_are_ordered() {
        let a = generate();
        assert!(a.starts_with("vigil_") && a.len() == 6 + 64, "{a}");
        assert_ne!(a, generate());
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&generate()));
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("viewer, operator or admin"));
        let r = record(&hash(&a), "ci", Role::Viewer, 5);
        assert_eq!(r.id.len(), 8);
    }
}
