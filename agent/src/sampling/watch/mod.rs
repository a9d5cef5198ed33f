//! Watchers: they observe the state of things policies name — systemd units, Docker
//! containers — and report every change at once, so that a policy on a unit or container
//! is evaluated when the state changes, not at the next sampling tick.
//!
//! Each watcher takes the set of names (or globs) it should watch as a
//! `tokio::sync::watch::Receiver<Vec<String>>` (the set changes when policies reload) and
//! sends [`StateUpdate`]s on an mpsc channel: one for every watched object when it starts
//! (and after reconnecting), and one on every change. A watched object that does not exist
//! is reported with state `missing`. A watcher whose backend is absent (no Docker socket,
//! no system bus) logs that once, keeps retrying with backoff, and never panics.
//!
//! - [`systemd`]: units, from systemd's D-Bus signals.
//! - [`docker`]: containers, from Docker's event stream.

use std::fmt::Display;

use tokio::sync::watch;
use vigil_shared::policy::{StateKind, StateReading};

use crate::system::retry::Retry;

/// A new reading of one watched object.
#[derive(Debug, Clone, PartialEq)]
pub struct StateUpdate {
    /// What kind of object.
    pub kind: StateKind,
    /// Its name (unit name, container name).
    pub name: String,
    /// The reading.
    pub reading: StateReading,
}

/// Where watchers send updates.
pub type UpdateSender = tokio::sync::mpsc::Sender<StateUpdate>;

pub mod docker;
pub mod systemd;

/// Why one connection of a watcher to its backend ended.
enum SessionEnd<E> {
    /// Nobody listens any more (the update receiver or the names sender is gone).
    Stopped,
    /// The connection failed: reconnect after a pause.
    Lost(E),
}

/// After a session ended: waits out `retry`'s backoff and says whether to reconnect
/// (`false` once nobody listens any more).
async fn pause<E: Display>(
    retry: &mut Retry,
    end: SessionEnd<E>,
    updates: &UpdateSender,
    names: &watch::Receiver<Vec<String>>,
) -> bool {
    let error = match end {
        SessionEnd::Stopped => return false,
        SessionEnd::Lost(error) => error,
    };
    let wait = retry.failed(&error);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = updates.closed() => return false,
    }
    names.has_changed().is_ok()
}
