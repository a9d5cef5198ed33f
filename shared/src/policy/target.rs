//! Policy targets: an exact name, a glob such as `web-*`, or `all` / `*`.

use std::fmt;

use glob::{MatchOptions, Pattern};

/// Which subjects a policy applies to.
#[derive(Debug, Clone)]
pub enum Target {
    /// `all` or `*`: everything.
    All,
    /// One exact name.
    Exact(String),
    /// A glob (`*`, `?`, `[abc]`).
    Glob(Pattern),
}

impl Target {
    /// Reads a target as written in a policy.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("target must not be empty (use `all` for every target)".into());
        }
        if text == "all" || text == "*" {
            return Ok(Target::All);
        }
        if text.contains(['*', '?', '[']) {
            return Pattern::new(text)
                .map(Target::Glob)
                .map_err(|e| format!("target `{text}` is not a valid glob: {e}"));
        }
        Ok(Target::Exact(text.to_string()))
    }

    /// Whether `name` is one of this target's subjects.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Target::All => true,
            Target::Exact(exact) => exact == name,
            Target::Glob(pattern) => pattern.matches_with(
                name,
                MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: false,
                    require_literal_leading_dot: false,
                },
            ),
        }
    }

    /// The exact name, if the target is one.
    pub fn exact(&self) -> Option<&str> {
        match self {
            Target::Exact(name) => Some(name),
            _ => None,
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Exact(name) => f.write_str(name),
            Target::Glob(pattern) => f.write_str(pattern.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_target_examples() {
        let exact = Target::parse("web-service").unwrap();
        assert!(exact.matches("web-service"));
        assert!(!exact.matches("api-service"));
        let glob = Target::parse("web-*").unwrap();
        assert!(glob.matches("web-frontend"));
        assert!(glob.matches("web-backend"));
        assert!(!glob.matches("api-gateway"));
        for all in ["all", "*"] {
            assert!(Target::parse(all).unwrap().matches("anything"));
        }
    }

    #[test]
    fn globs_cross_slashes_and_dots() {
        assert!(Target::parse("*.service").unwrap().matches("nginx.service"));
        assert!(Target::parse("/var*").unwrap().matches("/var/lib"));
        assert!(Target::parse("web-0?").unwrap().matches("web-01"));
        assert!(!Target::parse("web-0?").unwrap().matches("web-010"));
    }

    #[test]
    fn bad_targets_are_refused() {
        assert!(Target::parse("").is_err());
        assert!(Target::parse("web-[").is_err());
    }
}
