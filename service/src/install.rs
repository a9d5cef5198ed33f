//! The building blocks of `install` and `uninstall`: each step looks before it acts and
//! says whether it changed anything, so running an install twice changes nothing and can
//! say so.
//!
//! Files are written atomically (a temporary file beside the target, then a rename) and
//! only when their content or mode differs. [`Systemctl`] runs the real `systemctl`.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use thiserror::Error;

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing was there; now it is.
    Created,
    /// It was there with other content, mode or owner; now it matches.
    Updated,
    /// It was already as wanted.
    Unchanged,
}

impl Change {
    /// Whether the step changed anything.
    pub fn changed(self) -> bool {
        self != Change::Unchanged
    }
}

/// Why an install step failed.
#[derive(Debug, Error)]
pub enum InstallError {
    /// Installing needs root.
    #[error("{what} needs root: run it with sudo")]
    NotRoot {
        /// The command.
        what: &'static str,
    },
    /// A file or directory operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `create directory`, …).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A command (systemctl, useradd) could not run or failed.
    #[error("`{command}` failed: {problem}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and output.
        problem: String,
    },
    /// The Debian package installed this service: dpkg owns its files.
    #[error(
        "{name} was installed from the Debian package ({}): remove it with \
         `apt-get remove {name}` (or `apt-get purge {name}` to delete its data too)",
        unit.display()
    )]
    Packaged {
        /// The program.
        name: &'static str,
        /// The package's unit file.
        unit: PathBuf,
    },
    /// The unit did not become active.
    #[error("{unit} did not start: {state}\n{journal}")]
    NotActive {
        /// The unit.
        unit: String,
        /// Its state (`failed`, `activating`, …).
        state: String,
        /// The last lines of its journal.
        journal: String,
    },
}

impl InstallError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
        let path = path.to_path_buf();
        move |source| InstallError::Io {
            action,
            path,
            source,
        }
    }
}

/// What an install or uninstall did, step by step, for its report.
#[derive(Debug, Default)]
pub struct Steps {
    steps: Vec<(&'static str, PathBuf, &'static str)>,
    changed: bool,
}

impl Steps {
    /// Records a step that put `path` in place.
    pub fn record(&mut self, what: &'static str, path: &Path, change: Change) {
        let word = match change {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        };
        self.changed |= change.changed();
        self.steps.push((what, path.to_path_buf(), word));
    }

    /// Records a step described by its own word (`started`, `restarted`).
    pub fn record_word(&mut self, what: &'static str, path: &Path, word: &'static str) {
        self.changed = true;
        self.steps.push((what, path.to_path_buf(), word));
    }

    /// Records a step that removed `path` (or found it gone already).
    pub fn removed(&mut self, what: &'static str, path: &Path, removed: bool) {
        self.changed |= removed;
        let word = if removed { "removed" } else { "absent" };
        self.steps.push((what, path.to_path_buf(), word));
    }

    /// Records a step that left `path` alone on purpose.
    pub fn kept(&mut self, what: &'static str, path: &Path) {
        self.steps.push((what, path.to_path_buf(), "kept"));
    }

    /// Whether any step changed anything.
    pub fn changed(&self) -> bool {
        self.changed
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self
            .steps
            .iter()
            .map(|(_, path, _)| path.as_os_str().len())
            .max()
            .unwrap_or(0);
        for (what, path, word) in &self.steps {
            writeln!(f, "  {what:<8} {:<width$}  {word}", path.display())?;
        }
        Ok(())
    }
}

/// Fails unless this process runs as root.
pub fn require_root(what: &'static str) -> Result<(), InstallError> {
    // /proc/self is owned by the process's effective user.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if euid == 0 {
        Ok(())
    } else {
        Err(InstallError::NotRoot { what })
    }
}

