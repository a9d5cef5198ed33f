//! Reading policy files: YAML with a top-level `policies:` list (the original format), or
//! a bare list. A file is taken whole or not at all: any error rejects it, naming the
//! file, the policy and the field (and line/column where the YAML parser knows them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::model::Policy;
use super::spec::{PolicyError, PolicySpec};

/// Why a policy file or directory was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        message: String,
    },
    /// Not YAML of the expected shape (the message has line and column).
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A policy breaks a rule.
    #[error("{file}: {error}")]
    Policy {
        /// The file.
        file: String,
        /// Which policy and field.
        error: PolicyError,
    },
    /// Two policies share a name.
    #[error("{file}: policy `{name}` is defined twice (also in {other})")]
    Duplicate {
        /// The file with the second definition.
        file: String,
        /// The name.
        name: String,
        /// Where the first one is.
        other: String,
    },
}

impl LoadError {
    /// The file at fault.
    pub fn file(&self) -> &str {
        match self {
            LoadError::Read { file, .. }
            | LoadError::Syntax { file, .. }
            | LoadError::Policy { file, .. }
            | LoadError::Duplicate { file, .. } => file,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileShape {
    Wrapped(Wrapped),
    List(Vec<PolicySpec>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    policies: Vec<PolicySpec>,
}

/// Parses YAML (or JSON, which is YAML) text into specs; `file` names it in errors.
pub fn parse_specs(text: &str, file: &str) -> Result<Vec<PolicySpec>, LoadError> {
    // Try the wrapped form first for its precise errors; fall back to a bare list.
    match serde_yaml_ng::from_str::<Wrapped>(text) {
        Ok(w) => Ok(w.policies),
        Err(wrapped_err) => match serde_yaml_ng::from_str::<FileShape>(text) {
            Ok(FileShape::List(list)) => Ok(list),
            Ok(FileShape::Wrapped(w)) => Ok(w.policies),
            Err(_) => Err(LoadError::Syntax {
                file: file.to_string(),
                message: name_the_policy(text, &wrapped_err.to_string()),
            }),
        },
    }
}

/// Prefixes a parser message about `policies[N]…` with that policy's name, when the
/// file is readable enough to find it.
fn name_the_policy(text: &str, message: &str) -> String {
    let index = message
        .strip_prefix("policies[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    let name = index.and_then(|i| {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
        doc.get("policies")?
            .get(i)?
            .get("name")?
            .as_str()
            .map(str::to_string)
    });
    match name {
        Some(name) => format!("policy `{name}`: {message}"),
        None => message.to_string(),
    }
}

/// Parses and checks a file's text. Names must be unique within it.
pub fn load_text(text: &str, file: &str) -> Result<Vec<Policy>, LoadError> {
    let specs = parse_specs(text, file)?;
    check_specs(&specs, file)
}

/// Checks specs into policies, refusing duplicate names.
pub fn check_specs(specs: &[PolicySpec], file: &str) -> Result<Vec<Policy>, LoadError> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let policy = spec.check().map_err(|error| LoadError::Policy {
            file: file.to_string(),
            error,
        })?;
        if seen.insert(spec.name.as_str(), ()).is_some() {
            return Err(LoadError::Duplicate {
                file: file.to_string(),
                name: spec.name.clone(),
                other: file.to_string(),
            });
        }
        out.push(policy);
    }
    Ok(out)
}

/// Reads one file.
pub fn load_file(path: &Path) -> Result<Vec<Policy>, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
        file: file.clone(),
        message: e.to_string(),
    })?;
    load_text(&text, &file)
}

/// The `*.yaml` / `*.yml` files of a directory, sorted by name.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Read {
        file: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every policy file of a directory as one set: all valid, names unique across
/// files, or an error and nothing.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, LoadError> {
    let mut all: Vec<Policy> = Vec::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    for path in policy_files(dir)? {
        let file = path.display().to_string();
        for policy in load_file(&path)? {
            if let Some(other) = origin.insert(policy.name.clone(), file.clone()) {
                return Err(LoadError::Duplicate {
                    file,
                    name: policy.name.clone(),
                    other,
                });
            }
            all.push(policy);
        }
    }
    Ok(all)
}
