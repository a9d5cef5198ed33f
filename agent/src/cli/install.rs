//! `vigil-agent install` and `vigil-agent uninstall`: the agent as a systemd service on
//! this machine, configured in one step.
//!
//! Install writes `/etc/vigil/agent.toml` (mode 0600: it may hold a join token), copies a
//! `--ca` file to `/etc/vigil/ca.pem`, makes the data directory `/var/lib/vigil` (0700),
//! puts the binary and unit in place ([`SystemdService`]), enables the unit and (re)starts
//! it when anything changed, waiting until the agent says it is ready. Every step compares
//! before it writes, so a second run with the same arguments changes nothing.
//!
//! Uninstall stops and removes what install wrote and keeps the data directory (the
//! agent's identity and action history) unless `--purge`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;
use vigil_service::install::{self, InstallError, Steps};
use vigil_service::SystemdService;

use crate::config::{self, AgentFile, ConfigError, Overrides, DEFAULT_DATA_DIR};

/// The agent's service.
pub const SERVICE: SystemdService = SystemdService {
    name: "vigil-agent",
    unit_template: include_str!("../../../systemd/vigil-agent.service"),
};

/// Where the installed agent's config file is.
pub const CONFIG_FILE: &str = "/etc/vigil/agent.toml";
/// Where `--ca` is copied.
pub const CA_FILE: &str = "/etc/vigil/ca.pem";
/// The directory of both.
pub const CONFIG_DIR: &str = "/etc/vigil";

/// What `install` was asked to set up.
#[derive(Debug, Default, Clone)]
pub struct InstallRequest {
    /// A complete config file to install instead of one made from the flags below.
    pub config: Option<PathBuf>,
    /// The coordinator's URL, to enroll at.
    pub coordinator: Option<String>,
    /// The join token.
    pub join_token: Option<String>,
    /// The broker [default: the coordinator's host, port 1883, or 8883 for https].
    pub broker: Option<String>,
    /// The host name to report under [default: the machine's].
    pub host: Option<String>,
    /// Labels, `key=value`.
    pub labels: Vec<String>,
    /// The CA certificate to pin.
    pub ca: Option<PathBuf>,
    /// The coordinator's bundle key (hex or a file).
    pub bundle_key: Option<String>,
    /// Units executors may act on.
    pub allow_units: Vec<String>,
    /// Containers executors may act on.
    pub allow_containers: Vec<String>,
    /// Sampling interval.
    pub interval: Option<String>,
    /// Enable only; do not start.
    pub no_start: bool,
}

/// Why `install` or `uninstall` failed.
#[derive(Debug, Error)]
pub enum AgentInstallError {
    /// A step on the machine failed.
    #[error(transparent)]
    Step(#[from] InstallError),
    /// The settings would not make a working agent.
    #[error("the agent's settings: {0}")]
    Settings(#[from] ConfigError),
    /// The config cannot be written as TOML.
    #[error("cannot write the config file: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The agent could never enroll.
    #[error(
        "the agent has no identity in {data_dir} and nothing to enroll with: give \
         --coordinator URL and --join-token TOKEN (`vigil-coordinator token create --join`)"
    )]
    NothingToEnrollWith {
        /// The data directory.
        data_dir: String,
    },
    /// The config names a data directory the unit cannot write to.
    #[error(
        "data_dir {0} cannot be used by the installed service: its sandbox lets it write \
         only to {DEFAULT_DATA_DIR}"
    )]
    DataDir(PathBuf),
    /// `--config` could not be read.
    #[error("cannot read {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The config file install writes, in the order TOML needs (values before tables).
#[derive(Debug, Serialize)]
struct InstalledConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    join_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "InstalledAllow::is_empty")]
    allow: InstalledAllow,
}

#[derive(Debug, Serialize)]
struct InstalledAllow {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    units: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    containers: Vec<String>,
}

impl InstalledAllow {
    fn is_empty(&self) -> bool {
        self.units.is_empty() && self.containers.is_empty()
    }
}

