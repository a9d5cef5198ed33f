//! The agent's settings, and where they come from.
//!
//! Precedence, highest first: command-line flags, `VIGIL_…` environment variables, the
//! TOML config file (`--config`), built-in defaults. [`AgentFile`] is the file's shape;
//! [`AgentConfig`] is the resolved result the agent runs with.
//!
//! Nearly everything the file holds widens what the agent (root on most hosts) may do:
//! the `[allow]` lists (units, containers, `exec` commands, webhooks), the policy
//! directory, the bundle key whose signatures it trusts, the data directory its identity
//! is read from. So the file, and a bundle key given as a file, are refused unless owned
//! by root or the agent's own user and writable by no one else
//! ([`vigil_shared::config_file::load_trusted`]); the error names the file, its mode and
//! its owner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use vigil_shared::broker_url::{BrokerUrl, BrokerUrlError};
use vigil_shared::bundle::PublicKey;
use vigil_shared::config_file::ConfigFileError;
use vigil_shared::tls::ClientTls;
use vigil_shared::validate::{self, FieldError};
use vigil_shared::wire::Tag;

use crate::acting::executors::ExecutorConfig;
use crate::acting::mapping::{ActionMappings, MappingFile};
use crate::acting::QueueSettings;

/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default broker: the coordinator's embedded broker on this machine.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// The settings an agent runs with. Its `Debug` never shows the MQTT password or the join
/// token.
#[derive(Clone, PartialEq)]
pub struct AgentConfig {
    /// The name this host reports under.
    pub host: String,
    /// Labels attached to every sample and to the host (`role=web`).
    pub labels: Vec<Tag>,
    /// The MQTT broker to publish to.
    pub broker: BrokerUrl,
    /// MQTT user name, if the broker wants one.
    pub mqtt_username: Option<String>,
    /// MQTT password, if the broker wants one.
    pub mqtt_password: Option<String>,
    /// How often to sample the host (and evaluate policies).
    pub interval: Duration,
    /// Directory of policy files (`*.yaml`), re-read when it changes.
    pub policies: Option<PathBuf>,
    /// Directory of `*.prom` files whose metrics are sampled too.
    pub textfile_dir: Option<PathBuf>,
    /// Where the agent keeps its action queue and outbox.
    pub data_dir: PathBuf,
    /// Most bytes the metric buffer holds on disk while the coordinator is unreachable
    /// (`metrics_buffer`); when full, the oldest batches go.
    pub metrics_buffer_bytes: u64,
    /// What executors may touch (`[allow]`).
    pub allow: ExecutorConfig,
    /// What the original system's `drain-pod`, `rebalance` and `snapshot` run as here
    /// (`[actions]`).
    pub actions: ActionMappings,
    /// How the action queue behaves (`[remediation]`).
    pub remediation: QueueSettings,
    /// The coordinator's public key for policy bundles; without it bundles are ignored.
    pub bundle_key: Option<BundleKey>,
    /// The coordinator's HTTP URL (`http://host:port`), to enroll at.
    pub coordinator: Option<String>,
    /// The join token to enroll with (needed only until the agent has an identity).
    pub join_token: Option<String>,
    /// The CA certificate the coordinator's TLS certificate must chain to (`--ca`): the
    /// agent trusts nothing else for `mqtts://` and `https://`. Without it, public roots.
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("AgentConfig")
            .field("host", &self.host)
            .field("labels", &self.labels)
            .field("broker", &self.broker)
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &redacted(&self.mqtt_password))
            .field("interval", &self.interval)
            .field("policies", &self.policies)
            .field("textfile_dir", &self.textfile_dir)
            .field("data_dir", &self.data_dir)
            .field("allow", &self.allow)
            .field("actions", &self.actions)
            .field("remediation", &self.remediation)
            .field("bundle_key", &self.bundle_key)
            .field("coordinator", &self.coordinator)
            .field("join_token", &redacted(&self.join_token))
            .field("ca", &self.ca)
            .finish()
    }
}

/// The public key policy bundles must be signed with, and how it was given (`--bundle-key`:
/// 64 hex characters, or a file holding them).
#[derive(Debug, Clone)]
pub struct BundleKey {
    /// As given: the hex key or the key file's path.
    pub spec: String,
    /// The key.
    pub key: PublicKey,
}

