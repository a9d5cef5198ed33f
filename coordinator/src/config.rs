//! The coordinator's settings, and where they come from.
//!
//! Precedence, highest first: command-line flags, `VIGIL_…` environment variables, the
//! TOML config file (`--config`), built-in defaults (shown by `--help`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use vigil_shared::broker_url::{BrokerUrl, BrokerUrlError};
use vigil_shared::config_file::ConfigFileError;

use crate::store::MapSize;

/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "vigil-data";
/// Default REST listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Default embedded broker listen address.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
/// Default metric history retention.
pub const DEFAULT_RETENTION: &str = "7d";
/// Default audit retention: action records, policy events and the event feed.
pub const DEFAULT_AUDIT_RETENTION: &str = "90d";
/// The shortest audit retention accepted.
const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(1);
/// The longest audit retention accepted (100 years).
const MAX_AUDIT_RETENTION: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Default lifetime of a disruption-budget lease not renewed.
pub const DEFAULT_LEASE_TTL: &str = "60s";
/// The range of lease lifetimes accepted.
const LEASE_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Default initial LMDB map size.
pub const DEFAULT_DB_MAP_SIZE: &str = "1GiB";
/// Default ceiling the LMDB map may grow to.
pub const DEFAULT_DB_MAX_SIZE: &str = "64GiB";

/// Which broker the coordinator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerMode {
    /// Start rumqttd inside the coordinator, listening here.
    Embedded {
        /// The MQTT listen address.
        listen: SocketAddr,
    },
    /// Connect to a broker that already runs (Mosquitto, EMQX, …).
    External(BrokerUrl),
}

/// The settings the coordinator runs with.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where LMDB files live.
    pub data_dir: PathBuf,
    /// Where the REST API listens.
    pub listen: SocketAddr,
    /// Embedded or external broker.
    pub broker: BrokerMode,
    /// MQTT user name for an external broker.
    pub mqtt_username: Option<String>,
    /// MQTT password for an external broker.
    pub mqtt_password: Option<String>,
    /// How long metric history is kept.
    pub retention: Duration,
    /// How long the audit trail (actions, policy events, the event feed) is kept.
    pub audit_retention: Duration,
    /// LMDB map sizes.
    pub map_size: MapSize,
    /// The policy directory (`*.yaml` / `*.yml`), if any.
    pub policies_dir: Option<PathBuf>,
    /// The bundle directory (one folder per host group), if any.
    pub bundles_dir: Option<PathBuf>,
    /// The bundle signing key file.
    pub bundle_key: PathBuf,
    /// Whether `GET /metrics` needs a (viewer) token; it is open by default.
    pub metrics_auth: bool,
    /// Failed REST authentications one client address may make per minute before it
    /// gets 429 (0: no limit).
    pub auth_failure_limit: u32,
    /// Socket bounds of the embedded broker's front.
    pub mqtt_limits: crate::mqtt::front::FrontLimits,
    /// Socket bounds of the REST API.
    pub http_limits: crate::http::server::HttpLimits,
    /// How many threads decode, authenticate and validate agent messages at once.
    pub ingest_threads: usize,
    /// Whether plaintext listeners beyond loopback were explicitly allowed.
    pub allow_plaintext_remote: bool,
    /// The certificate both listeners serve; `None`: plain HTTP and MQTT.
    pub tls: Option<TlsFiles>,
    /// The CA the coordinator's own MQTT client trusts (for its TLS broker, or an
    /// external `mqtts://` one); `None`: public roots.
    pub tls_ca: Option<PathBuf>,
    /// Which streams are republished as JSON for integrations, at which QoS.
    pub json_mirror: crate::events::mirror::MirrorSettings,
    /// The file mapping Alertmanager alerts to actions, if any.
    pub alert_routes: Option<PathBuf>,
    /// How long a disruption-budget lease lasts unless its agent renews it.
    pub lease_ttl: Duration,
    /// When a host counts as silent, which never do, and where to tell.
    pub deadman: crate::deadman::DeadmanSettings,
}

