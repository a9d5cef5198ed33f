//! The agent's command line (clap). Every flag can also come from a `VIGIL_…` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, AgentConfig, AgentFile, ConfigError, Overrides};

/// Vigil agent: samples this host's health, evaluates policies locally, and reports to the
/// coordinator over MQTT. Without a subcommand, it runs.
#[derive(Debug, Parser)]
#[command(
    name = "vigil-agent",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Offline tools.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings for running the agent.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate and dry-run policy files offline (for CI pipelines of a policy repository).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Install this agent as a systemd service and start it: writes /etc/vigil/agent.toml
    /// (0600), /var/lib/vigil and the unit, enables it and waits until it is ready.
    /// Running it again with the same arguments changes nothing.
    Install(InstallArgs),
    /// Stop the service and remove what `install` wrote; the data directory (identity,
    /// action history) stays unless --purge.
    Uninstall {
        /// Delete /var/lib/vigil too.
        #[arg(long)]
        purge: bool,
    },
    /// What the running agent is doing: connected or not, bundles, queued and recent
    /// actions. Exit 0: running; 3: not running; 4: unknown (it never ran here).
    Status {
        /// The agent's config file, to find its data directory
        /// [default: /etc/vigil/agent.toml if it exists]
        #[arg(long)]
        config: Option<PathBuf>,
        /// The agent's data directory [default: from the config, else /var/lib/vigil]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `vigil-agent install` flags.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// A complete agent config file to install (instead of the flags below)
    #[arg(long, conflicts_with_all = [
        "coordinator", "join_token", "broker", "host", "labels", "ca", "bundle_key",
        "allow_units", "allow_containers", "interval",
    ])]
    pub config: Option<PathBuf>,
    /// The coordinator's URL (http://host:8000 or https://…), to enroll at
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Join token to enroll with (`vigil-coordinator token create --join`)
    #[arg(long)]
    pub join_token: Option<String>,
    /// MQTT broker [default: the coordinator's host, port 1883; mqtts://…:8883 for https]
    #[arg(long)]
    pub broker: Option<String>,
    /// Name this host reports under [default: the machine's host name]
    #[arg(long)]
    pub host: Option<String>,
    /// Label, key=value; repeat for more
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// CA certificate (PEM) to pin; copied to /etc/vigil/ca.pem
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The coordinator's bundle public key (64 hex characters, or a file holding them)
    #[arg(long)]
    pub bundle_key: Option<String>,
    /// A systemd unit (or glob) executors may act on; repeat for more
    #[arg(long = "allow-unit")]
    pub allow_units: Vec<String>,
    /// A Docker container (or glob) executors may act on; repeat for more
    #[arg(long = "allow-container")]
    pub allow_containers: Vec<String>,
    /// Sampling interval, e.g. 5s
    #[arg(long)]
    pub interval: Option<String>,
    /// Enable the unit but do not start it
    #[arg(long)]
    pub no_start: bool,
}

impl InstallArgs {
    /// The request for [`crate::cli::install::install`].
    pub fn into_request(self) -> crate::cli::install::InstallRequest {
        crate::cli::install::InstallRequest {
            config: self.config,
            coordinator: self.coordinator,
            join_token: self.join_token,
            broker: self.broker,
            host: self.host,
            labels: self.labels,
            ca: self.ca,
            bundle_key: self.bundle_key,
            allow_units: self.allow_units,
            allow_containers: self.allow_containers,
            interval: self.interval,
            no_start: self.no_start,
        }
    }
}

