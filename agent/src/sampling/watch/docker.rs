//! The Docker watcher: reports the state and health of watched containers, from Docker's
//! event stream as things happen, over the Engine API on its unix socket (connected by
//! [`crate::system::docker`], as the Docker executor connects).
//!
//! On every (re)connection it lists all containers, running or not, and reports each one
//! a name or pattern matches; an exact name that matches no container is reported
//! `missing`. It then follows Docker's container events (`die`, `oom`, `health_status`, …)
//! and, for each event about a watched container, inspects it and reports the fresh state
//! at once — no polling on this path: a killed container must be seen (and restarted)
//! sooner than Docker's own `--restart=always` manages. A `die` is reported from the event
//! itself (`exited`, with its exit code), because Docker keeps a dead container locked for
//! its clean-up (≈150 ms) and an inspection would wait that long; the inspection follows,
//! and is reported too if it says more (`restarting`, OOM-killed). A full resync every
//! [`RESYNC_EVERY`], and whenever the set of names changes, catches anything missed.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use vigil_shared::policy::{StateKind, StateReading};
use vigil_shared::time::now_ms;

use super::{StateUpdate, UpdateSender};
use crate::system::docker::{connect, primary_name, reading_of, ConnectError};
use crate::system::names::NameSet;
use crate::system::retry::Retry;
use crate::system::timeline;

/// How often every watched container is read again, in case an event was missed.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Container events that may change a container's state or health.
const EVENTS: [&str; 12] = [
    "create",
    "start",
    "restart",
    "die",
    "kill",
    "oom",
    "stop",
    "pause",
    "unpause",
    "health_status",
    "destroy",
    "rename",
];

/// How far back the event stream starts, so that no event falls between subscribing and
/// the first listing (Docker's clock is ours: the socket is local; replayed events from
/// before the listing are skipped).
const EVENTS_OVERLAP_SECS: i64 = 2;

/// What went wrong talking to Docker.
#[derive(Debug, Error)]
pub(crate) enum DockerError {
    /// The engine could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Listing containers failed.
    #[error("listing containers failed: {0}")]
    List(#[source] BollardError),
    /// Inspecting a container failed (other than it being gone).
    #[error("inspecting container {name} failed: {source}")]
    Inspect {
        /// The container.
        name: String,
        /// Why.
        #[source]
        source: BollardError,
    },
    /// The event stream broke.
    #[error("Docker's event stream failed: {0}")]
    Events(#[source] BollardError),
    /// The event stream ended (the engine went away).
    #[error("Docker's event stream ended")]
    EventsEnded,
}

/// Why a session ended.
type SessionEnd = super::SessionEnd<DockerError>;

impl From<DockerError> for SessionEnd {
    fn from(error: DockerError) -> Self {
        SessionEnd::Lost(error)
    }
}

/// Watches the containers `names` lists (exact names or globs such as `web-*`) until the
/// update receiver or the names sender is dropped. `socket` is Docker's unix socket; by
/// default `DOCKER_HOST` (`unix://…`) or `/var/run/docker.sock`. When Docker is absent or
/// the connection is lost, logs a warning once and keeps retrying with capped backoff.
pub async fn run(
    mut names: watch::Receiver<Vec<String>>,
    updates: UpdateSender,
    socket: Option<PathBuf>,
) {
    let mut retry = Retry::new("Docker");
    loop {
        let Err(end) = session(&mut names, &updates, socket.as_deref(), &mut retry).await;
        if !super::pause(&mut retry, end, &updates, &names).await {
            return;
        }
    }
}

/// One connection: initial sync, then events, resyncs and name changes until it fails.
async fn session(
    names: &mut watch::Receiver<Vec<String>>,
    updates: &UpdateSender,
    socket: Option<&Path>,
    retry: &mut Retry,
) -> Result<Infallible, SessionEnd> {
    let docker = connect(socket).await.map_err(DockerError::from)?;
    let since = now_ms() / 1000 - EVENTS_OVERLAP_SECS;
    let options = EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                EVENTS.iter().map(|e| (*e).to_string()).collect(),
            ),
        ])),
    };
    let mut events = std::pin::pin!(docker.events(Some(options)));
    let (refined_tx, mut refined) = mpsc::unbounded_channel();
    let mut tracker = Tracker {
        docker,
        updates: updates.clone(),
        set: NameSet::new(&names.borrow_and_update()),
        sent: HashMap::new(),
        read_seq: HashMap::new(),
        next_seq: 0,
        refined_tx,
        synced_at_ns: epoch_ns(),
    };
    tracker.sync(true).await?;
    retry.connected();
    tracing::debug!("watching Docker containers");

    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => tracker.on_event(event).await?,
                Some(Err(e)) => return Err(DockerError::Events(e).into()),
                None => return Err(DockerError::EventsEnded.into()),
            },
            Some(refined) = refined.recv() => tracker.on_refined(refined).await?,
            changed = names.changed() => {
                if changed.is_err() {
                    return Err(SessionEnd::Stopped);
                }
                tracker.set = NameSet::new(&names.borrow_and_update());
                tracker.sync(false).await?;
            }
            _ = resync.tick() => tracker.sync(false).await?,
            () = updates.closed() => return Err(SessionEnd::Stopped),
        }
    }
}