/// The server certificate chain and key (PEM) of the REST API and the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, server certificate first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl CoordinatorConfig {
    /// The broker URL agents (and the coordinator itself) connect to.
    pub fn broker_url(&self) -> BrokerUrl {
        match &self.broker {
            BrokerMode::Embedded { listen } => BrokerUrl {
                tls: self.tls.is_some(),
                ..crate::mqtt::broker::loopback_url(*listen)
            },
            BrokerMode::External(url) => url.clone(),
        }
    }
}

/// The config file's shape (`coordinator.toml`). Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorFile {
    /// See `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// See `--listen`.
    pub listen: Option<String>,
    /// See `--mqtt-listen`.
    pub mqtt_listen: Option<String>,
    /// See `--broker`.
    pub broker: Option<String>,
    /// See `--mqtt-username`.
    pub mqtt_username: Option<String>,
    /// See `--mqtt-password`.
    pub mqtt_password: Option<String>,
    /// See `--retention`.
    pub retention: Option<String>,
    /// See `--audit-retention`.
    pub audit_retention: Option<String>,
    /// See `--db-map-size`.
    pub db_map_size: Option<String>,
    /// See `--db-max-size`.
    pub db_max_size: Option<String>,
    /// See `--policies`.
    pub policies: Option<PathBuf>,
    /// See `--bundles`.
    pub bundles: Option<PathBuf>,
    /// See `--bundle-key`.
    pub bundle_key: Option<PathBuf>,
    /// See `--metrics-auth`.
    pub metrics_auth: Option<bool>,
    /// See `--auth-failure-limit`.
    pub auth_failure_limit: Option<u32>,
    /// See `--mqtt-max-connections`.
    pub mqtt_max_connections: Option<usize>,
    /// See `--mqtt-max-pending-per-address`.
    pub mqtt_max_pending_per_address: Option<usize>,
    /// See `--http-max-connections`.
    pub http_max_connections: Option<usize>,
    /// See `--ingest-threads`.
    pub ingest_threads: Option<usize>,
    /// See `--http-max-connections-per-address`.
    pub http_max_connections_per_address: Option<usize>,
    /// See `--allow-plaintext-remote`.
    pub allow_plaintext_remote: Option<bool>,
    /// See `--tls`.
    pub tls: Option<bool>,
    /// See `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// See `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// See `--json-mirror`.
    pub json_mirror: Option<String>,
    /// See `--alert-routes`.
    pub alert_routes: Option<PathBuf>,
    /// See `--lease-ttl`.
    pub lease_ttl: Option<String>,
    /// See `--silent-after`.
    pub silent_after: Option<u32>,
    /// See `--ephemeral-hosts`.
    pub ephemeral_hosts: Option<String>,
    /// See `--silent-webhook`.
    pub silent_webhook: Option<String>,
}

/// Settings given as flags or environment variables (`None` when absent).
pub type Overrides = CoordinatorFile;

/// Why the settings could not be resolved.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A setting cannot be used.
    #[error("setting `{setting}`: {problem}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The broker URL is malformed.
    #[error(transparent)]
    Broker(#[from] BrokerUrlError),
}

impl CoordinatorFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(vigil_shared::config_file::load(path)?)
    }
}

