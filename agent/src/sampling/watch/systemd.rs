//! The systemd watcher: reports watched units' `ActiveState` as it changes, from systemd's
//! D-Bus signals on the system bus (through [`crate::system::systemd`], the D-Bus client the
//! systemd executor uses too).
//!
//! On every (re)connection it calls the manager's `Subscribe` (without which systemd sends
//! no unit signals), listens for `PropertiesChanged` on unit objects, then reads every
//! watched unit and reports it: state = `ActiveState` (`active`, `inactive`, `failed`,
//! `activating`, …), detail = `SubState` (`running`, `dead`, `failed`, …). A unit systemd
//! does not know (`LoadState` `not-found`) is reported `missing`. Every change of a watched
//! unit's state is reported the moment its signal arrives; a full resync every
//! [`RESYNC_EVERY`], after every `daemon-reload`, and whenever the set of names changes
//! catches anything missed.
//!
//! Exact names are loaded by name (`LoadUnit`), so units that are stopped and unloaded are
//! still reported; a name without a unit type suffix means a service (`nginx` →
//! `nginx.service`, reported as `nginx`). Globs (`web-*.service`) match the units systemd
//! has loaded (`ListUnitsByPatterns`, and any that appear later).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use vigil_shared::policy::{StateKind, StateReading};
use vigil_shared::time::now_ms;
use zbus::fdo::PropertiesChanged;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Message;

use super::{StateUpdate, UpdateSender};
use crate::system::names::NameSet;
use crate::system::retry::Retry;
use crate::system::systemd::{
    refusal, unit_id_from_path, Subscription, Systemd, MANAGER, PROPERTIES, UNIT,
};
use crate::system::units::unit_id;