/// A container's state read after the quick report of its `die`.
struct Refined {
    /// The container's name.
    name: String,
    /// Which reading of it this is (stale if another reading was taken since).
    seq: u64,
    /// What was reported from the event.
    reported: StateReading,
    /// The inspected state (`None` if the container is gone).
    reading: Result<Option<StateReading>, DockerError>,
}

/// One session's view of the watched containers.
struct Tracker {
    /// The engine.
    docker: Docker,
    /// Where updates go.
    updates: UpdateSender,
    /// What to watch.
    set: NameSet,
    /// `(state, health)` last sent per name, so a periodic resync sends only changes.
    sent: HashMap<String, (String, Option<String>)>,
    /// The sequence number of the latest reading taken per name, so that a late result
    /// never overwrites a newer one.
    read_seq: HashMap<String, u64>,
    /// The next sequence number.
    next_seq: u64,
    /// Where follow-up inspections report.
    refined_tx: mpsc::UnboundedSender<Refined>,
    /// When the first listing began: replayed events from before it are already in it.
    synced_at_ns: i64,
}

impl Tracker {
    /// Lists all containers and reports the watched ones: all of them when `all`, else
    /// only those whose state or health changed since last sent.
    async fn sync(&mut self, all: bool) -> Result<(), SessionEnd> {
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(DockerError::List)?;
        let mut seen = HashSet::new();
        for container in &containers {
            let Some(name) = primary_name(container) else {
                continue;
            };
            if !self.set.matches(name) {
                continue;
            }
            let id = container.id.as_deref().unwrap_or(name);
            // Removed between listing and inspecting: handled below like any absent name.
            let Some(reading) = read(&self.docker, name, id).await? else {
                continue;
            };
            seen.insert(name.to_string());
            self.deliver(name, reading, all).await?;
        }
        let absent: Vec<String> = self
            .set
            .exact()
            .filter(|n| !seen.contains(*n))
            .map(str::to_string)
            .collect();
        for name in absent {
            self.deliver(&name, missing("no such container"), all)
                .await?;
        }
        // Pattern-matched containers that went away unnoticed, and names no longer watched.
        let gone: Vec<String> = self
            .sent
            .keys()
            .filter(|n| !seen.contains(*n) && !self.set.is_exact(n))
            .cloned()
            .collect();
        for name in gone {
            self.sent.remove(&name);
            self.read_seq.remove(&name);
            if self.set.matches(&name) {
                self.send(&name, missing("no such container")).await?;
            }
        }
        Ok(())
    }

