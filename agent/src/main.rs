//! The `vigil-agent` binary: logs to stderr, or to the journal under systemd
//! ([`vigil_service::logging`]; `VIGIL_LOG` sets the filter, default `info`), and hands
//! the command line to [`vigil_agent::cli::main`].
//!
//! The filter is `tracing-subscriber`'s `Targets`: a default level and per-target levels
//! (`warn`, `info,rumqttc=warn`, `vigil_agent=debug`), without the span and field filters
//! of `EnvFilter`, which would link a regex engine into the agent for nothing.
//!
//! The runtime has two worker threads, whatever the host's core count: the agent's work
//! per tick is small, and two threads spare the wake-ups between many workers and a
//! worker (and its stack) per core of a large host, while a slow step (an LMDB commit
//! waiting for the disk) still leaves a thread for the MQTT connections. Blocking work
//! (the `/proc` scans, `install`) runs on tokio's blocking pool.

use std::process::ExitCode;

use tracing_subscriber::filter::{LevelFilter, Targets};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    vigil_service::logging::init(
        "vigil-agent",
        log_filter(std::env::var("VIGIL_LOG").ok().as_deref()),
    );
    vigil_agent::cli::main().await
}

/// The filter `VIGIL_LOG` asks for; `info` when it is unset or not a filter.
fn log_filter(setting: Option<&str>) -> Targets {
    setting
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn reads_levels_per_target_and_falls_back_to_info() {
        let f = log_filter(Some("warn,vigil_agent::runner=debug"));
        assert!(f.would_enable("vigil_agent::runner", &Level::DEBUG));
        assert!(!f.would_enable("vigil_agent::cli", &Level::INFO));
        assert!(f.would_enable("rumqttc", &Level::WARN));
        let off = log_filter(Some("off"));
        assert!(!off.would_enable("vigil_agent", &Level::ERROR));
        for unset in [None, Some(""), Some("vigil_agent=loud")] {
            let f = log_filter(unset);
            assert!(f.would_enable("vigil_agent", &Level::INFO), "{unset:?}");
            assert!(!f.would_enable("vigil_agent", &Level::DEBUG), "{unset:?}");
        }
    }
}
