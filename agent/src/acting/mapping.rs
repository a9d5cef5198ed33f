//! The agent's mapping of the original system's actions that have no built-in meaning on
//! a host (`drain-pod`, `rebalance`, `snapshot`: [`ActionKind::MAPPED`]) onto what this
//! host can do: an allowlisted command or a webhook (`[actions]` in `agent.toml`).
//!
//! ```toml
//! [allow.commands]
//! drain-node = ["/usr/local/bin/drain-node", "--grace", "30"]
//! [actions]
//! drain-pod = { exec = "drain-node" }                       # a command of [allow.commands]
//! rebalance = { webhook = "http://lb.internal:9000/rebalance" }  # under [allow] webhooks
//! ```
//!
//! A mapped action is queued as the `exec` or `webhook` it maps to (the audit record keeps
//! the name as written), so the same executors and allowlists run it. An action with no
//! mapping here is still queued, and ends `dead_letter` with `not_runnable: …` (see
//! [`not_runnable`]) without running anything.

use std::collections::BTreeMap;

use serde::Deserialize;
use vigil_shared::policy::ActionKind;

use super::executors::{webhook_allowed, ExecutorConfig};

/// Longest command name or webhook URL a mapping may hold.
const MAX_VALUE: usize = 2048;

/// One `[actions]` entry as written: exactly one of `exec` and `webhook`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// The name of a command in `[allow.commands]`.
    pub exec: Option<String>,
    /// A URL under a prefix in `[allow] webhooks`.
    pub webhook: Option<String>,
}

/// What one action is mapped onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Run this allowlisted command.
    Exec(String),
    /// POST to this allowlisted URL.
    Webhook(String),
}

/// The checked `[actions]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionMappings {
    entries: Vec<(ActionKind, Mapped)>,
}

impl ActionMappings {
    /// Checks the `[actions]` table against the allowlists; the error names the field
    /// (`actions.drain-pod.exec`) and what is wrong.
    pub fn resolve(
        file: &BTreeMap<String, MappingFile>,
        allow: &ExecutorConfig,
    ) -> Result<ActionMappings, String> {
        let mut entries: Vec<(ActionKind, Mapped)> = Vec::new();
        for (name, entry) in file {
            let field = format!("actions.{name}");
            let kind = match ActionKind::parse(name) {
                Ok(kind) if kind.needs_mapping() => kind,
                _ => {
                    return Err(format!(
                        "`{field}`: only the original system's actions without a built-in \
                         meaning can be mapped ({})",
                        ActionKind::MAPPED.map(ActionKind::as_str).join(", ")
                    ))
                }
            };
            if entries.iter().any(|(k, _)| *k == kind) {
                return Err(format!("`{field}`: `{}` is mapped twice", kind.as_str()));
            }
            let value = |key: &str, text: &str| -> Result<String, String> {
                let text = text.trim();
                if text.is_empty() || text.len() > MAX_VALUE || text.chars().any(char::is_control) {
                    return Err(format!(
                        "`{field}.{key}`: must be 1 to {MAX_VALUE} characters without control \
                         characters"
                    ));
                }
                Ok(text.to_string())
            };
            let mapped = match (&entry.exec, &entry.webhook) {
                (Some(command), None) => {
                    let command = value("exec", command)?;
                    if !allow.commands.contains_key(&command) {
                        return Err(format!(
                            "`{field}.exec`: command `{command}` is not in [allow.commands]"
                        ));
                    }
                    Mapped::Exec(command)
                }
                (None, Some(url)) => {
                    let url = value("webhook", url)?;
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(format!(
                            "`{field}.webhook`: `{url}` is not an http:// or https:// URL"
                        ));
                    }
                    if !webhook_allowed(&allow.webhooks, &url) {
                        return Err(format!(
                            "`{field}.webhook`: `{url}` is not under a prefix in [allow] webhooks"
                        ));
                    }
                    Mapped::Webhook(url)
                }
                _ => {
                    return Err(format!(
                        "`{field}`: give exactly one of exec = \"<command>\" or \
                         webhook = \"<url>\""
                    ))
                }
            };
            entries.push((kind, mapped));
        }
        Ok(ActionMappings { entries })
    }

    /// What `kind` is mapped onto, if it is.
    pub fn get(&self, kind: ActionKind) -> Option<&Mapped> {
        self.entries
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, mapped)| mapped)
    }

    /// Whether `kind` runs here: built in, or mapped.
    pub fn runs(&self, kind: ActionKind) -> bool {
        !kind.needs_mapping() || self.get(kind).is_some()
    }

    /// The kind an action is queued as, with its parameters completed: a mapped action
    /// becomes its `exec` (`params.command`) or `webhook` (`params.url`); the mapping
    /// wins over the policy's own `command`, `url` and `executor`. Any other action is
    /// left as it is.
    pub fn apply(
        &self,
        kind: ActionKind,
        params: &mut BTreeMap<String, serde_json::Value>,
    ) -> ActionKind {
        let Some(mapped) = self.get(kind) else {
            return kind;
        };
        params.remove("executor");
        match mapped {
            Mapped::Exec(command) => {
                params.insert("command".into(), serde_json::Value::String(command.clone()));
                ActionKind::Exec
            }
            Mapped::Webhook(url) => {
                params.insert("url".into(), serde_json::Value::String(url.clone()));
                ActionKind::Webhook
            }
        }
    }
}

