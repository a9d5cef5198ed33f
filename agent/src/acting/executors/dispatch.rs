//! The dispatcher: picks the executor for a request, enforces the allowlists before
//! anything is touched, runs the attempt within the request's timeout, and logs a
//! backend's outage once rather than on every attempt.
//!
//! Which executor runs:
//!
//! - `params.executor` (`systemd` or `docker`) when given;
//! - else `restart`/`start`/`stop`/`reload` on a target with a unit type suffix
//!   (`*.service`, `.socket`, `.timer`, …: [`crate::system::units`]) → systemd;
//! - else `restart`/`start`/`stop`/`scale` → Docker (`reload` on a container is invalid);
//! - `exec` → the allowlisted command `params.command`; `webhook` → a POST to
//!   `params.url`; `notify` → nothing (the event itself is the notification).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Deserialize;

use vigil_shared::policy::ActionKind;

use super::attempt::{settle, ExecError, ExecOutcome, ExecRequest};
use super::command;
use super::docker::DockerExecutor;
use super::systemd::SystemdExecutor;
use super::webhook;
use crate::system::names::NameSet;
use crate::system::retry::Retry;
use crate::system::units::{has_unit_type, unit_id};

/// What the agent's local config allows executors to touch (`[remediation]` in
/// `agent.toml`). Everything is denied unless listed. Globs (`web-*`, `*.service`) work in
/// the unit and container lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// systemd units that may be restarted/started/stopped/reloaded.
    #[serde(default)]
    pub units: Vec<String>,
    /// Docker containers (and Compose services, for `scale`) that may be acted on.
    #[serde(default)]
    pub containers: Vec<String>,
    /// Commands `exec` may run, by name: `restart-api = ["/usr/local/bin/restart-api", "--now"]`.
    /// A policy names the command (`params.command: restart-api`); it cannot supply argv.
    #[serde(default)]
    pub commands: BTreeMap<String, Vec<String>>,
    /// URL prefixes `webhook` may POST to (`http://alerts.internal:9000/`).
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Docker's socket (default: `DOCKER_HOST` or `/var/run/docker.sock`).
    #[serde(default)]
    pub docker_socket: Option<PathBuf>,
}

/// All executors, with the allowlists they obey.
pub struct Executors {
    /// The allowlists, as configured.
    config: ExecutorConfig,
    /// Units that may be acted on (exact names normalized to unit ids).
    units: NameSet,
    /// Containers and Compose services that may be acted on.
    containers: NameSet,
    /// systemd over D-Bus.
    systemd: SystemdExecutor,
    /// Docker over its Engine API.
    docker: DockerExecutor,
    /// Outage logging for the system bus.
    systemd_outage: Mutex<Retry>,
    /// Outage logging for Docker.
    docker_outage: Mutex<Retry>,
}

/// Where a request goes, once it has been allowed.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// A systemd unit, by unit id.
    Systemd(String),
    /// A Docker container or Compose service (the request's target).
    Docker,
    /// An allowlisted command: its name and argv.
    Command(&'a str, &'a [String]),
    /// A webhook URL.
    Webhook(&'a str),
    /// Record only.
    Notify,
}

impl Route<'_> {
    /// The executor's name, as errors and outcomes carry it.
    fn executor(&self) -> &'static str {
        match self {
            Route::Systemd(_) => "systemd",
            Route::Docker => "docker",
            Route::Command(..) => "exec",
            Route::Webhook(_) => "webhook",
            Route::Notify => "notify",
        }
    }
}

impl Executors {
    /// Executors obeying `config`'s allowlists. Nothing is connected yet: Docker and the
    /// system bus are reached on first use.
    pub fn new(config: ExecutorConfig) -> Executors {
        let units: Vec<String> = config
            .units
            .iter()
            .map(|u| {
                let u = u.trim();
                if u.contains(['*', '?', '[']) {
                    u.to_string()
                } else {
                    unit_id(u)
                }
            })
            .collect();
        Executors {
            units: NameSet::new(&units),
            containers: NameSet::new(&config.containers),
            docker: DockerExecutor::new(config.docker_socket.clone()),
            systemd: SystemdExecutor::new(),
            systemd_outage: Mutex::new(Retry::new("systemd (D-Bus system bus)")),
            docker_outage: Mutex::new(Retry::new("Docker")),
            config,
        }
    }

