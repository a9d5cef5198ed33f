//! The one-line condition expressions of the original system's YAML:
//!
//! ```text
//! cpu_usage > 80% for 5m                  metric_exceeds, held for 5 minutes
//! disk_free_percent <= 10                  metric_below, inclusive
//! health_check_failed for 3 attempts       the metric is non-zero 3 evaluations in a row
//! memory_usage increasing for 30m          trend: up over the last 30 minutes
//! memory_percent increasing by more than 10 over 30m
//! ```
//!
//! `%` after a number is decoration (percent metrics are already 0–100).

use std::time::Duration;

use super::model::{Condition, Direction, Hold};

/// Parses an expression into a condition and the hold it carries (if any).
pub fn parse(text: &str) -> Result<(Condition, Option<Hold>), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let fail = |why: &str| {
        Err(format!(
            "cannot read condition `{text}`: {why}; write e.g. `cpu_percent > 80 for 5m`, \
             `memory_percent increasing by 10 over 30m`, `health_check_failed for 3 attempts`, \
             or use a map with `type:`"
        ))
    };
    let Some((&metric, rest)) = words.split_first() else {
        return fail("it is empty");
    };
    crate::validate::metric_name(metric).map_err(|e| format!("in `{text}`: {e}"))?;
    let metric = metric.to_string();

    // Split off a trailing `for <hold>` (not for trends, where `for` is the window).
    match rest {
        [op @ (">" | ">=" | "<" | "<="), number, tail @ ..] => {
            let threshold = parse_number(number).map_err(|e| format!("in `{text}`: {e}"))?;
            let hold = match tail {
                [] => None,
                ["for", hold @ ..] => {
                    Some(parse_hold(&hold.join(" ")).map_err(|e| format!("in `{text}`: {e}"))?)
                }
                _ => return fail("expected `for <duration>` after the threshold"),
            };
            let inclusive = op.ends_with('=');
            let condition = if op.starts_with('>') {
                Condition::MetricExceeds {
                    metric,
                    threshold,
                    inclusive,
                }
            } else {
                Condition::MetricBelow {
                    metric,
                    threshold,
                    inclusive,
                }
            };
            Ok((condition, hold))
        }
        [dir @ ("increasing" | "decreasing"), tail @ ..] => {
            let direction = if *dir == "increasing" {
                Direction::Increasing
            } else {
                Direction::Decreasing
            };
            let (by, tail) = match tail {
                ["by", "more", "than", n, tail @ ..] | ["by", n, tail @ ..] => (
                    parse_number(n).map_err(|e| format!("in `{text}`: {e}"))?,
                    tail,
                ),
                tail => (0.0, tail),
            };
            let over = match tail {
                ["for" | "over", window @ ..] if !window.is_empty() => {
                    crate::time::parse_duration(&window.join(" "))?
                }
                _ => return fail("a trend needs a window: `for 30m` or `over 30m`"),
            };
            Ok((
                Condition::Trend {
                    metric,
                    over,
                    direction,
                    by,
                },
                None,
            ))
        }
        [] => Ok((truthy(metric), None)),
        ["for", hold @ ..] if !hold.is_empty() => Ok((
            truthy(metric),
            Some(parse_hold(&hold.join(" ")).map_err(|e| format!("in `{text}`: {e}"))?),
        )),
        _ => fail("expected a comparison (>, >=, <, <=), `increasing`/`decreasing`, or `for`"),
    }
}

/// A bare metric name means "the metric is non-zero" (a failure flag).
fn truthy(metric: String) -> Condition {
    Condition::MetricExceeds {
        metric,
        threshold: 0.0,
        inclusive: false,
    }
}

fn parse_number(text: &str) -> Result<f64, String> {
    let digits = text.strip_suffix('%').unwrap_or(text);
    digits
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("`{text}` is not a number"))
}

/// Reads a hold: a duration (`30s`, `5m`), or a count of evaluations (`3 attempts`,
/// `3 evaluations`, `3 samples`, `3 times`).
pub fn parse_hold(text: &str) -> Result<Hold, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if let [count, "attempts" | "attempt" | "evaluations" | "samples" | "times" | "checks"] =
        words.as_slice()
    {
        let n: u32 = count
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("`{count}` is not a whole number of at least 1"))?;
        return Ok(Hold::Evaluations(n));
    }
    let d = crate::time::parse_duration(text)?;
    if d.is_zero() {
        return Err("a hold of zero means no hold; leave `for` out".into());
    }
    Ok(Hold::Duration(d))
}

/// Writes a hold back the way [`parse_hold`] reads it.
pub fn format_hold(hold: Hold) -> String {
    match hold {
        Hold::Duration(d) => crate::time::format_duration(d),
        Hold::Evaluations(n) => format!("{n} evaluations"),
    }
}

/// The duration of a hold expressed in time, if it is one.
pub fn hold_duration(hold: Hold) -> Option<Duration> {
    match hold {
        Hold::Duration(d) => Some(d),
        Hold::Evaluations(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_expressions_parse() {
        let (c, hold) = parse("cpu_usage > 80% for 5m").unwrap();
        assert_eq!(
            c,
            Condition::MetricExceeds {
                metric: "cpu_usage".into(),
                threshold: 80.0,
                inclusive: false
            }
        );
        assert_eq!(hold, Some(Hold::Duration(Duration::from_secs(300))));

        let (c, hold) = parse("health_check_failed for 3 attempts").unwrap();
        assert_eq!(c, truthy("health_check_failed".into()));
        assert_eq!(hold, Some(Hold::Evaluations(3)));

        let (c, hold) = parse("memory_usage increasing for 30m").unwrap();
        assert_eq!(
            c,
            Condition::Trend {
                metric: "memory_usage".into(),
                over: Duration::from_secs(1800),
                direction: Direction::Increasing,
                by: 0.0
            }
        );
        assert_eq!(hold, None);
    }

    #[test]
    fn other_forms() {
        let (c, _) = parse("memory_percent increasing by more than 10 over 30m").unwrap();
        assert!(matches!(c, Condition::Trend { by, .. } if by == 10.0));
        let (c, _) = parse("disk_free_percent <= 10").unwrap();
        assert!(matches!(
            c,
            Condition::MetricBelow {
                inclusive: true,
                ..
            }
        ));
    }

    #[test]
    fn nonsense_is_refused_with_the_text_quoted() {
        for bad in [
            "",
            "cpu >",
            "cpu > lots",
            "cpu ~ 3",
            "cpu > 3 soon",
            "mem increasing",
            "cpu for 0 attempts",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains('`'), "{bad}: {err}");
        }
    }
}