    /// Reports a fresh reading of the container an event is about, if it is watched.
    async fn on_event(&mut self, event: EventMessage) -> Result<(), SessionEnd> {
        if event.time_nano.is_some_and(|t| t < self.synced_at_ns) {
            return Ok(());
        }
        let action = event.action.unwrap_or_default();
        let Some(actor) = event.actor else {
            return Ok(());
        };
        let attributes = actor.attributes.unwrap_or_default();
        let Some(name) = attributes.get("name") else {
            return Ok(());
        };
        if action == "rename" {
            // The old name may be watched (now missing), the new one too: read everything.
            return self.sync(false).await;
        }
        if !self.set.matches(name) {
            return Ok(());
        }
        tracing::debug!(container = %name, %action, "Docker event");
        let id = actor.id.unwrap_or_else(|| name.clone());
        if action == "die" {
            timeline::mark("die_seen", name, None);
            // Docker keeps the container locked for its clean-up (≈150 ms) after `die`,
            // and an inspection would wait for it: report the exit from the event at once,
            // and whatever the inspection adds (restarting, OOM) when it comes.
            let code = attributes.get("exitCode").map_or("unknown", String::as_str);
            let reported = StateReading {
                state: "exited".to_string(),
                health: None,
                consecutive_failures: 0,
                detail: Some(format!("exit code {code}")),
                at_ms: now_ms(),
            };
            let seq = self.deliver(name, reported.clone(), true).await?;
            let docker = self.docker.clone();
            let refined_tx = self.refined_tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let reading = read(&docker, &name, &id).await;
                let _ = refined_tx.send(Refined {
                    name,
                    seq,
                    reported,
                    reading,
                });
            });
            return Ok(());
        }
        let reading = if action == "destroy" {
            None
        } else {
            read(&self.docker, name, &id).await?
        };
        self.report(name, reading).await
    }

    /// The inspection after a `die` came back: reports it if it adds anything and no
    /// newer reading was taken meanwhile.
    async fn on_refined(&mut self, refined: Refined) -> Result<(), SessionEnd> {
        let reading = refined.reading?;
        if self.read_seq.get(&refined.name) != Some(&refined.seq)
            || !self.set.matches(&refined.name)
        {
            return Ok(());
        }
        let same = |r: &StateReading| {
            (&r.state, &r.health, &r.detail)
                == (
                    &refined.reported.state,
                    &refined.reported.health,
                    &refined.reported.detail,
                )
        };
        match reading {
            Some(r) if same(&r) => Ok(()),
            reading => self.report(&refined.name, reading).await,
        }
    }

    /// Reports a reading taken on an event (`None`: the container is gone).
    async fn report(
        &mut self,
        name: &str,
        reading: Option<StateReading>,
    ) -> Result<(), SessionEnd> {
        match reading {
            Some(reading) => self.deliver(name, reading, true).await.map(|_| ()),
            None if self.set.is_exact(name) => self
                .deliver(name, missing("container removed"), true)
                .await
                .map(|_| ()),
            None => {
                self.sent.remove(name);
                self.read_seq.remove(name);
                self.send(name, missing("container removed")).await
            }
        }
    }

    /// Records a reading of `name` and sends it if `force` or if its state or health
    /// differs from what was last sent; returns the reading's sequence number.
    async fn deliver(
        &mut self,
        name: &str,
        reading: StateReading,
        force: bool,
    ) -> Result<u64, SessionEnd> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.read_seq.insert(name.to_string(), seq);
        let key = (reading.state.clone(), reading.health.clone());
        if !force && self.sent.get(name) == Some(&key) {
            return Ok(seq);
        }
        self.sent.insert(name.to_string(), key);
        self.send(name, reading).await?;
        Ok(seq)
    }

    /// Sends one update; `Stopped` if nobody receives any more.
    async fn send(&self, name: &str, reading: StateReading) -> Result<(), SessionEnd> {
        let update = StateUpdate {
            kind: StateKind::Container,
            name: name.to_string(),
            reading,
        };
        self.updates
            .send(update)
            .await
            .map_err(|_| SessionEnd::Stopped)
    }
}

/// Now, in nanoseconds since the epoch (the clock Docker stamps events with).
fn epoch_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Inspects a container: its reading, or `None` if it no longer exists.
async fn read(docker: &Docker, name: &str, id: &str) -> Result<Option<StateReading>, DockerError> {
    match docker.inspect_container(id, None).await {
        Ok(info) => Ok(Some(reading_of(&info))),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(DockerError::Inspect {
            name: name.to_string(),
            source,
        }),
    }
}

/// The reading for a container that does not exist.
fn missing(why: &str) -> StateReading {
    StateReading {
        state: "missing".to_string(),
        health: None,
        consecutive_failures: 0,
        detail: Some(why.to_string()),
        at_ms: now_ms(),
    }
}
