//! The shape of the tree, checked: no layer of the agent or the coordinator imports a
//! layer above it (so there is no import cycle between their top-level modules), and the
//! shipped coordinator does not link the agent. Each crate's layers are listed below from
//! the bottom up, in the order data flows; a module may use only what is listed before
//! it. Tests inside a module (`#[cfg(test)] mod tests`) and comments are not counted.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The coordinator's top-level modules, bottom first.
const COORDINATOR: &[&str] = &[
    "telemetry",
    "per_address",
    "reconnect",
    "store",
    "security",
    "events",
    "deadman",
    "mqtt",
    "budgets",
    "policies",
    "bundles",
    "alerts",
    "http",
    "config",
    "app",
    "cli",
    "fuzzing",
    "lib",
];

/// The agent's top-level modules, bottom first.
const AGENT: &[&str] = &[
    "system",
    "sampling",
    "policy",
    "acting",
    "config",
    "reporting",
    "runner",
    "cli",
    "lib",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The top-level modules `code` names as `crate::NAME`, outside comments and its test
/// module.
fn crate_imports(code: &str) -> Vec<String> {
    let code = without_test_module(code);
    let mut names = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` lists several.
            if name.is_empty() && after.starts_with('{') {
                let list = &after[1..after.find('}').unwrap_or(after.len())];
                names.extend(list.split(',').filter_map(|item| {
                    let item = item.trim().split("::").next()?.trim();
                    (!item.is_empty()).then(|| item.to_string())
                }));
            } else if !name.is_empty() {
                names.push(name);
            }
            rest = after;
        }
    }
    names
}

/// `code` without its `#[cfg(test)] mod tests { … }` block (braces matched).
fn without_test_module(code: &str) -> String {
    let Some(start) = code.find("#[cfg(test)]\nmod tests {") else {
        return code.to_string();
    };
    let open = start + code[start..].find('{').unwrap();
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", &code[..start], &code[open + i + 1..]);
                }
            }
            _ => {}
        }
    }
    code[..start].to_string()
}

/// Checks that no module of `crate_dir/src` imports a layer listed after its own.
fn check_layers(crate_dir: &str, layers: &[&str]) {
    let src = workspace().join(crate_dir).join("src");
    let rank = |name: &str| layers.iter().position(|l| *l == name);
    let mut problems = Vec::new();
    for file in sources(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" {
            continue;
        }
        let Some(own) = rank(&top) else {
            problems.push(format!("{crate_dir}/src/{top}: not in the list of layers"));
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        for used in crate_imports(&code) {
            if used == top {
                continue;
            }
            match rank(&used) {
                Some(r) if r < own => {}
                Some(_) => problems.push(format!(
                    "{}: `{top}` uses `crate::{used}`, a layer above it",
                    file.display()
                )),
                None => problems.push(format!(
                    "{}: `crate::{used}` is not a listed layer",
                    file.display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn coordinator_layers_only_reach_down() {
    check_layers("coordinator", COORDINATOR);
}

#[test]
fn agent_layers_only_reach_down() {
    check_layers("agent", AGENT);
}

#[test]
fn the_layer_check_sees_reaching_up() {
    let code = "use crate::http::Api;\n// crate::app in a comment\nfn f() { crate::store::x(); }\nuse crate::{mqtt, events::json};\n#[cfg(test)]\nmod tests { use crate::app; }\n";
    assert_eq!(crate_imports(code), vec!["http", "store", "mqtt", "events"]);
}

#[test]
fn the_coordinator_does_not_link_the_agent() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "vigil-coordinator",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.contains("vigil-shared"), "{tree}");
    for linked in ["vigil-agent", "bollard", "zbus", "sysinfo"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(linked)),
            "vigil-coordinator links {linked}:\n{tree}"
        );
    }
}
