//! The coordinator's command line (clap): `serve` (the coordinator; `vigil up` runs it
//! with a local agent), `bundle` (offline bundle tools, [`bundle`]), `policy backtest`
//! ([`policy`]), `token` (REST API
//! and join tokens, [`tokens`]), `agent` ([`agents`]), `certs` ([`certs`]) and
//! `install`/`uninstall` ([`install`]). Every flag can also come from a `VIGIL_…`
//! variable.

pub mod agents;
pub mod bundle;
pub mod certs;
pub mod install;
pub mod policy;
mod progress;
pub mod tokens;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigError, CoordinatorConfig, CoordinatorFile, Overrides};

/// Vigil coordinator: embedded MQTT broker, LMDB history and the REST API for a fleet of
/// Vigil agents.
#[derive(Debug, Parser)]
#[command(name = "vigil-coordinator", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the coordinator only.
    Serve(ServeArgs),
    /// Build, verify, diff policy bundles and generate signing keys (for CI pipelines).
    Bundle(crate::cli::bundle::BundleArgs),
    /// Backtest policies: replay stored metric history through the agents' engine.
    Policy(crate::cli::policy::PolicyArgs),
    /// Create, list and revoke REST API tokens and agent join tokens.
    Token(crate::cli::tokens::TokenArgs),
    /// List enrolled agents and revoke their identities.
    Agent(crate::cli::agents::AgentArgs),
    /// Make a CA and a server certificate for TLS, for users with no PKI.
    Certs(crate::cli::certs::CertsArgs),
    /// Install the coordinator as a systemd service running as user `vigil`, and start it:
    /// /etc/vigil/coordinator.toml, /var/lib/vigil-coordinator and the unit. Running it
    /// again with the same arguments changes nothing.
    Install(crate::cli::install::InstallArgs),
    /// Stop the service and remove what `install` wrote; the data directory (audit
    /// history, tokens, keys) and the user stay unless --purge.
    Uninstall(crate::cli::install::UninstallArgs),
}

