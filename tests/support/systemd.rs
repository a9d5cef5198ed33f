//! systemd for the end-to-end tests: a Debian bookworm image whose PID 1 is systemd, and
//! containers of it, so unit watchers and remediations meet a real systemd and D-Bus.
//!
//! [`systemd_image`] builds `vigil-test-systemd:bookworm` with `debootstrap` (Debian
//! package `debootstrap`; `.ci/run` installs it) from the Debian mirror apt uses, only if
//! the image is missing (debootstrap takes minutes; the image is reused afterwards).
//! [`SystemdContainer::start`] runs it unprivileged, with the host's cgroups read-only
//! and tmpfs on `/run` (what systemd needs in a container here), and waits until systemd
//! has finished booting.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::docker::{image_exists, import_root, require_docker, Container};

/// The systemd test image.
pub const SYSTEMD_IMAGE: &str = "vigil-test-systemd:bookworm";

/// Where debootstrap fetches from when apt's configuration names no bookworm mirror.
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// Builds [`SYSTEMD_IMAGE`] unless it exists, and returns its name.
pub fn systemd_image() -> &'static str {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return SYSTEMD_IMAGE;
    }
    require_docker();
    if !image_exists(SYSTEMD_IMAGE) {
        // Another test process may be building it too (e.g. under nextest).
        let _lock = FileLock::acquire("/tmp/vigil-test-systemd-image.lock");
        if !image_exists(SYSTEMD_IMAGE) {
            build_systemd_image();
        }
    }
    *built = true;
    SYSTEMD_IMAGE
}

/// debootstrap a minimal bookworm with systemd and D-Bus, and import it.
fn build_systemd_image() {
    let debootstrap = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "building the systemd test image needs debootstrap: apt-get install debootstrap \
             (see .ci/run)",
        );
    let mirror = apt_mirror();
    eprintln!(
        "building test image {SYSTEMD_IMAGE} with debootstrap from {mirror} \
         (once per machine; takes a few minutes)"
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let log = dir.path().join("debootstrap.log");
    let log_file = std::fs::File::create(&log).expect("debootstrap log");
    let status = Command::new(debootstrap)
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
        ])
        .arg(&root)
        .arg(&mirror)
        .stdout(log_file.try_clone().expect("log handle"))
        .stderr(log_file)
        .status()
        .expect("run debootstrap");
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "debootstrap failed ({status}); last lines of its log:\n{}",
            tail.join("\n")
        );
    }
    std::fs::write(root.join("etc/hostname"), "vigil-test\n").expect("write hostname");
    import_root(
        &root,
        SYSTEMD_IMAGE,
        &[r#"CMD ["/sbin/init"]"#, "ENV container=docker"],
    );
    eprintln!(
        "built test image {SYSTEMD_IMAGE} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The Debian mirror apt uses for bookworm (deb822 `.sources` files or `sources.list`).
pub fn apt_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    texts
        .iter()
        .find_map(|text| deb822_mirror(text).or_else(|| one_line_mirror(text)))
        .unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// The first `URIs:` of a deb822 stanza of type `deb` for suite `bookworm`.
fn deb822_mirror(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let is_deb = field("Types")?.split_whitespace().any(|t| t == "deb");
        let bookworm = field("Suites")?.split_whitespace().any(|s| s == "bookworm");
        (is_deb && bookworm)
            .then(|| field("URIs"))
            .flatten()
            .and_then(|uris| uris.split_whitespace().next().map(str::to_string))
    })
}

/// The URL of a `deb [options] URL bookworm …` line.
fn one_line_mirror(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        if words.peek()?.starts_with('[') {
            for word in words.by_ref() {
                if word.ends_with(']') {
                    break;
                }
            }
        }
        let url = words.next()?;
        (words.next()? == "bookworm").then(|| url.to_string())
    })
}

/// A running container whose PID 1 is systemd; removed when dropped.
pub struct SystemdContainer {
    /// The container.
    pub container: Container,
}