/// `vigil-agent policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files or directories. Exit 0: all valid; 1: something invalid (the
    /// error names file, policy and field).
    Check {
        /// Files (*.yaml) or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Evaluate policies against given values and say which would fire, and why.
    /// Exit 0: none fires; 3: at least one fires; 1: invalid policies; 2: bad arguments.
    Test {
        /// Files (*.yaml) or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A metric value, name=value; repeat for more.
        #[arg(long = "metric", short = 'm')]
        metrics: Vec<String>,
        /// A state reading, kind:name=state (kinds: unit, container, process, http, tcp;
        /// for http/tcp the state is the number of failures in a row); repeat for more.
        #[arg(long = "state")]
        states: Vec<String>,
        /// The target the values belong to [default: sandbox]
        #[arg(long)]
        target: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The flags of the running agent.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file (keys: host, broker, interval, mqtt_username, mqtt_password,
    /// policies, textfile_dir, data_dir, metrics_buffer, bundle_key, coordinator,
    /// join_token, ca, [labels],
    /// [allow], [remediation]; see README).
    /// Flags and environment variables override it.
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Name this host reports under [default: the machine's host name]
    #[arg(long, env = "VIGIL_HOST")]
    pub host: Option<String>,

    /// Label for this host and its samples, as key=value; repeat for more
    /// (VIGIL_LABELS takes a comma-separated list) [default: none]
    #[arg(long = "label", env = "VIGIL_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,

    /// MQTT broker to report to [default: mqtt://127.0.0.1:1883]
    #[arg(long, env = "VIGIL_BROKER")]
    pub broker: Option<String>,

    /// MQTT user name [default: none]
    #[arg(long, env = "VIGIL_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,

    /// MQTT password [default: none]
    #[arg(long, env = "VIGIL_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// Sampling interval, e.g. 5s, 500ms, 1m; policies are evaluated on every sample
    /// [default: 5s]
    #[arg(long, env = "VIGIL_INTERVAL")]
    pub interval: Option<String>,

    /// Directory of policy files (*.yaml), re-read when a file changes [default: none]
    #[arg(long, env = "VIGIL_POLICIES")]
    pub policies: Option<PathBuf>,

    /// Directory of *.prom files (Prometheus text format) to sample as well; a `target`
    /// label makes a sample belong to that target [default: none]
    #[arg(long, env = "VIGIL_TEXTFILE_DIR")]
    pub textfile_dir: Option<PathBuf>,

    /// Where the identity, the action queue and the outbox live [default: /var/lib/vigil]
    #[arg(long, env = "VIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most disk the metric buffer may use while the coordinator is unreachable, e.g.
    /// 256MiB (about 24 h of 1 s batches of a typical host); when full, the oldest
    /// batches go, counted [default: 256MiB]
    #[arg(long, env = "VIGIL_METRICS_BUFFER", value_name = "SIZE")]
    pub metrics_buffer: Option<String>,

    /// Record every action as done without running anything [default: off]
    #[arg(long, env = "VIGIL_DRY_RUN")]
    pub dry_run: bool,

    /// Start with remediation paused: the kill switch (`[remediation] paused = true`);
    /// actions are recorded as cancelled [default: off]
    #[arg(long, env = "VIGIL_PAUSE_REMEDIATION")]
    pub pause_remediation: bool,

    /// A systemd unit (or glob) executors may act on; repeat for more; adds to
    /// `[allow] units` [default: none]
    #[arg(long = "allow-unit")]
    pub allow_units: Vec<String>,

    /// A Docker container (or glob) executors may act on; repeat for more; adds to
    /// `[allow] containers` [default: none]
    #[arg(long = "allow-container")]
    pub allow_containers: Vec<String>,

    /// The coordinator's public key for signed policy bundles: 64 hex characters, or a file
    /// holding them; without it, bundles are ignored [default: none]
    #[arg(long, env = "VIGIL_BUNDLE_KEY")]
    pub bundle_key: Option<String>,

    /// The coordinator's HTTP URL (http://host:port), to enroll at on the first start
    /// [default: none]
    #[arg(long, env = "VIGIL_COORDINATOR")]
    pub coordinator: Option<String>,

    /// Join token to enroll with on the first start (`vigil-coordinator token create
    /// --join`); the identity is then kept in the data directory [default: none]
    #[arg(long, env = "VIGIL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// CA certificate (PEM) the coordinator's TLS certificate must chain to, for mqtts://
    /// brokers and https:// coordinators; only it is trusted [default: public roots]
    #[arg(long, env = "VIGIL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl RunArgs {
    /// Resolves flags, environment and config file into the agent's settings.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => AgentFile::load(path)?,
            None => AgentFile::default(),
        };
        config::resolve(
            file,
            Overrides {
                host: self.host,
                labels: self.labels,
                broker: self.broker,
                mqtt_username: self.mqtt_username,
                mqtt_password: self.mqtt_password,
                interval: self.interval,
                policies: self.policies,
                textfile_dir: self.textfile_dir,
                data_dir: self.data_dir,
                metrics_buffer: self.metrics_buffer,
                dry_run: self.dry_run,
                pause_remediation: self.pause_remediation,
                allow_units: self.allow_units,
                allow_containers: self.allow_containers,
                bundle_key: self.bundle_key,
                coordinator: self.coordinator,
                join_token: self.join_token,
                ca: self.ca,
            },
        )
    }
}
