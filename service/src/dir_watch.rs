//! Tells a reader when a directory may have changed, so that an unchanged directory
//! costs nothing: an inotify watch on the directory (the `notify` crate), on its folders
//! too when asked ([`Depth::Recursive`]), whose events are coalesced for [`SETTLE`] (an
//! editor's save or a copy is several events) before the reader is woken. Where the
//! directory cannot be watched (it does not exist yet, the host's inotify limits are
//! reached) the reader is woken every [`FALLBACK_POLL`] instead, and watching is tried
//! again each time; a watch that is lost (the directory was removed or renamed) is set
//! up again the same way.
//!
//! A wake-up only means "look again": the reader compares what it read last (names,
//! sizes, modification times) and reads the files only when those changed. Edits to
//! files outside the directory that its files link to are not seen until something in
//! the directory changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use ::notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long events are gathered before the reader is woken.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How often the directory is checked while it cannot be watched.
pub const FALLBACK_POLL: Duration = Duration::from_secs(10);

/// How deep a watch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The directory's own entries.
    Flat,
    /// The directory's entries and everything in its folders, new folders included.
    Recursive,
}

/// What is watched, for the log.
#[derive(Debug, Clone)]
struct Watched {
    dir: PathBuf,
    depth: Depth,
    /// What the directory is, e.g. "the policy directory".
    what: &'static str,
}

/// Starts watching `dir` (`what` names it in the log): the receiver gets one message per
/// "look again" (the first right after the watch is set up, for anything that changed
/// before it). The task ends when the receiver is dropped.
pub fn spawn(dir: PathBuf, depth: Depth, what: &'static str) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run(Watched { dir, depth, what }, tx, FALLBACK_POLL));
    rx
}

/// What the watcher thread passes on.
struct Signals {
    /// Something in the directory changed.
    changed: mpsc::Sender<()>,
    /// The watch is gone (the directory itself was removed or renamed, or the watcher
    /// reported an error): set before `changed` is signalled.
    lost: AtomicBool,
}

