//! The systemd watcher: reports watched units' `ActiveState` as it changes, from systemd's
//! D-Bus signals on the system bus (`org.freedesktop.systemd1`, via `zbus`).
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
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, Message, MessageStream};

use super::names::NameSet;
use super::retry::Retry;
use super::{StateUpdate, UpdateSender};

/// How often every watched unit is read again, in case a signal was missed.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// systemd's bus name.
const SYSTEMD: &str = "org.freedesktop.systemd1";
/// The manager object.
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
/// The manager interface.
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The interface every unit object has.
const UNIT: &str = "org.freedesktop.systemd1.Unit";
/// Where unit objects live.
const UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit";
/// The standard properties interface.
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// How many signals zbus may hold for us (they are moved on to our own queue at once).
const SIGNAL_QUEUE: usize = 1024;
/// Unit type suffixes; a name without one is taken to be a service.
const UNIT_TYPES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".mount",
    ".automount",
    ".swap",
    ".path",
    ".slice",
    ".scope",
    ".device",
];

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
type SessionEnd = super::retry::SessionEnd<SystemdError>;

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
        if !retry.pause(end, &updates, &names).await {
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
    let conn = Connection::system()
        .await
        .map_err(|e| SystemdError::Connect(Box::new(e)))?;
    // Listen before reading anything, so no change falls in between.
    let mut signals = Signals::listen(&conn).await?;
    let bus = Bus { conn };
    bus.call::<()>(MANAGER_PATH, MANAGER, "Subscribe", &())
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
    async fn listen(conn: &Connection) -> Result<Signals, SystemdError> {
        let rule = |what: &str, built: zbus::Result<MatchRule<'static>>| {
            built.map_err(|e| SystemdError::call(format!("building the match rule for {what}"), e))
        };
        let units = rule(
            "unit changes",
            MatchRule::builder()
                .msg_type(MessageType::Signal)
                .sender(SYSTEMD)
                .and_then(|b| b.interface(PROPERTIES))
                .and_then(|b| b.member("PropertiesChanged"))
                .and_then(|b| b.path_namespace(UNIT_PATHS))
                .map(|b| b.build()),
        )?;
        let manager = rule(
            "manager signals",
            MatchRule::builder()
                .msg_type(MessageType::Signal)
                .sender(SYSTEMD)
                .and_then(|b| b.path(MANAGER_PATH))
                .and_then(|b| b.interface(MANAGER))
                .map(|b| b.build()),
        )?;
        let add =
            |what: &'static str| move |e| SystemdError::call(format!("subscribing to {what}"), e);
        let units = MessageStream::for_match_rule(units, conn, Some(SIGNAL_QUEUE))
            .await
            .map_err(add("unit changes"))?;
        let manager = MessageStream::for_match_rule(manager, conn, Some(SIGNAL_QUEUE))
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

/// The calls the watcher makes to systemd.
struct Bus {
    /// The system bus connection.
    conn: Connection,
}

/// One row of `ListUnitsByPatterns`: id, description, load state, active state, sub
/// state, following, object path, job id, job type, job path.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

impl Bus {
    /// Calls a method on a systemd object and decodes the reply.
    async fn call<R>(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
    ) -> zbus::Result<R>
    where
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let reply = self
            .conn
            .call_method(Some(SYSTEMD), path, Some(interface), method, body)
            .await?;
        reply.body().deserialize::<R>()
    }

    /// The object path of a unit, loading it if need be (unknown units load as
    /// `not-found`).
    async fn load_unit(&self, unit: &str) -> zbus::Result<OwnedObjectPath> {
        self.call(MANAGER_PATH, MANAGER, "LoadUnit", &(unit,)).await
    }

    /// A unit's load, active and sub state.
    async fn unit_state(&self, path: &str) -> zbus::Result<UnitState> {
        let properties: HashMap<String, OwnedValue> =
            self.call(path, PROPERTIES, "GetAll", &(UNIT,)).await?;
        let mut state = UnitState::default();
        state.merge(|k| properties.get(k).map(|v| &**v));
        Ok(state)
    }

    /// The loaded units matching any of `patterns`.
    async fn list_units(&self, patterns: &[&str]) -> zbus::Result<Vec<UnitRow>> {
        let states: &[&str] = &[];
        self.call(
            MANAGER_PATH,
            MANAGER,
            "ListUnitsByPatterns",
            &(states, patterns),
        )
        .await
    }
}

/// Whether an error is systemd refusing a request (an unknown or invalid unit, say) rather
/// than the connection failing: its message if so.
fn refusal(error: &zbus::Error) -> Option<String> {
    match error {
        zbus::Error::MethodError(name, message, _) => {
            Some(message.clone().unwrap_or_else(|| name.to_string()))
        }
        zbus::Error::FDO(e) => Some(e.to_string()),
        _ => None,
    }
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
        bus: &Bus,
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
            let state = match bus.unit_state(&path).await {
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
        bus: &Bus,
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
        bus: &Bus,
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
        bus: &Bus,
        path: OwnedObjectPath,
        updates: &UpdateSender,
    ) -> Result<(), SessionEnd> {
        let state = match bus.unit_state(&path).await {
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

/// The unit id for a watched name: as written if it has a unit type suffix, else a service.
pub(crate) fn unit_id(name: &str) -> String {
    if UNIT_TYPES.iter().any(|t| name.ends_with(t)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// The unit id a unit object path names (systemd escapes every byte that is not a letter
/// or digit as `_xx`): `/org/freedesktop/systemd1/unit/nginx_2eservice` → `nginx.service`.
fn unit_id_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATHS)?.strip_prefix('/')?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_a_type_are_services() {
        assert_eq!(unit_id("nginx"), "nginx.service");
        assert_eq!(unit_id("nginx.service"), "nginx.service");
        assert_eq!(unit_id("backup.timer"), "backup.timer");
    }

    #[test]
    fn unit_paths_are_unescaped() {
        assert_eq!(
            unit_id_from_path("/org/freedesktop/systemd1/unit/nginx_2eservice").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit_id_from_path("/org/freedesktop/systemd1/unit/vigil_2dsleep_5fa_2eservice")
                .as_deref(),
            Some("vigil-sleep_a.service")
        );
        assert_eq!(
            unit_id_from_path("/org/freedesktop/systemd1/unit/bad_2"),
            None
        );
        assert_eq!(unit_id_from_path("/org/freedesktop/systemd1"), None);
    }

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
