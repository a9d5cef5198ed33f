//! Where the agent's policies come from: a directory of YAML files (`--policies`),
//! re-read when any file in it changes. A set is taken whole or not at all: on any error
//! the previous set stays in force and the error is reported.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use vigil_shared::policy::load::{self, LoadError};
use vigil_shared::policy::Policy;

/// A policy directory and what it looked like when last read.
pub struct PolicyDir {
    dir: PathBuf,
    fingerprint: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl PolicyDir {
    /// Watches `dir` (nothing is read until [`PolicyDir::poll`]).
    pub fn new(dir: PathBuf) -> PolicyDir {
        PolicyDir {
            dir,
            fingerprint: None,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again if its files changed since the last call (or on the
    /// first call). `None` when nothing changed.
    pub fn poll(&mut self) -> Option<Result<Vec<Policy>, LoadError>> {
        let fingerprint = fingerprint(&self.dir);
        if self.fingerprint.as_ref() == Some(&fingerprint) {
            return None;
        }
        self.fingerprint = Some(fingerprint);
        Some(load::load_dir(&self.dir))
    }
}

/// Names, sizes and modification times of the policy files.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    load::policy_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, size, modified)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_on_change_only_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "policies:\n  - name: a\n    condition: cpu > 1\n").unwrap();
        let mut source = PolicyDir::new(dir.path().to_path_buf());
        assert_eq!(source.poll().unwrap().unwrap().len(), 1);
        assert!(source.poll().is_none(), "unchanged");
        std::fs::write(&file, "policies:\n  - name: a\n    condition: cpu >\n").unwrap();
        let err = source.poll().unwrap().unwrap_err().to_string();
        assert!(err.contains("a.yaml"), "{err}");
    }
}
