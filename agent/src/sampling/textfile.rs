//! The textfile collector: metrics that other programs leave in `*.prom` files, in the
//! Prometheus text format (as node_exporter's textfile collector reads them):
//!
//! ```text
//! # comments and blank lines are skipped
//! app_queue_depth 42
//! cpu_percent{target="app-1"} 93.5
//! ```
//!
//! A `target` label makes the sample belong to that target (so a policy can target it)
//! instead of the host. Timestamps in the file are ignored: samples are stamped when read.
//! A malformed line is skipped with a warning; the rest of the file still counts.

use std::path::Path;

use vigil_shared::validate;
use vigil_shared::wire::{Sample, Tag};

/// The label that names a sample's target.
pub const TARGET_LABEL: &str = vigil_shared::policy::TARGET_TAG;

/// Reads every `*.prom` file in `dir`, stamping samples with `ts_ms`.
pub fn read_dir(dir: &Path, ts_ms: i64) -> Vec<Sample> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "prom"))
        .collect();
    files.sort();
    let mut samples = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            match parse_line(line, ts_ms) {
                Ok(Some(sample)) => samples.push(sample),
                Ok(None) => {}
                Err(e) => tracing::warn!(file = %path.display(), line = n + 1, "skipped: {e}"),
            }
        }
    }
    samples
}

/// Parses one line: `None` for comments and blank lines.
pub fn parse_line(line: &str, ts_ms: i64) -> Result<Option<Sample>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| format!("`{line}` has no value"))?;
    let name = &line[..name_end];
    validate::metric_name(name).map_err(|e| e.to_string())?;
    let mut rest = &line[name_end..];
    let mut tags: Vec<Tag> = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after)?;
        tags = parsed;
        rest = remainder;
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("`{line}` has no value"))?;
    let value: f64 = value_text
        .parse()
        .map_err(|_| format!("`{value_text}` is not a number"))?;
    validate::metric_value(value).map_err(|e| e.to_string())?;
    tags.sort();
    Ok(Some(Sample {
        name: name.to_string(),
        value,
        ts_ms,
        tags,
    }))
}

/// Parses `key="value",…}`; returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Result<(Vec<Tag>, &str), String> {
    let mut tags = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((tags, rest));
        }
        let eq = text.find('=').ok_or("label without `=`")?;
        let key = text[..eq].trim().to_string();
        let after = text[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label `{key}` value must be quoted"));
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("label `{key}` value is not closed"))?;
        validate::tags([(key.as_str(), value.as_str())]).map_err(|e| e.to_string())?;
        tags.push((key, value));
        text = after[end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_and_without_labels() {
        let s = parse_line("app_queue_depth 42", 7).unwrap().unwrap();
        assert_eq!(
            (s.name.as_str(), s.value, s.ts_ms),
            ("app_queue_depth", 42.0, 7)
        );
        let s = parse_line(
            r#"cpu_percent{target="app-1",zone="a \"b\""} 93.5 1700000000000"#,
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.tags,
            vec![
                ("target".to_string(), "app-1".to_string()),
                ("zone".to_string(), "a \"b\"".to_string())
            ]
        );
        assert_eq!(parse_line("# HELP x", 1), Ok(None));
        assert_eq!(parse_line("   ", 1), Ok(None));
    }

    #[test]
    fn bad_lines_say_why() {
        for bad in [
            "x",
            "x NaN",
            "x abc",
            "x{a=1} 2",
            "x{a=\"1} 2",
            "{a=\"1\"} 2",
        ] {
            assert!(parse_line(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_of_files_is_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.prom"), "b 2\n").unwrap();
        std::fs::write(dir.path().join("a.prom"), "a 1\nnot a line\n").unwrap();
        std::fs::write(dir.path().join("c.txt"), "c 3\n").unwrap();
        let names: Vec<String> = read_dir(dir.path(), 1)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }
}
