//! One of Vigil's programs installed as a systemd service: its binary, its unit file and
//! its state in systemd. `vigil-agent install` and `vigil-coordinator install` both go
//! through [`SystemdService`]; each adds its own config file and directories.
//!
//! Two ways in, and the service finds out which one it is in:
//! - **from the Debian package**: the binary is `/usr/bin/NAME` and the unit
//!   `/lib/systemd/system/NAME.service`, both owned by dpkg; install leaves them alone and
//!   uninstall refuses (`apt-get remove` is the way out);
//! - **from a static binary**: install copies the binary to `/usr/local/bin/NAME` and
//!   writes the unit to `/etc/systemd/system/NAME.service`, from the same template the
//!   package ships (`systemd/NAME.service`) with the binary's path put in.

use std::path::{Path, PathBuf};

use crate::install::{self, Change, InstallError, Steps, Systemctl};

/// Where the package puts its unit files.
const PACKAGED_UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];
/// Where `install` puts a unit file.
const LOCAL_UNIT_DIR: &str = "/etc/systemd/system";
/// Where `install` copies a binary that is not already installed.
const LOCAL_BIN_DIR: &str = "/usr/local/bin";
/// Where the package puts its binaries (and the path the unit templates name).
const PACKAGED_BIN_DIR: &str = "/usr/bin";

/// A Vigil program as a systemd service.
#[derive(Debug, Clone)]
pub struct SystemdService {
    /// The program's name, also the unit's (`vigil-agent`).
    pub name: &'static str,
    /// The unit file as the package ships it (ExecStart names `/usr/bin/NAME`).
    pub unit_template: &'static str,
}

impl SystemdService {
    /// The unit's name (`vigil-agent.service`).
    pub fn unit_name(&self) -> String {
        format!("{}.service", self.name)
    }

    /// `systemctl` for this unit.
    pub fn systemctl(&self) -> Systemctl {
        Systemctl::new(&self.unit_name())
    }

    /// The package's unit file, if the Debian package is installed.
    pub fn packaged_unit(&self) -> Option<PathBuf> {
        PACKAGED_UNIT_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(self.unit_name()))
            .find(|path| path.exists())
    }

    /// The unit file `install` writes.
    pub fn local_unit(&self) -> PathBuf {
        Path::new(LOCAL_UNIT_DIR).join(self.unit_name())
    }

    /// The binary `install` copies to.
    pub fn local_binary(&self) -> PathBuf {
        Path::new(LOCAL_BIN_DIR).join(self.name)
    }

    /// Where the service's binary is: the package's, the running program if it is
    /// already in a system binary directory, or the copy `install` makes.
    pub fn binary_for(&self, running: &Path) -> PathBuf {
        let packaged = Path::new(PACKAGED_BIN_DIR).join(self.name);
        if self.packaged_unit().is_some() {
            return packaged;
        }
        if running == packaged || running == self.local_binary() {
            return running.to_path_buf();
        }
        self.local_binary()
    }

    /// Puts the binary in place (a copy of the running program when it is elsewhere).
    pub fn install_binary(&self, steps: &mut Steps) -> Result<PathBuf, InstallError> {
        let running = std::env::current_exe().map_err(|source| InstallError::Io {
            action: "find",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        let target = self.binary_for(&running);
        if target == running {
            steps.record("binary", &target, Change::Unchanged);
            return Ok(target);
        }
        if self.packaged_unit().is_some() {
            // The package's binary serves the package's unit; this copy is not needed.
            steps.record("binary", &target, Change::Unchanged);
            return Ok(target);
        }
        let bytes = std::fs::read(&running).map_err(|source| InstallError::Io {
            action: "read",
            path: running.clone(),
            source,
        })?;
        let change = install::write_file(&target, &bytes, 0o755, None)?;
        steps.record("binary", &target, change);
        Ok(target)
    }

    /// The unit file for `binary`: the template with its path put in.
    pub fn unit_for(&self, binary: &Path) -> String {
        let template_binary = format!("{PACKAGED_BIN_DIR}/{}", self.name);
        self.unit_template
            .replace(&template_binary, &binary.to_string_lossy())
    }

    /// Writes the unit file (unless the package's is there) and reloads systemd if it
    /// changed.
    pub fn install_unit(&self, binary: &Path, steps: &mut Steps) -> Result<(), InstallError> {
        if let Some(packaged) = self.packaged_unit() {
            steps.record("unit", &packaged, Change::Unchanged);
            return Ok(());
        }
        let path = self.local_unit();
        let change = install::write_file(&path, self.unit_for(binary).as_bytes(), 0o644, None)?;
        if change.changed() {
            Systemctl::daemon_reload()?;
        }
        steps.record("unit", &path, change);
        Ok(())
    }

    /// Enables the unit, and (re)starts it when anything changed or it is not running,
    /// waiting until it is ready (`Type=notify`).
    pub fn activate(&self, start: bool, steps: &mut Steps) -> Result<(), InstallError> {
        let systemctl = self.systemctl();
        let enabled = systemctl.enable()?;
        steps.record("enabled", Path::new(&systemctl.unit), enabled);
        if !start {
            return Ok(());
        }
        let active = systemctl.state() == "active";
        if steps.changed() || !active {
            systemctl.restart()?;
            let word = if active { "restarted" } else { "started" };
            steps.record_word("running", Path::new(&systemctl.unit), word);
        } else {
            steps.record("running", Path::new(&systemctl.unit), Change::Unchanged);
        }
        Ok(())
    }

    /// Stops and disables the service and removes the unit and the binary `install`
    /// wrote. Refuses when the Debian package owns them.
    pub fn remove(&self, steps: &mut Steps) -> Result<(), InstallError> {
        if let Some(packaged) = self.packaged_unit() {
            return Err(InstallError::Packaged {
                name: self.name,
                unit: packaged,
            });
        }
        let systemctl = self.systemctl();
        systemctl.disable_now()?;
        let unit = self.local_unit();
        let removed = install::remove_file(&unit)?;
        steps.removed("unit", &unit, removed);
        if removed {
            Systemctl::daemon_reload()?;
        }
        systemctl.reset_failed();
        let binary = self.local_binary();
        let removed = install::remove_file(&binary)?;
        steps.removed("binary", &binary, removed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str =
        "[Service]\nExecStart=/usr/bin/vigil-agent --config /etc/vigil/agent.toml\n";

    #[test]
    fn the_unit_names_the_installed_binary() {
        let service = SystemdService {
            name: "vigil-agent",
            unit_template: TEMPLATE,
        };
        assert_eq!(
            service.unit_for(Path::new("/usr/local/bin/vigil-agent")),
            "[Service]\nExecStart=/usr/local/bin/vigil-agent --config /etc/vigil/agent.toml\n"
        );
        assert_eq!(
            service.unit_for(Path::new("/usr/bin/vigil-agent")),
            TEMPLATE
        );
    }

    #[test]
    fn a_binary_outside_the_system_directories_is_copied_to_usr_local_bin() {
        let service = SystemdService {
            name: "vigil-test-no-such-unit",
            unit_template: TEMPLATE,
        };
        assert_eq!(
            service.binary_for(Path::new("/home/me/vigil-test-no-such-unit-0.1.0")),
            PathBuf::from("/usr/local/bin/vigil-test-no-such-unit")
        );
        assert_eq!(
            service.binary_for(Path::new("/usr/local/bin/vigil-test-no-such-unit")),
            PathBuf::from("/usr/local/bin/vigil-test-no-such-unit")
        );
    }
}
