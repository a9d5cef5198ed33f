//! The systemd executor: restarts, starts, stops and reloads units through systemd's
//! D-Bus API on the system bus ([`crate::system::systemd`], the D-Bus client the systemd
//! watcher uses too).
//!
//! One attempt: listen for the manager's `JobRemoved` signals, call `RestartUnit`,
//! `StartUnit`, `StopUnit` or `ReloadUnit` with mode `replace`, wait for the `JobRemoved`
//! of the job that call queued, then read the unit's `ActiveState` and `SubState` (and a
//! service's main PID). It succeeds when the job's result is `done` and the unit is where
//! the action should leave it: `active` after restart, start and reload (or `inactive`
//! for a oneshot service without `RemainAfterExit`, which is done once it ran), `inactive`
//! after stop. A `simple`, `exec` or `idle` service that was started or restarted must
//! also still be `active`, with the same main PID, after a settle time (`params.settle`,
//! default 250 ms): its job ends when the process is started, not when it is ready, and a
//! service that dies at once should fail the attempt. Otherwise the attempt fails naming
//! the job result and the state. A unit systemd does not know, or an action the unit
//! does not support (`reload` without `ExecReload`), is an invalid request; no system bus
//! is `Unavailable`.
//!
//! The bus connection is made on first use and kept; a kept connection that turns out to
//! be dead (the bus restarted) is replaced once within the attempt.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use vigil_shared::policy::ActionKind;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{Message, MessageStream};

use super::attempt::{ExecError, ExecOutcome, POLL};
use crate::system::systemd::{is_lost, Subscription, Systemd, SERVICE, UNIT};

/// The executor's name.
const EXECUTOR: &str = "systemd";
/// systemd errors that mean the request cannot work as given.
const INVALID_REQUESTS: [&str; 4] = [
    "org.freedesktop.systemd1.NoSuchUnit",
    "org.freedesktop.systemd1.LoadFailed",
    "org.freedesktop.systemd1.JobTypeNotApplicable",
    "org.freedesktop.DBus.Error.InvalidArgs",
];

/// Runs unit actions over the system bus.
pub struct SystemdExecutor {
    /// The kept connection (subscribed to systemd's signals), once made.
    bus: tokio::sync::Mutex<Option<Systemd>>,
}

impl Default for SystemdExecutor {
    fn default() -> Self {
        SystemdExecutor::new()
    }
}

/// A unit action, as systemd names it.
#[derive(Debug, Clone, Copy)]
struct Verb {
    /// The manager method.
    method: &'static str,
    /// The action's name, for messages.
    name: &'static str,
    /// Whether the unit should end up active (else inactive).
    activates: bool,
}

impl Verb {
    /// The verb for an action kind; `Invalid` for kinds systemd does not do.
    fn of(kind: ActionKind) -> Result<Verb, ExecError> {
        let (method, activates) = match kind {
            ActionKind::Restart => ("RestartUnit", true),
            ActionKind::Start => ("StartUnit", true),
            ActionKind::Stop => ("StopUnit", false),
            ActionKind::Reload => ("ReloadUnit", true),
            other => {
                return Err(ExecError::Invalid(format!(
                    "the systemd executor cannot `{}`",
                    other.as_str()
                )))
            }
        };
        Ok(Verb {
            method,
            name: kind.as_str(),
            activates,
        })
    }
}

/// What systemd says about a unit after the job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct UnitState {
    /// `ActiveState`.
    active: String,
    /// `SubState`.
    sub: String,
    /// A service's `MainPID` (0 if none, or not a service).
    main_pid: u32,
    /// A service's `Result` (`success`, `exit-code`, …; empty if not a service).
    result: String,
    /// A service's `Type` (`simple`, `exec`, `notify`, `oneshot`, …; empty if not a
    /// service).
    service_type: String,
    /// A service's `RemainAfterExit`.
    remain_after_exit: bool,
}

impl UnitState {
    /// `active (running), main PID 42`.
    fn describe(&self) -> String {
        let mut text = format!("{} ({})", self.active, self.sub);
        if self.main_pid != 0 {
            text.push_str(&format!(", main PID {}", self.main_pid));
        }
        if !self.result.is_empty() && self.result != "success" {
            text.push_str(&format!(", result {}", self.result));
        }
        text
    }

    /// Whether this is where `verb` should leave the unit.
    fn is_expected_after(&self, verb: Verb) -> bool {
        if verb.activates {
            self.active == "active" || (self.active == "inactive" && self.runs_once())
        } else {
            self.active == "inactive"
        }
    }

    /// A oneshot service without `RemainAfterExit`: inactive again once it has run.
    fn runs_once(&self) -> bool {
        self.service_type == "oneshot" && !self.remain_after_exit
    }

    /// Whether the job's end says nothing about the service staying up: for `simple`,
    /// `exec` and `idle` services it ends when the process has been started, not when it
    /// is ready, so a process that dies at once would pass unseen.
    fn needs_settling(&self) -> bool {
        matches!(self.service_type.as_str(), "simple" | "exec" | "idle")
    }
}

