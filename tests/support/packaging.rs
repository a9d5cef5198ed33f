//! Packaging for the end-to-end tests: the release artifacts `scripts/dist` writes (static
//! musl binaries, `.deb` packages, `SHA256SUMS`), built once per test process; Docker
//! networks and images removed when their guards drop; and commands run inside a
//! systemd container, with the unit's status and journal at hand for failure messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::docker::{docker, require_docker, try_docker, unique_name};
use super::systemd::SystemdContainer;

/// The workspace's version: the one in every artifact's name.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The target the static binaries are built for.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// What `scripts/dist --profile release --deb` wrote.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The directory (`<target dir>/vigil-dist`).
    pub dir: PathBuf,
    /// `vigil-agent-<version>-x86_64-unknown-linux-musl`.
    pub agent: PathBuf,
    /// `vigil-coordinator-<version>-x86_64-unknown-linux-musl`.
    pub coordinator: PathBuf,
    /// `vigil-agent_<version>-1_amd64.deb`.
    pub agent_deb: PathBuf,
    /// `vigil-coordinator_<version>-1_amd64.deb`.
    pub coordinator_deb: PathBuf,
}

/// The workspace root (the parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR`, or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                workspace_root().join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs `scripts/dist --profile release --deb --out <target dir>/vigil-dist` from the
/// workspace root, once per test process (every caller waits for the one run and gets
/// its result; when it failed, every caller panics with its output), then checks that
/// every artifact is there and matches `SHA256SUMS`.
pub fn dist() -> Artifacts {
    static DIST: Mutex<Option<Result<Artifacts, String>>> = Mutex::new(None);
    let mut slot = DIST.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(build_dist());
    }
    match slot.as_ref().expect("just set") {
        Ok(artifacts) => artifacts.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Runs the dist script and checks its output.
fn build_dist() -> Result<Artifacts, String> {
    let root = workspace_root();
    let out = target_dir().join("vigil-dist");
    let script = root.join("scripts/dist");
    if !script.is_file() {
        return Err(format!(
            "{} is missing: it builds the static binaries and the .deb packages",
            script.display()
        ));
    }
    let started = Instant::now();
    eprintln!(
        "running scripts/dist --profile release --deb --out {} (a no-op rebuild when \
         .ci/run ran it already)",
        out.display()
    );
    let output = Command::new(&script)
        .args(["--profile", "release", "--deb", "--out"])
        .arg(&out)
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let text = format!(
        "--- stdout (last 100 lines) ---\n{}\n--- stderr (last 100 lines) ---\n{}",
        last_lines(&output.stdout, 100),
        last_lines(&output.stderr, 100)
    );
    if !output.status.success() {
        return Err(format!(
            "scripts/dist --profile release --deb --out {} failed ({}):\n{text}",
            out.display(),
            output.status
        ));
    }
    eprintln!(
        "scripts/dist done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    check_dist(out, text)
}

/// Checks that `scripts/dist` wrote every artifact into `out`, and that they match
/// `SHA256SUMS`; `text` is its output, for messages.
fn check_dist(out: PathBuf, text: String) -> Result<Artifacts, String> {
    let artifacts = Artifacts {
        agent: out.join(format!("vigil-agent-{VERSION}-{STATIC_TARGET}")),
        coordinator: out.join(format!("vigil-coordinator-{VERSION}-{STATIC_TARGET}")),
        agent_deb: out.join(format!("vigil-agent_{VERSION}-1_amd64.deb")),
        coordinator_deb: out.join(format!("vigil-coordinator_{VERSION}-1_amd64.deb")),
        dir: out.clone(),
    };
    let sums = out.join("SHA256SUMS");
    for path in [
        &artifacts.agent,
        &artifacts.coordinator,
        &artifacts.agent_deb,
        &artifacts.coordinator_deb,
        &sums,
    ] {
        if !path.is_file() {
            let listing = std::fs::read_dir(&out)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|e| format!("(cannot list: {e})"));
            return Err(format!(
                "scripts/dist succeeded but did not write {}; {} holds: {listing}\n{text}",
                path.display(),
                out.display()
            ));
        }
    }
    let listed = std::fs::read_to_string(&sums).unwrap_or_default();
    for path in [
        &artifacts.agent,
        &artifacts.coordinator,
        &artifacts.agent_deb,
        &artifacts.coordinator_deb,
    ] {
        let name = path.file_name().expect("a file name").to_string_lossy();
        if !listed.lines().any(|line| line.ends_with(name.as_ref())) {
            return Err(format!(
                "{} does not list {name}:\n{listed}",
                sums.display()
            ));
        }
    }
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&out)
        .output()
        .map_err(|e| format!("cannot run sha256sum: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "sha256sum --check SHA256SUMS in {} failed: {}{}",
            out.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    Ok(artifacts)
}

/// The last `n` lines of a command's output.
fn last_lines(output: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Panics unless `binary` is statically linked: no program interpreter (`readelf -l`
/// shows no INTERP) and no shared libraries (`readelf -d` shows no NEEDED entry, or no
/// dynamic section at all, as for static-pie).
pub fn assert_static(binary: &Path) {
    let readelf = |flag: &str| {
        let output = Command::new("readelf")
            .arg(flag)
            .arg(binary)
            .output()
            .unwrap_or_else(|e| panic!("cannot run readelf (binutils): {e}"));
        assert!(
            output.status.success(),
            "readelf {flag} {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let headers = readelf("-l");
    assert!(
        !headers.contains("INTERP") && !headers.contains("program interpreter"),
        "{} asks for a program interpreter (a dynamic loader), so it is not static:\n{headers}",
        binary.display()
    );
    let dynamic = readelf("-d");
    assert!(
        !dynamic.contains("(NEEDED)"),
        "{} needs shared libraries:\n{dynamic}",
        binary.display()
    );
}

/// A Docker network removed when dropped (after the containers on it: declare it first).
pub struct Network {
    /// Its name.
    pub name: String,
}

impl Network {
    /// `docker network create <unique name>`.
    pub fn create(label: &str) -> Network {
        require_docker();
        let name = unique_name(label);
        docker(&["network", "create", "--label", "vigil.test=1", &name]);
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = try_docker(&["network", "rm", &self.name]) {
            eprintln!("warning: could not remove test network {}: {e}", self.name);
        }
    }
}

/// A Docker image removed when dropped (after the containers of it: declare it first).
pub struct Image {
    /// Its name and tag.
    pub name: String,
}

impl Image {
    /// Imports `root` (a directory that is the whole file system) as a new image, with
    /// `docker import --change` lines: an image `FROM scratch` holding only those files.
    pub fn from_root(label: &str, root: &Path, changes: &[&str]) -> Image {
        require_docker();
        let name = format!("{}:latest", unique_name(label));
        super::docker::import_root(root, &name, changes);
        Image { name }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Err(e) = try_docker(&["rmi", "-f", &self.name]) {
            eprintln!("warning: could not remove test image {}: {e}", self.name);
        }
    }
}

/// What a command run in a container did.
#[derive(Debug, Clone)]
pub struct Run {
    /// The command, for messages.
    pub command: String,
    /// Its exit code (-1 when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// Standard output and standard error together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// `docker exec NAME bash -c SCRIPT`, whatever its exit code.
pub fn sh(container: &SystemdContainer, script: &str) -> Run {
    let output = Command::new("docker")
        .args(["exec", container.name(), "bash", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run docker exec");
    Run {
        command: script.to_string(),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// `systemctl status` and the last 50 journal lines of each unit: what a failure
/// message shows.
pub fn diagnostics(container: &SystemdContainer, units: &[&str]) -> String {
    let mut text = String::new();
    for unit in units {
        let status = sh(
            container,
            &format!("systemctl status --no-pager --full {unit} 2>&1"),
        );
        let journal = sh(
            container,
            &format!("journalctl --no-pager -u {unit} -n 50 2>&1"),
        );
        text.push_str(&format!(
            "\n===== systemctl status {unit} (in {}) =====\n{}\n\
             ===== journalctl -u {unit} -n 50 =====\n{}\n",
            container.name(),
            status.stdout.trim_end(),
            journal.stdout.trim_end()
        ));
    }
    text
}

/// Polls `probe` every 250 ms until it yields `Some`; after `timeout`, panics naming
/// `what` with the last thing `probe` reported (its `Err`) and the units' status and
/// journal.
pub fn wait_in<T>(
    container: &SystemdContainer,
    units: &[&str],
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}{}",
                diagnostics(container, units)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// GET `path` from the REST API on `127.0.0.1:port` inside the container, with bash's
/// `/dev/tcp` (the image has no curl), as HTTP/1.0 so the body comes unchunked: the
/// status code and the JSON body.
pub fn rest_get_inside(
    container: &SystemdContainer,
    port: u16,
    path: &str,
    token: &str,
) -> Result<(u16, Value), String> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && \
         printf 'GET {path} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Bearer {token}\\r\\n\\r\\n' >&3 && \
         timeout 10 cat <&3"
    );
    let run = sh(container, &script);
    if !run.ok() {
        return Err(run.to_string());
    }
    let (head, body) = run
        .stdout
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {run}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status line: {head}"))?;
    let json = serde_json::from_str(body).map_err(|e| format!("{e}: {head}\n{body}"))?;
    Ok((status, json))
}

/// The entry of `host` in `/api/v1/hosts` (queried inside the container) when it is
/// online; the whole answer otherwise.
pub fn host_online_inside(
    container: &SystemdContainer,
    port: u16,
    token: &str,
    host: &str,
) -> Result<Value, String> {
    let (status, body) = rest_get_inside(container, port, "/api/v1/hosts", token)?;
    let entry = body["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["host"] == host))
        .cloned();
    match entry {
        // Online with its status in (metrics stored first make a host online without it).
        Some(entry)
            if status == 200 && entry["online"] == true && entry["agent_version"].is_string() =>
        {
            Ok(entry)
        }
        _ => Err(format!(
            "GET /api/v1/hosts answered {status}, host `{host}` not online: {body}"
        )),
    }
}