/// How often every watched unit is read again, in case a signal was missed.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// What went wrong talking to systemd.
#[derive(Debug, Error)]
enum SystemdError {
    /// The system bus could not be reached.
    #[error("cannot connect to the D-Bus system bus: {0}")]
    Connect(#[source] Box<zbus::Error>),
    /// A call to systemd failed for a reason other than the unit being unknown.
    #[error("{what} failed: {source}")]
    Call {
        /// What was asked.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The signal stream broke.
    #[error("systemd's signal stream failed: {0}")]
    Signals(#[source] Box<zbus::Error>),
    /// The signal stream ended (the bus connection closed).
    #[error("the system bus connection closed")]
    SignalsEnded,
}

impl SystemdError {
    /// A failed call: `what` was asked.
    fn call(what: impl Into<String>, source: zbus::Error) -> SystemdError {
        SystemdError::Call {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Why a session ended.
type SessionEnd = super::SessionEnd<SystemdError>;

impl From<SystemdError> for SessionEnd {
    fn from(error: SystemdError) -> Self {
        SessionEnd::Lost(error)
    }
}

/// Watches the systemd units `names` lists (exact names or globs) until the update receiver
/// or the names sender is dropped. When the system bus is absent or the connection is
/// lost, logs a warning once and keeps retrying with capped backoff.
pub async fn run(mut names: watch::Receiver<Vec<String>>, updates: UpdateSender) {
    let mut retry = Retry::new("systemd (D-Bus system bus)");
    loop {
        let Err(end) = session(&mut names, &updates, &mut retry).await;
        if !super::pause(&mut retry, end, &updates, &names).await {
            return;
        }
    }
}

/// One connection: subscribe, initial sync, then signals, resyncs and name changes until
/// it fails.
async fn session(
    names: &mut watch::Receiver<Vec<String>>,
    updates: &UpdateSender,
    retry: &mut Retry,
) -> Result<Infallible, SessionEnd> {
    let bus = Systemd::connect()
        .await
        .map_err(|e| SystemdError::Connect(Box::new(e)))?;
    // Listen before reading anything, so no change falls in between.
    let mut signals = Signals::listen(&bus).await?;
    bus.subscribe()
        .await
        .map_err(|e| SystemdError::call("Subscribe", e))?;
    let mut units = Units::new(NameSet::new(&names.borrow_and_update()));
    units.sync(&bus, updates, true).await?;
    retry.connected();
    tracing::debug!("watching systemd units");

    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = signals.queue.recv() => match message {
                Some(Ok(message)) => units.on_signal(&bus, &message, updates).await?,
                Some(Err(e)) => return Err(SystemdError::Signals(Box::new(e)).into()),
                None => return Err(SystemdError::SignalsEnded.into()),
            },
            changed = names.changed() => {
                if changed.is_err() {
                    return Err(SessionEnd::Stopped);
                }
                units.set = NameSet::new(&names.borrow_and_update());
                units.sync(&bus, updates, false).await?;
            }
            _ = resync.tick() => units.sync(&bus, updates, false).await?,
            () = updates.closed() => return Err(SessionEnd::Stopped),
        }
    }
}

/// systemd's signals, moved from zbus's bounded queues onto an unbounded one by a task of
/// their own: zbus stops reading the socket (method replies included) while a signal
/// queue is full, so the watcher must never await a reply with signals piling up.
struct Signals {
    /// The signals, in order.
    queue: mpsc::UnboundedReceiver<zbus::Result<Message>>,
    /// The task moving them (aborted when the session ends).
    task: tokio::task::JoinHandle<()>,
}

impl Signals {
    /// Subscribes to unit `PropertiesChanged` and the manager's own signals.
    async fn listen(bus: &Systemd) -> Result<Signals, SystemdError> {
        let add =
            |what: &'static str| move |e| SystemdError::call(format!("subscribing to {what}"), e);
        let units = bus
            .signals(Subscription::UnitChanges)
            .await
            .map_err(add("unit changes"))?;
        let manager = bus
            .signals(Subscription::Manager)
            .await
            .map_err(add("manager signals"))?;
        let (tx, queue) = mpsc::unbounded_channel();
        let mut merged = futures_util::stream::select(units, manager);
        let task = tokio::spawn(async move {
            while let Some(message) = merged.next().await {
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Ok(Signals { queue, task })
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A unit's raw state as systemd reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UnitState {
    /// `LoadState`: `loaded`, `not-found`, `masked`, `error`, …
    load: String,
    /// `ActiveState`.
    active: String,
    /// `SubState`.
    sub: String,
}

impl UnitState {
    /// Whether all three are known.
    fn complete(&self) -> bool {
        !self.load.is_empty() && !self.active.is_empty() && !self.sub.is_empty()
    }

    /// Takes whichever of the three a property map holds; whether it held any.
    fn merge<'a>(&mut self, properties: impl Fn(&str) -> Option<&'a Value<'a>>) -> bool {
        let mut any = false;
        for (key, field) in [
            ("LoadState", &mut self.load),
            ("ActiveState", &mut self.active),
            ("SubState", &mut self.sub),
        ] {
            if let Some(Value::Str(s)) = properties(key) {
                *field = s.to_string();
                any = true;
            }
        }
        any
    }

    /// The reading this state makes.
    fn reading(&self) -> StateReading {
        if self.load == "not-found" {
            return missing("unit not found");
        }
        let detail = if self.load == "loaded" || self.load.is_empty() {
            self.sub.clone()
        } else {
            format!("{} (load state {})", self.sub, self.load)
        };
        StateReading {
            state: self.active.clone(),
            health: None,
            consecutive_failures: 0,
            detail: Some(detail),
            at_ms: now_ms(),
        }
    }
}

/// The reading for a unit systemd does not know.
fn missing(why: &str) -> StateReading {
    StateReading {
        state: "missing".to_string(),
        health: None,
        consecutive_failures: 0,
        detail: Some(why.to_string()),
        at_ms: now_ms(),
    }
}

/// A unit's load, active and sub state.
async fn unit_state(bus: &Systemd, path: &str) -> zbus::Result<UnitState> {
    let properties = bus.properties(path, UNIT).await?;
    let mut state = UnitState::default();
    state.merge(|k| properties.get(k).map(|v| &**v));
    Ok(state)
}

/// The watched units and what was last reported about them.
struct Units {
    /// What to watch.
    set: NameSet,
    /// The names reported for each unit object (exact names as written, glob matches by
    /// unit id).
    names: HashMap<OwnedObjectPath, BTreeSet<String>>,
    /// The latest raw state of each unit object.
    states: HashMap<OwnedObjectPath, UnitState>,
    /// `(state, detail)` last sent per name, so that only changes are sent.
    sent: HashMap<String, (String, Option<String>)>,
}

impl Units {
    /// Nothing read yet.
    fn new(set: NameSet) -> Units {
        Units {
            set,
            names: HashMap::new(),
            states: HashMap::new(),
            sent: HashMap::new(),
        }
    }

    /// Reads every watched unit and reports all of them when `all`, else the changes.
    async fn sync(
        &mut self,
        bus: &Systemd,
        updates: &UpdateSender,
        all: bool,
    ) -> Result<(), SessionEnd> {
        let mut names: HashMap<OwnedObjectPath, BTreeSet<String>> = HashMap::new();
        let mut states = HashMap::new();
        let mut refused = Vec::new();
        for name in self.set.exact() {
            let unit = unit_id(name);
            let path = match bus.load_unit(&unit).await {
                Ok(path) => path,
                Err(e) => match refusal(&e) {
                    Some(why) => {
                        refused.push((name.to_string(), why));
                        continue;
                    }
                    None => return Err(call_failed(format!("LoadUnit({unit})"), e)),
                },
            };
            let state = match unit_state(bus, &path).await {
                Ok(state) => state,
                Err(e) => match refusal(&e) {
                    Some(why) => {
                        refused.push((name.to_string(), why));
                        continue;
                    }
                    None => return Err(call_failed(format!("reading {unit}"), e)),
                },
            };
            names
                .entry(path.clone())
                .or_default()
                .insert(name.to_string());
            states.insert(path, state);
        }
        if self.set.has_globs() {
            let patterns: Vec<&str> = self.set.globs().collect();
            let rows = bus
                .list_units(&patterns)
                .await
                .map_err(|e| call_failed("ListUnitsByPatterns".into(), e))?;
            for (id, _, load, active, sub, _, path, _, _, _) in rows {
                names.entry(path.clone()).or_default().insert(id);
                states.insert(path, UnitState { load, active, sub });
            }
        }
        self.names = names;
        self.states = states;
        let watched: BTreeSet<&String> = self
            .names
            .values()
            .flatten()
            .chain(refused.iter().map(|(n, _)| n))
            .collect();
        self.sent.retain(|name, _| watched.contains(name));
        for (name, why) in refused {
            deliver(&mut self.sent, updates, &name, missing(&why), all).await?;
        }
        for (path, names) in &self.names {
            let Some(state) = self.states.get(path) else {
                continue;
            };
            let reading = state.reading();
            for name in names {
                deliver(&mut self.sent, updates, name, reading.clone(), all).await?;
            }
        }
        Ok(())
    }

    /// Handles one signal from systemd.
    async fn on_signal(
        &mut self,
        bus: &Systemd,
        message: &Message,
        updates: &UpdateSender,
    ) -> Result<(), SessionEnd> {
        let header = message.header();
        let member = header.member().map(|m| m.as_str()).unwrap_or_default();
        let interface = header.interface().map(|i| i.as_str()).unwrap_or_default();
        let Some(path) = header.path().map(|p| OwnedObjectPath::from(p.to_owned())) else {
            return Ok(());
        };
        match (interface, member) {
            (PROPERTIES, "PropertiesChanged") => {
                self.on_properties_changed(bus, path, message, updates)
                    .await
            }
            (MANAGER, "Reloading") => {
                // After a daemon-reload, units may have appeared, gone, or changed.
                if message.body().deserialize::<bool>() == Ok(false) {
                    self.sync(bus, updates, false).await?;
                }
                Ok(())
            }
            (MANAGER, "UnitNew") => {
                let Ok((id, unit_path)) = message.body().deserialize::<(String, OwnedObjectPath)>()
                else {
                    return Ok(());
                };
                if self.set.matches_glob(&id) && !self.names.contains_key(&unit_path) {
                    self.names.entry(unit_path.clone()).or_default().insert(id);
                    self.refresh(bus, unit_path, updates).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A unit's properties changed: reports its new state if it is watched and changed.
    async fn on_properties_changed(
        &mut self,
        bus: &Systemd,
        path: OwnedObjectPath,
        message: &Message,
        updates: &UpdateSender,
    ) -> Result<(), SessionEnd> {
        let Some(signal) = PropertiesChanged::from_message(message.clone()) else {
            return Ok(());
        };
        let Ok(args) = signal.args() else {
            return Ok(());
        };
        if args.interface_name().as_str() != UNIT {
            return Ok(());
        }
        if !self.names.contains_key(&path) {
            if !self.set.has_globs() {
                return Ok(());
            }
            let Some(id) = unit_id_from_path(&path) else {
                return Ok(());
            };
            if !self.set.matches_glob(&id) {
                return Ok(());
            }
            self.names.entry(path.clone()).or_default().insert(id);
        }
        let mut state = self.states.get(&path).cloned().unwrap_or_default();
        let changed = args.changed_properties();
        let carried = state.merge(|k| changed.get(k));
        let invalidated = args
            .invalidated_properties()
            .iter()
            .any(|p| matches!(*p, "LoadState" | "ActiveState" | "SubState"));
        if invalidated || (carried && !state.complete()) {
            return self.refresh(bus, path, updates).await;
        }
        if carried {
            self.report(path, state, updates).await?;
        }
        Ok(())
    }

    /// Reads a unit's state afresh and reports it if it changed.
    async fn refresh(
        &mut self,
        bus: &Systemd,
        path: OwnedObjectPath,
        updates: &UpdateSender,
    ) -> Result<(), SessionEnd> {
        let state = match unit_state(bus, &path).await {
            Ok(state) => state,
            Err(e) => match refusal(&e) {
                // Gone (unloaded) in the meantime: the next signal or resync tells.
                Some(_) => return Ok(()),
                None => return Err(call_failed(format!("reading {}", path.as_str()), e)),
            },
        };
        self.report(path, state, updates).await
    }

    /// Records a unit's state and reports it under each of its names if it changed.
    async fn report(
        &mut self,
        path: OwnedObjectPath,
        state: UnitState,
        updates: &UpdateSender,
    ) -> Result<(), SessionEnd> {
        let reading = state.reading();
        self.states.insert(path.clone(), state);
        let Some(names) = self.names.get(&path) else {
            return Ok(());
        };
        for name in names {
            deliver(&mut self.sent, updates, name, reading.clone(), false).await?;
        }
        Ok(())
    }
}

/// A call failure that ends the session.
fn call_failed(what: String, source: zbus::Error) -> SessionEnd {
    SessionEnd::Lost(SystemdError::call(what, source))
}

/// Sends `reading` if `force` or if its state or detail differs from what was last sent.
async fn deliver(
    sent: &mut HashMap<String, (String, Option<String>)>,
    updates: &UpdateSender,
    name: &str,
    reading: StateReading,
    force: bool,
) -> Result<(), SessionEnd> {
    let key = (reading.state.clone(), reading.detail.clone());
    if !force && sent.get(name) == Some(&key) {
        return Ok(());
    }
    sent.insert(name.to_string(), key);
    let update = StateUpdate {
        kind: StateKind::Unit,
        name: name.to_string(),
        reading,
    };
    updates.send(update).await.map_err(|_| SessionEnd::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_carry_active_state_and_sub_state() {
        let state = |load: &str, active: &str, sub: &str| UnitState {
            load: load.into(),
            active: active.into(),
            sub: sub.into(),
        };
        let r = state("loaded", "active", "running").reading();
        assert_eq!(
            (r.state.as_str(), r.detail.as_deref()),
            ("active", Some("running"))
        );
        let r = state("not-found", "inactive", "dead").reading();
        assert_eq!(r.state, "missing");
        let r = state("masked", "inactive", "dead").reading();
        assert_eq!(r.detail.as_deref(), Some("dead (load state masked)"));
    }

    #[test]
    fn signal_properties_merge_into_the_last_state() {
        let mut state = UnitState {
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
        };
        let changed: HashMap<&str, Value<'_>> = HashMap::from([
            ("ActiveState", Value::from("failed")),
            ("SubState", Value::from("failed")),
            ("Id", Value::from("x.service")),
        ]);
        assert!(state.merge(|k| changed.get(k)));
        assert_eq!(
            (state.active.as_str(), state.sub.as_str()),
            ("failed", "failed")
        );
        assert!(state.complete());
    }
}