    /// Runs one attempt of `request`: refused with [`ExecError::NotAllowed`] before
    /// anything is touched when an allowlist does not name its target, command or URL;
    /// [`ExecError::Timeout`] when it takes longer than `request.timeout` (a command still
    /// running is killed with its process group).
    pub async fn run(&self, request: &ExecRequest) -> Result<ExecOutcome, ExecError> {
        let route = self.route(request)?;
        let executor = route.executor();
        let attempt = async {
            match &route {
                Route::Systemd(unit) => {
                    self.systemd.run(request.kind, unit, settle(request)?).await
                }
                Route::Docker => self.docker.run(request).await,
                Route::Command(name, argv) => command::run(name, argv, request).await,
                Route::Webhook(url) => webhook::run(url, request).await,
                Route::Notify => Ok(ExecOutcome {
                    executor: "notify",
                    detail: "recorded".to_string(),
                }),
            }
        };
        let result = tokio::time::timeout(request.timeout, attempt)
            .await
            .unwrap_or(Err(ExecError::Timeout {
                executor,
                after: request.timeout,
            }));
        self.note_outage(executor, &result);
        result
    }

    /// Logs the start and end of a backend's outage (once each, not per attempt).
    fn note_outage(&self, executor: &str, result: &Result<ExecOutcome, ExecError>) {
        let outage = match executor {
            "systemd" => &self.systemd_outage,
            "docker" => &self.docker_outage,
            _ => return,
        };
        let mut outage = outage.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Err(e @ ExecError::Unavailable { .. }) => {
                // The action queue paces retries; the wait suggested here is not used.
                let _ = outage.failed(e);
            }
            Ok(_) | Err(ExecError::Failed { .. } | ExecError::Timeout { .. }) => {
                outage.connected();
            }
            Err(ExecError::NotAllowed(_) | ExecError::Invalid(_)) => {}
        }
    }

    /// Picks the executor and checks its allowlist.
    fn route<'a>(&'a self, request: &'a ExecRequest) -> Result<Route<'a>, ExecError> {
        let kind = request.kind;
        let target = request.target.as_str();
        let chosen = match request.params.get("executor") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(ExecError::Invalid(format!(
                    "params.executor must be a string (systemd or docker), not {other}"
                )))
            }
        };
        let unit_action = matches!(
            kind,
            ActionKind::Restart | ActionKind::Start | ActionKind::Stop | ActionKind::Reload
        );
        let container_action = matches!(
            kind,
            ActionKind::Restart | ActionKind::Start | ActionKind::Stop | ActionKind::Scale
        );
        let route = match (chosen, kind) {
            (Some("systemd"), _) if unit_action => Route::Systemd(unit_id(target)),
            (Some("docker"), ActionKind::Reload) => return Err(reload_on_container(target)),
            (Some("docker"), _) if container_action => Route::Docker,
            (Some(name @ ("systemd" | "docker")), _) => {
                return Err(ExecError::Invalid(format!(
                    "the {name} executor cannot `{}`",
                    kind.as_str()
                )))
            }
            // A redundant `executor: exec` (or webhook, notify): as if it were absent.
            (Some(name), ActionKind::Exec | ActionKind::Webhook | ActionKind::Notify)
                if name == kind.as_str() =>
            {
                return self.route_by_kind(request);
            }
            (Some(name), _) => {
                return Err(ExecError::Invalid(format!(
                    "unknown executor `{name}` for `{}` (systemd or docker)",
                    kind.as_str()
                )))
            }
            (None, _) => return self.route_by_kind(request),
        };
        self.allow(route, target)
    }

    /// Routes by action kind and target alone (no `params.executor`).
    fn route_by_kind<'a>(&'a self, request: &'a ExecRequest) -> Result<Route<'a>, ExecError> {
        let target = request.target.as_str();
        let route = match request.kind {
            ActionKind::Restart | ActionKind::Start | ActionKind::Stop | ActionKind::Reload
                if has_unit_type(target) =>
            {
                Route::Systemd(target.to_string())
            }
            ActionKind::Reload => return Err(reload_on_container(target)),
            ActionKind::Restart | ActionKind::Start | ActionKind::Stop | ActionKind::Scale => {
                Route::Docker
            }
            ActionKind::Exec => {
                let name = string_param(request, "command")?;
                for forbidden in ["args", "argv"] {
                    if request.params.contains_key(forbidden) {
                        return Err(ExecError::NotAllowed(format!(
                            "params.{forbidden}: a policy names an allowlisted command \
                             (params.command) and cannot supply its arguments"
                        )));
                    }
                }
                let argv = self.config.commands.get(name).ok_or_else(|| {
                    ExecError::NotAllowed(format!(
                        "command `{name}` is not in the exec allowlist (remediation.commands)"
                    ))
                })?;
                if argv.first().is_none_or(|program| program.is_empty()) {
                    return Err(ExecError::Invalid(format!(
                        "command `{name}` has an empty argv in remediation.commands"
                    )));
                }
                Route::Command(name, argv)
            }
            ActionKind::Webhook => {
                let url = string_param(request, "url")?;
                if !self.webhook_allowed(url) {
                    return Err(ExecError::NotAllowed(format!(
                        "URL `{url}` does not start with a prefix in the webhook allowlist \
                         (remediation.webhooks)"
                    )));
                }
                Route::Webhook(url)
            }
            ActionKind::Notify => Route::Notify,
            // Mapped onto exec or webhook when queued; what reaches here has no mapping.
            kind @ (ActionKind::DrainPod | ActionKind::Rebalance | ActionKind::Snapshot) => {
                return Err(ExecError::Invalid(crate::acting::mapping::not_runnable(
                    kind,
                )))
            }
        };
        self.allow(route, target)
    }

    /// Checks a unit or container route against its allowlist.
    fn allow<'a>(&self, route: Route<'a>, target: &str) -> Result<Route<'a>, ExecError> {
        match &route {
            Route::Systemd(unit) if !self.units.matches(unit) => Err(ExecError::NotAllowed(
                format!("unit `{unit}` is not in the systemd allowlist (remediation.units)"),
            )),
            Route::Docker if !self.containers.matches(target) => {
                Err(ExecError::NotAllowed(format!(
                    "container or service `{target}` is not in the Docker allowlist \
                     (remediation.containers)"
                )))
            }
            _ => Ok(route),
        }
    }

    /// Whether `url` starts with an allowlisted prefix, ending at a boundary: a prefix
    /// `http://hooks:9000` allows `http://hooks:9000/x` but not `http://hooks:9000.evil/`
    /// or `http://hooks:9000@evil/`.
    fn webhook_allowed(&self, url: &str) -> bool {
        webhook_allowed(&self.config.webhooks, url)
    }
}