impl BundleKey {
    /// Reads the key from `spec` (a file holding 64 hex characters, or the hex itself). A
    /// key file must be owned by root or this user and writable by no one else: whoever
    /// can change it decides which bundles this agent runs.
    pub fn load(spec: &str) -> Result<BundleKey, ConfigError> {
        if Path::new(spec).is_file() {
            vigil_shared::config_file::check_trusted(Path::new(spec))?;
        }
        let key = PublicKey::load(spec).map_err(|e| ConfigError::invalid("bundle_key", e))?;
        Ok(BundleKey {
            spec: spec.to_string(),
            key,
        })
    }
}

impl PartialEq for BundleKey {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

/// Default data directory of an installed agent.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/vigil";
/// Default size of the metric buffer: at a 1 s interval, over 24 h of batches of up to
/// 3 KiB.
pub const DEFAULT_METRICS_BUFFER: u64 = 256 << 20;

impl AgentConfig {
    /// Defaults for `host`, with the default broker and interval and no labels.
    pub fn for_host(host: impl Into<String>) -> Self {
        AgentConfig {
            host: host.into(),
            labels: Vec::new(),
            broker: BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false,
            },
            mqtt_username: None,
            mqtt_password: None,
            interval: DEFAULT_INTERVAL,
            policies: None,
            textfile_dir: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            metrics_buffer_bytes: DEFAULT_METRICS_BUFFER,
            allow: ExecutorConfig::default(),
            actions: ActionMappings::default(),
            remediation: QueueSettings::default(),
            bundle_key: None,
            coordinator: None,
            join_token: None,
            ca: None,
        }
    }

    /// What the agent trusts for TLS: the pinned CA if `ca` is set, public roots if TLS
    /// is used without one, nothing if neither the broker nor the coordinator uses TLS.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, ConfigError> {
        let https = self
            .coordinator
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
        match &self.ca {
            Some(path) => ClientTls::pinned(path)
                .map(Some)
                .map_err(|e| ConfigError::invalid("ca", e)),
            None if self.broker.tls || https => ClientTls::public_roots()
                .map(Some)
                .map_err(|e| ConfigError::invalid("ca", e)),
            None => Ok(None),
        }
    }
}

/// `[remediation]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationFile {
    /// Record every action as done without running anything.
    pub dry_run: Option<bool>,
    /// Start with remediation paused (the kill switch).
    pub paused: Option<bool>,
    /// Most actions running at once (on different targets; default 4).
    pub max_parallel: Option<usize>,
    /// Attempts per action (default 3).
    pub max_attempts: Option<u32>,
    /// Time for one attempt, e.g. `"30s"`.
    pub attempt_timeout: Option<String>,
    /// First retry delay, e.g. `"1s"` (doubles per attempt, ±25 % jitter).
    pub backoff: Option<String>,
    /// Longest retry delay, e.g. `"60s"`.
    pub backoff_cap: Option<String>,
}

/// The config file's shape (`agent.toml`). Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// See [`AgentConfig::host`].
    pub host: Option<String>,
    /// Labels as a table: `[labels]` `role = "web"`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Broker URL.
    pub broker: Option<String>,
    /// MQTT user name.
    pub mqtt_username: Option<String>,
    /// MQTT password.
    pub mqtt_password: Option<String>,
    /// Sampling interval, e.g. `"5s"`.
    pub interval: Option<String>,
    /// Policy directory.
    pub policies: Option<PathBuf>,
    /// Textfile collector directory.
    pub textfile_dir: Option<PathBuf>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Metric buffer size, e.g. `"256MiB"`.
    pub metrics_buffer: Option<String>,
    /// What executors may touch.
    #[serde(default)]
    pub allow: ExecutorConfig,
    /// What actions without a built-in meaning run as: `drain-pod = { exec = "…" }`.
    #[serde(default)]
    pub actions: std::collections::BTreeMap<String, MappingFile>,
    /// Action queue settings.
    #[serde(default)]
    pub remediation: RemediationFile,
    /// The coordinator's bundle public key: 64 hex characters or a file holding them.
    pub bundle_key: Option<String>,
    /// The coordinator's HTTP URL, to enroll at.
    pub coordinator: Option<String>,
    /// The join token to enroll with.
    pub join_token: Option<String>,
    /// The CA certificate to pin for TLS (PEM file).
    pub ca: Option<PathBuf>,
}

