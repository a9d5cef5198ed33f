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

use vigil_shared::policy::{StateKind, StateReading};

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
pub(crate) mod names;
pub(crate) mod retry;
pub mod systemd;
