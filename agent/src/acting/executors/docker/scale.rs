//! `scale` for a Compose-style service: the target names the service, whose containers
//! carry the labels `com.docker.compose.project` and `com.docker.compose.service` (and
//! `com.docker.compose.container-number`). `params.replicas` is the count wanted;
//! `params.by` (`+2`, `-1`) changes the current count; `params.project` picks the project
//! when the service name is in several.
//!
//! The count is of the service's containers, running or not. Scaling up creates copies of
//! one of them (a running one if any, the lowest-numbered otherwise): the same image (by
//! id, so copies match it exactly), config, labels, host config and networks (with their
//! aliases, without its addresses), named `<project>-<service>-<n>` with the next free
//! numbers, then starts them and waits until each is up, as `start` does; a copy that
//! does not come up is removed again. Scaling down stops and removes the highest-numbered
//! containers (their anonymous volumes are kept). Scaling to zero is refused: the last
//! container is what a later scale-up copies.

use std::collections::{BTreeSet, HashMap};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, EndpointSettings,
    NetworkConnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use serde_json::Value;

use super::{api_error, check_name, failed, inspect, wait_up, Options};
use crate::acting::executors::attempt::{ExecError, ExecRequest};
use crate::system::docker::primary_name;

/// Compose's project label.
const PROJECT: &str = "com.docker.compose.project";
/// Compose's service label.
const SERVICE: &str = "com.docker.compose.service";
/// Compose's replica number label.
const NUMBER: &str = "com.docker.compose.container-number";
/// The most containers one scale action may leave a service with.
pub const MAX_REPLICAS: usize = 100;

/// One container of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// Its replica number.
    number: u32,
    /// Its name.
    name: String,
    /// Its id.
    id: String,
    /// Whether it runs.
    running: bool,
}

/// Scales `service` as `request` asks; the outcome's detail says what was done and the
/// final state.
pub(super) async fn scale(
    docker: &Docker,
    service: &str,
    request: &ExecRequest,
    options: &Options,
) -> Result<String, ExecError> {
    let project = match request.params.get("project") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => {
            check_name("Compose project", p)?;
            Some(p.as_str())
        }
        Some(other) => {
            return Err(ExecError::Invalid(format!(
                "params.project must be a string, not {other}"
            )))
        }
    };
    let (project, members) = members(docker, service, project).await?;
    let current = members.len();
    let wanted = wanted(request, current)?;
    let label = format!("service {service} (project {project})");
    if wanted == current {
        return Ok(format!(
            "{label} already has {current} containers ({} running)",
            running(&members)
        ));
    }
    let done = if wanted > current {
        scale_up(
            docker,
            &project,
            service,
            &members,
            wanted - current,
            options,
        )
        .await?
    } else {
        scale_down(docker, &members, current - wanted, options).await?
    };
    let (_, after) = members_of(docker, service, Some(&project)).await?;
    Ok(format!(
        "{label}: {current} → {} containers ({} running); {done}",
        after.len(),
        running(&after)
    ))
}

/// How many containers `request` wants, given `current`.
fn wanted(request: &ExecRequest, current: usize) -> Result<usize, ExecError> {
    let invalid = |why: String| ExecError::Invalid(why);
    let number = |key: &str, value: &Value| -> Result<i64, ExecError> {
        let parsed = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().trim_start_matches('+').parse().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| invalid(format!("params.{key} must be a whole number, not {value}")))
    };
    let wanted = match (request.params.get("replicas"), request.params.get("by")) {
        (Some(replicas), None) => number("replicas", replicas)?,
        (None, Some(by)) => i64::try_from(current)
            .unwrap_or(i64::MAX)
            .saturating_add(number("by", by)?),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give params.replicas or params.by, not both".into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "`scale` needs params.replicas (a count) or params.by (+N/-N)".into(),
            ))
        }
    };
    if wanted < 1 {
        return Err(invalid(format!(
            "scaling to {wanted} would remove the last container, which a later scale-up \
             copies: stop it instead"
        )));
    }
    usize::try_from(wanted)
        .ok()
        .filter(|w| *w <= MAX_REPLICAS)
        .ok_or_else(|| invalid(format!("{wanted} containers is more than {MAX_REPLICAS}")))
}

