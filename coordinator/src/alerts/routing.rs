//! The alert routing file (`--alert-routes FILE`, YAML): which Alertmanager alerts become
//! which Vigil actions. Read once at start; a file that does not parse, or a route that
//! names an unknown action or an impossible host, stops the start with the route and key
//! at fault.
//!
//! ```yaml
//! routes:
//!   - alertname: AppUnhealthy        # required: the alert's `alertname`
//!     labels: {severity: critical}   # optional: more labels the alert must have, equal
//!     host_label: instance           # the label naming the host (default: `host`, else
//!                                    # `instance`; a `:port` suffix is cut); or `host: web-01`
//!     target: app                    # what the action acts on; or `target_label: container`
//!     action: exec                   # any action a policy may name
//!     params: {command: restart-app} # executor parameters (strings, numbers, booleans)
//!     dry_run: false                 # record only (default false)
//! ```
//!
//! The first route whose `alertname` and `labels` all match is used.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;
use vigil_shared::policy::ActionKind;
use vigil_shared::validate;

/// Most routes one file may hold.
pub const MAX_ROUTES: usize = 1000;
/// The largest routing file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The labels a host name is taken from when a route says neither `host` nor
/// `host_label`, in this order.
pub const DEFAULT_HOST_LABELS: [&str; 2] = ["host", "instance"];

/// Why the routing file cannot be used.
#[derive(Debug, Error)]
#[error("alert routes file {path}: {problem}")]
pub struct RoutesError {
    /// The file.
    pub path: String,
    /// What is wrong, naming the route and key.
    pub problem: String,
}

/// Where a value (the host, the target) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Always this.
    Fixed(String),
    /// The value of the first of these labels the alert has.
    Labels(Vec<String>),
}

/// One checked route.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRoute {
    /// The alert name it matches.
    pub alertname: String,
    /// More labels that must be equal.
    pub labels: BTreeMap<String, String>,
    /// Where the host comes from.
    pub host: Source,
    /// Where the target comes from.
    pub target: Source,
    /// The action, as written.
    pub action: String,
    /// Executor parameters.
    pub params: Map<String, Value>,
    /// Record only.
    pub dry_run: bool,
}

/// What a route makes of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The host whose agent runs it.
    pub host: String,
    /// What it acts on.
    pub target: String,
    /// The action.
    pub action: String,
    /// Executor parameters.
    pub params: Map<String, Value>,
    /// Record only.
    pub dry_run: bool,
}

/// Every route of a file, in file order.
#[derive(Debug, Clone, Default)]
pub struct AlertRoutes {
    routes: Vec<AlertRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    routes: Vec<RouteShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteShape {
    alertname: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    host: Option<String>,
    host_label: Option<String>,
    target: Option<String>,
    target_label: Option<String>,
    action: String,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    dry_run: bool,
}

/// Whether `name` is a Prometheus label name.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

impl AlertRoutes {
    /// Reads and checks the routing file at `path`.
    pub fn load(path: &Path) -> Result<AlertRoutes, RoutesError> {
        let error = |problem: String| RoutesError {
            path: path.display().to_string(),
            problem,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(format!("cannot read it: {e}")))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(error(format!("{size} bytes is more than {MAX_FILE_BYTES}")));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        AlertRoutes::parse(&text).map_err(error)
    }

