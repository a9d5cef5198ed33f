//! The Docker executor: restarts, starts and stops containers, and scales Compose-style
//! services ([`scale`]), over the Engine API on Docker's unix socket (`bollard`, connected
//! by [`crate::system::docker`], as the Docker watcher connects).
//!
//! Speed matters on the restart path: a killed container should be running again at
//! least as soon as Docker's own `--restart=always` would manage. So a `restart` inspects
//! the container and, if it is already dead (`exited`, `created`), simply *starts* it —
//! no stop phase at all; only a container that is still up is restarted, with a stop
//! timeout of [`RESTART_STOP_TIMEOUT`] unless `params.stop_timeout` says otherwise (a
//! container being restarted is one that misbehaves). The engine holds a dead container
//! locked while it cleans up after it (≈100 ms), and every call waits for that; Docker's
//! own 100 ms restart back-off runs during the same clean-up, so the two restarts begin
//! at about the same moment and take the engine's start time (≈300 ms here) from there.
//!
//! Then it waits, polling every [`POLL`], until the container is up: healthy, if it has a
//! health check (unhealthy, or dead, fails at once); else still running, on the same
//! start, after a settle time (`params.settle`, default
//! [`DEFAULT_SETTLE`](super::attempt::DEFAULT_SETTLE)) — so a
//! container that dies as soon as it starts fails the attempt instead of passing it.
//! `Docker` answers `start` once the process runs, so the container is running again
//! when that call returns; the settle time only delays the verdict.
//!
//! A target is acted on by the id its name resolves to, and only if the container really
//! has that name (Docker also resolves id prefixes, which an allowlisted name pattern
//! must not reach).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{RestartContainerOptions, StopContainerOptions};
use bollard::Docker;
use vigil_shared::policy::ActionKind;

use super::attempt::{duration_param, settle, ExecError, ExecOutcome, ExecRequest, POLL};
use crate::system::docker::{connect, reading_of};
use crate::system::timeline;

mod scale;

/// The executor's name.
const EXECUTOR: &str = "docker";
/// The stop timeout of a `restart` of a container that is still up (seconds).
pub const RESTART_STOP_TIMEOUT: i32 = 1;

/// Runs container actions against one Docker engine.
pub struct DockerExecutor {
    /// Docker's socket (`None`: `DOCKER_HOST` or the default socket).
    socket: Option<PathBuf>,
    /// The client, once connected.
    client: tokio::sync::OnceCell<Docker>,
}

/// Settings of one attempt, from the request's parameters.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    /// `params.stop_timeout`: seconds a stopping container gets before it is killed.
    stop_timeout: Option<i32>,
    /// `params.settle`: how long a started container must stay up.
    settle: Duration,
}

impl Options {
    /// Reads `stop_timeout` (seconds, or a duration such as `"500ms"`, rounded up to whole
    /// seconds as Docker takes them) and `settle` (a duration or seconds).
    fn from_request(request: &ExecRequest) -> Result<Options, ExecError> {
        let stop_timeout = duration_param(request, "stop_timeout")?
            .map(|d| i32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)))
            .transpose()
            .map_err(|_| ExecError::Invalid("params.stop_timeout is too large".into()))?;
        let settle = settle(request)?;
        Ok(Options {
            stop_timeout,
            settle,
        })
    }
}