const HEADER: &str = "\
# Vigil agent settings, written by `vigil-agent install` (run it again to change them,
# or edit this file and `systemctl restart vigil-agent`). Keys: see README, \"Agent
# configuration\".
";

/// The broker a coordinator URL implies: its host, MQTT's port (TLS's if it is https).
pub fn broker_for(coordinator: &str) -> Option<String> {
    let (scheme, rest) = coordinator.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        format!("[{}]", bracketed.split(']').next()?)
    } else {
        authority.split(':').next()?.to_string()
    };
    if host.is_empty() {
        return None;
    }
    match scheme {
        "https" => Some(format!("mqtts://{host}:8883")),
        "http" => Some(format!("mqtt://{host}:1883")),
        _ => None,
    }
}

/// The config file's text for `request`, checked by resolving it as the agent will.
pub fn config_text(request: &InstallRequest) -> Result<String, AgentInstallError> {
    if let Some(path) = &request.config {
        let text =
            std::fs::read_to_string(path).map_err(|source| AgentInstallError::ReadConfig {
                path: path.clone(),
                source,
            })?;
        return Ok(text);
    }
    let mut labels = BTreeMap::new();
    for text in &request.labels {
        let (key, value) =
            vigil_shared::validate::parse_label(text).map_err(|e| ConfigError::Invalid {
                setting: "label",
                problem: e.problem,
            })?;
        labels.insert(key, value);
    }
    let broker = request
        .broker
        .clone()
        .or_else(|| request.coordinator.as_deref().and_then(broker_for));
    let file = InstalledConfig {
        host: request.host.clone(),
        coordinator: request.coordinator.clone(),
        join_token: request.join_token.clone(),
        broker,
        ca: request.ca.as_ref().map(|_| PathBuf::from(CA_FILE)),
        bundle_key: request.bundle_key.clone(),
        interval: request.interval.clone(),
        labels,
        allow: InstalledAllow {
            units: request.allow_units.clone(),
            containers: request.allow_containers.clone(),
        },
    };
    Ok(format!("{HEADER}\n{}", toml::to_string(&file)?))
}

/// Checks that `text` makes a working agent: it parses, resolves, keeps the data
/// directory the unit allows, and can enroll (or already has an identity).
fn check(text: &str, ca: Option<&Path>) -> Result<(), AgentInstallError> {
    let file: AgentFile = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        setting: "config file",
        problem: e.to_string(),
    })?;
    let mut resolved = config::resolve(file, Overrides::default())?;
    if resolved.data_dir != Path::new(DEFAULT_DATA_DIR) {
        return Err(AgentInstallError::DataDir(resolved.data_dir));
    }
    if let Some(ca) = ca {
        // Check the CA the agent will pin, before it is copied.
        resolved.ca = Some(ca.to_path_buf());
    }
    resolved.client_tls()?;
    let enrolled = crate::reporting::enrollment::Identity::path(&resolved.data_dir).exists();
    if !enrolled && (resolved.coordinator.is_none() || resolved.join_token.is_none()) {
        return Err(AgentInstallError::NothingToEnrollWith {
            data_dir: resolved.data_dir.display().to_string(),
        });
    }
    Ok(())
}

/// `vigil-agent install`.
pub fn install(request: &InstallRequest) -> Result<Steps, AgentInstallError> {
    install::require_root("vigil-agent install")?;
    let text = config_text(request)?;
    check(&text, request.ca.as_deref())?;
    let mut steps = Steps::default();
    let binary = SERVICE.install_binary(&mut steps)?;
    install::ensure_dir(Path::new(CONFIG_DIR), 0o755, None)?;
    if let Some(ca) = &request.ca {
        let pem = std::fs::read(ca).map_err(|source| AgentInstallError::ReadConfig {
            path: ca.clone(),
            source,
        })?;
        let change = install::write_file(Path::new(CA_FILE), &pem, 0o644, None)?;
        steps.record("ca", Path::new(CA_FILE), change);
    }
    let change = install::write_file(Path::new(CONFIG_FILE), text.as_bytes(), 0o600, None)?;
    steps.record("config", Path::new(CONFIG_FILE), change);
    let change = install::ensure_dir(Path::new(DEFAULT_DATA_DIR), 0o700, None)?;
    steps.record("data", Path::new(DEFAULT_DATA_DIR), change);
    SERVICE.install_unit(&binary, &mut steps)?;
    SERVICE.activate(!request.no_start, &mut steps)?;
    Ok(steps)
}

