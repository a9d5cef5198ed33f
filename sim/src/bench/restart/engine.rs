//! The Docker engine as the restart benchmark uses it: the test kit's busybox image and
//! container guards ([`vigil_testkit::docker`]), a crash (SIGKILL to the container's
//! process), `docker inspect`, and the engine's event stream (`docker events`), read on a
//! thread of its own so that no polling loads the engine while a container restarts.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub(crate) use vigil_testkit::docker::Container;
use vigil_testkit::docker::{self as kit, Owner};

/// The benchmark's containers: `vigil-bench-…`, labelled with the `vigil-sim` pid.
const BENCH: Owner = Owner {
    label: "vigil.bench.owner",
    name_prefix: "vigil-bench-",
};

/// The engine's version, if an engine answers.
pub(crate) fn version() -> Result<String, String> {
    kit::engine_version().map_err(|e| e.to_string())
}

/// Builds the busybox image unless it exists, and removes benchmark containers whose
/// `vigil-sim` is gone (killed before it could clean up).
pub(crate) fn prepare() -> Result<(), String> {
    kit::ensure_busybox_image().map_err(|e| e.to_string())?;
    BENCH.sweep_stale();
    Ok(())
}

/// `docker run -d --name NAME --label OWNER ARGS… IMAGE` (the busybox image, sleeping).
pub(crate) fn run(name: &str, args: &[&str]) -> Result<Container, String> {
    let mut all = args.to_vec();
    all.push(kit::BUSYBOX_IMAGE);
    BENCH.start("run", name, &all).map_err(|e| e.to_string())
}

/// One field of `docker inspect` (a Go template such as `{{.State.Status}}`).
fn inspect(container: &Container, template: &str) -> Result<String, String> {
    container.try_inspect(template).map_err(|e| e.to_string())
}

/// When `container`'s process last started (Docker's `State.StartedAt`), µs since the
/// epoch.
pub(crate) fn started_at_us(container: &Container) -> Result<i64, String> {
    let text = inspect(container, "{{.State.StartedAt}}")?;
    rfc3339_us(&text).ok_or_else(|| format!("{}: StartedAt `{text}`", container.name))
}

/// SIGKILLs `container`'s main process from the host, as a crash would (`docker kill`
/// would not do: the engine counts it as a manual stop and skips the restart policy);
/// returns when, µs since the epoch.
pub(crate) fn crash(container: &Container) -> Result<i64, String> {
    let name = &container.name;
    let pid: i32 = inspect(container, "{{.State.Pid}}")?
        .parse()
        .map_err(|e| format!("{name}: State.Pid: {e}"))?;
    if pid <= 0 {
        return Err(format!("{name} is not running"));
    }
    let at = now_us();
    // SAFETY: kill(2) on the pid the engine reports for the container's main process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(format!(
            "kill -KILL {pid} ({name}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(at)
}

/// An RFC 3339 time (as Docker writes it, with nanoseconds) in µs since the epoch.
pub(crate) fn rfc3339_us(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_micros()).ok()
}

/// Now, µs since the epoch.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One container event from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The container's name.
    pub(crate) name: String,
    /// What happened (`kill`, `die`, `start`, …).
    pub(crate) action: String,
    /// When, µs since the epoch (the engine's `timeNano`).
    pub(crate) at_us: i64,
}

impl Event {
    /// Reads one line of `docker events --format '{{json .}}'`; `None` for anything else.
    pub(crate) fn parse(line: &str) -> Option<Event> {
        let v: Value = serde_json::from_str(line).ok()?;
        Some(Event {
            name: v["Actor"]["Attributes"]["name"].as_str()?.to_string(),
            action: v["Action"].as_str()?.to_string(),
            at_us: v["timeNano"].as_i64()? / 1000,
        })
    }
}

/// `docker events` for some containers, running until dropped; what it saw so far.
pub(crate) struct Events {
    child: Child,
    seen: Arc<Mutex<Vec<Event>>>,
}

impl Events {
    /// Follows the events of the containers `names`.
    pub(crate) fn follow(names: &[&str]) -> Result<Events, String> {
        let mut command = Command::new("docker");
        command.args([
            "events",
            "--format",
            "{{json .}}",
            "--filter",
            "type=container",
        ]);
        for name in names {
            command.args(["--filter", &format!("container={name}")]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run `docker events`: {e}"))?;
        let stdout = child.stdout.take().ok_or("`docker events` has no stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(event) = Event::parse(&line) {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(event);
                }
            }
        });
        Ok(Events { child, seen })
    }

    /// The first `action` event of `name` at or after `since_us`, if one came.
    pub(crate) fn first(&self, name: &str, action: &str, since_us: i64) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|e| e.name == name && e.action == action && e.at_us >= since_us)
            .map(|e| e.at_us)
    }

    /// Waits up to `timeout` for [`Events::first`].
    pub(crate) async fn wait_for(
        &self,
        name: &str,
        action: &str,
        since_us: i64,
        timeout: Duration,
    ) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.first(name, action, since_us) {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_events_and_times() {
        let line = r#"{"status":"die","id":"abc","from":"img","Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"137","name":"vigil-bench-x"}},"scope":"local","time":1700000000,"timeNano":1700000000123456789}"#;
        assert_eq!(
            Event::parse(line),
            Some(Event {
                name: "vigil-bench-x".into(),
                action: "die".into(),
                at_us: 1_700_000_000_123_456,
            })
        );
        assert_eq!(Event::parse("not json"), None);
        assert_eq!(Event::parse(r#"{"Action":"die"}"#), None);
        assert_eq!(
            rfc3339_us("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(rfc3339_us("0001-01-01T00:00:00Z"), None);
    }
}