impl DockerExecutor {
    /// An executor for the engine at `socket` (default: `DOCKER_HOST` or
    /// `/var/run/docker.sock`), connected on first use.
    pub fn new(socket: Option<PathBuf>) -> DockerExecutor {
        DockerExecutor {
            socket,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// Runs `request` (restart, start, stop, scale; the dispatcher has checked the
    /// allowlist); the caller bounds the time.
    pub async fn run(&self, request: &ExecRequest) -> Result<ExecOutcome, ExecError> {
        let target = request.target.as_str();
        check_name("container or service", target)?;
        let options = Options::from_request(request)?;
        let docker = self
            .client
            .get_or_try_init(|| connect(self.socket.as_deref()))
            .await
            .map_err(|e| ExecError::Unavailable {
                executor: EXECUTOR,
                message: e.to_string(),
            })?
            .clone()
            // The attempt's own timeout governs; this only keeps a long stop from being
            // cut short by the client's default.
            .with_timeout(request.timeout.saturating_add(Duration::from_secs(1)));
        let detail = match request.kind {
            ActionKind::Restart => restart(&docker, target, request, &options).await?,
            ActionKind::Start => start(&docker, target, &request.action_id, &options).await?,
            ActionKind::Stop => stop(&docker, target, &options).await?,
            ActionKind::Scale => scale::scale(&docker, target, request, &options).await?,
            other => {
                return Err(ExecError::Invalid(format!(
                    "the Docker executor cannot `{}`",
                    other.as_str()
                )))
            }
        };
        Ok(ExecOutcome {
            executor: EXECUTOR,
            detail,
        })
    }
}

/// Restarts a container: starts it if it is down, leaves it alone if it has started
/// since a policy decided the action ([`ExecRequest::decided_at_ms`]: it runs again
/// already, and restarting it would kill it again — and its death would fire the policy
/// once more), else restarts it; then waits until it is up.
async fn restart(
    docker: &Docker,
    name: &str,
    request: &ExecRequest,
    options: &Options,
) -> Result<String, ExecError> {
    let action = request.action_id.as_str();
    let info = inspect_named(docker, name).await?;
    timeline::mark("inspected", name, Some(action));
    let id = info.id.as_deref().unwrap_or(name);
    let before = describe(&info);
    let how = if is_down(&info) {
        // Dead already: nothing to stop. (The Engine's restart call would start it too,
        // no faster, measured.)
        docker
            .start_container(id, None)
            .await
            .map_err(|e| api_error(e, name, "starting"))?;
        timeline::mark("start_returned", name, Some(action));
        format!("was {before}; started it")
    } else if let Some(started) = started_since(&info, request.decided_at_ms) {
        format!(
            "already running again, started {started}, after the action was decided; not restarted"
        )
    } else {
        let restart = RestartContainerOptions {
            t: Some(options.stop_timeout.unwrap_or(RESTART_STOP_TIMEOUT)),
            signal: None,
        };
        docker
            .restart_container(id, Some(restart))
            .await
            .map_err(|e| api_error(e, name, "restarting"))?;
        timeline::mark("start_returned", name, Some(action));
        format!("was {before}; restarted it")
    };
    let up = wait_up(docker, name, id, options.settle).await?;
    Ok(format!("container {name} {} ({how})", describe(&up)))
}

/// Starts a container unless it is running; then waits until it is up. `action` names
/// the action in the timeline's events.
async fn start(
    docker: &Docker,
    name: &str,
    action: &str,
    options: &Options,
) -> Result<String, ExecError> {
    let info = inspect_named(docker, name).await?;
    timeline::mark("inspected", name, Some(action));
    let id = info.id.as_deref().unwrap_or(name);
    let how = if is_down(&info) {
        docker
            .start_container(id, None)
            .await
            .map_err(|e| api_error(e, name, "starting"))?;
        timeline::mark("start_returned", name, Some(action));
        format!("was {}; started it", describe(&info))
    } else {
        "already running".to_string()
    };
    let up = wait_up(docker, name, id, options.settle).await?;
    Ok(format!("container {name} {} ({how})", describe(&up)))
}

/// Stops a container (gracefully: `params.stop_timeout`, else the container's own stop
/// timeout) and checks that it is down.
async fn stop(docker: &Docker, name: &str, options: &Options) -> Result<String, ExecError> {
    let info = inspect_named(docker, name).await?;
    let id = info.id.as_deref().unwrap_or(name);
    let how = if is_down(&info) {
        "already stopped"
    } else {
        let stop = StopContainerOptions {
            t: options.stop_timeout,
            signal: None,
        };
        docker
            .stop_container(id, Some(stop))
            .await
            .map_err(|e| api_error(e, name, "stopping"))?;
        "stopped it"
    };
    let after = inspect(docker, name, id).await?;
    if !is_down(&after) {
        return Err(failed(format!(
            "container {name} is still {} after stopping it",
            describe(&after)
        )));
    }
    Ok(format!("container {name} {} ({how})", describe(&after)))
}

/// Waits until a just-started container is up: healthy if it has a health check, else
/// still running on the same start after `settle`. Fails as soon as it dies, restarts
/// or turns unhealthy. Returns its last inspection.
async fn wait_up(
    docker: &Docker,
    name: &str,
    id: &str,
    settle: Duration,
) -> Result<ContainerInspectResponse, ExecError> {
    let since = Instant::now();
    let mut first_start: Option<String> = None;
    loop {
        let info = inspect(docker, name, id).await?;
        let state = info.state.as_ref();
        let status = state.and_then(|s| s.status);
        if status != Some(ContainerStateStatusEnum::RUNNING) {
            return Err(failed(format!(
                "container {name} did not stay up after starting: {}",
                describe(&info)
            )));
        }
        let started_at = state.and_then(|s| s.started_at.clone());
        match &first_start {
            None => first_start = started_at,
            Some(first) if started_at.as_ref() != Some(first) => {
                return Err(failed(format!(
                    "container {name} died and was started again while Vigil waited for it \
                     (now {})",
                    describe(&info)
                )))
            }
            Some(_) => {}
        }
        if has_health_check(&info) {
            let health = state.and_then(|s| s.health.as_ref()).and_then(|h| h.status);
            match health {
                Some(HealthStatusEnum::HEALTHY) => return Ok(info),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    return Err(failed(format!(
                        "container {name} is unhealthy after starting: {}",
                        describe(&info)
                    )))
                }
                _ => {}
            }
        } else if since.elapsed() >= settle {
            return Ok(info);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Inspects the container named `name`; `Invalid` if there is none, or if `name` only
/// resolved as another container's id prefix.
async fn inspect_named(docker: &Docker, name: &str) -> Result<ContainerInspectResponse, ExecError> {
    let info = inspect(docker, name, name).await?;
    let actual = info.name.as_deref().unwrap_or_default();
    if actual.strip_prefix('/').unwrap_or(actual) != name {
        return Err(ExecError::Invalid(format!(
            "no container is named `{name}` (Docker matched {actual} by id)"
        )));
    }
    Ok(info)
}

/// Inspects container `id` (called `name` in messages).
async fn inspect(
    docker: &Docker,
    name: &str,
    id: &str,
) -> Result<ContainerInspectResponse, ExecError> {
    docker
        .inspect_container(id, None)
        .await
        .map_err(|e| api_error(e, name, "inspecting"))
}

/// The container's last start (Docker's `State.StartedAt`) if it is after `decided_ms`.
fn started_since(info: &ContainerInspectResponse, decided_ms: Option<i64>) -> Option<String> {
    let decided_ms = decided_ms?;
    let text = info.state.as_ref()?.started_at.as_deref()?;
    let started_ms = vigil_shared::time::parse_time(text).ok()?;
    (started_ms > decided_ms).then(|| text.to_string())
}

/// Whether a container is down and can be started as it is.
fn is_down(info: &ContainerInspectResponse) -> bool {
    matches!(
        info.state.as_ref().and_then(|s| s.status),
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::CREATED)
    )
}

/// Whether a container has a health check (`HEALTHCHECK NONE` is none).
fn has_health_check(info: &ContainerInspectResponse) -> bool {
    info.config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref())
        .and_then(|t| t.first())
        .is_some_and(|first| first != "NONE")
}

/// A container's state for messages: `running`, `running, healthy`,
/// `exited, exit code 137`.
fn describe(info: &ContainerInspectResponse) -> String {
    let reading = reading_of(info);
    [Some(reading.state), reading.health, reading.detail]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses names that are not Docker names (they go into API paths).
fn check_name(what: &str, name: &str) -> Result<(), ExecError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ExecError::Invalid(format!(
            "`{name}` is not a valid {what} name"
        )))
    }
}

