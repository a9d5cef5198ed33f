//! The agent's command line (clap). Every flag can also come from a `VIGIL_…` variable.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{self, AgentConfig, AgentFile, ConfigError, Overrides};

/// Vigil agent: samples this host's health and reports it to the coordinator over MQTT.
#[derive(Debug, Parser)]
#[command(name = "vigil-agent", version, about)]
pub struct Cli {
    /// TOML config file (keys: host, broker, interval, mqtt_username, mqtt_password, [labels]).
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

    /// Sampling interval, e.g. 5s, 500ms, 1m [default: 5s]
    #[arg(long, env = "VIGIL_INTERVAL")]
    pub interval: Option<String>,
}

impl Cli {
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
            },
        )
    }
}
