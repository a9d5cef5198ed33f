//! Validation rules shared by every way data enters Vigil (MQTT and HTTP), so that both
//! reject the same input with the same message.

use thiserror::Error;

/// Longest metric name accepted (names are 1–255 characters).
pub const MAX_METRIC_NAME_LEN: usize = 255;
/// Longest host name accepted, in characters (a DNS name's limit; counted in characters
/// so that the REST API's JSON Schema can state it exactly).
pub const MAX_HOST_LEN: usize = 253;
/// Longest tag key or value accepted.
pub const MAX_TAG_LEN: usize = 255;
/// Most tags one sample may carry.
pub const MAX_TAGS: usize = 64;

/// Earliest time a timestamp field may hold: 2000-01-01T00:00:00Z, epoch ms.
pub const MIN_PLAUSIBLE_MS: i64 = 946_684_800_000;
/// First time a timestamp field may no longer hold: 2200-01-01T00:00:00Z, epoch ms.
pub const MAX_PLAUSIBLE_MS: i64 = 7_258_118_400_000;
/// Shortest sampling interval an agent may run with (and report), ms.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest sampling interval an agent may run with (and report): one day, ms.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Longest lifetime a token may be given: ten years (of 365 days).
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// Why a field was refused. `field` names the offending field as a client would write it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("field `{field}`: {problem}")]
pub struct FieldError {
    /// The field, e.g. `name`, `value`, `tags.host`.
    pub field: String,
    /// What is wrong with it, in words.
    pub problem: String,
}

impl FieldError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A metric name must be 1–255 characters, none of them control characters.
pub fn metric_name(name: &str) -> Result<(), FieldError> {
    let len = name.chars().count();
    if len == 0 {
        return Err(FieldError::new("name", "must not be empty"));
    }
    if len > MAX_METRIC_NAME_LEN {
        return Err(FieldError::new(
            "name",
            format!("is {len} characters long; at most {MAX_METRIC_NAME_LEN} are allowed"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A metric value must be a finite number (no NaN, no infinity).
pub fn metric_value(value: f64) -> Result<(), FieldError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(FieldError::new(
            "value",
            format!("must be a finite number, got {value}"),
        ))
    }
}

/// A host name is 1–253 characters and cannot hold MQTT's special characters (`/`, `+`, `#`),
/// whitespace or control characters: it becomes one level of a topic.
pub fn host_name(host: &str) -> Result<(), FieldError> {
    if host.is_empty() {
        return Err(FieldError::new("host", "must not be empty"));
    }
    let len = host.chars().count();
    if len > MAX_HOST_LEN {
        return Err(FieldError::new(
            "host",
            format!("is {len} characters long; at most {MAX_HOST_LEN} are allowed"),
        ));
    }
    if let Some(c) = host
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(FieldError::new(
            "host",
            format!(
                "`{host}` contains `{}`, which cannot appear in an MQTT topic level",
                c.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Tags: at most [`MAX_TAGS`], keys 1–255 characters, values at most 255 characters.
pub fn tags<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), FieldError> {
    let mut count = 0;
    for (key, value) in tags {
        count += 1;
        if key.is_empty() || key.chars().count() > MAX_TAG_LEN {
            return Err(FieldError::new(
                "tags",
                format!("tag key `{key}` must be 1–{MAX_TAG_LEN} characters"),
            ));
        }
        if value.chars().count() > MAX_TAG_LEN {
            return Err(FieldError::new(
                format!("tags.{key}"),
                format!("value is longer than {MAX_TAG_LEN} characters"),
            ));
        }
    }
    if count > MAX_TAGS {
        return Err(FieldError::new(
            "tags",
            format!("{count} tags given; at most {MAX_TAGS} are allowed"),
        ));
    }
    Ok(())
}

/// A point in time (epoch ms) that came from outside — a message, a request, a parameter —
/// must lie in [2000-01-01, 2200-01-01). The bounds are fixed rather than relative to the
/// coordinator's clock, so a clock that is minutes, days or even years off is still kept
/// (telling it is off is another matter) while nonsense such as year 10000 or a negative
/// time is refused where it enters, before it is stored or rendered.
pub fn timestamp(field: &str, ms: i64) -> Result<(), FieldError> {
    if (MIN_PLAUSIBLE_MS..MAX_PLAUSIBLE_MS).contains(&ms) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{ms} ms since the epoch is not a plausible time: it must lie between \
                 2000-01-01T00:00:00Z ({MIN_PLAUSIBLE_MS}) and 2200-01-01T00:00:00Z \
                 ({MAX_PLAUSIBLE_MS})"
            ),
        ))
    }
}

/// An optional point in time: checked like [`timestamp`] when present.
pub fn timestamp_opt(field: &str, ms: Option<i64>) -> Result<(), FieldError> {
    ms.map_or(Ok(()), |ms| timestamp(field, ms))
}

/// A sampling interval (ms) must lie in [[`MIN_INTERVAL_MS`], [`MAX_INTERVAL_MS`]]
/// (100 ms to one day): the coordinator times a host's silence by it.
pub fn interval_ms(field: &str, ms: u64) -> Result<(), FieldError> {
    if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{ms} ms is not a sampling interval: it must lie between \
                 {MIN_INTERVAL_MS} ms and {MAX_INTERVAL_MS} ms (one day)"
            ),
        ))
    }
}

