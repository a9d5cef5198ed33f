//! Docker's Engine API on its unix socket (`bollard`): how the agent connects to it, and
//! what an inspected container reads as. The Docker watcher and the Docker executor both
//! connect here, each with a client of its own.

use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum,
};
use bollard::Docker;
use thiserror::Error;
use vigil_shared::policy::StateReading;
use vigil_shared::time::now_ms;

/// How long one request to Docker may take (the event stream itself has no limit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Docker could not be reached.
#[derive(Debug, Error)]
#[error("cannot connect to Docker at {endpoint}: {source}")]
pub(crate) struct ConnectError {
    /// The socket tried.
    endpoint: String,
    /// Why.
    #[source]
    source: BollardError,
}

/// Connects to Docker and agrees on an API version (which also proves it answers).
pub(crate) async fn connect(socket: Option<&Path>) -> Result<Docker, ConnectError> {
    let endpoint = match socket {
        Some(path) => path.display().to_string(),
        None => std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".into()),
    };
    let fail = |source| ConnectError {
        endpoint: endpoint.clone(),
        source,
    };
    let docker = match socket {
        Some(path) => Docker::connect_with_unix(
            &path.to_string_lossy(),
            REQUEST_TIMEOUT.as_secs(),
            bollard::API_DEFAULT_VERSION,
        ),
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(fail)?
    .with_timeout(REQUEST_TIMEOUT);
    docker.negotiate_version().await.map_err(fail)
}

/// A container's own name (Docker lists `/name`, plus `/other/alias` for legacy links).
pub(crate) fn primary_name(container: &ContainerSummary) -> Option<&str> {
    container
        .names
        .as_ref()?
        .iter()
        .filter_map(|n| n.strip_prefix('/'))
        .find(|n| !n.contains('/'))
}

/// The reading for an inspected container: Docker's state, health if it has a health
/// check, and for a stopped container its exit code, OOM kill and error.
pub(crate) fn reading_of(info: &ContainerInspectResponse) -> StateReading {
    let state = info.state.as_ref();
    let status = state
        .and_then(|s| s.status)
        .filter(|s| *s != ContainerStateStatusEnum::EMPTY)
        .map_or_else(|| "unknown".to_string(), |s| s.to_string());
    let health = state.and_then(|s| s.health.as_ref());
    let health_status = health.and_then(|h| h.status).filter(|h| {
        matches!(
            h,
            HealthStatusEnum::STARTING | HealthStatusEnum::HEALTHY | HealthStatusEnum::UNHEALTHY
        )
    });
    let failing = health
        .and_then(|h| h.failing_streak)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let mut notes = Vec::new();
    if let Some(s) = state.filter(|_| {
        matches!(
            status.as_str(),
            "exited" | "dead" | "restarting" | "created"
        )
    }) {
        if let Some(code) = s.exit_code.filter(|_| status != "created") {
            notes.push(format!("exit code {code}"));
        }
        if s.oom_killed == Some(true) {
            notes.push("killed for lack of memory (OOM)".to_string());
        }
        if let Some(error) = s.error.as_deref().filter(|e| !e.is_empty()) {
            notes.push(format!("error: {error}"));
        }
    }
    if health_status == Some(HealthStatusEnum::UNHEALTHY) {
        let output = health
            .and_then(|h| h.log.as_ref())
            .and_then(|log| log.last())
            .and_then(|r| r.output.as_deref())
            .map(|o| o.trim().chars().take(200).collect::<String>())
            .filter(|o| !o.is_empty());
        notes.push(match output {
            Some(output) => format!("health check failed {failing} times in a row: {output}"),
            None => format!("health check failed {failing} times in a row"),
        });
    }
    StateReading {
        state: status,
        health: health_status.map(|h| h.to_string()),
        // (Health-check failures in a row are in `detail`: this field is for HTTP/TCP checks.)
        consecutive_failures: 0,
        detail: (!notes.is_empty()).then(|| notes.join("; ")),
        at_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerState, Health, HealthcheckResult};

    use super::*;

    #[test]
    fn a_killed_container_reads_exited_with_its_exit_code() {
        let info = ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                exit_code: Some(137),
                oom_killed: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let reading = reading_of(&info);
        assert_eq!(reading.state, "exited");
        assert_eq!(reading.health, None);
        assert_eq!(
            reading.detail.as_deref(),
            Some("exit code 137; killed for lack of memory (OOM)")
        );
    }

    #[test]
    fn an_unhealthy_container_carries_its_health_and_last_output() {
        let info = ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                exit_code: Some(0),
                health: Some(Health {
                    status: Some(HealthStatusEnum::UNHEALTHY),
                    failing_streak: Some(3),
                    log: Some(vec![HealthcheckResult {
                        output: Some("connection refused\n".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let reading = reading_of(&info);
        assert_eq!(reading.state, "running");
        assert_eq!(reading.health.as_deref(), Some("unhealthy"));
        assert_eq!(
            reading.detail.as_deref(),
            Some("health check failed 3 times in a row: connection refused")
        );
    }

    #[test]
    fn no_health_check_means_no_health() {
        let info = ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                health: Some(Health {
                    status: Some(HealthStatusEnum::NONE),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(reading_of(&info).health, None);
    }

    #[test]
    fn the_primary_name_skips_link_aliases() {
        let summary = ContainerSummary {
            names: Some(vec!["/db/web-alias".into(), "/web-1".into()]),
            ..Default::default()
        };
        assert_eq!(primary_name(&summary), Some("web-1"));
    }
}
