//! Alertmanager's webhook payload (version 4), read as hostile input: every field the
//! coordinator uses is type- and range-checked, and a refusal names the field
//! (`alerts[2].startsAt`). Fields it does not use (`groupLabels`, `commonLabels`,
//! `externalURL`, …) are accepted unread, so a newer Alertmanager that adds some still
//! gets through; the request body's size bounds them.
//!
//! ```json
//! {"version":"4","receiver":"vigil","status":"firing","groupKey":"…",
//!  "alerts":[{"status":"firing","labels":{"alertname":"AppDown","instance":"web-01:9100"},
//!             "annotations":{},"startsAt":"2026-01-20T12:34:56.789Z",
//!             "endsAt":"0001-01-01T00:00:00Z","generatorURL":"…","fingerprint":"4a1d2c3b4a1d2c3b"}]}
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use vigil_shared::validate;

/// Most alerts one notification may carry (Alertmanager's `max_alerts` can keep a
/// receiver under it).
pub const MAX_ALERTS: usize = 500;
/// Most labels (and, separately, annotations) one alert may carry.
pub const MAX_LABELS: usize = 64;
/// The longest label value (and receiver name), in characters.
pub const MAX_LABEL_VALUE: usize = 1024;
/// The longest annotation value, in characters.
pub const MAX_ANNOTATION_VALUE: usize = 16 * 1024;
/// The longest fingerprint (Alertmanager's are 16 hex digits).
pub const MAX_FINGERPRINT: usize = 64;
/// The only payload version understood.
pub const VERSION: &str = "4";

/// An alert's (or the group's) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    /// The alert is active.
    Firing,
    /// The alert has ended.
    Resolved,
}

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Its labels (`alertname` among them).
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it started, epoch ms.
    pub starts_at_ms: i64,
    /// When it ended (resolved alerts), epoch ms; `None` for Go's zero time.
    pub ends_at_ms: Option<i64>,
    /// Alertmanager's identity of its label set.
    pub fingerprint: String,
}

/// One notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The receiver's name in Alertmanager's configuration.
    pub receiver: String,
    /// The group's state.
    pub status: AlertStatus,
    /// Its alerts.
    pub alerts: Vec<Alert>,
}

/// Why a payload is refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError {
    /// The field, as a path (`alerts[0].labels`); empty for the body as a whole.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "`{}` {}", self.field, self.problem)
        }
    }
}

fn refuse(field: impl Into<String>, problem: impl Into<String>) -> PayloadError {
    PayloadError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Reads and checks a notification.
pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| refuse("", format!("the body is not JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(refuse(
            "",
            "the body must be Alertmanager's webhook object ({\"version\":\"4\",\"alerts\":[…]})",
        ));
    };
    match top.get("version") {
        Some(Value::String(v)) if v == VERSION => {}
        other => {
            return Err(refuse(
                "version",
                format!(
                    "must be \"{VERSION}\" (Alertmanager's webhook payload), got {}",
                    shown(other)
                ),
            ))
        }
    }
    let receiver = match top.get("receiver") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(r)) if r.chars().count() <= MAX_LABEL_VALUE => r.clone(),
        Some(other) => {
            return Err(refuse(
                "receiver",
                format!(
                    "must be a string of at most {MAX_LABEL_VALUE} characters, got {}",
                    brief(other)
                ),
            ))
        }
    };
    let status = status("status", top.get("status"))?;
    let Some(Value::Array(alerts)) = top.get("alerts") else {
        return Err(refuse("alerts", "must be an array of alerts"));
    };
    if alerts.len() > MAX_ALERTS {
        return Err(refuse(
            "alerts",
            format!(
                "holds {} alerts, more than {MAX_ALERTS} (set `max_alerts` on the webhook receiver)",
                alerts.len()
            ),
        ));
    }
    let alerts = alerts
        .iter()
        .enumerate()
        .map(|(i, alert)| parse_alert(&format!("alerts[{i}]"), alert))
        .collect::<Result<_, _>>()?;
    Ok(Notification {
        receiver,
        status,
        alerts,
    })
}

fn shown(value: Option<&Value>) -> String {
    value.map_or("nothing".into(), brief)
}

/// A value in a message, cut short.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn status(field: &str, value: Option<&Value>) -> Result<AlertStatus, PayloadError> {
    match value.and_then(Value::as_str) {
        Some("firing") => Ok(AlertStatus::Firing),
        Some("resolved") => Ok(AlertStatus::Resolved),
        _ => Err(refuse(
            field,
            format!("must be \"firing\" or \"resolved\", got {}", shown(value)),
        )),
    }
}

