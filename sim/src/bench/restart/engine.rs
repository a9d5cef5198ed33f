//! The Docker engine as the restart benchmark uses it, through the `docker` command: the
//! tiny local image (no image can be pulled here: it is built from Debian's static
//! busybox with `docker import`, as the end-to-end tests build theirs), containers removed
//! when their guard drops, a crash (SIGKILL to the container's process), `docker
//! inspect`, and the engine's event stream
//! (`docker events`), read on a thread of its own so that no polling loads the engine
//! while a container restarts.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The image both containers run.
pub(crate) const IMAGE: &str = "vigil-bench-busybox:latest";

/// The label holding the pid of the `vigil-sim` that started a container.
const OWNER_LABEL: &str = "vigil.bench.owner";

/// Runs `docker ARGS`: its trimmed stdout, or what went wrong.
pub(crate) fn docker(args: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `docker`: {e} (is the Docker CLI installed?)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The engine's version, if an engine answers.
pub(crate) fn version() -> Result<String, String> {
    docker(&["version", "--format", "{{.Server.Version}}"])
}

/// Builds [`IMAGE`] from `/bin/busybox` (static) unless it exists.
pub(crate) fn ensure_image() -> Result<(), String> {
    if docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(
            "building the benchmark's image needs a static busybox at /bin/busybox \
                    (Debian: apt-get install busybox-static)"
                .into(),
        );
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let root = dir.path().join("root");
    let io = |what: &str, e: std::io::Error| format!("building the image: {what}: {e}");
    for sub in ["bin", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).map_err(|e| io("mkdir", e))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| io("copy busybox", e))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| io("busybox --list", e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| io("link an applet", e))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| io("/etc/passwd", e))?;
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| io("run tar", e))?;
    let tar_out = tar.stdout.take().ok_or("tar has no stdout")?;
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            r#"CMD ["/bin/sleep","3600"]"#,
            "-",
            IMAGE,
        ])
        .stdin(tar_out)
        .output()
        .map_err(|e| io("run docker import", e))?;
    let tar_status = tar.wait().map_err(|e| io("wait for tar", e))?;
    if !tar_status.success() || !import.status.success() {
        return Err(format!(
            "importing the image failed (tar: {tar_status}, docker import: {}): {}",
            import.status,
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    Ok(())
}

/// Removes benchmark containers whose `vigil-sim` is gone (killed before it could clean
/// up).
pub(crate) fn sweep_stale() {
    let template = format!("{{{{.Names}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let filter = format!("label={OWNER_LABEL}");
    let Ok(listing) = docker(&["ps", "-a", "--filter", &filter, "--format", &template]) else {
        return;
    };
    for line in listing.lines() {
        let Some((name, owner)) = line.split_once(' ') else {
            continue;
        };
        let alive = owner
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = docker(&["rm", "-f", "-v", name]);
        }
    }
}

/// A container, removed (with its volumes) when this guard drops.
pub(crate) struct Container {
    /// Its name.
    pub(crate) name: String,
}

impl Container {
    /// `docker run -d --name NAME --label OWNER ARGS… IMAGE`.
    pub(crate) fn run(name: &str, args: &[&str]) -> Result<Container, String> {
        let container = Container {
            name: name.to_string(),
        };
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let mut all = vec!["run", "-d", "--name", name, "--label", &owner];
        all.extend_from_slice(args);
        all.push(IMAGE);
        docker(&all)?;
        Ok(container)
    }

    /// One field of `docker inspect` (a Go template such as `{{.State.Status}}`).
    pub(crate) fn inspect(&self, template: &str) -> Result<String, String> {
        docker(&["inspect", "--format", template, &self.name])
    }

    /// When its process last started (Docker's `State.StartedAt`), µs since the epoch.
    pub(crate) fn started_at_us(&self) -> Result<i64, String> {
        let text = self.inspect("{{.State.StartedAt}}")?;
        rfc3339_us(&text).ok_or_else(|| format!("{}: StartedAt `{text}`", self.name))
    }

    /// SIGKILLs its main process from the host, as a crash would (`docker kill` would not
    /// do: the engine counts it as a manual stop and skips the restart policy); returns
    /// when, µs since the epoch.
    pub(crate) fn crash(&self) -> Result<i64, String> {
        let pid: i32 = self
            .inspect("{{.State.Pid}}")?
            .parse()
            .map_err(|e| format!("{}: State.Pid: {e}", self.name))?;
        if pid <= 0 {
            return Err(format!("{} is not running", self.name));
        }
        let at = now_us();
        // SAFETY: kill(2) on the pid the engine reports for the container's main process.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(format!(
                "kill -KILL {pid} ({}): {}",
                self.name,
                std::io::Error::last_os_error()
            ));
        }
        Ok(at)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
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
