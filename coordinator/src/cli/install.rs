//! `vigil-coordinator install` and `uninstall`: the coordinator as a systemd service on
//! this machine, running as its own unprivileged user `vigil`.
//!
//! Install creates the system user, `/etc/vigil/coordinator.toml` (0600 vigil: it may hold
//! an MQTT password, and the coordinator refuses a file with a secret that others can read), the data directory `/var/lib/vigil-coordinator` (0700 vigil),
//! puts the binary and unit in place ([`SystemdService`]), enables the unit and (re)starts
//! it when anything changed, waiting until the coordinator's listeners are up. A second
//! run with the same arguments changes nothing. Uninstall keeps the data directory (the
//! audit history, tokens, keys) and the user unless `--purge`.

use std::path::{Path, PathBuf};

use clap::Args;
use vigil_service::install::{self, InstallError, Steps};
use vigil_service::SystemdService;

use crate::config::CoordinatorFile;

/// The coordinator's service.
pub const SERVICE: SystemdService = SystemdService {
    name: "vigil-coordinator",
    unit_template: include_str!("../../../systemd/vigil-coordinator.service"),
};

/// The installed coordinator's config file.
pub const CONFIG_FILE: &str = "/etc/vigil/coordinator.toml";
/// The installed coordinator's data directory (the unit passes it as `--data-dir`).
pub const DATA_DIR: &str = "/var/lib/vigil-coordinator";
/// The user it runs as.
pub const USER: &str = "vigil";

/// `vigil-coordinator install` flags.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// A complete coordinator config file to install (instead of the flags below)
    #[arg(long, conflicts_with_all = ["listen", "mqtt_listen"])]
    pub config: Option<PathBuf>,
    /// REST API listen address [default: 127.0.0.1:8000]
    #[arg(long)]
    pub listen: Option<String>,
    /// Embedded MQTT broker listen address [default: 127.0.0.1:1883]
    #[arg(long)]
    pub mqtt_listen: Option<String>,
    /// Enable the unit but do not start it
    #[arg(long)]
    pub no_start: bool,
}

/// `vigil-coordinator uninstall` flags.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Delete the data directory (audit history, tokens, keys) and the user too
    #[arg(long)]
    pub purge: bool,
}

const HEADER: &str = "\
# Vigil coordinator settings, written by `vigil-coordinator install` (run it again to
# change them, or edit this file and `systemctl restart vigil-coordinator`). Keys are the
# long flags of `vigil-coordinator serve` with `_` for `-`. The unit sets --data-dir.
";

/// The config file's text: `--config`'s content, one made from the flags, or `None` to
/// keep the file that is there (or write an empty one if there is none).
fn config_text(args: &InstallArgs) -> Result<Option<String>, String> {
    let text = if let Some(path) = &args.config {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    } else if args.listen.is_some() || args.mqtt_listen.is_some() {
        let mut text = format!("{HEADER}\n");
        for (key, value) in [("listen", &args.listen), ("mqtt_listen", &args.mqtt_listen)] {
            if let Some(value) = value {
                text.push_str(&format!("{key} = {}\n", toml_string(value)));
            }
        }
        text
    } else if Path::new(CONFIG_FILE).exists() {
        return Ok(None);
    } else {
        HEADER.to_string()
    };
    // The coordinator refuses unknown keys at start: refuse them here, before any change.
    toml::from_str::<CoordinatorFile>(&text)
        .map_err(|e| format!("the coordinator config is not valid: {e}"))?;
    Ok(Some(text))
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// Runs `install`.
pub fn install(args: &InstallArgs) -> Result<Steps, String> {
    install::require_root("vigil-coordinator install").map_err(|e| e.to_string())?;
    let text = config_text(args)?;
    steps_of_install(text, !args.no_start).map_err(|e| e.to_string())
}

fn steps_of_install(config: Option<String>, start: bool) -> Result<Steps, InstallError> {
    let mut steps = Steps::default();
    let binary = SERVICE.install_binary(&mut steps)?;
    let (owner, change) = install::ensure_system_user(USER, Path::new(DATA_DIR))?;
    steps.record("user", Path::new(USER), change);
    install::ensure_dir(Path::new("/etc/vigil"), 0o755, None)?;
    let config_path = Path::new(CONFIG_FILE);
    let change = match config {
        Some(text) => install::write_file(config_path, text.as_bytes(), 0o600, Some(owner))?,
        // Keep the file that is there; only its mode and owner are ours to fix.
        None => install::set_mode_and_owner(config_path, 0o600, Some(owner))?,
    };
    steps.record("config", config_path, change);
    let change = install::ensure_dir(Path::new(DATA_DIR), 0o700, Some(owner))?;
    steps.record("data", Path::new(DATA_DIR), change);
    SERVICE.install_unit(&binary, &mut steps)?;
    SERVICE.activate(start, &mut steps)?;
    Ok(steps)
}

/// Runs `uninstall`.
pub fn uninstall(args: &UninstallArgs) -> Result<Steps, String> {
    install::require_root("vigil-coordinator uninstall").map_err(|e| e.to_string())?;
    let mut steps = Steps::default();
    let result = (|| -> Result<(), InstallError> {
        SERVICE.remove(&mut steps)?;
        let removed = install::remove_file(Path::new(CONFIG_FILE))?;
        steps.removed("config", Path::new(CONFIG_FILE), removed);
        install::remove_dir_if_empty(Path::new("/etc/vigil"));
        let data = Path::new(DATA_DIR);
        if args.purge {
            let removed = install::remove_dir_all(data)?;
            steps.removed("data", data, removed);
            if install::user(USER).is_some() {
                install::run("userdel", &[USER])?;
                steps.removed("user", Path::new(USER), true);
            }
        } else if data.exists() {
            steps.kept("data", data);
        }
        Ok(())
    })();
    result.map_err(|e| e.to_string())?;
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_a_config_the_coordinator_reads() {
        let args = InstallArgs {
            config: None,
            listen: Some("0.0.0.0:8000".into()),
            mqtt_listen: Some("0.0.0.0:8883".into()),
            no_start: false,
        };
        let text = config_text(&args).expect("config").expect("some text");
        let file: CoordinatorFile = toml::from_str(&text).expect("parses");
        assert_eq!(file.listen.as_deref(), Some("0.0.0.0:8000"));
        assert_eq!(file.mqtt_listen.as_deref(), Some("0.0.0.0:8883"));
    }

    #[test]
    fn a_config_with_an_unknown_key_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, "listn = \"0.0.0.0:8000\"\n").expect("write");
        let args = InstallArgs {
            config: Some(path),
            listen: None,
            mqtt_listen: None,
            no_start: false,
        };
        let err = config_text(&args).expect_err("unknown key");
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn the_unit_template_runs_the_packaged_binary() {
        assert!(SERVICE.unit_template.contains("/usr/bin/vigil-coordinator"));
    }
}
