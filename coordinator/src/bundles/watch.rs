//! Watching the bundle directory: whenever inotify says something in it or in its group
//! folders changed ([`vigil_service::dir_watch`], which polls every few seconds where it
//! cannot watch), a fingerprint of every file (path, size, modification time) two levels
//! deep; any difference triggers a reload. Also republishes every bundle whenever the
//! coordinator's MQTT connection (re)connects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use vigil_service::dir_watch;

use super::service::Bundles;

/// One entry of a fingerprint.
pub type Entry = (PathBuf, u64, Option<SystemTime>);

/// The directory's fingerprint: every entry of it and of its folders, sorted.
pub fn fingerprint(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    walk(dir, 0, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, depth: u8, out: &mut Vec<Entry>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        out.push((path.clone(), meta.len(), meta.modified().ok()));
        if meta.is_dir() && depth == 0 {
            walk(&path, 1, out);
        }
    }
}

/// Reloads on directory changes and republishes on reconnects until `stop` turns true.
pub async fn run(bundles: Arc<Bundles>, mut stop: watch::Receiver<bool>) {
    let mut connects = bundles.publisher_connects();
    let dir = bundles.dir().map(Path::to_path_buf);
    let mut last = match &dir {
        Some(dir) => {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || fingerprint(&d))
                .await
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let mut changes = dir
        .clone()
        .map(|d| dir_watch::spawn(d, dir_watch::Depth::Recursive, "the bundle directory"));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = connects.changed() => {
                if changed.is_err() {
                    return;
                }
                bundles.republish().await;
            }
            Some(()) = async {
                match changes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(dir) = dir.clone() else { continue };
                let now = tokio::task::spawn_blocking(move || fingerprint(&dir))
                    .await
                    .unwrap_or_default();
                if now != last {
                    last = now;
                    if let Err(e) = bundles.reload().await {
                        tracing::error!("bundle reload after a change failed: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_new_and_changed_files_in_group_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        let empty = fingerprint(dir.path());
        std::fs::write(dir.path().join("web/a.yaml"), "x").unwrap();
        let one = fingerprint(dir.path());
        assert_ne!(empty, one);
        std::fs::write(dir.path().join("web/a.yaml"), "xy").unwrap();
        assert_ne!(one, fingerprint(dir.path()));
    }
}
