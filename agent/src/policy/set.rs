//! The agent's policies in force: the local policy directory's plus every applied
//! bundle's, combined under one rule for names defined more than once.
//!
//! **Clash rule.** Policy names are unique in force. Local directory policies come first
//! and always win: a bundle policy with a local policy's name is left out. Between
//! bundles, the group whose name sorts first (byte order) wins: a later group's policy of
//! that name is left out. Every policy left out is reported (in the agent's log and its
//! status `bundle_error`) until the clash is gone; the rest of both sets stays in force.
//! (Within one bundle or within the local directory, a duplicate name refuses the whole
//! set instead: that is an authoring mistake in one place.)

use std::collections::HashMap;

use vigil_shared::policy::Policy;

/// A combined policy set.
#[derive(Debug, Clone, Default)]
pub struct Combined {
    /// The policies to put in force.
    pub policies: Vec<Policy>,
    /// Where each of them comes from, in the same order: `None` for the local policy
    /// directory, else the bundle's group.
    pub groups: Vec<Option<String>>,
    /// One sentence per policy left out by the clash rule.
    pub clashes: Vec<String>,
}

/// Combines the local policies with the groups' (`groups` sorted by group name, as
/// [`crate::policy::bundles::Bundles::group_policies`] yields them) under the clash rule.
pub fn combine<'a>(
    local: &[Policy],
    groups: impl IntoIterator<Item = (&'a str, &'a [Policy])>,
) -> Combined {
    let mut owner: HashMap<&str, String> = local
        .iter()
        .map(|p| (p.name.as_str(), "the local policy directory".to_string()))
        .collect();
    let mut combined = Combined {
        policies: local.to_vec(),
        groups: vec![None; local.len()],
        clashes: Vec::new(),
    };
    for (group, policies) in groups {
        for policy in policies {
            match owner.get(policy.name.as_str()) {
                Some(winner) => combined.clashes.push(format!(
                    "policy `{}` of group `{group}` is not in force: {winner} defines it too",
                    policy.name
                )),
                None => {
                    owner.insert(policy.name.as_str(), format!("group `{group}`"));
                    combined.policies.push(policy.clone());
                    combined.groups.push(Some(group.to_string()));
                }
            }
        }
    }
    combined
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::policy::load::load_text;

    fn policies(names: &[&str], threshold: u32) -> Vec<Policy> {
        let text: String = names
            .iter()
            .map(|n| format!("  - name: {n}\n    condition: cpu_percent > {threshold}\n"))
            .collect();
        load_text(&format!("policies:\n{text}"), "t.yaml").unwrap()
    }

    #[test]
    fn local_wins_then_the_first_group_and_every_clash_is_reported() {
        let local = policies(&["shared", "local-only"], 1);
        let db = policies(&["shared", "both", "db-only"], 2);
        let web = policies(&["both", "web-only"], 3);
        let combined = combine(&local, [("db", db.as_slice()), ("web", web.as_slice())]);
        let names: Vec<&str> = combined.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["shared", "local-only", "both", "db-only", "web-only"]
        );
        let both = combined.policies.iter().find(|p| p.name == "both").unwrap();
        assert_eq!(both, &db[1], "the group sorting first wins");
        let groups: Vec<Option<&str>> = combined.groups.iter().map(Option::as_deref).collect();
        assert_eq!(groups, [None, None, Some("db"), Some("db"), Some("web")]);
        assert_eq!(
            combined.clashes,
            [
                "policy `shared` of group `db` is not in force: the local policy directory defines it too",
                "policy `both` of group `web` is not in force: group `db` defines it too",
            ]
        );
        assert!(combine(&local, []).clashes.is_empty());
    }
}