/// The service's project and containers, by number; `Invalid` if there are none or it is
/// in several projects and none was named.
async fn members(
    docker: &Docker,
    service: &str,
    project: Option<&str>,
) -> Result<(String, Vec<Member>), ExecError> {
    let (projects, members) = members_of(docker, service, project).await?;
    match projects.len() {
        0 => Err(ExecError::Invalid(format!(
            "no Compose-labelled containers for service {service}"
        ))),
        1 => {
            let project = projects.into_iter().next().unwrap_or_default();
            Ok((project, members))
        }
        _ => Err(ExecError::Invalid(format!(
            "service {service} is in several Compose projects ({}): name one in params.project",
            projects.into_iter().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The projects the service is in and its containers (lowest number first).
async fn members_of(
    docker: &Docker,
    service: &str,
    project: Option<&str>,
) -> Result<(BTreeSet<String>, Vec<Member>), ExecError> {
    let mut labels = vec![format!("{SERVICE}={service}")];
    labels.extend(project.map(|p| format!("{PROJECT}={p}")));
    let listing = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), labels)])),
        ..Default::default()
    };
    let containers = docker
        .list_containers(Some(listing))
        .await
        .map_err(|e| api_error(e, service, "listing the containers of service"))?;
    let mut projects = BTreeSet::new();
    let mut members = Vec::new();
    for container in &containers {
        let (Some(name), Some(id)) = (primary_name(container), container.id.as_deref()) else {
            continue;
        };
        let labels = container.labels.as_ref();
        let Some(in_project) = labels.and_then(|l| l.get(PROJECT)) else {
            continue;
        };
        projects.insert(in_project.clone());
        let number = labels
            .and_then(|l| l.get(NUMBER))
            .and_then(|n| n.parse().ok())
            .or_else(|| name.rsplit(['-', '_']).next()?.parse().ok())
            .unwrap_or(0);
        members.push(Member {
            number,
            name: name.to_string(),
            id: id.to_string(),
            running: container.state == Some(ContainerSummaryStateEnum::RUNNING),
        });
    }
    members.sort_by(|a, b| (a.number, &a.name).cmp(&(b.number, &b.name)));
    Ok((projects, members))
}

/// How many members run.
fn running(members: &[Member]) -> usize {
    members.iter().filter(|m| m.running).count()
}

/// Creates, starts and waits for `count` copies; what was done.
async fn scale_up(
    docker: &Docker,
    project: &str,
    service: &str,
    members: &[Member],
    count: usize,
    options: &Options,
) -> Result<String, ExecError> {
    let Some(template) = members
        .iter()
        .find(|m| m.running)
        .or_else(|| members.first())
    else {
        return Err(ExecError::Invalid(format!(
            "no Compose-labelled containers for service {service}"
        )));
    };
    let template = inspect(docker, &template.name, &template.id).await?;
    let next = members.iter().map(|m| m.number).max().unwrap_or(0) + 1;
    let mut created: Vec<(String, String)> = Vec::new();
    let mut problem = None;
    for number in (next..).take(count) {
        let name = format!("{project}-{service}-{number}");
        match create_copy(docker, &template, &name, number).await {
            Ok(id) => created.push((name, id)),
            Err((id, e)) => {
                if let Some(id) = id {
                    remove(docker, &id).await;
                }
                problem = Some(format!("{name}: {e}"));
                break;
            }
        }
    }
    let waits = created
        .iter()
        .map(|(name, id)| wait_up(docker, name, id, options.settle));
    let results = futures_util::future::join_all(waits).await;
    let mut up = Vec::new();
    let mut down = Vec::new();
    for ((name, id), result) in created.iter().zip(results) {
        match result {
            Ok(_) => up.push(name.clone()),
            Err(e) => {
                remove(docker, id).await;
                down.push(format!("{name}: {e}"));
            }
        }
    }
    down.extend(problem);
    let added = if up.is_empty() {
        "added none".to_string()
    } else {
        format!("added {}", up.join(", "))
    };
    if down.is_empty() {
        Ok(added)
    } else {
        Err(failed(format!(
            "scaling service {service} up: {added}; failed (and removed): {}",
            down.join("; ")
        )))
    }
}

