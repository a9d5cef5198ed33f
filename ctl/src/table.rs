//! Tables for people: the API's JSON turned into aligned columns, one row per host,
//! action, decision or bundle group. Missing fields show as `-`; cells are cut to a
//! readable width and never contain a line break.

use serde_json::Value;

/// The widest a cell gets before it is cut (with `…`).
const MAX_CELL: usize = 48;

/// A table: a header and rows of cells.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(clean).collect());
    }

    /// The table as text, columns separated by two spaces, trailing blanks trimmed.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                out.push_str(cell);
                let pad = widths.get(i).copied().unwrap_or(0);
                out.extend(std::iter::repeat_n(
                    ' ',
                    pad.saturating_sub(cell.chars().count()),
                ));
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(&mut self.header.iter().copied());
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

/// A cell: one line, at most [`MAX_CELL`] characters.
fn clean(text: String) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX_CELL {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// A JSON value as a cell: strings as they are, `null`/absent as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{"k":"v",…}` (labels) as `k=v,…`; `-` when empty.
pub fn pairs(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// `GET /api/v1/hosts`.
pub fn hosts(json: &Value) -> String {
    let mut table = Table::new(&["HOST", "STATE", "VERSION", "LAST SEEN", "LABELS", "BUNDLES"]);
    for host in json["hosts"].as_array().into_iter().flatten() {
        let bundles = host["bundles"]
            .as_array()
            .map(|bs| {
                bs.iter()
                    .map(|b| format!("{}:{}", cell(&b["group"]), cell(&b["version"])))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into());
        let state = match &host["state"] {
            Value::Null if host["online"] == true => "online".to_string(),
            Value::Null => "offline".to_string(),
            state => cell(state),
        };
        table.row(vec![
            cell(&host["host"]),
            state,
            cell(&host["agent_version"]),
            cell(&host["last_seen"]),
            pairs(&host["labels"]),
            bundles,
        ]);
    }
    table.render()
}

/// `GET /api/v1/actions`.
pub fn actions(json: &Value) -> String {
    let mut table = Table::new(&[
        "ID", "HOST", "STATUS", "TARGET", "ACTION", "POLICY", "ATTEMPTS", "STARTED",
    ]);
    for action in json["actions"].as_array().into_iter().flatten() {
        table.row(vec![
            cell(&action["id"]),
            cell(&action["host"]),
            cell(&action["status"]),
            cell(&action["target"]),
            cell(&action["action"]),
            cell(&action["policy"]),
            cell(&action["attempts"]),
            cell(&action["started_at"]),
        ]);
    }
    table.render()
}

/// `GET /api/v1/violations`.
pub fn violations(json: &Value) -> String {
    let mut table = Table::new(&[
        "TIME", "HOST", "POLICY", "KIND", "SEVERITY", "TARGET", "SUMMARY",
    ]);
    for event in json["events"].as_array().into_iter().flatten() {
        table.row(vec![
            cell(&event["timestamp"]),
            cell(&event["host"]),
            cell(&event["policy"]),
            cell(&event["kind"]),
            cell(&event["severity"]),
            cell(&event["target"]),
            cell(&event["summary"]),
        ]);
    }
    table.render()
}

/// `GET /api/v1/drift`: one row per host and group (a host in no group: one row).
pub fn drift(json: &Value) -> String {
    let mut table = Table::new(&[
        "HOST", "ONLINE", "GROUP", "APPLIED", "DESIRED", "IN SYNC", "ERROR",
    ]);
    for host in json["hosts"].as_array().into_iter().flatten() {
        let groups: Vec<&Value> = host["groups"].as_array().into_iter().flatten().collect();
        let row = |group: Option<&Value>| {
            let field = |name: &str| group.map(|g| cell(&g[name])).unwrap_or_else(|| "-".into());
            vec![
                cell(&host["host"]),
                cell(&host["online"]),
                field("group"),
                field("applied_version"),
                field("desired_version"),
                field("in_sync"),
                cell(&host["bundle_error"]),
            ]
        };
        if groups.is_empty() {
            table.row(row(None));
        }
        for group in groups {
            table.row(row(Some(group)));
        }
    }
    table.render()
}

/// One action transition from the event stream (the feed entry's JSON), as a line:
/// time, action id, host, state, target, action, policy.
pub fn transition(entry: &Value) -> String {
    let data = &entry["data"];
    [
        cell(&entry["timestamp"]),
        cell(&data["id"]),
        cell(&entry["host"]),
        cell(&data["state"]),
        cell(&data["target"]),
        cell(&data["action"]),
        cell(&data["policy"]),
    ]
    .into_iter()
    .map(clean)
    .collect::<Vec<_>>()
    .join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_and_missing_fields_are_dashes() {
        let text = actions(&json!({"count": 2, "actions": [
            {"id": "01A", "host": "web-01", "status": "completed", "target": "nginx",
             "action": "restart", "policy": null, "attempts": 1, "started_at": "t1"},
            {"id": "01BB", "host": "db", "status": "failed", "target": "pg\nx",
             "action": "stop", "attempts": 3, "started_at": "t2"},
        ]}));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID    HOST    STATUS"), "{text}");
        assert!(
            lines[1].starts_with("01A   web-01  completed  nginx"),
            "{text}"
        );
        assert!(lines[2].contains("pg x"), "a line break in a cell: {text}");
        assert!(lines[1].contains(" - "), "a null policy shows as -: {text}");
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "x".repeat(200);
        let mut table = Table::new(&["A"]);
        table.row(vec![long]);
        let text = table.render();
        assert_eq!(text.lines().nth(1).unwrap().chars().count(), MAX_CELL);
        assert!(text.contains('…'));
    }

    #[test]
    fn drift_shows_a_row_per_group() {
        let text = drift(&json!({"hosts": [
            {"host": "a", "online": true, "groups": [
                {"group": "web", "applied_version": 2, "desired_version": 3, "in_sync": false},
                {"group": "all", "applied_version": 1, "desired_version": 1, "in_sync": true}]},
            {"host": "b", "online": false, "groups": []}]}));
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains("web    2        3        false"), "{text}");
    }
}