/// `vigil-agent uninstall`.
pub fn uninstall(purge: bool) -> Result<Steps, AgentInstallError> {
    install::require_root("vigil-agent uninstall")?;
    let mut steps = Steps::default();
    SERVICE.remove(&mut steps)?;
    for file in [CONFIG_FILE, CA_FILE] {
        let removed = install::remove_file(Path::new(file))?;
        steps.removed("config", Path::new(file), removed);
    }
    install::remove_dir_if_empty(Path::new(CONFIG_DIR));
    let data = Path::new(DEFAULT_DATA_DIR);
    if purge {
        let removed = install::remove_dir_all(data)?;
        steps.removed("data", data, removed);
    } else if data.exists() {
        steps.kept("data", data);
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_defaults_to_the_coordinators_host() {
        assert_eq!(
            broker_for("http://10.0.0.5:8000").as_deref(),
            Some("mqtt://10.0.0.5:1883")
        );
        assert_eq!(
            broker_for("https://vigil.example.com/").as_deref(),
            Some("mqtts://vigil.example.com:8883")
        );
        assert_eq!(
            broker_for("http://[::1]:8000").as_deref(),
            Some("mqtt://[::1]:1883")
        );
        assert_eq!(broker_for("ftp://x"), None);
        assert_eq!(broker_for("http://"), None);
    }

    #[test]
    fn the_config_made_from_flags_is_what_the_agent_reads() {
        let request = InstallRequest {
            coordinator: Some("http://10.0.0.5:8000".into()),
            join_token: Some("vigil_join_abc".into()),
            host: Some("web-1".into()),
            labels: vec!["role=web".into(), "env=prod".into()],
            allow_units: vec!["nginx.service".into()],
            ..InstallRequest::default()
        };
        let text = config_text(&request).expect("config");
        assert!(text.starts_with("# Vigil agent settings"), "{text}");
        let file: AgentFile = toml::from_str(&text).expect("parses as the agent's file");
        let resolved = config::resolve(file, Overrides::default()).expect("resolves");
        assert_eq!(resolved.host, "web-1");
        assert_eq!(resolved.broker.to_string(), "mqtt://10.0.0.5:1883");
        assert_eq!(resolved.join_token.as_deref(), Some("vigil_join_abc"));
        assert_eq!(resolved.allow.units, vec!["nginx.service".to_string()]);
        assert_eq!(resolved.labels.len(), 2);
        // The same request makes the same bytes: a second install changes nothing.
        assert_eq!(config_text(&request).expect("again"), text);
        check(&text, None).expect("a usable config");
    }

    #[test]
    fn a_config_that_cannot_enroll_or_names_another_data_dir_is_refused() {
        let request = InstallRequest {
            host: Some("web-1".into()),
            ..InstallRequest::default()
        };
        let text = config_text(&request).expect("config");
        let err = check(&text, None).expect_err("cannot enroll");
        assert!(err.to_string().contains("--join-token"), "{err}");
        let err = check(
            "data_dir = \"/srv/vigil\"\ncoordinator = \"http://c:8000\"\njoin_token = \"t\"\n",
            None,
        )
        .expect_err("data dir");
        assert!(err.to_string().contains("/srv/vigil"), "{err}");
        let err = config_text(&InstallRequest {
            labels: vec!["no equals".into()],
            ..InstallRequest::default()
        })
        .expect_err("bad label");
        assert!(err.to_string().contains("label"), "{err}");
    }
}
