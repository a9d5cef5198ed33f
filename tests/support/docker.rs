//! Docker for the end-to-end tests: the `docker` command, a tiny local test image, and
//! containers that are removed when their guard drops.
//!
//! No image can be pulled here, so [`busybox_image`] builds one from Debian's static
//! busybox (`apt-get install busybox-static`; `.ci/run` installs it): `/bin/busybox` and a
//! link for each of its applets, `CMD ["/bin/sleep","3600"]`. It is built once per machine
//! and reused. Every container a test starts is named `vigil-test-<pid>-<n>-<label>` and
//! labelled with the test process's pid; it is removed when its [`Container`] drops (also
//! when the test panics), and containers left behind by a test process that was killed
//! are swept up the next time a test needs Docker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The busybox test image.
pub const BUSYBOX_IMAGE: &str = "vigil-test-busybox:latest";

/// How every test container's name starts.
pub const NAME_PREFIX: &str = "vigil-test-";

/// The label holding the pid of the test process that started a container.
const OWNER_LABEL: &str = "vigil.test.owner";

/// Runs `docker ARGS`: its trimmed stdout, or its stderr as the error.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
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

/// Runs `docker ARGS` and returns its trimmed stdout; panics if it fails.
pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Panics with a clear message unless a Docker engine answers (these tests need one; CI
/// has one). Also removes containers left behind by earlier test processes that died.
pub fn require_docker() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if let Err(e) = try_docker(&["version", "--format", "{{.Server.Version}}"]) {
            panic!(
                "these tests need a running Docker engine reachable by the `docker` CLI \
                 (DOCKER_HOST or /var/run/docker.sock): {e}"
            );
        }
        sweep_stale_containers();
    });
}

/// Whether an image exists locally.
pub fn image_exists(image: &str) -> bool {
    try_docker(&["image", "inspect", "--format", "{{.Id}}", image]).is_ok()
}

/// Builds [`BUSYBOX_IMAGE`] unless it exists, and returns its name.
pub fn busybox_image() -> &'static str {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return BUSYBOX_IMAGE;
    }
    require_docker();
    if !image_exists(BUSYBOX_IMAGE) {
        build_busybox_image();
    }
    *built = true;
    BUSYBOX_IMAGE
}

/// Imports a root holding static busybox and its applets as [`BUSYBOX_IMAGE`].
fn build_busybox_image() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "building the test image needs a static busybox at /bin/busybox: \
         apt-get install busybox-static (see .ci/run)"
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    for sub in ["bin", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).expect("create image dirs");
    }
    set_mode(&root.join("tmp"), 0o1777);
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .expect("link a busybox applet");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .expect("write /etc/passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("write /etc/group");
    import_root(&root, BUSYBOX_IMAGE, &[r#"CMD ["/bin/sleep","3600"]"#]);
    eprintln!(
        "built test image {BUSYBOX_IMAGE} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Sets a path's permission bits.
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `tar -C ROOT -c . | docker import --change CHANGE… - IMAGE`.
pub fn import_root(root: &Path, image: &str, changes: &[&str]) {
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let tar_out = tar.stdout.take().expect("tar stdout");
    let mut import = Command::new("docker");
    import.arg("import");
    for change in changes {
        import.args(["--change", change]);
    }
    let output = import
        .args(["-", image])
        .stdin(tar_out)
        .output()
        .expect("run docker import");
    let tar_status = tar.wait().expect("wait for tar");
    assert!(
        tar_status.success() && output.status.success(),
        "importing {} as {image} failed (tar: {tar_status}, docker import: {}): {}",
        root.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A unique container name for this test process: `vigil-test-<pid>-<n>-<label>`.
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}-{label}", std::process::id())
}

/// A container removed (with its volumes) when this guard drops.
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// `docker run -d --name <unique name> ARGS…`, where `args` ends with the image (and
    /// optionally a command). Panics if it does not start; the container is removed
    /// either way.
    pub fn run(label: &str, args: &[&str]) -> Container {
        Container::new("run", unique_name(label), args)
    }

    /// [`Container::run`] with a name of the caller's choosing (start it with
    /// [`unique_name`], so that it is swept up like the others).
    pub fn run_named(name: &str, args: &[&str]) -> Container {
        Container::new("run", name.to_string(), args)
    }

    /// `docker create --name NAME ARGS…`: a container that exists but never ran.
    pub fn create_named(name: &str, args: &[&str]) -> Container {
        Container::new("create", name.to_string(), args)
    }

    /// `docker VERB [-d] --name NAME --label OWNER ARGS…`, guarded from the start.
    fn new(verb: &str, name: String, args: &[&str]) -> Container {
        require_docker();
        let container = Container { name };
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let mut all = vec![verb];
        if verb == "run" {
            all.push("-d");
        }
        all.extend(["--name", &container.name, "--label", &owner]);
        all.extend_from_slice(args);
        docker(&all);
        container
    }

    /// A guard for a container created some other way, to remove it at the end.
    pub fn adopt(name: &str) -> Container {
        Container {
            name: name.to_string(),
        }
    }

    /// `docker exec NAME CMD…`: its stdout; panics if it fails.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        docker(&all)
    }

    /// `docker exec NAME CMD…`: its stdout or the error.
    pub fn try_exec(&self, cmd: &[&str]) -> Result<String, String> {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        try_docker(&all)
    }

    /// One field of `docker inspect` (a Go template such as `{{.State.Status}}`).
    pub fn inspect(&self, template: &str) -> String {
        docker(&["inspect", "--format", template, &self.name])
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

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = try_docker(&["rm", "-f", "-v", &self.name]) {
            if !e.contains("No such container") {
                eprintln!(
                    "warning: could not remove test container {}: {e}",
                    self.name
                );
            }
        }
    }
}

/// Removes test containers whose owning test process is gone (killed before it could
/// clean up).
fn sweep_stale_containers() {
    let Ok(listing) = try_docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={OWNER_LABEL}"),
        "--format",
        &format!("{{{{.Names}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}"),
    ]) else {
        return;
    };
    for line in listing.lines() {
        let Some((name, owner)) = line.split_once(' ') else {
            continue;
        };
        let alive = owner
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive && name.starts_with(NAME_PREFIX) {
            let _ = try_docker(&["rm", "-f", "-v", name]);
        }
    }
}
