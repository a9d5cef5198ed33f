//! The `--policies` directory: every `*.yaml` / `*.yml` file in it, read as one set —
//! all valid and names unique across files, or a [`LoadError`] naming the file, the policy
//! and the field, and nothing. Unlike [`vigil_shared::policy::load::load_dir`] it keeps
//! each policy's spec (for the API to show) and the file it came from.

use std::collections::HashMap;
use std::path::Path;

use vigil_shared::policy::load::{self, LoadError};
use vigil_shared::policy::{Policy, PolicySpec};

/// A policy read from a file.
#[derive(Debug, Clone)]
pub struct FilePolicy {
    /// As written.
    pub spec: PolicySpec,
    /// Checked.
    pub policy: Policy,
    /// The file's path.
    pub file: String,
}

/// Reads every policy file in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<FilePolicy>, LoadError> {
    let mut origin: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for path in load::policy_files(dir)? {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let specs = load::parse_specs(&text, &file)?;
        let policies = load::check_specs(&specs, &file)?;
        for (spec, policy) in specs.into_iter().zip(policies) {
            if let Some(other) = origin.insert(spec.name.clone(), file.clone()) {
                return Err(LoadError::Duplicate {
                    file,
                    name: spec.name,
                    other,
                });
            }
            out.push(FilePolicy {
                spec,
                policy,
                file: file.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = "policies:\n  - name: high-cpu-alert\n    target: web-*\n    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 80}\n";

    #[test]
    fn a_directory_is_read_with_files_remembered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), CPU).unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "- name: disk\n  condition: \"disk_free_percent < 10\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        let names: Vec<&str> = loaded.iter().map(|p| p.spec.name.as_str()).collect();
        assert_eq!(names, vec!["high-cpu-alert", "disk"]);
        assert!(loaded[0].file.ends_with("a.yaml"));
        assert_eq!(loaded[0].policy.name, "high-cpu-alert");
    }

    #[test]
    fn duplicates_across_files_and_bad_fields_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), CPU).unwrap();
        std::fs::write(dir.path().join("b.yaml"), CPU).unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Duplicate { .. }), "{err}");
        std::fs::write(
            dir.path().join("b.yaml"),
            CPU.replace("high-cpu-alert", "other")
                .replace("web-*", "web-["),
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("b.yaml") && text.contains("other") && text.contains("target"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = load_dir(Path::new("/nonexistent/vigil-policies")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vigil-policies"));
    }
}
