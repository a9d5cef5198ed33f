//! A systemd container's journal as the tests read it: `journalctl -o json` of a unit,
//! one JSON object per entry, with the fields systemd, journald and the program wrote.

use serde_json::{Map, Value};

use super::packaging::sh;
use super::systemd::SystemdContainer;

/// One journal entry: its fields (`MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`,
/// `_TRANSPORT`, the program's own `VIGIL_…`).
#[derive(Debug, Clone)]
pub struct Entry(pub Map<String, Value>);

impl Entry {
    /// A field's value when it is text (journald writes binary values as byte arrays, and
    /// a field given twice as an array).
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).and_then(Value::as_str)
    }

    /// Whether `field` is `value`.
    pub fn is(&self, field: &str, value: &str) -> bool {
        self.get(field) == Some(value)
    }

    /// The message.
    pub fn message(&self) -> &str {
        self.get("MESSAGE").unwrap_or("")
    }
}

impl Entry {
    /// The entry with only the fields a reader of these tests needs (`MESSAGE`,
    /// `PRIORITY`, `SYSLOG_IDENTIFIER`, `_TRANSPORT` and the program's `VIGIL_…`), as
    /// JSON.
    pub fn brief(&self) -> String {
        let kept: Map<String, Value> = self
            .0
            .iter()
            .filter(|(k, _)| {
                k.starts_with("VIGIL_")
                    || ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "_TRANSPORT"]
                        .contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(kept).to_string()
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Value::Object(self.0.clone()))
    }
}

/// Every entry of `unit` (`journalctl -u UNIT`: the unit's processes' and what systemd
/// says about it), oldest first; an error with journalctl's output when it fails or
/// prints something that is not an entry.
pub fn unit_entries(container: &SystemdContainer, unit: &str) -> Result<Vec<Entry>, String> {
    let run = sh(
        container,
        &format!("journalctl --no-pager -o json -u {unit}"),
    );
    if !run.ok() {
        return Err(run.to_string());
    }
    run.stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(fields)) => Ok(Entry(fields)),
            Ok(other) => Err(format!("a journal line that is not an object: {other}")),
            Err(e) => Err(format!("a journal line that is not JSON ({e}): {line}")),
        })
        .collect()
}