fn string_map(
    field: &str,
    value: Option<&Value>,
    max_value: usize,
    required: bool,
) -> Result<BTreeMap<String, String>, PayloadError> {
    let map = match value {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) if !required => return Ok(BTreeMap::new()),
        other => {
            return Err(refuse(
                field,
                format!("must be an object of strings, got {}", shown(other)),
            ))
        }
    };
    if map.len() > MAX_LABELS {
        return Err(refuse(
            field,
            format!("has {} entries, more than {MAX_LABELS}", map.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in map {
        if !super::routing::is_label_name(name) {
            return Err(refuse(
                field,
                format!(
                    "`{}` is not a label name",
                    brief(&Value::String(name.clone()))
                ),
            ));
        }
        let at = format!("{field}.{name}");
        match value {
            Value::String(text) if text.chars().count() <= max_value => {
                out.insert(name.clone(), text.clone());
            }
            Value::String(text) => {
                return Err(refuse(
                    at,
                    format!(
                        "is {} characters, more than {max_value}",
                        text.chars().count()
                    ),
                ))
            }
            other => {
                return Err(refuse(
                    at,
                    format!("must be a string, got {}", brief(other)),
                ))
            }
        }
    }
    Ok(out)
}

fn parse_alert(at: &str, value: &Value) -> Result<Alert, PayloadError> {
    let Value::Object(alert) = value else {
        return Err(refuse(
            at,
            format!("must be an alert object, got {}", brief(value)),
        ));
    };
    let field = |name: &str| format!("{at}.{name}");
    let get = |name: &str| alert.get(name);
    let labels = string_map(&field("labels"), get("labels"), MAX_LABEL_VALUE, true)?;
    if !labels.contains_key("alertname") {
        return Err(refuse(field("labels"), "has no `alertname`"));
    }
    let annotations = string_map(
        &field("annotations"),
        get("annotations"),
        MAX_ANNOTATION_VALUE,
        false,
    )?;
    let starts_at_ms = match time(&field("startsAt"), get("startsAt"))? {
        Some(ms) => ms,
        None => {
            return Err(refuse(
                field("startsAt"),
                "is required (a time, not Go's zero time)",
            ))
        }
    };
    let ends_at_ms = match get("endsAt") {
        None | Some(Value::Null) => None,
        value => time(&field("endsAt"), value)?,
    };
    let fingerprint = match get("fingerprint") {
        Some(Value::String(f))
            if !f.is_empty()
                && f.len() <= MAX_FINGERPRINT
                && f.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            f.to_ascii_lowercase()
        }
        other => {
            return Err(refuse(
                field("fingerprint"),
                format!(
                "must be 1 to {MAX_FINGERPRINT} hex digits (Alertmanager's fingerprint), got {}",
                shown(other)
            ),
            ))
        }
    };
    Ok(Alert {
        status: status(&field("status"), get("status"))?,
        labels,
        annotations,
        starts_at_ms,
        ends_at_ms,
        fingerprint,
    })
}

/// A Go time as Alertmanager writes it (RFC 3339 with up to nanoseconds, `Z` or an
/// offset), as epoch ms; `None` for Go's zero time (`0001-01-01T00:00:00Z`).
fn time(field: &str, value: Option<&Value>) -> Result<Option<i64>, PayloadError> {
    let Some(Value::String(text)) = value else {
        return Err(refuse(
            field,
            format!("must be an RFC 3339 time string, got {}", shown(value)),
        ));
    };
    if text.starts_with("0001-01-01T00:00:00") {
        return Ok(None);
    }
    let ms = parse_go_time(text).map_err(|e| refuse(field, e))?;
    validate::timestamp(field, ms).map_err(|e| refuse(field, e.problem))?;
    Ok(Some(ms))
}

/// RFC 3339 with a `Z` or a `±HH:MM` offset, as epoch ms.
fn parse_go_time(text: &str) -> Result<i64, String> {
    let unreadable = || format!("`{text}` is not an RFC 3339 time like 2026-01-20T12:34:56.789Z");
    if text.len() > 64 || !text.contains('T') {
        return Err(unreadable());
    }
    let split = text
        .len()
        .checked_sub(6)
        .and_then(|at| Some((text.get(..at)?, text.get(at..)?)));
    let (base, offset_minutes) = match split {
        Some((base, offset))
            if matches!(offset.as_bytes(), [b'+' | b'-', h1, h2, b':', m1, m2]
                if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit())) =>
        {
            let hours: i64 = offset[1..3].parse().map_err(|_| unreadable())?;
            let minutes: i64 = offset[4..6].parse().map_err(|_| unreadable())?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (base, sign * (hours * 60 + minutes))
        }
        _ if text.ends_with('Z') || text.ends_with('z') => (&text[..text.len() - 1], 0),
        _ => return Err(unreadable()),
    };
    let utc = humantime::parse_rfc3339(&format!("{base}Z")).map_err(|_| unreadable())?;
    let ms = utc
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|_| unreadable())?;
    Ok(ms - offset_minutes * 60_000)
}