/// Creates and starts one copy of `template`; its id, or the error with the id of a copy
/// that was created but could not be started.
async fn create_copy(
    docker: &Docker,
    template: &ContainerInspectResponse,
    name: &str,
    number: u32,
) -> Result<String, (Option<String>, ExecError)> {
    let (body, more_networks) = copy_of(template, number);
    let create = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let id = docker
        .create_container(Some(create), body)
        .await
        .map_err(|e| (None, api_error(e, name, "creating")))?
        .id;
    for (network, endpoint) in more_networks {
        let connect = NetworkConnectRequest {
            container: id.clone(),
            endpoint_config: Some(endpoint),
        };
        docker
            .connect_network(&network, connect)
            .await
            .map_err(|e| {
                let doing = format!("connecting to network {network}");
                (Some(id.clone()), api_error(e, name, &doing))
            })?;
    }
    docker
        .start_container(&id, None)
        .await
        .map_err(|e| (Some(id.clone()), api_error(e, name, "starting")))?;
    Ok(id)
}

/// Removes a container (force: it may run), ignoring failure (it is reported anyway).
async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_container(id, Some(options)).await {
        tracing::warn!("could not remove container {id} after a failed scale-up: {e}");
    }
}

/// Stops (all at once) and removes the `count` highest-numbered members; what was done.
async fn scale_down(
    docker: &Docker,
    members: &[Member],
    count: usize,
    options: &Options,
) -> Result<String, ExecError> {
    let victims: Vec<&Member> = members.iter().rev().take(count).collect();
    let results = futures_util::future::join_all(victims.iter().map(|member| async move {
        let stop = StopContainerOptions {
            t: options.stop_timeout,
            signal: None,
        };
        docker
            .stop_container(&member.id, Some(stop))
            .await
            .map_err(|e| api_error(e, &member.name, "stopping"))?;
        let remove = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        docker
            .remove_container(&member.id, Some(remove))
            .await
            .map_err(|e| api_error(e, &member.name, "removing"))
    }))
    .await;
    let mut removed = Vec::new();
    let mut problems = Vec::new();
    for (member, result) in victims.iter().zip(results) {
        match result {
            Ok(()) => removed.push(member.name.as_str()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let done = if removed.is_empty() {
        "removed none".to_string()
    } else {
        format!("removed {}", removed.join(", "))
    };
    if problems.is_empty() {
        Ok(done)
    } else {
        Err(failed(format!(
            "scaling down: {done}; {}",
            problems.join("; ")
        )))
    }
}

/// The create request for a copy of `template` numbered `number`, and the networks to
/// connect it to after creation (the API takes one at creation on older engines).
fn copy_of(
    template: &ContainerInspectResponse,
    number: u32,
) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let config = template.config.clone().unwrap_or_default();
    let template_id = template.id.as_deref().unwrap_or_default();
    let short_id = template_id.get(..12).unwrap_or(template_id);
    let template_name = template
        .name
        .as_deref()
        .map(|n| n.trim_start_matches('/'))
        .unwrap_or_default();
    let mut labels = config.labels.unwrap_or_default();
    labels.insert(NUMBER.to_string(), number.to_string());
    // Docker's default host name is the container's short id: let the copy get its own.
    let hostname = config.hostname.filter(|h| h != short_id && !h.is_empty());
    let host_config = template.host_config.clone();
    let mode = host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let networks = template
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let endpoint = |settings: &EndpointSettings| EndpointSettings {
        aliases: settings.aliases.as_ref().map(|aliases| {
            aliases
                .iter()
                .filter(|a| a.as_str() != short_id && a.as_str() != template_name)
                .cloned()
                .collect()
        }),
        links: settings.links.clone(),
        driver_opts: settings.driver_opts.clone(),
        ..Default::default()
    };
    // The network the mode names is joined at creation; others (user-defined) after it.
    let own_mode = !matches!(mode.as_str(), "" | "default" | "bridge" | "host" | "none")
        && !mode.starts_with("container:");
    let mut first = HashMap::new();
    let mut more = Vec::new();
    for (network, settings) in &networks {
        if own_mode && *network == mode {
            first.insert(network.clone(), endpoint(settings));
        } else if !matches!(network.as_str(), "bridge" | "host" | "none") {
            more.push((network.clone(), endpoint(settings)));
        }
    }
    let body = ContainerCreateBody {
        hostname,
        domainname: config.domainname,
        user: config.user,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: config.exposed_ports,
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env: config.env,
        cmd: config.cmd,
        healthcheck: config.healthcheck,
        args_escaped: config.args_escaped,
        image: template.image.clone().or(config.image),
        volumes: config.volumes,
        working_dir: config.working_dir,
        entrypoint: config.entrypoint,
        network_disabled: config.network_disabled,
        on_build: config.on_build,
        labels: Some(labels),
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        shell: config.shell,
        host_config,
        networking_config: (!first.is_empty()).then_some(NetworkingConfig {
            endpoints_config: Some(first),
        }),
    };
    (body, more)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use bollard::models::{ContainerConfig, HostConfig, NetworkSettings};
    use serde_json::json;
    use vigil_shared::policy::ActionKind;

    use super::*;

    fn request(params: Value) -> ExecRequest {
        ExecRequest {
            decided_at_ms: None,
            action_id: "01SCALE".into(),
            kind: ActionKind::Scale,
            target: "web".into(),
            params: match params {
                Value::Object(map) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            },
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn replicas_and_by_give_the_wanted_count() {
        let w = |p: Value| wanted(&request(p), 2);
        assert_eq!(w(json!({"replicas": 3})), Ok(3));
        assert_eq!(w(json!({"replicas": "1"})), Ok(1));
        assert_eq!(w(json!({"by": 2})), Ok(4));
        assert_eq!(w(json!({"by": "+1"})), Ok(3));
        assert_eq!(w(json!({"by": -1})), Ok(1));
        for bad in [
            json!({}),
            json!({"replicas": 0}),
            json!({"by": -2}),
            json!({"replicas": 2, "by": 1}),
            json!({"replicas": "many"}),
            json!({"replicas": 1000}),
        ] {
            assert!(
                matches!(w(bad.clone()), Err(ExecError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_copy_keeps_config_and_networks_but_not_identity() {
        let id = "0123456789abcdef0123";
        let template = ContainerInspectResponse {
            id: Some(id.into()),
            name: Some("/shop-web-1".into()),
            image: Some("sha256:feed".into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                image: Some("shop/web:1".into()),
                env: Some(vec!["MODE=prod".into()]),
                labels: Some(HashMap::from([
                    (SERVICE.to_string(), "web".to_string()),
                    (NUMBER.to_string(), "1".to_string()),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("shop_default".into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    (
                        "shop_default".to_string(),
                        EndpointSettings {
                            aliases: Some(vec![
                                "web".into(),
                                "0123456789ab".into(),
                                "shop-web-1".into(),
                            ]),
                            ip_address: Some("172.20.0.2".into()),
                            ..Default::default()
                        },
                    ),
                    ("shop_back".to_string(), EndpointSettings::default()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (body, more) = copy_of(&template, 3);
        assert_eq!(body.image.as_deref(), Some("sha256:feed"));
        assert_eq!(body.hostname, None);
        assert_eq!(body.env, Some(vec!["MODE=prod".to_string()]));
        let labels = body.labels.unwrap();
        assert_eq!(labels[NUMBER], "3");
        assert_eq!(labels[SERVICE], "web");
        let first = body.networking_config.unwrap().endpoints_config.unwrap();
        let endpoint = &first["shop_default"];
        assert_eq!(endpoint.aliases, Some(vec!["web".to_string()]));
        assert_eq!(endpoint.ip_address, None);
        assert_eq!(
            more.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["shop_back"]
        );
    }
}