/// Why the settings could not be resolved.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A setting has a value that cannot be used.
    #[error("setting `{setting}`: {problem}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The broker URL is malformed.
    #[error(transparent)]
    Broker(#[from] BrokerUrlError),
    /// The host name could not be determined.
    #[error(transparent)]
    NoHostName(#[from] vigil_service::process::NoHostName),
}

impl ConfigError {
    fn invalid(setting: &'static str, e: impl std::fmt::Display) -> Self {
        ConfigError::Invalid {
            setting,
            problem: e.to_string(),
        }
    }
}

impl AgentFile {
    /// Reads and parses a config file, refusing one that others may have written (see
    /// the module documentation).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(vigil_shared::config_file::load_trusted(path)?)
    }
}

/// Settings given on the command line or in the environment (each `None` when absent).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--host` / `VIGIL_HOST`.
    pub host: Option<String>,
    /// `--label` / `VIGIL_LABELS`.
    pub labels: Vec<String>,
    /// `--broker` / `VIGIL_BROKER`.
    pub broker: Option<String>,
    /// `--mqtt-username` / `VIGIL_MQTT_USERNAME`.
    pub mqtt_username: Option<String>,
    /// `--mqtt-password` / `VIGIL_MQTT_PASSWORD`.
    pub mqtt_password: Option<String>,
    /// `--interval` / `VIGIL_INTERVAL`.
    pub interval: Option<String>,
    /// `--policies` / `VIGIL_POLICIES`.
    pub policies: Option<PathBuf>,
    /// `--textfile-dir` / `VIGIL_TEXTFILE_DIR`.
    pub textfile_dir: Option<PathBuf>,
    /// `--data-dir` / `VIGIL_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--metrics-buffer` / `VIGIL_METRICS_BUFFER`.
    pub metrics_buffer: Option<String>,
    /// `--dry-run` / `VIGIL_DRY_RUN`: record actions, never run them.
    pub dry_run: bool,
    /// `--pause-remediation` / `VIGIL_PAUSE_REMEDIATION`: start with the kill switch on.
    pub pause_remediation: bool,
    /// `--allow-unit`: more systemd units executors may touch.
    pub allow_units: Vec<String>,
    /// `--allow-container`: more containers executors may touch.
    pub allow_containers: Vec<String>,
    /// `--bundle-key` / `VIGIL_BUNDLE_KEY`: the coordinator's bundle public key.
    pub bundle_key: Option<String>,
    /// `--coordinator` / `VIGIL_COORDINATOR`: the coordinator's HTTP URL, to enroll at.
    pub coordinator: Option<String>,
    /// `--join-token` / `VIGIL_JOIN_TOKEN`: the join token to enroll with.
    pub join_token: Option<String>,
    /// `--ca` / `VIGIL_CA`: the CA certificate to pin for TLS.
    pub ca: Option<PathBuf>,
}