/// A token's lifetime may be at most [`MAX_TTL`] (ten years); returns it in milliseconds.
pub fn ttl(field: &str, ttl: std::time::Duration) -> Result<i64, FieldError> {
    if ttl > MAX_TTL {
        return Err(FieldError::new(
            field,
            format!(
                "{} is longer than the longest lifetime allowed, {} days (ten years)",
                crate::time::format_duration(ttl),
                MAX_TTL.as_secs() / 86_400
            ),
        ));
    }
    // At most ten years, so it fits.
    Ok(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Reads a label written as `key=value` (`role=web`), checking it like a tag.
pub fn parse_label(text: &str) -> Result<(String, String), FieldError> {
    let (key, value) = text.split_once('=').ok_or_else(|| {
        FieldError::new("label", format!("`{text}` is not of the form key=value"))
    })?;
    let (key, value) = (key.trim(), value.trim());
    tags([(key, value)])?;
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_between_1_and_255_characters_pass() {
        assert!(metric_name("cpu_percent").is_ok());
        assert!(metric_name(&"a".repeat(255)).is_ok());
        assert_eq!(metric_name("").unwrap_err().field, "name");
        assert!(metric_name(&"a".repeat(256))
            .unwrap_err()
            .problem
            .contains("256 characters"));
    }

    #[test]
    fn non_finite_values_are_refused() {
        assert!(metric_value(1.5).is_ok());
        assert!(metric_value(f64::NAN).is_err());
        assert!(metric_value(f64::INFINITY).is_err());
    }

    #[test]
    fn host_names_cannot_break_topics() {
        assert!(host_name("web-01.example.com").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "a b"] {
            assert!(host_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn labels_are_key_equals_value() {
        assert_eq!(parse_label("role=web"), Ok(("role".into(), "web".into())));
        assert!(parse_label("role").is_err());
        assert!(parse_label("=web").is_err());
    }

    #[test]
    fn intervals_between_100ms_and_a_day_pass() {
        for ok in [MIN_INTERVAL_MS, 1000, MAX_INTERVAL_MS] {
            assert_eq!(interval_ms("interval_ms", ok), Ok(()));
        }
        for bad in [0, 99, MAX_INTERVAL_MS + 1, u64::MAX] {
            let e = interval_ms("interval_ms", bad).unwrap_err();
            assert_eq!(e.field, "interval_ms", "{bad}");
        }
    }

    #[test]
    fn timestamps_must_be_plausible() {
        assert!(timestamp("ts_ms", 1_768_912_496_789).is_ok());
        assert!(timestamp("ts_ms", MIN_PLAUSIBLE_MS).is_ok());
        assert!(timestamp("ts_ms", MAX_PLAUSIBLE_MS - 1).is_ok());
        for bad in [
            MAX_PLAUSIBLE_MS,
            253_402_300_800_000,
            i64::MAX,
            0,
            -1,
            i64::MIN,
        ] {
            let e = timestamp("samples[0].ts_ms", bad).unwrap_err();
            assert_eq!(e.field, "samples[0].ts_ms", "{bad}");
            assert!(e.problem.contains("not a plausible time"), "{e}");
        }
        assert!(timestamp_opt("x", None).is_ok());
        assert!(timestamp_opt("x", Some(5)).is_err());
    }

    #[test]
    fn ttls_longer_than_ten_years_are_refused() {
        use std::time::Duration;
        assert_eq!(ttl("ttl", Duration::from_secs(3600)), Ok(3_600_000));
        assert!(ttl("ttl", MAX_TTL).is_ok());
        let nine_thousand_years = crate::time::parse_duration("9000y").unwrap();
        assert_eq!(ttl("ttl", nine_thousand_years).unwrap_err().field, "ttl");
        assert!(ttl("ttl", Duration::MAX).is_err());
    }

    #[test]
    fn tag_limits_are_enforced() {
        assert!(tags([("region", "eu")]).is_ok());
        assert!(tags([("", "x")]).is_err());
        let long = "v".repeat(300);
        assert_eq!(tags([("k", long.as_str())]).unwrap_err().field, "tags.k");
    }
}