impl SystemdContainer {
    /// Starts a container of [`SYSTEMD_IMAGE`] (building the image if need be) and waits
    /// until systemd has booted (`running` or `degraded`).
    pub fn start(label: &str) -> SystemdContainer {
        let image = systemd_image();
        let container = Container::run(
            label,
            &[
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:ro",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                image,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // `is-system-running` exits non-zero for `degraded`: read its output.
            let state = Command::new("docker")
                .args(["exec", &container.name, "systemctl", "is-system-running"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if state == "running" || state == "degraded" {
                break;
            }
            if Instant::now() > deadline {
                let logs = super::docker::try_docker(&["logs", "--tail", "40", &container.name])
                    .unwrap_or_else(|e| e);
                panic!(
                    "systemd in {} did not finish booting within 90 s (state `{state}`); \
                     container log:\n{logs}",
                    container.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        SystemdContainer { container }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.container.name
    }

    /// Copies a host file into the container.
    pub fn copy_in(&self, host: &Path, inside: &str) {
        let target = format!("{}:{inside}", self.name());
        super::docker::docker(&["cp", &host.to_string_lossy(), &target]);
    }

    /// Writes a unit file to `/etc/systemd/system/NAME` and reloads systemd.
    pub fn install_unit(&self, name: &str, content: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(name);
        std::fs::write(&file, content).expect("write unit file");
        self.copy_in(&file, &format!("/etc/systemd/system/{name}"));
        self.systemctl(&["daemon-reload"]);
    }

    /// `systemctl ARGS…` inside; panics if it fails.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.container.exec(&all)
    }

    /// A unit's property as systemd reports it (`systemctl show -P`).
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "-P", property, unit])
    }

    /// The realtime of a unit timestamp property (e.g. `InactiveEnterTimestamp`) in epoch
    /// ms, read as systemd's raw microseconds over D-Bus.
    pub fn unit_timestamp_ms(&self, unit: &str, property: &str) -> Option<i64> {
        let path = format!("/org/freedesktop/systemd1/unit/{}", bus_label(unit));
        let out = self
            .container
            .try_exec(&[
                "busctl",
                "get-property",
                "org.freedesktop.systemd1",
                &path,
                "org.freedesktop.systemd1.Unit",
                property,
            ])
            .ok()?;
        // `t 1763920000123456`
        let micros: i64 = out.split_whitespace().nth(1)?.parse().ok()?;
        (micros > 0).then_some(micros / 1000)
    }
}

/// systemd's D-Bus object label for a unit name: every byte that is not a letter or a
/// digit becomes `_xx`.
pub fn bus_label(unit: &str) -> String {
    unit.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

/// Path of the `watch` example of `vigil-agent` (it prints watcher updates as JSON
/// lines), building it once per test run.
pub fn watch_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "vigil-agent", "--example", "watch"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the watch example failed");
            // target/<profile>/deps/<test binary> → target/<profile>/examples/watch
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps")
                .join("examples/watch")
        })
        .clone()
}

/// An exclusive `flock` on a file, released when dropped.
struct FileLock {
    /// The open lock file (closing it releases the lock).
    _file: std::fs::File,
}

impl FileLock {
    /// Waits for the lock.
    fn acquire(path: &str) -> FileLock {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: flock(2) on a descriptor we own for as long as `file` lives.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {path}: {}", std::io::Error::last_os_error());
        FileLock { _file: file }
    }
}

/// Path of the `execute` example of `vigil-agent` (it runs one action with the agent's
/// executors and prints the outcome as a JSON line), building it once per test run.
pub fn execute_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "vigil-agent", "--example", "execute"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the execute example failed");
            // target/<profile>/deps/<test binary> → target/<profile>/examples/execute
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps")
                .join("examples/execute")
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_read_from_both_apt_formats() {
        let deb822 =
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n\
                      Types: deb\nURIs: http://security.example\nSuites: bookworm-security\n";
        assert_eq!(
            deb822_mirror(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let list =
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            one_line_mirror(list).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            one_line_mirror("deb http://m.example/debian trixie main"),
            None
        );
    }

    #[test]
    fn bus_labels_escape_like_systemd() {
        assert_eq!(bus_label("vigil-sleep.service"), "vigil_2dsleep_2eservice");
    }
}