/// Resolves the settings: overrides beat the file, the file beats the defaults.
pub fn resolve(file: AgentFile, overrides: Overrides) -> Result<AgentConfig, ConfigError> {
    let host = match overrides.host.or(file.host) {
        Some(h) => h,
        None => vigil_service::process::local_host_name()?,
    };
    validate::host_name(&host).map_err(|e| ConfigError::invalid("host", e.problem))?;

    let mut labels: Vec<Tag> = file.labels.into_iter().collect();
    for text in &overrides.labels {
        let (k, v) = validate::parse_label(text)
            .map_err(|e: FieldError| ConfigError::invalid("label", e.problem))?;
        labels.retain(|(key, _)| *key != k);
        labels.push((k, v));
    }
    validate::tags(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ConfigError::invalid("labels", e.problem))?;
    labels.sort();

    let broker: BrokerUrl = overrides
        .broker
        .or(file.broker)
        .unwrap_or_else(|| DEFAULT_BROKER.to_string())
        .parse()?;

    let interval = match overrides.interval.or(file.interval) {
        Some(text) => vigil_shared::time::parse_duration(&text)
            .map_err(|e| ConfigError::invalid("interval", e))?,
        None => DEFAULT_INTERVAL,
    };
    if interval < Duration::from_millis(vigil_shared::validate::MIN_INTERVAL_MS) {
        return Err(ConfigError::invalid("interval", "must be at least 100ms"));
    }
    if interval > Duration::from_millis(vigil_shared::validate::MAX_INTERVAL_MS) {
        return Err(ConfigError::invalid("interval", "must be at most 1d"));
    }

    let bundle_key = overrides
        .bundle_key
        .or(file.bundle_key)
        .map(|spec| BundleKey::load(&spec))
        .transpose()?;

    let coordinator = overrides.coordinator.or(file.coordinator);
    if let Some(url) = &coordinator {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "coordinator",
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
    }

    let metrics_buffer_bytes = match overrides.metrics_buffer.or(file.metrics_buffer) {
        Some(text) => vigil_shared::config_file::parse_size(&text)
            .map_err(|e| ConfigError::invalid("metrics_buffer", e))? as u64,
        None => DEFAULT_METRICS_BUFFER,
    };

    let ca = overrides.ca.or(file.ca);
    if let Some(path) = &ca {
        // Read now, so that a wrong path stops the start with its name.
        ClientTls::pinned(path).map_err(|e| ConfigError::invalid("ca", e))?;
    }

    let allow = {
        let mut allow = file.allow;
        allow.units.extend(overrides.allow_units);
        allow.containers.extend(overrides.allow_containers);
        allow
    };
    let actions = ActionMappings::resolve(&file.actions, &allow)
        .map_err(|e| ConfigError::invalid("actions", e))?;

    Ok(AgentConfig {
        ca,
        bundle_key,
        actions,
        coordinator,
        join_token: overrides.join_token.or(file.join_token),
        host,
        labels,
        broker,
        mqtt_username: overrides.mqtt_username.or(file.mqtt_username),
        mqtt_password: overrides.mqtt_password.or(file.mqtt_password),
        interval,
        policies: overrides.policies.or(file.policies),
        textfile_dir: overrides.textfile_dir.or(file.textfile_dir),
        data_dir: overrides
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        metrics_buffer_bytes,
        allow,
        remediation: {
            let r = file.remediation;
            let defaults = QueueSettings::default();
            let duration = |setting: &'static str, text: Option<String>, default: Duration| {
                text.map_or(Ok(default), |t| {
                    vigil_shared::time::parse_duration(&t)
                        .map_err(|e| ConfigError::invalid(setting, e))
                })
            };
            QueueSettings {
                max_parallel: r.max_parallel.unwrap_or(defaults.max_parallel).max(1),
                max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts).max(1),
                attempt_timeout: duration(
                    "remediation.attempt_timeout",
                    r.attempt_timeout,
                    defaults.attempt_timeout,
                )?,
                backoff_base: duration("remediation.backoff", r.backoff, defaults.backoff_base)?,
                backoff_cap: duration(
                    "remediation.backoff_cap",
                    r.backoff_cap,
                    defaults.backoff_cap,
                )?,
                dry_run: overrides.dry_run || r.dry_run.unwrap_or(false),
                paused: overrides.pause_remediation || r.paused.unwrap_or(false),
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: AgentFile = toml::from_str(
            "host = \"from-file\"\ninterval = \"2s\"\n[labels]\nrole = \"db\"\nenv = \"prod\"\n",
        )
        .unwrap();
        let config = resolve(
            file,
            Overrides {
                host: Some("from-flag".into()),
                labels: vec!["role=web".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.host, "from-flag");
        assert_eq!(config.interval, Duration::from_secs(2));
        assert_eq!(
            config.labels,
            vec![("env".into(), "prod".into()), ("role".into(), "web".into())]
        );
        assert_eq!(config.broker.port, 1883);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "hots = \"x\"\n").unwrap();
        let err = AgentFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("hots"), "{err}");
        let err = resolve(
            AgentFile::default(),
            Overrides {
                host: Some("h".into()),
                interval: Some("fast".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("interval"), "{err}");
        let err = resolve(
            AgentFile::default(),
            Overrides {
                host: Some("a/b".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("host"), "{err}");
    }

    #[test]
    fn the_actions_table_maps_onto_the_allowlists_and_a_bad_entry_is_named() {
        let file: AgentFile = toml::from_str(
            "host = \"h\"\n[allow.commands]\ndrain-node = [\"/bin/true\"]\n\
             [actions]\ndrain-pod = { exec = \"drain-node\" }\n",
        )
        .unwrap();
        let config = resolve(file, Overrides::default()).unwrap();
        assert!(config
            .actions
            .runs(vigil_shared::policy::ActionKind::DrainPod));
        assert!(!config
            .actions
            .runs(vigil_shared::policy::ActionKind::Snapshot));
        let file: AgentFile =
            toml::from_str("host = \"h\"\n[actions]\nsnapshot = { exec = \"backup\" }\n").unwrap();
        let err = resolve(file, Overrides::default()).unwrap_err().to_string();
        assert!(
            err.contains("setting `actions`") && err.contains("`actions.snapshot.exec`"),
            "{err}"
        );
    }

    #[test]
    fn enrollment_settings_flow_and_debug_hides_secrets() {
        let file: AgentFile = toml::from_str(
            "host = \"h\"\ncoordinator = \"http://file:8080\"\njoin_token = \"jt-file-secret\"\n\
             mqtt_password = \"pw-secret\"\n",
        )
        .unwrap();
        let config = resolve(
            file,
            Overrides {
                coordinator: Some("http://flag:8080".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.coordinator.as_deref(), Some("http://flag:8080"));
        assert_eq!(config.join_token.as_deref(), Some("jt-file-secret"));
        let text = format!("{config:?}");
        assert!(
            !text.contains("jt-file-secret") && !text.contains("pw-secret"),
            "{text}"
        );
        assert!(
            text.contains("<redacted>") && text.contains("http://flag:8080"),
            "{text}"
        );
        let err = resolve(
            AgentFile::default(),
            Overrides {
                host: Some("h".into()),
                coordinator: Some("flag:8080".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("coordinator"), "{err}");
    }

    #[test]
    fn a_bundle_key_is_read_from_hex_or_a_file_and_a_bad_one_is_named() {
        let keys = vigil_shared::bundle::BundleKeys::generate();
        let from_hex = resolve(
            AgentFile::default(),
            Overrides {
                host: Some("h".into()),
                bundle_key: Some(keys.public_hex()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert!(from_hex.bundle_key.is_some());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pub");
        std::fs::write(&path, format!("{}\n", keys.public_hex())).unwrap();
        let file: AgentFile = toml::from_str(&format!(
            "host = \"h\"\nbundle_key = {:?}\n",
            path.display().to_string()
        ))
        .unwrap();
        assert!(resolve(file, Overrides::default())
            .unwrap()
            .bundle_key
            .is_some());
        let err = resolve(
            AgentFile::default(),
            Overrides {
                host: Some("h".into()),
                bundle_key: Some("not-a-key".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bundle_key"), "{err}");
    }

    #[test]
    fn a_config_or_key_file_others_may_write_is_refused_naming_file_mode_and_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "host = \"h\"\n[allow]\ncommands = { sh = [\"/bin/sh\", \"-c\", \"id\"] }\n",
        )
        .unwrap();
        let owner = std::fs::metadata(&path).unwrap().uid();
        for mode in [0o666, 0o664, 0o646] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = AgentFile::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains(&format!("{mode:04o}"))
                    && err.contains(&format!("owned by uid {owner}")),
                "{err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = AgentFile::load(&path).unwrap();
        assert!(file.allow.commands.contains_key("sh"));

        let key = dir.path().join("bundle.pub");
        std::fs::write(
            &key,
            vigil_shared::bundle::BundleKeys::generate().public_hex(),
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = BundleKey::load(&key.display().to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bundle.pub") && err.contains("0666"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(BundleKey::load(&key.display().to_string()).is_ok());
    }
}