/// The labels as one line, `{alertname="AppDown", instance="web-01:9100"}`, for records.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// The labels as a JSON object.
pub fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT: &str = r#"{"status":"firing","labels":{"alertname":"AppDown","instance":"web-01:9100"},
        "annotations":{"summary":"down"},"startsAt":"2026-01-20T12:34:56.789123456Z",
        "endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://p/graph","fingerprint":"4A1D2c3b4a1d2c3b"}"#;

    fn payload(alert: &str) -> String {
        format!(
            r#"{{"version":"4","receiver":"vigil","status":"firing","groupKey":"{{}}:{{}}",
               "groupLabels":{{}},"commonLabels":{{}},"externalURL":"http://am","truncatedAlerts":0,
               "alerts":[{alert}]}}"#
        )
    }

    #[test]
    fn alertmanagers_payload_is_read() {
        let n = parse(payload(ALERT).as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.receiver, "vigil");
        assert_eq!(n.status, AlertStatus::Firing);
        let alert = &n.alerts[0];
        assert_eq!(alert.labels["instance"], "web-01:9100");
        assert_eq!(alert.annotations["summary"], "down");
        assert_eq!(alert.fingerprint, "4a1d2c3b4a1d2c3b");
        assert_eq!(alert.starts_at_ms, 1_768_912_496_789);
        assert_eq!(alert.ends_at_ms, None);
        let resolved = ALERT
            .replace(r#""status":"firing""#, r#""status":"resolved""#)
            .replace("0001-01-01T00:00:00Z", "2026-01-20T13:34:56+01:00");
        let n = parse(payload(&resolved).as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.alerts[0].status, AlertStatus::Resolved);
        assert_eq!(n.alerts[0].ends_at_ms, Some(1_768_912_496_000));
    }

    #[test]
    fn a_bad_payload_names_the_field() {
        let field = |body: &str| parse(body.as_bytes()).unwrap_err().field;
        assert_eq!(field("[]"), "");
        assert_eq!(field("{"), "");
        assert_eq!(
            field(&payload(ALERT).replace(r#""version":"4""#, r#""version":"3""#)),
            "version"
        );
        assert_eq!(field(r#"{"version":"4","status":"firing"}"#), "alerts");
        assert_eq!(
            field(&payload(ALERT).replace(
                r#""status":"firing","groupKey""#,
                r#""status":"on","groupKey""#
            )),
            "status"
        );
        for (from, to, wanted) in [
            (
                r#""status":"firing","labels""#,
                r#""status":"burning","labels""#,
                "alerts[0].status",
            ),
            (r#""alertname":"AppDown","#, "", "alerts[0].labels"),
            (
                r#""instance":"web-01:9100""#,
                r#""instance":9100"#,
                "alerts[0].labels.instance",
            ),
            (
                r#""instance":"web-01:9100""#,
                r#""in-stance":"x""#,
                "alerts[0].labels",
            ),
            (
                "2026-01-20T12:34:56.789123456Z",
                "yesterday",
                "alerts[0].startsAt",
            ),
            (
                "2026-01-20T12:34:56.789123456Z",
                "1970-01-02T00:00:00Z",
                "alerts[0].startsAt",
            ),
            (
                "2026-01-20T12:34:56.789123456Z",
                "0001-01-01T00:00:00Z",
                "alerts[0].startsAt",
            ),
            (
                "0001-01-01T00:00:00Z",
                "2026-13-01T00:00:00Z",
                "alerts[0].endsAt",
            ),
            ("4A1D2c3b4a1d2c3b", "not-hex", "alerts[0].fingerprint"),
            (
                r#"{"summary":"down"}"#,
                r#"["down"]"#,
                "alerts[0].annotations",
            ),
        ] {
            let alert = ALERT.replace(from, to);
            assert_ne!(alert, ALERT, "{from}");
            assert_eq!(field(&payload(&alert)), wanted, "{alert}");
        }
        let long = ALERT.replace("web-01:9100", &"w".repeat(MAX_LABEL_VALUE + 1));
        assert_eq!(field(&payload(&long)), "alerts[0].labels.instance");
        let many = vec![ALERT; MAX_ALERTS + 1].join(",");
        assert_eq!(field(&payload(&many)), "alerts");
    }

    #[test]
    fn go_times_with_offsets_are_read() {
        assert_eq!(parse_go_time("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse_go_time("1970-01-01T00:00:00.5-00:30"), Ok(1_800_500));
        assert!(parse_go_time("1970-01-01 00:00:00").is_err());
        assert!(parse_go_time("x").is_err());
        // Not a character boundary where an offset would start: refused, no panic.
        assert!(parse_go_time("2026-01-20T12:34:56ééé").is_err());
        assert!(parse_go_time("T€€").is_err());
    }
}
