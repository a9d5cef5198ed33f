//! The set of names a watcher watches: exact names and glob patterns (`web-*`).
//!
//! A name holding any of `*`, `?` or `[` that parses as a glob is a pattern; everything
//! else (including a malformed pattern) is an exact name. Exact names are reported even
//! when nothing by that name exists (as `missing`); patterns report only what they match.

use std::collections::BTreeSet;

use glob::Pattern;

/// Exact names and glob patterns, as a watcher receives them.
#[derive(Debug, Clone, Default)]
pub struct NameSet {
    exact: BTreeSet<String>,
    globs: Vec<Pattern>,
}

impl NameSet {
    /// Sorts `names` into exact names and patterns (blank names are ignored).
    pub fn new(names: &[String]) -> NameSet {
        let mut set = NameSet::default();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let pattern = name
                .contains(['*', '?', '['])
                .then(|| Pattern::new(name).ok())
                .flatten();
            match pattern {
                Some(p) if !set.globs.iter().any(|g| g.as_str() == p.as_str()) => {
                    set.globs.push(p);
                }
                Some(_) => {}
                None => {
                    set.exact.insert(name.to_string());
                }
            }
        }
        set
    }

    /// Whether `name` is watched, exactly or by a pattern.
    pub fn matches(&self, name: &str) -> bool {
        self.exact.contains(name) || self.matches_glob(name)
    }

    /// Whether a pattern matches `name`.
    pub fn matches_glob(&self, name: &str) -> bool {
        self.globs.iter().any(|g| g.matches(name))
    }

    /// Whether `name` is one of the exact names.
    pub fn is_exact(&self, name: &str) -> bool {
        self.exact.contains(name)
    }

    /// The exact names, sorted.
    pub fn exact(&self) -> impl Iterator<Item = &str> {
        self.exact.iter().map(String::as_str)
    }

    /// The patterns, as written.
    pub fn globs(&self) -> impl Iterator<Item = &str> {
        self.globs.iter().map(Pattern::as_str)
    }

    /// Whether there are any patterns.
    pub fn has_globs(&self) -> bool {
        !self.globs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> NameSet {
        NameSet::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn exact_names_and_globs_are_told_apart() {
        let s = set(&["nginx.service", "web-*", " ", "db-[12]", "web-*"]);
        assert_eq!(s.exact().collect::<Vec<_>>(), vec!["nginx.service"]);
        assert_eq!(s.globs().collect::<Vec<_>>(), vec!["web-*", "db-[12]"]);
        assert!(s.matches("nginx.service") && s.is_exact("nginx.service"));
        assert!(s.matches("web-1") && !s.is_exact("web-1"));
        assert!(s.matches("db-2") && !s.matches("db-3"));
        assert!(!s.matches("nginx"));
    }

    #[test]
    fn a_malformed_pattern_is_an_exact_name() {
        let s = set(&["odd[name"]);
        assert!(s.is_exact("odd[name"));
        assert!(!s.has_globs());
    }
}
