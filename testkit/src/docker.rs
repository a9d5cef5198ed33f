//! The Docker engine through the `docker` command, as the end-to-end tests and the restart
//! benchmark use it: a tiny local image, containers labelled with the process that started
//! them and removed when their guard drops, and a sweep of those whose process died.
//!
//! No image can be pulled here, so [`ensure_busybox_image`] builds one from Debian's static
//! busybox (`apt-get install busybox-static`): `/bin/busybox` and a link for each of its
//! applets, `CMD ["/bin/sleep","3600"]`, imported with `docker import`. It is built once per
//! machine and reused.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::KitError;

/// The busybox image [`ensure_busybox_image`] builds.
pub const BUSYBOX_IMAGE: &str = "vigil-busybox:latest";

/// Runs `docker ARGS`: its trimmed stdout, or what went wrong (with its stderr).
pub fn docker(args: &[&str]) -> Result<String, KitError> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            KitError::Failed(format!(
                "cannot run `docker`: {e} (is the Docker CLI installed?)"
            ))
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(KitError::Failed(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The engine's version, if an engine answers.
pub fn engine_version() -> Result<String, KitError> {
    docker(&["version", "--format", "{{.Server.Version}}"])
}

/// Whether an image exists locally.
pub fn image_exists(image: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", image]).is_ok()
}

/// Builds [`BUSYBOX_IMAGE`] unless it exists; whether it built it.
pub fn ensure_busybox_image() -> Result<bool, KitError> {
    if image_exists(BUSYBOX_IMAGE) {
        return Ok(false);
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(KitError::Failed(
            "building the busybox image needs a static busybox at /bin/busybox \
             (Debian: apt-get install busybox-static; .ci/run installs it)"
                .into(),
        ));
    }
    let io = |what: &str, e: std::io::Error| {
        KitError::Failed(format!("building {BUSYBOX_IMAGE}: {what}: {e}"))
    };
    let dir = tempfile::tempdir().map_err(|e| io("temp dir", e))?;
    let root = dir.path().join("root");
    for sub in ["bin", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).map_err(|e| io("mkdir", e))?;
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| io("chmod /tmp", e))?;
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
    std::fs::write(root.join("etc/group"), "root:x:0:\n").map_err(|e| io("/etc/group", e))?;
    import_root(&root, BUSYBOX_IMAGE, &[r#"CMD ["/bin/sleep","3600"]"#])?;
    Ok(true)
}

/// `tar -C ROOT -c . | docker import --change CHANGE… - IMAGE`.
pub fn import_root(root: &Path, image: &str, changes: &[&str]) -> Result<(), KitError> {
    let failed = |what: &str, e: std::io::Error| {
        KitError::Failed(format!(
            "importing {} as {image}: {what}: {e}",
            root.display()
        ))
    };
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| failed("run tar", e))?;
    let tar_out = tar
        .stdout
        .take()
        .ok_or_else(|| KitError::Failed("tar has no stdout".into()))?;
    let mut import = Command::new("docker");
    import.arg("import");
    for change in changes {
        import.args(["--change", change]);
    }
    let output = import
        .args(["-", image])
        .stdin(tar_out)
        .output()
        .map_err(|e| failed("run docker import", e))?;
    let tar_status = tar.wait().map_err(|e| failed("wait for tar", e))?;
    if tar_status.success() && output.status.success() {
        Ok(())
    } else {
        Err(KitError::Failed(format!(
            "importing {} as {image} failed (tar: {tar_status}, docker import: {}): {}",
            root.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Who starts containers: each is named with `name_prefix` and carries the label `label`
/// set to the starting process's pid, so that the containers of a process killed before
/// it could remove them are found and removed later ([`Owner::sweep_stale`]).
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// The label holding the pid.
    pub label: &'static str,
    /// How every container's name starts.
    pub name_prefix: &'static str,
}

impl Owner {
    /// `docker VERB [-d] --name NAME --label OWNER=PID ARGS…` (`verb` is `run`, detached,
    /// or `create`), where `args` ends with the image (and optionally a command). The
    /// guard exists before the container does, so a container that fails to start is
    /// removed as well.
    pub fn start(&self, verb: &str, name: &str, args: &[&str]) -> Result<Container, KitError> {
        if !name.starts_with(self.name_prefix) {
            return Err(KitError::Failed(format!(
                "container name `{name}` does not start with `{}`",
                self.name_prefix
            )));
        }
        let container = Container::adopt(name);
        let owner = format!("{}={}", self.label, std::process::id());
        let mut all = vec![verb];
        if verb == "run" {
            all.push("-d");
        }
        all.extend(["--name", name, "--label", &owner]);
        all.extend_from_slice(args);
        docker(&all)?;
        Ok(container)
    }

    /// Removes this owner's containers whose process is gone.
    pub fn sweep_stale(&self) {
        let filter = format!("label={}", self.label);
        let template = format!("{{{{.Names}}}} {{{{.Label \"{}\"}}}}", self.label);
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
            if !alive && name.starts_with(self.name_prefix) {
                let _ = docker(&["rm", "-f", "-v", name]);
            }
        }
    }
}

/// A container, removed (with its volumes) when this guard drops.
#[derive(Debug)]
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// A guard for a container created some other way, to remove it at the end.
    pub fn adopt(name: &str) -> Container {
        Container {
            name: name.to_string(),
        }
    }

    /// One field of `docker inspect` (a Go template such as `{{.State.Status}}`).
    pub fn try_inspect(&self, template: &str) -> Result<String, KitError> {
        docker(&["inspect", "--format", template, &self.name])
    }

    /// `docker exec NAME CMD…`: its stdout.
    pub fn try_exec(&self, cmd: &[&str]) -> Result<String, KitError> {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        docker(&all)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = docker(&["rm", "-f", "-v", &self.name]) {
            if !e.to_string().contains("No such container") {
                eprintln!("warning: could not remove container {}: {e}", self.name);
            }
        }
    }
}