/// A user's and group's numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Writes `contents` to `path` with `mode` (and `owner`, if given) unless it already
/// holds exactly that.
pub fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<Change, InstallError> {
    let existing = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(InstallError::io("read", path)(e)),
    };
    if existing.as_deref() == Some(contents) {
        return set_mode_and_owner(path, mode, owner);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.vigil-new"));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(InstallError::io("write", &temporary))?;
        // Restrict before writing: secrets never sit in a world-readable file.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(InstallError::io("set the mode of", &temporary))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(InstallError::io("write", &temporary))?;
    }
    if let Some(owner) = owner {
        std::os::unix::fs::chown(&temporary, Some(owner.uid), Some(owner.gid))
            .map_err(InstallError::io("change the owner of", &temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(InstallError::io("write", path))?;
    Ok(if existing.is_some() {
        Change::Updated
    } else {
        Change::Created
    })
}

/// Creates `path` (and its parents) as a directory with `mode` and `owner`, or fixes
/// them on an existing one.
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<Owner>) -> Result<Change, InstallError> {
    if path.is_dir() {
        return set_mode_and_owner(path, mode, owner);
    }
    std::fs::create_dir_all(path).map_err(InstallError::io("create directory", path))?;
    set_mode_and_owner(path, mode, owner)?;
    Ok(Change::Created)
}

/// Gives an existing file or directory `mode` (and `owner`, if given), if it differs.
pub fn set_mode_and_owner(
    path: &Path,
    mode: u32,
    owner: Option<Owner>,
) -> Result<Change, InstallError> {
    let meta = std::fs::metadata(path).map_err(InstallError::io("read", path))?;
    let mut change = Change::Unchanged;
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(InstallError::io("set the mode of", path))?;
        change = Change::Updated;
    }
    if let Some(owner) = owner {
        if meta.uid() != owner.uid || meta.gid() != owner.gid {
            std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                .map_err(InstallError::io("change the owner of", path))?;
            change = Change::Updated;
        }
    }
    Ok(change)
}

/// Removes a file if it exists; says whether it did.
pub fn remove_file(path: &Path) -> Result<bool, InstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(InstallError::io("remove", path)(e)),
    }
}

/// Removes a directory and everything in it if it exists; says whether it did.
pub fn remove_dir_all(path: &Path) -> Result<bool, InstallError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(InstallError::io("remove", path)(e)),
    }
}

/// Removes a directory if it exists and is empty.
pub fn remove_dir_if_empty(path: &Path) {
    let _ = std::fs::remove_dir(path);
}

/// A user's ids from `/etc/passwd`, if it exists.
pub fn user(name: &str) -> Option<Owner> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(Owner { uid, gid })
    })
}

/// Creates a system user (and its group) with no login and no home directory unless it
/// exists, using `useradd` (Debian's `passwd` package, present on every system).
pub fn ensure_system_user(name: &str, home: &Path) -> Result<(Owner, Change), InstallError> {
    if let Some(owner) = user(name) {
        return Ok((owner, Change::Unchanged));
    }
    let home = home.to_string_lossy();
    run(
        "useradd",
        &[
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            &home,
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "Vigil coordinator",
            name,
        ],
    )?;
    let owner = user(name).ok_or_else(|| InstallError::Command {
        command: format!("useradd {name}"),
        problem: "the user is still not in /etc/passwd".into(),
    })?;
    Ok((owner, Change::Created))
}

/// Runs a command; its stdout on success, its status and output as the error otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String, InstallError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstallError::Command {
            command: command.clone(),
            problem: e.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let mut problem = output.status.to_string();
        for text in [&output.stderr, &output.stdout] {
            let text = String::from_utf8_lossy(text);
            if !text.trim().is_empty() {
                problem.push_str(": ");
                problem.push_str(text.trim());
            }
        }
        Err(InstallError::Command { command, problem })
    }
}

/// The real `systemctl`, for one unit.
#[derive(Debug, Clone)]
pub struct Systemctl {
    /// The unit (`vigil-agent.service`).
    pub unit: String,
}

impl Systemctl {
    /// For `unit`.
    pub fn new(unit: &str) -> Systemctl {
        Systemctl {
            unit: unit.to_string(),
        }
    }

    /// Whether systemd runs this machine (`/run/systemd/system` exists).
    pub fn booted() -> bool {
        Path::new("/run/systemd/system").is_dir()
    }

    /// `systemctl daemon-reload`.
    pub fn daemon_reload() -> Result<(), InstallError> {
        run("systemctl", &["daemon-reload"]).map(|_| ())
    }

