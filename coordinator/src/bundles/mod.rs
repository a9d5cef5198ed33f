//! Policy bundles, coordinator side: the coordinator turns a directory of host-group
//! folders into signed, versioned bundles and publishes each one retained on
//! `vigil/v1/bundles/{group}` (a removed group: a signed tombstone); agents verify and
//! apply them and report what they run.
//!
//! - [`layout`]: the directory layout, and validation of a group's files.
//! - [`gate`]: the backtest a group's new version must pass before it is published.
//! - [`store`]: the `bundles` LMDB database (versions survive restarts).
//! - [`keys`]: the signing key (generated on first start).
//! - [`service`]: build, version, sign, publish (bundles and tombstones);
//!   [`service::Bundles`].
//! - [`watch`]: reload on file changes, republish on MQTT reconnects.
//! - [`drift`]: desired versus applied bundles, failing desired-state checks.
//! - [`cli`]: `vigil-coordinator bundle build|verify|diff|keygen` for CI pipelines.

pub mod drift;
pub mod drift_feed;
pub mod gate;
pub mod keys;
pub mod layout;
pub mod service;
pub mod store;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use vigil_shared::bundle::BundleKeys;

use thiserror::Error;

pub use service::{Bundles, Published, ReloadError};

use crate::mqtt::publisher::Publisher;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// Why bundle publishing could not start.
#[derive(Debug, Error)]
pub enum BundleStartError {
    /// The signing key could not be read or created.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The stored versions could not be read.
    #[error("cannot read stored bundle versions: {0}")]
    Store(#[from] StoreError),
}

/// Loads (or creates) the coordinator's signing key (it signs bundles and commands) and
/// logs where it is.
pub async fn load_key(key_path: PathBuf) -> Result<Arc<BundleKeys>, BundleStartError> {
    let path = key_path.clone();
    let (keys, created) = tokio::task::spawn_blocking(move || keys::load_or_generate(&path))
        .await
        .map_err(|e| keys::KeyError::Write {
            path: key_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
    tracing::info!(
        key = %key_path.display(),
        public_key = %keys.public_hex(),
        public_key_file = %keys::public_path(&key_path).display(),
        "signing key for bundles and commands {}",
        if created { "generated" } else { "loaded" }
    );
    Ok(Arc::new(keys))
}

/// Reads the stored versions and builds and publishes the directory once. A group that
/// does not build is reported, not fatal.
pub async fn start(
    dir: Option<PathBuf>,
    keys: Arc<BundleKeys>,
    store: Store,
    telemetry: Arc<Telemetry>,
    publisher: Publisher,
) -> Result<Arc<Bundles>, BundleStartError> {
    let bundles = Arc::new(Bundles::open(
        dir.clone(),
        keys,
        store,
        telemetry,
        publisher,
    )?);
    if let Some(dir) = dir {
        match bundles.reload().await {
            Ok(report) => tracing::info!(
                dir = %dir.display(),
                published = report.published.len() + report.restored.len(),
                refused = report.errors.len(),
                "bundles built"
            ),
            Err(e) => tracing::error!(dir = %dir.display(), "bundles not built: {e}"),
        }
    }
    Ok(bundles)
}