    /// Parses and checks a routing file's text; the error names the route and key.
    pub fn parse(text: &str) -> Result<AlertRoutes, String> {
        let file: FileShape = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if file.routes.len() > MAX_ROUTES {
            return Err(format!(
                "routes: {} routes is more than {MAX_ROUTES}",
                file.routes.len()
            ));
        }
        let routes = file
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, shape)| {
                check(shape).map_err(|(key, why)| format!("routes[{i}].{key}: {why}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(AlertRoutes { routes })
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The first route that matches an alert with `labels`.
    pub fn find(&self, labels: &BTreeMap<String, String>) -> Option<&AlertRoute> {
        let alertname = labels.get("alertname")?;
        self.routes.iter().find(|route| {
            route.alertname == *alertname
                && route
                    .labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
        })
    }
}

fn check(shape: RouteShape) -> Result<AlertRoute, (&'static str, String)> {
    if shape.alertname.trim().is_empty() {
        return Err(("alertname", "must not be empty".into()));
    }
    for name in shape.labels.keys() {
        if !is_label_name(name) {
            return Err(("labels", format!("`{name}` is not a label name")));
        }
    }
    ActionKind::parse(&shape.action).map_err(|e| ("action", e))?;
    let host = match (shape.host, shape.host_label) {
        (Some(_), Some(_)) => {
            return Err(("host", "give `host` or `host_label`, not both".into()));
        }
        (Some(host), None) => {
            validate::host_name(&host).map_err(|e| ("host", e.problem))?;
            Source::Fixed(host)
        }
        (None, Some(label)) if is_label_name(&label) => Source::Labels(vec![label]),
        (None, Some(label)) => {
            return Err(("host_label", format!("`{label}` is not a label name")));
        }
        (None, None) => Source::Labels(DEFAULT_HOST_LABELS.map(String::from).to_vec()),
    };
    let target = match (shape.target, shape.target_label) {
        (Some(_), Some(_)) => {
            return Err(("target", "give `target` or `target_label`, not both".into()));
        }
        (Some(target), None) if !target.trim().is_empty() => Source::Fixed(target),
        (Some(_), None) => return Err(("target", "must not be empty".into())),
        (None, Some(label)) if is_label_name(&label) => Source::Labels(vec![label]),
        (None, Some(label)) => {
            return Err(("target_label", format!("`{label}` is not a label name")));
        }
        (None, None) => {
            return Err((
                "target",
                "`target` (what the action acts on) or `target_label` is required".into(),
            ))
        }
    };
    if let Some((key, value)) = shape
        .params
        .iter()
        .find(|(_, v)| !(v.is_string() || v.is_number() || v.is_boolean()))
    {
        return Err((
            "params",
            format!("`{key}` must be a string, a number or a boolean, got {value}"),
        ));
    }
    Ok(AlertRoute {
        alertname: shape.alertname,
        labels: shape.labels,
        host,
        target,
        action: shape.action.trim().to_string(),
        params: shape.params,
        dry_run: shape.dry_run,
    })
}

/// A host name from a label value: `web-01:9100` (Prometheus' `instance`) names `web-01`.
fn host_of(value: &str) -> &str {
    match value.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => value,
    }
}

impl AlertRoute {
    /// What this route makes of an alert with `labels`; the error says which label is
    /// missing or unusable.
    pub fn apply(&self, labels: &BTreeMap<String, String>) -> Result<Routed, String> {
        let pick = |source: &Source, what: &str| match source {
            Source::Fixed(value) => Ok(value.clone()),
            Source::Labels(names) => names
                .iter()
                .find_map(|name| labels.get(name))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "the alert has no label {} to take the {what} from",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )
                }),
        };
        let host = host_of(&pick(&self.host, "host")?).to_string();
        validate::host_name(&host).map_err(|e| format!("host `{host}` {}", e.problem))?;
        let target = pick(&self.target, "target")?;
        if target.trim().is_empty() || target.len() > validate::MAX_TAG_LEN {
            return Err(format!(
                "target must be 1 to {} characters",
                validate::MAX_TAG_LEN
            ));
        }
        Ok(Routed {
            host,
            target,
            action: self.action.clone(),
            params: self.params.clone(),
            dry_run: self.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_first_matching_route_maps_labels_to_an_action() {
        let routes = AlertRoutes::parse(
            "routes:\n\
             - alertname: AppDown\n  labels: {severity: page}\n  host: web-09\n  target: app\n  action: restart\n\
             - alertname: AppDown\n  target_label: container\n  action: exec\n  params: {command: fix, n: 3}\n",
        )
        .unwrap();
        assert_eq!(routes.len(), 2);
        let paged = labels(&[("alertname", "AppDown"), ("severity", "page")]);
        let routed = routes.find(&paged).unwrap().apply(&paged);
        assert_eq!(routed.unwrap().host, "web-09");
        let plain = labels(&[
            ("alertname", "AppDown"),
            ("instance", "web-01:9100"),
            ("container", "app-1"),
        ]);
        let routed = routes.find(&plain).unwrap().apply(&plain).unwrap();
        assert_eq!(
            (
                routed.host.as_str(),
                routed.target.as_str(),
                routed.action.as_str()
            ),
            ("web-01", "app-1", "exec")
        );
        assert_eq!(routed.params["n"], 3);
        // `host` beats `instance`.
        let both = labels(&[
            ("alertname", "AppDown"),
            ("instance", "x:1"),
            ("host", "db-1"),
            ("container", "c"),
        ]);
        assert_eq!(
            routes.find(&both).unwrap().apply(&both).unwrap().host,
            "db-1"
        );
        assert!(routes.find(&labels(&[("alertname", "Other")])).is_none());
        assert!(routes.find(&labels(&[])).is_none());
        let no_target = labels(&[("alertname", "AppDown"), ("host", "h")]);
        let e = routes
            .find(&no_target)
            .unwrap()
            .apply(&no_target)
            .unwrap_err();
        assert!(e.contains("`container`"), "{e}");
        let bad_host = labels(&[
            ("alertname", "AppDown"),
            ("host", "a/b"),
            ("container", "c"),
        ]);
        assert!(routes.find(&bad_host).unwrap().apply(&bad_host).is_err());
    }

    #[test]
    fn a_bad_route_is_named_with_its_key() {
        for (text, wanted) in [
            (
                "routes:\n- alertname: A\n  target: t\n  action: explode\n",
                "routes[0].action",
            ),
            (
                "routes:\n- alertname: A\n  action: restart\n",
                "routes[0].target",
            ),
            (
                "routes:\n- alertname: A\n  target: t\n  action: restart\n  host: a/b\n",
                "routes[0].host",
            ),
            (
                "routes:\n- alertname: A\n  target: t\n  action: restart\n  host_label: 'a-b'\n",
                "routes[0].host_label",
            ),
            (
                "routes:\n- alertname: A\n  target: t\n  action: exec\n  params: {x: [1]}\n",
                "routes[0].params",
            ),
            (
                "routes:\n- alertname: ''\n  target: t\n  action: exec\n",
                "routes[0].alertname",
            ),
            (
                "routes:\n- alertname: A\n  target: t\n  action: exec\n  colour: red\n",
                "colour",
            ),
        ] {
            let e = AlertRoutes::parse(text).unwrap_err();
            assert!(e.contains(wanted), "{text}: {e}");
        }
    }

    #[test]
    fn instance_ports_are_cut() {
        assert_eq!(host_of("web-01:9100"), "web-01");
        assert_eq!(host_of("web-01"), "web-01");
        assert_eq!(host_of("[::1]:9100"), "::1");
        assert_eq!(host_of("a:b"), "a:b");
    }
}