    /// `systemctl is-active`: `active`, `inactive`, `failed`, `activating`…
    pub fn state(&self) -> String {
        Command::new("systemctl")
            .args(["is-active", &self.unit])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Whether the unit is enabled.
    pub fn is_enabled(&self) -> bool {
        Command::new("systemctl")
            .args(["is-enabled", "--quiet", &self.unit])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether systemd knows the unit (it has a unit file).
    pub fn is_loaded(&self) -> bool {
        Command::new("systemctl")
            .args(["show", "-P", "LoadState", &self.unit])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "loaded")
    }

    /// `systemctl enable`, if it is not enabled yet.
    pub fn enable(&self) -> Result<Change, InstallError> {
        if self.is_enabled() {
            return Ok(Change::Unchanged);
        }
        run("systemctl", &["enable", "--quiet", &self.unit])?;
        Ok(Change::Updated)
    }

    /// `systemctl restart` (waits for readiness, with `Type=notify`), then checks that
    /// the unit is active and stays so for a moment.
    pub fn restart(&self) -> Result<(), InstallError> {
        if let Err(e) = run("systemctl", &["restart", &self.unit]) {
            return Err(self.not_active(e.to_string()));
        }
        self.wait_active(Duration::from_secs(2))
    }

    /// Fails unless the unit is active now and still after `settle` (a service that
    /// exits at once after readiness counts as not started).
    pub fn wait_active(&self, settle: Duration) -> Result<(), InstallError> {
        let until = Instant::now() + settle;
        loop {
            let state = self.state();
            if state != "active" && state != "reloading" {
                return Err(self.not_active(state));
            }
            if Instant::now() >= until {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `systemctl disable --now`; nothing if systemd does not know the unit.
    pub fn disable_now(&self) -> Result<(), InstallError> {
        if !self.is_loaded() {
            return Ok(());
        }
        run("systemctl", &["disable", "--now", "--quiet", &self.unit]).map(|_| ())
    }

    /// Forgets a failed state (after the unit file is gone).
    pub fn reset_failed(&self) {
        let _ = run("systemctl", &["reset-failed", &self.unit]);
    }

    fn not_active(&self, state: String) -> InstallError {
        let journal = run(
            "journalctl",
            &["-u", &self.unit, "-n", "20", "--no-pager", "-o", "cat"],
        )
        .unwrap_or_else(|e| format!("(no journal: {e})"));
        InstallError::NotActive {
            unit: self.unit.clone(),
            state,
            journal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_once_then_left_alone_and_its_mode_is_fixed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        assert_eq!(
            write_file(&path, b"host = \"a\"\n", 0o600, None).expect("write"),
            Change::Created
        );
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(
            write_file(&path, b"host = \"a\"\n", 0o600, None).expect("write"),
            Change::Unchanged
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            write_file(&path, b"host = \"a\"\n", 0o600, None).expect("write"),
            Change::Updated
        );
        assert_eq!(
            write_file(&path, b"host = \"b\"\n", 0o600, None).expect("write"),
            Change::Updated
        );
        assert_eq!(std::fs::read(&path).expect("read"), b"host = \"b\"\n");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn directories_are_created_with_their_mode_and_removal_says_what_it_did() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("var/lib/vigil");
        assert_eq!(
            ensure_dir(&data, 0o700, None).expect("dir"),
            Change::Created
        );
        assert_eq!(
            ensure_dir(&data, 0o700, None).expect("dir"),
            Change::Unchanged
        );
        assert_eq!(
            std::fs::metadata(&data).expect("meta").mode() & 0o777,
            0o700
        );
        std::fs::write(data.join("identity.json"), "{}").expect("write");
        assert!(remove_dir_all(&data).expect("remove"));
        assert!(!remove_dir_all(&data).expect("remove again"));
        assert!(!remove_file(&data.join("identity.json")).expect("remove file"));
    }

    #[test]
    fn a_failing_command_names_itself_and_says_why() {
        let err = run("sh", &["-c", "echo nope >&2; exit 3"]).expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("`sh -c"), "{text}");
        assert!(text.contains("nope"), "{text}");
    }

    #[test]
    fn root_is_in_passwd() {
        assert_eq!(user("root"), Some(Owner { uid: 0, gid: 0 }));
        assert_eq!(user("no-such-user-vigil"), None);
    }
}