/// Whether `url` starts with one of `prefixes`, ending at a boundary (see
/// [`Executors::webhook_allowed`]).
pub(crate) fn webhook_allowed(prefixes: &[String], url: &str) -> bool {
    prefixes.iter().any(|prefix| {
        let prefix = prefix.trim();
        !prefix.is_empty()
            && url.strip_prefix(prefix).is_some_and(|rest| {
                prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#'])
            })
    })
}

/// The refusal of `reload` on a container.
fn reload_on_container(target: &str) -> ExecError {
    ExecError::Invalid(format!(
        "`reload` applies to systemd units, and `{target}` is not a unit name \
         (name the unit with its suffix, e.g. `{target}.service`, or set params.executor: systemd)"
    ))
}

/// A required string parameter.
fn string_param<'a>(request: &'a ExecRequest, key: &str) -> Result<&'a str, ExecError> {
    match request.params.get(key) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.as_str()),
        Some(other) => Err(ExecError::Invalid(format!(
            "params.{key} must be a non-empty string, not {other}"
        ))),
        None => Err(ExecError::Invalid(format!(
            "`{}` needs params.{key}",
            request.kind.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn executors() -> Executors {
        Executors::new(ExecutorConfig {
            units: vec!["nginx".into(), "web-*.service".into()],
            containers: vec!["api-1".into(), "worker-*".into(), "web".into()],
            commands: BTreeMap::from([
                ("flush".to_string(), vec!["/bin/true".to_string()]),
                ("empty".to_string(), vec![]),
            ]),
            webhooks: vec!["http://hooks.internal:9000".into()],
            docker_socket: None,
        })
    }

    fn request(kind: ActionKind, target: &str, params: serde_json::Value) -> ExecRequest {
        let params = match params {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        ExecRequest {
            decided_at_ms: None,
            action_id: "01TEST".into(),
            kind,
            target: target.into(),
            params,
            timeout: Duration::from_secs(5),
        }
    }

    fn route(
        kind: ActionKind,
        target: &str,
        params: serde_json::Value,
    ) -> Result<String, ExecError> {
        let executors = executors();
        let request = request(kind, target, params);
        executors.route(&request).map(|r| format!("{r:?}"))
    }

    #[test]
    fn unit_names_go_to_systemd_and_the_rest_to_docker() {
        use ActionKind::*;
        assert_eq!(
            route(Restart, "nginx.service", json!({})),
            Ok(r#"Systemd("nginx.service")"#.into())
        );
        assert_eq!(
            route(Reload, "web-1.service", json!({})),
            Ok(r#"Systemd("web-1.service")"#.into())
        );
        assert_eq!(route(Restart, "api-1", json!({})), Ok("Docker".into()));
        assert_eq!(route(Scale, "web", json!({})), Ok("Docker".into()));
        assert_eq!(
            route(Stop, "nginx", json!({"executor": "systemd"})),
            Ok(r#"Systemd("nginx.service")"#.into())
        );
        assert_eq!(
            route(Stop, "worker-3", json!({"executor": "docker"})),
            Ok("Docker".into())
        );
        assert_eq!(route(Notify, "anything", json!({})), Ok("Notify".into()));
        assert_eq!(
            route(Exec, "x", json!({"command": "flush"})),
            Ok(r#"Command("flush", ["/bin/true"])"#.into())
        );
        assert_eq!(
            route(Exec, "x", json!({"command": "flush", "executor": "exec"})),
            Ok(r#"Command("flush", ["/bin/true"])"#.into())
        );
    }

    #[test]
    fn invalid_requests_are_refused_as_invalid() {
        use ActionKind::*;
        let invalid = |r: Result<String, ExecError>| matches!(r, Err(ExecError::Invalid(_)));
        assert!(invalid(route(Reload, "api-1", json!({}))));
        assert!(invalid(route(
            Reload,
            "api-1",
            json!({"executor": "docker"})
        )));
        assert!(invalid(route(
            Scale,
            "nginx",
            json!({"executor": "systemd"})
        )));
        assert!(invalid(route(
            Restart,
            "api-1",
            json!({"executor": "podman"})
        )));
        assert!(invalid(route(Restart, "api-1", json!({"executor": 3}))));
        assert!(invalid(route(Exec, "x", json!({}))));
        assert!(invalid(route(Exec, "x", json!({"command": "empty"}))));
        assert!(invalid(route(Webhook, "x", json!({"url": 5}))));
    }

    #[test]
    fn allowlists_refuse_what_they_do_not_name() {
        use ActionKind::*;
        let refused = |r: Result<String, ExecError>, words: &[&str]| match r {
            Err(ExecError::NotAllowed(why)) => words.iter().all(|w| why.contains(w)),
            _ => false,
        };
        assert!(refused(
            route(Restart, "sshd.service", json!({})),
            &["sshd.service", "remediation.units"]
        ));
        assert!(refused(
            route(Restart, "db-1", json!({})),
            &["db-1", "remediation.containers"]
        ));
        assert!(refused(
            route(Scale, "db", json!({})),
            &["db", "remediation.containers"]
        ));
        assert!(refused(
            route(Exec, "x", json!({"command": "rm-rf"})),
            &["rm-rf", "remediation.commands"]
        ));
        assert!(refused(
            route(Exec, "x", json!({"command": "flush", "args": ["-x"]})),
            &["params.args"]
        ));
        for url in [
            "http://evil.example/",
            "http://hooks.internal:9000.evil.example/",
            "http://hooks.internal:9000@evil.example/",
        ] {
            assert!(
                refused(
                    route(Webhook, "x", json!({"url": url})),
                    &[url, "remediation.webhooks"]
                ),
                "{url}"
            );
        }
        assert_eq!(
            route(
                Webhook,
                "x",
                json!({"url": "http://hooks.internal:9000/alert"})
            ),
            Ok(r#"Webhook("http://hooks.internal:9000/alert")"#.into())
        );
    }

    #[tokio::test]
    async fn notify_touches_nothing() {
        let outcome = executors()
            .run(&request(ActionKind::Notify, "web-1", json!({})))
            .await;
        assert_eq!(
            outcome,
            Ok(ExecOutcome {
                executor: "notify",
                detail: "recorded".into()
            })
        );
    }
}
