//! Agents enrolled without a join token: `vigil up`'s own agent (the coordinator enrolls it and
//! writes its identity file, mode 0600, into the shared data dir, so the README's first
//! command just works with authentication on), and `vigil-coordinator agent add`, which
//! provisions an identity file for configuration management to copy to a host.

use std::path::Path;

use vigil_shared::agent_auth::AgentKey;
use vigil_shared::enrollment::Identity;
use vigil_shared::time::now_ms;

use crate::security::agents;
use crate::store::Store;

/// Makes sure `host` has an identity in `data_dir` that the store accepts: keeps one that
/// still matches (same host, key and password, not revoked), otherwise enrolls a new key.
pub fn ensure_identity(
    store: &Store,
    data_dir: &Path,
    host: &str,
    coordinator_key: Option<&str>,
) -> Result<(), String> {
    let existing = Identity::load(data_dir).map_err(|e| e.to_string())?;
    if let Some(identity) = &existing {
        let record = store.agent(host).map_err(|e| e.to_string())?;
        let matches = identity.host == host
            && record.as_ref().is_some_and(|r| {
                agents::mqtt_login_ok(r, &identity.mqtt_password)
                    && identity
                        .key()
                        .is_ok_and(|key| key.public_hex() == r.public_key)
            });
        if matches {
            return Ok(());
        }
    }
    let key = AgentKey::generate();
    let password = agents::enroll_local(store, host, &key.public_hex(), now_ms())
        .map_err(|e| format!("cannot enroll the local agent `{host}`: {e}"))?;
    Identity {
        host: host.to_string(),
        private_key: key.private_hex(),
        mqtt_username: host.to_string(),
        mqtt_password: password,
        coordinator_key: coordinator_key.map(str::to_string),
        labels: Default::default(),
        enrolled_at_ms: now_ms(),
    }
    .save(data_dir)
    .map_err(|e| e.to_string())?;
    tracing::info!(%host, "enrolled agent `{host}` directly");
    Ok(())
}