/// The audit detail of an action that has no mapping on this host.
pub fn not_runnable(kind: ActionKind) -> String {
    format!(
        "not_runnable: no mapping for {} on this host ([actions] in agent.toml)",
        kind.as_str()
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn allow() -> ExecutorConfig {
        ExecutorConfig {
            commands: [("drain-node".to_string(), vec!["/bin/true".to_string()])].into(),
            webhooks: vec!["http://lb.internal:9000/".into()],
            ..ExecutorConfig::default()
        }
    }

    fn parse(text: &str) -> Result<ActionMappings, String> {
        #[derive(Deserialize)]
        struct File {
            actions: BTreeMap<String, MappingFile>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        ActionMappings::resolve(&file.actions, &allow())
    }

    #[test]
    fn mappings_parse_and_turn_into_exec_or_webhook() {
        let mappings = parse(
            "[actions]\ndrain-pod = { exec = \"drain-node\" }\n\
             REBALANCE = { webhook = \"http://lb.internal:9000/rebalance\" }\n",
        )
        .unwrap();
        assert_eq!(
            mappings.get(ActionKind::DrainPod),
            Some(&Mapped::Exec("drain-node".into()))
        );
        assert!(mappings.runs(ActionKind::Rebalance));
        assert!(mappings.runs(ActionKind::Restart));
        assert!(!mappings.runs(ActionKind::Snapshot));
        let mut params = BTreeMap::from([
            ("command".to_string(), json!("rm-rf")),
            ("executor".to_string(), json!("docker")),
            ("node".to_string(), json!("n1")),
        ]);
        assert_eq!(
            mappings.apply(ActionKind::DrainPod, &mut params),
            ActionKind::Exec
        );
        assert_eq!(
            params,
            BTreeMap::from([
                ("command".to_string(), json!("drain-node")),
                ("node".to_string(), json!("n1")),
            ])
        );
        let mut params = BTreeMap::new();
        assert_eq!(
            mappings.apply(ActionKind::Rebalance, &mut params),
            ActionKind::Webhook
        );
        assert_eq!(params["url"], json!("http://lb.internal:9000/rebalance"));
        let mut params = BTreeMap::new();
        assert_eq!(
            mappings.apply(ActionKind::Snapshot, &mut params),
            ActionKind::Snapshot
        );
        assert!(params.is_empty());
        assert_eq!(
            not_runnable(ActionKind::Snapshot),
            "not_runnable: no mapping for snapshot on this host ([actions] in agent.toml)"
        );
    }

    #[test]
    fn bad_mappings_name_the_field() {
        let long = "x".repeat(MAX_VALUE + 1);
        let cases = [
            ("restart = { exec = \"drain-node\" }", "`actions.restart`"),
            ("explode = { exec = \"drain-node\" }", "`actions.explode`"),
            (
                "drain-pod = { exec = \"nope\" }",
                "`actions.drain-pod.exec`",
            ),
            ("drain-pod = { exec = \"\" }", "`actions.drain-pod.exec`"),
            (
                "drain-pod = { webhook = \"http://evil.example/\" }",
                "`actions.drain-pod.webhook`",
            ),
            (
                "drain-pod = { webhook = \"ftp://lb.internal:9000/\" }",
                "`actions.drain-pod.webhook`",
            ),
            (
                "drain-pod = { exec = \"drain-node\", webhook = \"http://lb.internal:9000/\" }",
                "exactly one",
            ),
            ("drain-pod = {}", "exactly one"),
            (
                "drain-pod = { exec = \"drain-node\" }\ndrain_pod = { exec = \"drain-node\" }",
                "twice",
            ),
            ("drain-pod = { run = \"x\" }", "unknown field `run`"),
        ];
        for (text, needle) in cases {
            let e = parse(&format!("[actions]\n{text}\n")).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = parse(&format!("[actions]\nsnapshot = {{ exec = \"{long}\" }}\n")).unwrap_err();
        assert!(e.contains("`actions.snapshot.exec`"), "{e}");
    }
}