/// Resolves the settings: overrides beat the file, the file beats the defaults.
pub fn resolve(file: CoordinatorFile, over: Overrides) -> Result<CoordinatorConfig, ConfigError> {
    let invalid = |setting, problem: String| ConfigError::Invalid { setting, problem };
    let addr = |setting, text: String| {
        text.parse::<SocketAddr>().map_err(|e| {
            invalid(
                setting,
                format!("`{text}` is not an address like 127.0.0.1:8000: {e}"),
            )
        })
    };
    let listen = addr(
        "listen",
        over.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN.into()),
    )?;
    let broker = match over.broker.or(file.broker) {
        Some(url) => BrokerMode::External(url.parse()?),
        None => BrokerMode::Embedded {
            listen: addr(
                "mqtt_listen",
                over.mqtt_listen
                    .or(file.mqtt_listen)
                    .unwrap_or(DEFAULT_MQTT_LISTEN.into()),
            )?,
        },
    };
    let retention_text = over
        .retention
        .or(file.retention)
        .unwrap_or(DEFAULT_RETENTION.into());
    let retention =
        vigil_shared::time::parse_duration(&retention_text).map_err(|e| invalid("retention", e))?;
    let audit_retention_text = over
        .audit_retention
        .or(file.audit_retention)
        .unwrap_or(DEFAULT_AUDIT_RETENTION.into());
    let audit_retention = vigil_shared::time::parse_duration(&audit_retention_text)
        .map_err(|e| invalid("audit_retention", e))?;
    if !(MIN_AUDIT_RETENTION..=MAX_AUDIT_RETENTION).contains(&audit_retention) {
        return Err(invalid(
            "audit_retention",
            format!("`{audit_retention_text}` is not between 1s and 100 years"),
        ));
    }
    let lease_ttl_text = over
        .lease_ttl
        .or(file.lease_ttl)
        .unwrap_or(DEFAULT_LEASE_TTL.into());
    let lease_ttl =
        vigil_shared::time::parse_duration(&lease_ttl_text).map_err(|e| invalid("lease_ttl", e))?;
    if !LEASE_TTL_RANGE.contains(&lease_ttl) {
        return Err(invalid(
            "lease_ttl",
            format!("`{lease_ttl_text}` is not between 1s and 1h"),
        ));
    }
    let size = |setting, text: String| parse_size(&text).map_err(|e| invalid(setting, e));
    let initial = size(
        "db_map_size",
        over.db_map_size
            .or(file.db_map_size)
            .unwrap_or(DEFAULT_DB_MAP_SIZE.into()),
    )?;
    let max = size(
        "db_max_size",
        over.db_max_size
            .or(file.db_max_size)
            .unwrap_or(DEFAULT_DB_MAX_SIZE.into()),
    )?;
    if max < initial {
        return Err(invalid(
            "db_max_size",
            format!("{max} bytes is smaller than db_map_size ({initial} bytes)"),
        ));
    }
    let count = |setting, value: Option<usize>, default: usize| match value {
        Some(0) => Err(invalid(setting, "must be at least 1".into())),
        Some(n) if n > 1_000_000 => Err(invalid(setting, format!("{n} is more than 1000000"))),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let mqtt_defaults = crate::mqtt::front::FrontLimits::default();
    let mqtt_limits = crate::mqtt::front::FrontLimits {
        max_connections: count(
            "mqtt_max_connections",
            over.mqtt_max_connections.or(file.mqtt_max_connections),
            mqtt_defaults.max_connections,
        )?,
        max_pending_per_address: count(
            "mqtt_max_pending_per_address",
            over.mqtt_max_pending_per_address
                .or(file.mqtt_max_pending_per_address),
            mqtt_defaults.max_pending_per_address,
        )?,
        ..mqtt_defaults
    };
    let http_defaults = crate::http::server::HttpLimits::default();
    let http_limits = crate::http::server::HttpLimits {
        max_connections: count(
            "http_max_connections",
            over.http_max_connections.or(file.http_max_connections),
            http_defaults.max_connections,
        )?,
        max_connections_per_address: count(
            "http_max_connections_per_address",
            over.http_max_connections_per_address
                .or(file.http_max_connections_per_address),
            http_defaults.max_connections_per_address,
        )?,
        ..http_defaults
    };
    let allow_plaintext_remote = over
        .allow_plaintext_remote
        .or(file.allow_plaintext_remote)
        .unwrap_or(false);
    let data_dir = over
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let made = crate::security::certs::CertPaths::in_data_dir(&data_dir);
    let tls = match (
        over.tls.or(file.tls),
        over.tls_cert.or(file.tls_cert),
        over.tls_key.or(file.tls_key),
    ) {
        (Some(false), _, _) => None,
        (_, Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (_, Some(_), None) | (_, None, Some(_)) => {
            return Err(invalid(
                "tls_cert",
                "tls_cert and tls_key go together: give both, or neither to use the \
                 data dir's certificate (vigil-coordinator certs init)"
                    .into(),
            ))
        }
        (on, None, None) if made.server_files_exist() || on == Some(true) => {
            if !made.server_files_exist() {
                return Err(invalid(
                    "tls",
                    format!(
                        "TLS is on but there is no certificate: {} is missing. Run \
                         `vigil-coordinator certs init --data-dir {}`, or give \
                         tls_cert and tls_key",
                        made.server_cert.display(),
                        data_dir.display()
                    ),
                ));
            }
            Some(TlsFiles {
                cert: made.server_cert.clone(),
                key: made.server_key.clone(),
            })
        }
        (_, None, None) => None,
    };
    let tls_ca = over
        .tls_ca
        .or(file.tls_ca)
        .or_else(|| made.ca_cert.is_file().then(|| made.ca_cert.clone()));
    let mut listeners = vec![("listen", listen)];
    if let BrokerMode::Embedded { listen } = &broker {
        listeners.push(("mqtt_listen", *listen));
    }
    for (setting, addr) in listeners {
        if !addr.ip().is_loopback() && tls.is_none() && !allow_plaintext_remote {
            return Err(invalid(
                setting,
                format!(
                    "{addr} is reachable beyond this machine, and TLS is off: tokens, \
                     passwords and everything else would cross the network in clear. Run \
                     `vigil-coordinator certs init` (or give tls_cert and tls_key), listen \
                     on 127.0.0.1, or pass --allow-plaintext-remote \
                     (allow_plaintext_remote = true) on a network you trust"
                ),
            ));
        }
    }
    let deadman = {
        use crate::deadman::{self, DeadmanSettings};
        let silent_after = over
            .silent_after
            .or(file.silent_after)
            .unwrap_or(deadman::DEFAULT_SILENT_AFTER);
        if !deadman::SILENT_AFTER_RANGE.contains(&silent_after) {
            return Err(invalid(
                "silent_after",
                format!(
                    "{silent_after} is not between {} and {} sampling intervals",
                    deadman::SILENT_AFTER_RANGE.start(),
                    deadman::SILENT_AFTER_RANGE.end()
                ),
            ));
        }
        DeadmanSettings {
            silent_after,
            ephemeral_hosts: match over.ephemeral_hosts.or(file.ephemeral_hosts) {
                Some(text) => deadman::parse_ephemeral_hosts(&text)
                    .map_err(|e| invalid("ephemeral_hosts", e))?,
                None => Vec::new(),
            },
            webhook: over
                .silent_webhook
                .or(file.silent_webhook)
                .map(|url| deadman::webhook::check_url(&url))
                .transpose()
                .map_err(|e| invalid("silent_webhook", e))?,
        }
    };
    Ok(CoordinatorConfig {
        deadman,
        bundle_key: over
            .bundle_key
            .or(file.bundle_key)
            .unwrap_or_else(|| data_dir.join(crate::bundles::keys::DEFAULT_KEY_FILE)),
        bundles_dir: over.bundles.or(file.bundles),
        data_dir,
        listen,
        broker,
        mqtt_username: over.mqtt_username.or(file.mqtt_username),
        mqtt_password: over.mqtt_password.or(file.mqtt_password),
        retention,
        audit_retention,
        map_size: MapSize { initial, max },
        policies_dir: over.policies.or(file.policies),
        metrics_auth: over.metrics_auth.or(file.metrics_auth).unwrap_or(false),
        auth_failure_limit: over
            .auth_failure_limit
            .or(file.auth_failure_limit)
            .unwrap_or(crate::http::auth::DEFAULT_MAX_FAILURES),
        mqtt_limits,
        http_limits,
        ingest_threads: match over.ingest_threads.or(file.ingest_threads) {
            Some(n) if !(1..=64).contains(&n) => {
                return Err(invalid("ingest_threads", format!("{n} is not within 1–64")))
            }
            Some(n) => n,
            None => crate::mqtt::ingest::default_threads(),
        },
        allow_plaintext_remote,
        tls,
        tls_ca,
        json_mirror: match over.json_mirror.or(file.json_mirror) {
            Some(text) => text.parse().map_err(|e| invalid("json_mirror", e))?,
            None => crate::events::mirror::MirrorSettings::default(),
        },
        alert_routes: over.alert_routes.or(file.alert_routes),
        lease_ttl,
    })
}

pub use vigil_shared::config_file::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("12").is_err());
        assert!(parse_size("1 parsec").unwrap_err().contains("parsec"));
    }

    #[test]
    fn defaults_give_an_embedded_broker_on_loopback() {
        let config = resolve(CoordinatorFile::default(), Overrides::default()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            config.broker,
            BrokerMode::Embedded {
                listen: "127.0.0.1:1883".parse().unwrap()
            }
        );
        assert_eq!(config.broker_url().to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!(config.retention, Duration::from_secs(7 * 86400));
        assert_eq!(config.audit_retention, Duration::from_secs(90 * 86400));
        assert_eq!(config.policies_dir, None);
    }

    #[test]
    fn plaintext_beyond_loopback_needs_an_explicit_yes() {
        for over in [
            Overrides {
                listen: Some("0.0.0.0:8000".into()),
                ..Overrides::default()
            },
            Overrides {
                mqtt_listen: Some("0.0.0.0:1883".into()),
                ..Overrides::default()
            },
        ] {
            let e = resolve(CoordinatorFile::default(), over).unwrap_err();
            assert!(e.to_string().contains("--allow-plaintext-remote"), "{e}");
        }
        let file: CoordinatorFile =
            toml::from_str("listen = \"0.0.0.0:8000\"\nallow_plaintext_remote = true\n").unwrap();
        assert!(
            resolve(file, Overrides::default())
                .unwrap()
                .allow_plaintext_remote
        );
        // An external broker's address is not a listener of ours.
        let external = Overrides {
            broker: Some("mqtt://10.0.0.5:1883".into()),
            ..Overrides::default()
        };
        assert!(resolve(CoordinatorFile::default(), external).is_ok());
    }

    #[test]
    fn tls_turns_on_with_the_data_dirs_certificate_and_allows_remote_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let with_dir = |extra: Overrides| Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            listen: extra.listen.or(Some("0.0.0.0:8443".into())),
            mqtt_listen: extra.mqtt_listen.or(Some("0.0.0.0:8883".into())),
            ..extra
        };
        // No certificate yet: remote listeners are refused, and `tls = true` says why.
        let e = resolve(CoordinatorFile::default(), with_dir(Overrides::default())).unwrap_err();
        assert!(e.to_string().contains("certs init"), "{e}");
        let e = resolve(
            CoordinatorFile::default(),
            with_dir(Overrides {
                tls: Some(true),
                ..Overrides::default()
            }),
        )
        .unwrap_err();
        assert!(e.to_string().contains("server.pem"), "{e}");

        let paths = crate::security::certs::CertPaths::in_data_dir(dir.path());
        crate::security::certs::init(&paths, &[], false).unwrap();
        let config = resolve(CoordinatorFile::default(), with_dir(Overrides::default())).unwrap();
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: paths.server_cert.clone(),
                key: paths.server_key.clone()
            })
        );
        assert_eq!(config.tls_ca, Some(paths.ca_cert.clone()));
        assert_eq!(config.broker_url().to_string(), "mqtts://127.0.0.1:8883");

        let off = with_dir(Overrides {
            tls: Some(false),
            listen: Some("127.0.0.1:8000".into()),
            mqtt_listen: Some("127.0.0.1:1883".into()),
            ..Overrides::default()
        });
        let config = resolve(CoordinatorFile::default(), off).unwrap();
        assert_eq!(config.tls, None);
        assert_eq!(config.broker_url().to_string(), "mqtt://127.0.0.1:1883");

        let half = with_dir(Overrides {
            tls_cert: Some(paths.server_cert.clone()),
            ..Overrides::default()
        });
        let e = resolve(CoordinatorFile::default(), half).unwrap_err();
        assert!(e.to_string().contains("tls_key"), "{e}");
    }

    #[test]
    fn ingest_threads_default_to_the_cores_and_stay_within_bounds() {
        let config = resolve(CoordinatorFile::default(), Overrides::default()).unwrap();
        assert_eq!(
            config.ingest_threads,
            crate::mqtt::ingest::default_threads()
        );
        assert!((1..=8).contains(&config.ingest_threads));
        let file: CoordinatorFile = toml::from_str("ingest_threads = 3\n").unwrap();
        assert_eq!(
            resolve(file, Overrides::default()).unwrap().ingest_threads,
            3
        );
        for bad in [0, 65] {
            let over = Overrides {
                ingest_threads: Some(bad),
                ..Overrides::default()
            };
            let e = resolve(CoordinatorFile::default(), over).unwrap_err();
            assert!(e.to_string().contains("ingest_threads"), "{e}");
        }
    }

    #[test]
    fn the_policy_directory_comes_from_the_file_or_a_flag() {
        let file: CoordinatorFile = toml::from_str("policies = \"/etc/vigil/policies\"\n").unwrap();
        let config = resolve(file, Overrides::default()).unwrap();
        assert_eq!(
            config.policies_dir,
            Some(PathBuf::from("/etc/vigil/policies"))
        );
        let file: CoordinatorFile = toml::from_str("policies = \"/from/file\"\n").unwrap();
        let config = resolve(
            file,
            Overrides {
                policies: Some("/from/flag".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.policies_dir, Some(PathBuf::from("/from/flag")));
    }

    #[test]
    fn an_external_broker_replaces_the_embedded_one_and_flags_beat_the_file() {
        let file: CoordinatorFile =
            toml::from_str("broker = \"mqtt://file:1\"\nretention = \"1h\"\n").unwrap();
        let config = resolve(
            file,
            Overrides {
                broker: Some("mqtt://flag:2".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.broker_url().to_string(), "mqtt://flag:2");
        assert_eq!(config.retention, Duration::from_secs(3600));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = resolve(
            CoordinatorFile::default(),
            Overrides {
                listen: Some("nowhere".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        assert!(toml::from_str::<CoordinatorFile>("listne = 1").is_err());
    }

    #[test]
    fn deadman_settings_are_range_checked_and_named() {
        let config = resolve(CoordinatorFile::default(), Overrides::default()).unwrap();
        assert_eq!(config.deadman.silent_after, 3);
        assert!(config.deadman.webhook.is_none());
        let file: CoordinatorFile = toml::from_str(
            "silent_after = 5\nephemeral_hosts = \"ci-*, build-[0-9]\"\n\
             silent_webhook = \"https://hooks.example/vigil\"\n",
        )
        .unwrap();
        let config = resolve(file, Overrides::default()).unwrap();
        assert_eq!(config.deadman.silent_after, 5);
        assert_eq!(config.deadman.ephemeral_hosts, ["ci-*", "build-[0-9]"]);
        assert_eq!(
            config.deadman.webhook.as_deref(),
            Some("https://hooks.example/vigil")
        );
        for (over, setting) in [
            (
                Overrides {
                    silent_after: Some(0),
                    ..Overrides::default()
                },
                "silent_after",
            ),
            (
                Overrides {
                    silent_after: Some(u32::MAX),
                    ..Overrides::default()
                },
                "silent_after",
            ),
            (
                Overrides {
                    ephemeral_hosts: Some("ci-[".into()),
                    ..Overrides::default()
                },
                "ephemeral_hosts",
            ),
            (
                Overrides {
                    silent_webhook: Some("ftp://x/".into()),
                    ..Overrides::default()
                },
                "silent_webhook",
            ),
        ] {
            let e = resolve(CoordinatorFile::default(), over).unwrap_err();
            assert!(e.to_string().contains(setting), "{e}");
        }
    }

    #[test]
    fn audit_retention_comes_from_the_file_or_a_flag_and_is_range_checked() {
        let file: CoordinatorFile = toml::from_str("audit_retention = \"30d\"\n").unwrap();
        let config = resolve(file, Overrides::default()).unwrap();
        assert_eq!(config.audit_retention, Duration::from_secs(30 * 86400));
        let file: CoordinatorFile = toml::from_str("audit_retention = \"30d\"\n").unwrap();
        let over = Overrides {
            audit_retention: Some("12h".into()),
            ..Overrides::default()
        };
        assert_eq!(
            resolve(file, over).unwrap().audit_retention,
            Duration::from_secs(12 * 3600)
        );
        for bad in ["0s", "500ms", "200years", "soon", ""] {
            let over = Overrides {
                audit_retention: Some(bad.into()),
                ..Overrides::default()
            };
            let e = resolve(CoordinatorFile::default(), over).unwrap_err();
            assert!(e.to_string().contains("audit_retention"), "{bad}: {e}");
        }
    }
}