async fn run(watched: Watched, wake: mpsc::Sender<()>, fallback_poll: Duration) {
    let Watched { dir, depth, what } = &watched;
    let mut warned = false;
    loop {
        let (changed, mut events) = mpsc::channel(1);
        let signals = Arc::new(Signals {
            changed,
            lost: AtomicBool::new(false),
        });
        match watch(dir, *depth, signals.clone()) {
            Ok(watcher) => {
                if warned {
                    tracing::info!(dir = %dir.display(), "watching {what} again");
                    warned = false;
                }
                // Anything that changed before the watch was set up.
                if wake.send(()).await.is_err() {
                    return;
                }
                while events.recv().await.is_some() {
                    tokio::time::sleep(SETTLE).await;
                    while events.try_recv().is_ok() {}
                    if wake.send(()).await.is_err() {
                        return;
                    }
                    if signals.lost.load(Ordering::Acquire) {
                        break;
                    }
                }
                drop(watcher);
                tracing::debug!(dir = %dir.display(), "lost the watch on {what}");
                // Watch again at once (a directory replaced by a new one).
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            Err(e) if !warned => {
                tracing::warn!(
                    dir = %dir.display(),
                    "cannot watch {what}, checking it every {fallback_poll:?} instead: {e}"
                );
                warned = true;
            }
            Err(e) => tracing::debug!(dir = %dir.display(), "still cannot watch: {e}"),
        }
        tokio::time::sleep(fallback_poll).await;
        if wake.send(()).await.is_err() {
            return;
        }
    }
}

/// Watches `dir` to `depth`, passing relevant events on to `signals`.
fn watch(
    dir: &Path,
    depth: Depth,
    signals: Arc<Signals>,
) -> ::notify::Result<::notify::RecommendedWatcher> {
    let own = dir.to_path_buf();
    let mut watcher =
        ::notify::recommended_watcher(move |event: ::notify::Result<::notify::Event>| {
            let relevant = match &event {
                Ok(event) => {
                    if lost_itself(event, &own) {
                        signals.lost.store(true, Ordering::Release);
                    }
                    !read_only(&event.kind)
                }
                Err(_) => {
                    signals.lost.store(true, Ordering::Release);
                    true
                }
            };
            if relevant {
                // Full: a wake-up is already pending.
                let _ = signals.changed.try_send(());
            }
        })?;
    let mode = match depth {
        Depth::Flat => RecursiveMode::NonRecursive,
        Depth::Recursive => RecursiveMode::Recursive,
    };
    watcher.watch(dir, mode)?;
    Ok(watcher)
}

/// Events of reading alone (the reader's own reads of the files among them).
fn read_only(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

/// Whether `event` says the watched directory itself was removed or moved away.
fn lost_itself(event: &::notify::Event, dir: &Path) -> bool {
    let about_dir = event.paths.iter().any(|p| p == dir);
    about_dir
        && matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for one wake-up, failing after `within`.
    async fn woken(rx: &mut mpsc::Receiver<()>, within: Duration) {
        tokio::time::timeout(within, rx.recv())
            .await
            .expect("a wake-up in time")
            .expect("the watch task runs");
    }

    /// No wake-up for `quiet`.
    async fn quiet(rx: &mut mpsc::Receiver<()>, quiet: Duration) {
        assert!(
            tokio::time::timeout(quiet, rx.recv()).await.is_err(),
            "woken without a change"
        );
    }

    #[tokio::test]
    async fn wakes_on_changes_only_and_survives_the_directory_being_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        let mut rx = spawn(dir.clone(), Depth::Flat, "the test directory");
        woken(&mut rx, Duration::from_secs(5)).await; // the first look
        quiet(&mut rx, Duration::from_millis(500)).await;

        // Reading the files wakes nothing; writing one wakes once per burst.
        let file = dir.join("a.yaml");
        std::fs::write(&file, "policies: []\n").unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
        quiet(&mut rx, Duration::from_millis(300)).await;
        let _ = std::fs::read_to_string(&file).unwrap();
        quiet(&mut rx, Duration::from_millis(500)).await;

        // The directory replaced by another: watched again, changes seen.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
        // Drain the wake-ups of the replacement (removal, then the new watch's first look).
        while tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_ok()
        {}
        std::fs::write(dir.join("b.yaml"), "policies: []\n").unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_recursive_watch_sees_changes_in_folders_new_and_old() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bundles");
        std::fs::create_dir_all(dir.join("web")).unwrap();
        let mut rx = spawn(dir.clone(), Depth::Recursive, "the test directory");
        woken(&mut rx, Duration::from_secs(5)).await; // the first look
        quiet(&mut rx, Duration::from_millis(500)).await;
        std::fs::write(dir.join("web/cpu.yaml"), "policies: []\n").unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
        quiet(&mut rx, Duration::from_millis(300)).await;
        // A folder made after the watch began is watched too.
        std::fs::create_dir(dir.join("db")).unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
        quiet(&mut rx, Duration::from_millis(300)).await;
        std::fs::write(dir.join("db/group.yaml"), "selector: {role: db}\n").unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_watched_is_polled_until_it_can() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("later");
        let (tx, mut rx) = mpsc::channel(1);
        let watched = Watched {
            dir: dir.clone(),
            depth: Depth::Flat,
            what: "the test directory",
        };
        tokio::spawn(run(watched, tx, Duration::from_millis(200)));
        // Missing: polled.
        woken(&mut rx, Duration::from_secs(5)).await;
        woken(&mut rx, Duration::from_secs(5)).await;
        // Created: watched (the first look), then quiet until a change.
        std::fs::create_dir(&dir).unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
        while tokio::time::timeout(Duration::from_millis(400), rx.recv())
            .await
            .is_ok()
        {}
        quiet(&mut rx, Duration::from_millis(600)).await;
        std::fs::write(dir.join("a.yaml"), "policies: []\n").unwrap();
        woken(&mut rx, Duration::from_secs(5)).await;
    }
}
