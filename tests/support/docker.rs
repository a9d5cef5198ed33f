//! Docker for the end-to-end tests: the test suite's panicking forms of the kit's
//! [`vigil_testkit::docker`] (the `docker` command, the local busybox image, containers
//! removed when their guard drops).
//!
//! Every container a test starts is named `vigil-test-<pid>-<n>-<label>` and labelled with
//! the test process's pid; it is removed when its [`Container`] drops (also when the test
//! panics), and containers left behind by a test process that was killed are swept up the
//! next time a test needs Docker.

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vigil_testkit::docker::{self as kit, Owner};
use vigil_testkit::or_panic;

pub use vigil_testkit::docker::image_exists;

/// How every test container's name starts.
pub const NAME_PREFIX: &str = "vigil-test-";

/// The test processes' containers.
const TESTS: Owner = Owner {
    label: "vigil.test.owner",
    name_prefix: NAME_PREFIX,
};

/// Runs `docker ARGS`: its trimmed stdout, or its stderr as the error.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    kit::docker(args).map_err(|e| e.to_string())
}

/// Runs `docker ARGS` and returns its trimmed stdout; panics if it fails.
pub fn docker(args: &[&str]) -> String {
    or_panic(kit::docker(args))
}

/// Panics with a clear message unless a Docker engine answers (these tests need one; CI
/// has one). Also removes containers left behind by earlier test processes that died.
pub fn require_docker() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if let Err(e) = kit::engine_version() {
            panic!(
                "these tests need a running Docker engine reachable by the `docker` CLI \
                 (DOCKER_HOST or /var/run/docker.sock): {e}"
            );
        }
        TESTS.sweep_stale();
    });
}

/// Builds the kit's busybox image unless it exists (once per test process), and returns
/// its name.
pub fn busybox_image() -> &'static str {
    static BUILT: Mutex<Option<&'static str>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = *built {
        return image;
    }
    require_docker();
    let started = Instant::now();
    let image = kit::BUSYBOX_IMAGE;
    if or_panic(kit::ensure_busybox_image()) {
        eprintln!(
            "built test image {image} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    *built = Some(image);
    image
}

/// `tar -C ROOT -c . | docker import --change CHANGE… - IMAGE`; panics if it fails.
pub fn import_root(root: &Path, image: &str, changes: &[&str]) {
    or_panic(kit::import_root(root, image, changes))
}

/// A unique container name for this test process: `vigil-test-<pid>-<n>-<label>`.
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}-{label}", std::process::id())
}

/// A test's container, removed (with its volumes) when this guard drops; the kit's
/// [`kit::Container`] (its name, `try_exec`, `try_inspect`) with panicking forms.
pub struct Container(kit::Container);

impl Deref for Container {
    type Target = kit::Container;

    fn deref(&self) -> &kit::Container {
        &self.0
    }
}

impl Container {
    /// `docker run -d --name <unique name> ARGS…`, where `args` ends with the image (and
    /// optionally a command). Panics if it does not start; the container is removed
    /// either way.
    pub fn run(label: &str, args: &[&str]) -> Container {
        Container::new("run", &unique_name(label), args)
    }

    /// [`Container::run`] with a name of the caller's choosing (start it with
    /// [`unique_name`], so that it is swept up like the others).
    pub fn run_named(name: &str, args: &[&str]) -> Container {
        Container::new("run", name, args)
    }

    /// `docker create --name NAME ARGS…`: a container that exists but never ran.
    pub fn create_named(name: &str, args: &[&str]) -> Container {
        Container::new("create", name, args)
    }

    fn new(verb: &str, name: &str, args: &[&str]) -> Container {
        require_docker();
        Container(or_panic(TESTS.start(verb, name, args)))
    }

    /// A guard for a container created some other way, to remove it at the end.
    pub fn adopt(name: &str) -> Container {
        Container(kit::Container::adopt(name))
    }

    /// `docker exec NAME CMD…`: its stdout; panics if it fails.
    pub fn exec(&self, cmd: &[&str]) -> String {
        or_panic(self.try_exec(cmd))
    }

    /// One field of `docker inspect` (a Go template such as `{{.State.Status}}`).
    pub fn inspect(&self, template: &str) -> String {
        or_panic(self.try_inspect(template))
    }

    /// The host pid of the container's main process (0 when it is not running).
    pub fn host_pid(&self) -> i32 {
        self.inspect("{{.State.Pid}}").parse().unwrap_or(0)
    }

    /// Waits until `docker inspect` shows `template` as `want`.
    pub fn wait_inspect(&self, template: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.inspect(template);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {template} is `{got}`, not `{want}`, after {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