/// Settings of the coordinator.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (keys as the long flags, with `_` for `-`). Flags and environment
    /// variables override it.
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory for LMDB files [default: vigil-data]
    #[arg(long, env = "VIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// REST API listen address [default: 127.0.0.1:8000]
    #[arg(long, env = "VIGIL_LISTEN")]
    pub listen: Option<String>,

    /// Embedded MQTT broker listen address [default: 127.0.0.1:1883]
    #[arg(long, env = "VIGIL_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,

    /// Use this existing broker instead of the embedded one, e.g. mqtt://broker:1883
    /// [default: none, start the embedded broker]
    #[arg(long, env = "VIGIL_BROKER")]
    pub broker: Option<String>,

    /// MQTT user name for an external broker [default: none]
    #[arg(long, env = "VIGIL_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,

    /// MQTT password for an external broker [default: none]
    #[arg(long, env = "VIGIL_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// How long metric history is kept, e.g. 7d, 12h [default: 7d]
    #[arg(long, env = "VIGIL_RETENTION")]
    pub retention: Option<String>,

    /// How long the audit trail is kept: action records (an action goes whole once its
    /// latest transition is older), policy events and the event feed, e.g. 90d, 12h
    /// [default: 90d]
    #[arg(long, env = "VIGIL_AUDIT_RETENTION")]
    pub audit_retention: Option<String>,

    /// Initial LMDB map size [default: 1GiB]
    #[arg(long, env = "VIGIL_DB_MAP_SIZE")]
    pub db_map_size: Option<String>,

    /// Largest size the LMDB map may grow to; past it writes are refused [default: 64GiB]
    #[arg(long, env = "VIGIL_DB_MAX_SIZE")]
    pub db_max_size: Option<String>,

    /// Directory of policy files (*.yaml, *.yml), served by /api/v1/policies and re-read
    /// by POST /api/v1/policies/reload; an invalid file stops the start [default: none]
    #[arg(long, env = "VIGIL_POLICIES", value_name = "DIR")]
    pub policies: Option<PathBuf>,

    /// Bundle directory: one folder per host group (group.yaml, policy files,
    /// manifest.yaml), published as signed bundles and re-read on change [default: none]
    #[arg(long, env = "VIGIL_BUNDLES", value_name = "DIR")]
    pub bundles: Option<PathBuf>,

    /// Bundle signing key (64 hex characters), created on first start
    /// [default: <data-dir>/bundle-signing.key]
    #[arg(long, env = "VIGIL_BUNDLE_KEY", value_name = "FILE")]
    pub bundle_key: Option<PathBuf>,

    /// Require a (viewer) token for GET /metrics [default: false, open]
    #[arg(long, env = "VIGIL_METRICS_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_auth: Option<bool>,

    /// Failed REST authentications one client address may make per minute before it
    /// gets 429 Too Many Requests; 0 for no limit [default: 30]
    #[arg(long, env = "VIGIL_AUTH_FAILURE_LIMIT")]
    pub auth_failure_limit: Option<u32>,

    /// Connections the embedded broker's front holds in all; each agent uses two
    /// [default: 21000, room for 10,000 agents]
    #[arg(long, env = "VIGIL_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,

    /// Threads that decode, authenticate and validate agent messages at once (each host's
    /// messages stay in order on one of them), 1–64 [default: the cores available, at most 8]
    #[arg(long, env = "VIGIL_INGEST_THREADS")]
    pub ingest_threads: Option<usize>,

    /// Connections from one client address that have not logged in to the embedded broker
    /// yet (more are closed at once; each has 10 s to log in) [default: 512]
    #[arg(long, env = "VIGIL_MQTT_MAX_PENDING_PER_ADDRESS")]
    pub mqtt_max_pending_per_address: Option<usize>,

    /// Connections the REST API holds in all [default: 4096]
    #[arg(long, env = "VIGIL_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,

    /// Connections the REST API holds from one client address [default: 256]
    #[arg(long, env = "VIGIL_HTTP_MAX_CONNECTIONS_PER_ADDRESS")]
    pub http_max_connections_per_address: Option<usize>,

    /// Allow the REST API or the embedded broker to listen beyond loopback without TLS:
    /// traffic, tokens and passwords cross the network in clear [default: false, refuse]
    #[arg(long, env = "VIGIL_ALLOW_PLAINTEXT_REMOTE", num_args = 0..=1, default_missing_value = "true")]
    pub allow_plaintext_remote: Option<bool>,

    /// Serve HTTPS and MQTT over TLS (only). On by itself when tls_cert/tls_key are given
    /// or <data-dir>/tls/server.pem exists (`certs init`); --tls=false turns it off
    /// [default: auto]
    #[arg(long, env = "VIGIL_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,

    /// Server certificate chain (PEM) for both listeners [default: <data-dir>/tls/server.pem]
    #[arg(long, env = "VIGIL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert [default: <data-dir>/tls/server.key]
    #[arg(long, env = "VIGIL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate the coordinator's own MQTT client trusts (its TLS broker, or an
    /// mqtts:// --broker) [default: <data-dir>/tls/ca.pem if it exists, else public roots]
    #[arg(long, env = "VIGIL_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Streams republished as JSON on vigil/v1/json/{stream}/{host} for integrations:
    /// off, all, or a list of metrics, violations, actions, hosts, bundles, each with an
    /// optional =QoS [default: all (metrics=0, the others=1)]
    #[arg(long, env = "VIGIL_JSON_MIRROR", value_name = "STREAMS")]
    pub json_mirror: Option<String>,

    /// Routing file (YAML) mapping Alertmanager alerts, received at POST
    /// /api/v1/alertmanager, to actions; read at start [default: none, no alert is routed]
    #[arg(long, env = "VIGIL_ALERT_ROUTES", value_name = "FILE")]
    pub alert_routes: Option<PathBuf>,
    /// How long a disruption-budget lease lasts unless its agent renews it (agents renew
    /// every third of it while the action runs), 1s–1h [default: 60s]
    #[arg(long, env = "VIGIL_LEASE_TTL", value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// A host whose agent said online becomes `silent` after this many of its sampling
    /// intervals (and at least 2 s) without a status or a sample, 2 to 1000 [default: 3]
    #[arg(long, env = "VIGIL_SILENT_AFTER", value_name = "INTERVALS")]
    pub silent_after: Option<u32>,

    /// Hosts never called silent (they come and go), as comma-separated names or globs
    /// such as ci-*; agents labelled ephemeral=true never are either [default: none]
    #[arg(long, env = "VIGIL_EPHEMERAL_HOSTS", value_name = "HOSTS")]
    pub ephemeral_hosts: Option<String>,

    /// POST every host silence event (going silent, reporting again) as JSON to this
    /// http:// or https:// URL, with a 5 s timeout [default: none]
    #[arg(
        long,
        env = "VIGIL_SILENT_WEBHOOK",
        value_name = "URL",
        hide_env_values = true
    )]
    pub silent_webhook: Option<String>,
}

impl ServeArgs {
    /// Resolves flags, environment and config file into the coordinator's settings.
    pub fn into_config(self) -> Result<CoordinatorConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => CoordinatorFile::load(path)?,
            None => CoordinatorFile::default(),
        };
        config::resolve(
            file,
            Overrides {
                data_dir: self.data_dir,
                listen: self.listen,
                mqtt_listen: self.mqtt_listen,
                broker: self.broker,
                mqtt_username: self.mqtt_username,
                mqtt_password: self.mqtt_password,
                retention: self.retention,
                audit_retention: self.audit_retention,
                db_map_size: self.db_map_size,
                db_max_size: self.db_max_size,
                policies: self.policies,
                bundles: self.bundles,
                bundle_key: self.bundle_key,
                metrics_auth: self.metrics_auth,
                auth_failure_limit: self.auth_failure_limit,
                mqtt_max_connections: self.mqtt_max_connections,
                mqtt_max_pending_per_address: self.mqtt_max_pending_per_address,
                http_max_connections: self.http_max_connections,
                ingest_threads: self.ingest_threads,
                http_max_connections_per_address: self.http_max_connections_per_address,
                allow_plaintext_remote: self.allow_plaintext_remote,
                tls: self.tls,
                tls_cert: self.tls_cert,
                tls_key: self.tls_key,
                tls_ca: self.tls_ca,
                json_mirror: self.json_mirror,
                alert_routes: self.alert_routes,
                lease_ttl: self.lease_ttl,
                silent_after: self.silent_after,
                ephemeral_hosts: self.ephemeral_hosts,
                silent_webhook: self.silent_webhook,
            },
        )
    }
}