impl SystemdExecutor {
    /// An executor that connects to the system bus on first use.
    pub fn new() -> SystemdExecutor {
        SystemdExecutor {
            bus: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs `kind` (restart, start, stop, reload) on `unit` (a full unit id), waiting for
    /// its job to finish, and for a `simple` service that was (re)started, for it to stay
    /// up with the same main process for `settle`; the caller bounds the time.
    pub async fn run(
        &self,
        kind: ActionKind,
        unit: &str,
        settle: Duration,
    ) -> Result<ExecOutcome, ExecError> {
        let verb = Verb::of(kind)?;
        let (bus, mut jobs) = self.listen().await?;
        let result = {
            let args = (unit, "replace");
            let call = bus.call_manager(verb.method, &args);
            let mut call = std::pin::pin!(call);
            // Jobs that end while the call is under way (a stop of a stopped unit can end
            // before the reply arrives): read them as they come, so zbus never holds a
            // full queue while the reply is awaited.
            let mut ended: HashMap<OwnedObjectPath, String> = HashMap::new();
            let reply = loop {
                tokio::select! {
                    reply = &mut call => break reply,
                    signal = jobs.next() => {
                        if let Some((path, result)) = job_removed(signal)? {
                            ended.insert(path, result);
                        }
                    }
                }
            };
            let reply = reply.map_err(|e| self.call_error(&e, unit, verb))?;
            let path: OwnedObjectPath = reply.body().deserialize().map_err(|e| {
                failed(format!(
                    "systemd's reply to {}({unit}) was not a job path: {e}",
                    verb.method
                ))
            })?;
            match ended.remove(&path) {
                Some(result) => result,
                None => loop {
                    if let Some((ended, result)) = job_removed(jobs.next().await)? {
                        if ended == path {
                            break result;
                        }
                    }
                },
            }
        };
        let state = read_state(&bus, unit)
            .await
            .map_err(|e| self.call_error(&e, unit, verb))?;
        if result != "done" {
            return Err(failed(format!(
                "the {} job for {unit} ended `{result}`; the unit is {}",
                verb.name,
                state.describe()
            )));
        }
        if !state.is_expected_after(verb) {
            let expected = if verb.activates { "active" } else { "inactive" };
            return Err(failed(format!(
                "{unit} is {} after {}, not {expected}",
                state.describe(),
                verb.name
            )));
        }
        if verb.activates && kind != ActionKind::Reload && state.needs_settling() {
            let until = Instant::now() + settle;
            while Instant::now() < until {
                tokio::time::sleep(POLL).await;
                let now = read_state(&bus, unit)
                    .await
                    .map_err(|e| self.call_error(&e, unit, verb))?;
                if now.active != "active" || now.main_pid != state.main_pid {
                    let now = landed(&bus, unit, now).await;
                    return Err(failed(format!(
                        "{unit} did not stay up after {}: it is {}",
                        verb.name,
                        now.describe()
                    )));
                }
            }
        }
        Ok(ExecOutcome {
            executor: EXECUTOR,
            detail: format!("{unit} {}", state.describe()),
        })
    }

    /// A connection listening for `JobRemoved`: the kept one, or a new one if there is
    /// none or the kept one is dead.
    async fn listen(&self) -> Result<(Systemd, MessageStream), ExecError> {
        let mut kept = self.bus.lock().await;
        if let Some(bus) = kept.clone() {
            match bus.signals(Subscription::JobRemoved).await {
                Ok(jobs) => return Ok((bus, jobs)),
                Err(e) if is_lost(&e) => {
                    tracing::debug!("the kept system bus connection is dead ({e}); reconnecting");
                    *kept = None;
                }
                Err(e) => return Err(failed(format!("listening for systemd's jobs: {e}"))),
            }
        }
        let bus = Systemd::connect().await.map_err(|e| unavailable(&e))?;
        let jobs = bus
            .signals(Subscription::JobRemoved)
            .await
            .map_err(|e| lost_or_failed(&e))?;
        if let Err(e) = bus.subscribe().await {
            if is_lost(&e) {
                return Err(unavailable(&e));
            }
            // `AlreadySubscribed` and the like: the signals come either way.
            tracing::debug!("systemd Subscribe: {e}");
        }
        *kept = Some(bus.clone());
        Ok((bus, jobs))
    }

    /// The error for a failed call about `unit`; a lost connection is forgotten.
    fn call_error(&self, error: &zbus::Error, unit: &str, verb: Verb) -> ExecError {
        if is_lost(error) {
            if let Ok(mut kept) = self.bus.try_lock() {
                *kept = None;
            }
            return unavailable(error);
        }
        match error {
            zbus::Error::MethodError(name, detail, _) => {
                let why = detail.clone().unwrap_or_else(|| name.to_string());
                let message = format!("{} {unit}: {why}", verb.name);
                if INVALID_REQUESTS.contains(&name.as_str()) {
                    ExecError::Invalid(message)
                } else {
                    failed(message)
                }
            }
            other => failed(format!("{} {unit}: {other}", verb.name)),
        }
    }
}

/// The job path and result of a `JobRemoved` signal (`None` for anything else).
fn job_removed(
    signal: Option<zbus::Result<Message>>,
) -> Result<Option<(OwnedObjectPath, String)>, ExecError> {
    match signal {
        None => Err(ExecError::Unavailable {
            executor: EXECUTOR,
            message: "the system bus connection closed".into(),
        }),
        Some(Err(e)) => Err(lost_or_failed(&e)),
        Some(Ok(message)) => Ok(message
            .body()
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
            .ok()
            .map(|(_, path, _, result)| (path, result))),
    }
}

/// Reads a unit's state (loading it if systemd has unloaded it since).
async fn read_state(bus: &Systemd, unit: &str) -> zbus::Result<UnitState> {
    let path = bus.load_unit(unit).await?;
    let properties = bus.properties(&path, UNIT).await?;
    let text = |key: &str| match properties.get(key).map(|v| &**v) {
        Some(Value::Str(s)) => s.to_string(),
        _ => String::new(),
    };
    let mut state = UnitState {
        active: text("ActiveState"),
        sub: text("SubState"),
        ..UnitState::default()
    };
    if unit.ends_with(".service") && text("LoadState") == "loaded" {
        let service = bus.properties(&path, SERVICE).await?;
        let value = |key: &str| service.get(key).map(|v| &**v);
        if let Some(Value::U32(pid)) = value("MainPID") {
            state.main_pid = *pid;
        }
        if let Some(Value::Str(result)) = value("Result") {
            state.result = result.to_string();
        }
        if let Some(Value::Str(kind)) = value("Type") {
            state.service_type = kind.to_string();
        }
        state.remain_after_exit = matches!(value("RemainAfterExit"), Some(Value::Bool(true)));
    }
    Ok(state)
}

/// Where a unit that did not stay up lands. The unit's and the service's properties are
/// two reads, so a process that exits between them can read as
/// "active (running)" with no main PID; read again (for up to [`LANDING`]) until systemd
/// has moved the unit on.
async fn landed(bus: &Systemd, unit: &str, mut state: UnitState) -> UnitState {
    let until = Instant::now() + LANDING;
    while state.active == "active"
        && state.sub == "running"
        && state.main_pid == 0
        && Instant::now() < until
    {
        tokio::time::sleep(POLL).await;
        match read_state(bus, unit).await {
            Ok(now) => state = now,
            Err(_) => break,
        }
    }
    state
}

/// How long [`landed`] waits for a unit that lost its process to leave "active".
const LANDING: Duration = Duration::from_secs(1);

/// `Unavailable` for a lost connection, else `Failed`.
fn lost_or_failed(error: &zbus::Error) -> ExecError {
    if is_lost(error) {
        unavailable(error)
    } else {
        failed(format!("talking to systemd: {error}"))
    }
}

/// The system bus cannot be reached.
fn unavailable(error: &zbus::Error) -> ExecError {
    ExecError::Unavailable {
        executor: EXECUTOR,
        message: format!("cannot reach systemd on the D-Bus system bus: {error}"),
    }
}

/// systemd ran the action and it failed.
fn failed(message: String) -> ExecError {
    ExecError::Failed {
        executor: EXECUTOR,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(active: &str, sub: &str) -> UnitState {
        UnitState {
            active: active.into(),
            sub: sub.into(),
            ..UnitState::default()
        }
    }

    #[test]
    fn expected_states_per_action() {
        let restart = Verb::of(ActionKind::Restart).unwrap();
        let stop = Verb::of(ActionKind::Stop).unwrap();
        assert!(state("active", "running").is_expected_after(restart));
        assert!(!state("activating", "auto-restart").is_expected_after(restart));
        assert!(!state("failed", "failed").is_expected_after(restart));
        assert!(!state("inactive", "dead").is_expected_after(restart));
        let oneshot = UnitState {
            service_type: "oneshot".into(),
            ..state("inactive", "dead")
        };
        assert!(oneshot.is_expected_after(restart));
        let remains = UnitState {
            remain_after_exit: true,
            ..oneshot.clone()
        };
        assert!(!remains.is_expected_after(restart));
        assert!(!oneshot.needs_settling());
        let simple = UnitState {
            service_type: "simple".into(),
            ..state("active", "running")
        };
        assert!(simple.needs_settling());
        assert!(state("inactive", "dead").is_expected_after(stop));
        assert!(!state("failed", "failed").is_expected_after(stop));
        assert!(matches!(
            Verb::of(ActionKind::Scale),
            Err(ExecError::Invalid(_))
        ));
    }

    #[test]
    fn states_are_described_with_pid_and_result() {
        let s = UnitState {
            main_pid: 42,
            ..state("active", "running")
        };
        assert_eq!(s.describe(), "active (running), main PID 42");
        let s = UnitState {
            result: "exit-code".into(),
            ..state("failed", "failed")
        };
        assert_eq!(s.describe(), "failed (failed), result exit-code");
    }
}