/// The error for a failed Engine API call about `name`.
fn api_error(error: BollardError, name: &str, doing: &str) -> ExecError {
    match error {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => ExecError::Invalid(format!("{doing} {name}: no such container ({message})")),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => failed(format!(
            "{doing} {name}: Docker said {status_code}: {message}"
        )),
        e @ (BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::HttpClientError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError) => ExecError::Unavailable {
            executor: EXECUTOR,
            message: format!("{doing} {name}: {e}"),
        },
        other => failed(format!("{doing} {name}: {other}")),
    }
}

/// Docker ran the action and it failed.
fn failed(message: String) -> ExecError {
    ExecError::Failed {
        executor: EXECUTOR,
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::{ContainerConfig, ContainerState, HealthConfig};
    use serde_json::json;

    use super::*;

    fn request(params: serde_json::Value) -> ExecRequest {
        ExecRequest {
            decided_at_ms: None,
            action_id: "01DOCKER".into(),
            kind: ActionKind::Restart,
            target: "web-1".into(),
            params: match params {
                serde_json::Value::Object(map) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            },
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn options_read_seconds_and_durations() {
        let o = Options::from_request(&request(json!({}))).unwrap();
        assert_eq!(
            (o.stop_timeout, o.settle),
            (None, super::super::attempt::DEFAULT_SETTLE)
        );
        let o =
            Options::from_request(&request(json!({"stop_timeout": 0, "settle": "1s"}))).unwrap();
        assert_eq!(
            (o.stop_timeout, o.settle),
            (Some(0), Duration::from_secs(1))
        );
        let o = Options::from_request(&request(json!({"stop_timeout": "1500ms", "settle": 0.1})))
            .unwrap();
        assert_eq!(
            (o.stop_timeout, o.settle),
            (Some(2), Duration::from_millis(100))
        );
        for bad in [
            json!({"settle": "soon"}),
            json!({"stop_timeout": -1}),
            json!({"settle": [1]}),
        ] {
            assert!(matches!(
                Options::from_request(&request(bad)),
                Err(ExecError::Invalid(_))
            ));
        }
    }

    #[test]
    fn a_container_started_after_the_decision_is_left_alone() {
        let info = |started: Option<&str>| ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                started_at: started.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        let decided = vigil_shared::time::parse_time("2026-12-03T22:48:10.000Z").unwrap();
        let later = info(Some("2026-12-03T22:48:10.500000000Z"));
        assert_eq!(
            started_since(&later, Some(decided)).as_deref(),
            Some("2026-12-03T22:48:10.500000000Z")
        );
        assert_eq!(started_since(&later, None), None);
        let earlier = info(Some("2026-12-03T22:48:09.999999999Z"));
        assert_eq!(started_since(&earlier, Some(decided)), None);
        assert_eq!(started_since(&info(None), Some(decided)), None);
        assert_eq!(started_since(&info(Some("soon")), Some(decided)), None);
    }

    #[test]
    fn names_that_could_bend_an_api_path_are_refused() {
        assert!(check_name("container", "web-1.blue_2").is_ok());
        for bad in ["", "-x", "a/../../images", "a?b", "a b", "ä"] {
            assert!(check_name("container", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_checks_and_down_states_are_recognized() {
        let info = |status, test: Option<Vec<&str>>| ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                healthcheck: test.map(|t| HealthConfig {
                    test: Some(t.into_iter().map(String::from).collect()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        use ContainerStateStatusEnum::*;
        assert!(is_down(&info(EXITED, None)) && is_down(&info(CREATED, None)));
        assert!(!is_down(&info(RUNNING, None)) && !is_down(&info(RESTARTING, None)));
        assert!(has_health_check(&info(RUNNING, Some(vec!["CMD", "true"]))));
        assert!(!has_health_check(&info(RUNNING, Some(vec!["NONE"]))));
        assert!(!has_health_check(&info(RUNNING, None)));
    }
}
