//! Evaluating a condition against observations, for one subject at one moment.
//!
//! [`holds`] is the fast path (no allocation); [`explain`] gives the same answer with the
//! reasons: which leaf conditions held, with the observed values and thresholds.
//! Both are deterministic: time comes in as `now_ms`, nothing is read from a clock.

use std::fmt;

use serde::Serialize;

use super::model::{Condition, Direction};
use super::observations::{Observations, StateKind, StateReading, Variant, STALE_AFTER_MS};
use crate::wire::Tag;

/// Why a condition held or did not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The condition, written out (`cpu_percent > 80`).
    pub condition: String,
    /// Whether it held.
    pub held: bool,
    /// The value it looked at, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
    /// The tags of the variant observed (`{"mount": "/var"}`), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// More words, e.g. "no sample of cpu_percent".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `all` / `any`: the sub-conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Explanation>,
}

/// An observed value: a number or a state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Observed {
    /// A number.
    Value(f64),
    /// A state (`failed`, `exited`).
    State(String),
}

impl Explanation {
    /// A one-line summary of the leaves that held, e.g.
    /// `cpu_percent > 80 (observed 93.5); memory_percent > 90 (observed 95)`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        self.collect(&mut parts);
        parts.join("; ")
    }

    fn collect(&self, parts: &mut Vec<String>) {
        if !self.held {
            return;
        }
        if self.children.is_empty() {
            let mut part = self.condition.clone();
            match &self.observed {
                Some(Observed::Value(v)) => part.push_str(&format!(" (observed {v})")),
                Some(Observed::State(s)) => part.push_str(&format!(" (observed {s})")),
                None => {}
            }
            if !self.tags.is_empty() {
                let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                part.push_str(&format!(" [{}]", tags.join(",")));
            }
            parts.push(part);
        } else {
            for child in &self.children {
                child.collect(parts);
            }
        }
    }
}

/// What one leaf found, before any text is made.
struct Leaf<'a> {
    held: bool,
    value: Option<f64>,
    state: Option<&'a str>,
    tags: &'a [Tag],
    note: Note,
}

#[derive(Clone, Copy)]
enum Note {
    None,
    NoSample,
    TooFewPoints,
    WindowNotCovered { covered_ms: i64 },
    NoReading,
    OtherSubject,
}

impl<'a> Leaf<'a> {
    fn nothing(note: Note) -> Leaf<'a> {
        Leaf {
            held: false,
            value: None,
            state: None,
            tags: &[],
            note,
        }
    }
}

/// Whether `condition` holds for `subject` at `now_ms`.
pub fn holds(condition: &Condition, obs: &Observations, subject: &str, now_ms: i64) -> bool {
    match condition {
        Condition::All(children) => children.iter().all(|c| holds(c, obs, subject, now_ms)),
        Condition::Any(children) => children.iter().any(|c| holds(c, obs, subject, now_ms)),
        leaf => evaluate_leaf(leaf, obs, subject, now_ms).held,
    }
}

/// Like [`holds`], with the reasons.
pub fn explain(
    condition: &Condition,
    obs: &Observations,
    subject: &str,
    now_ms: i64,
) -> Explanation {
    match condition {
        Condition::All(children) | Condition::Any(children) => {
            let children: Vec<Explanation> = children
                .iter()
                .map(|c| explain(c, obs, subject, now_ms))
                .collect();
            let held = if matches!(condition, Condition::All(_)) {
                children.iter().all(|c| c.held)
            } else {
                children.iter().any(|c| c.held)
            };
            Explanation {
                condition: condition.to_string(),
                held,
                observed: None,
                tags: Vec::new(),
                detail: None,
                children,
            }
        }
        leaf_condition => {
            let leaf = evaluate_leaf(leaf_condition, obs, subject, now_ms);
            let detail = match leaf.note {
                Note::None => None,
                Note::NoSample => Some("no recent sample".to_string()),
                Note::TooFewPoints => Some("fewer than two samples in the window".to_string()),
                Note::WindowNotCovered { covered_ms } => Some(format!(
                    "samples cover only {} of the window",
                    crate::time::format_duration(std::time::Duration::from_millis(
                        u64::try_from(covered_ms).unwrap_or(0)
                    ))
                )),
                Note::NoReading => Some("no reading yet".to_string()),
                Note::OtherSubject => Some(format!("not about {subject}")),
            };
            Explanation {
                condition: leaf_condition.to_string(),
                held: leaf.held,
                observed: leaf
                    .value
                    .map(Observed::Value)
                    .or_else(|| leaf.state.map(|s| Observed::State(s.to_string()))),
                tags: leaf.tags.to_vec(),
                detail,
                children: Vec::new(),
            }
        }
    }
}

fn fresh(variants: &[Variant], now_ms: i64) -> impl Iterator<Item = (&Variant, f64)> {
    variants.iter().filter_map(move |v| {
        let (t, value) = v.latest()?;
        (now_ms - t <= STALE_AFTER_MS).then_some((v, value))
    })
}

fn evaluate_leaf<'a>(
    condition: &Condition,
    obs: &'a Observations,
    subject: &str,
    now_ms: i64,
) -> Leaf<'a> {
    match condition {
        Condition::MetricExceeds {
            metric,
            threshold,
            inclusive,
        } => compare(
            obs.variants(subject, metric),
            now_ms,
            |v| {
                if *inclusive {
                    v >= *threshold
                } else {
                    v > *threshold
                }
            },
            true,
        ),
        Condition::MetricBelow {
            metric,
            threshold,
            inclusive,
        } => compare(
            obs.variants(subject, metric),
            now_ms,
            |v| {
                if *inclusive {
                    v <= *threshold
                } else {
                    v < *threshold
                }
            },
            false,
        ),
        Condition::Rate {
            metric,
            over,
            per,
            above,
            below,
        } => {
            let window = millis(over);
            let per = per.as_secs_f64();
            best_of_windows(obs.variants(subject, metric), now_ms, window, |points| {
                let (t0, mut previous) = points.next()?;
                let mut t1 = t0;
                let mut increase = 0.0;
                for (t, value) in points {
                    let delta = value - previous;
                    // A drop is a counter reset: count the new value from zero.
                    increase += if delta >= 0.0 { delta } else { value };
                    previous = value;
                    t1 = t;
                }
                if t1 <= t0 {
                    return None;
                }
                let rate = increase / ((t1 - t0) as f64 / 1000.0) * per;
                let held = above.is_some_and(|a| rate > a) || below.is_some_and(|b| rate < b);
                Some((held, rate))
            })
        }
        Condition::Trend {
            metric,
            over,
            direction,
            by,
        } => {
            let window = millis(over);
            let variants = obs.variants(subject, metric);
            let mut best: Option<Leaf<'a>> = None;
            for variant in variants {
                let mut in_window = variant
                    .points
                    .iter()
                    .filter(|(t, _)| *t >= now_ms - window && *t <= now_ms);
                let first = in_window.next().copied();
                let last = in_window.next_back().copied();
                let leaf = match (first, last) {
                    (Some((t0, v0)), Some((_, v1))) => {
                        if t0 > now_ms - window + (window / 20).min(COVER_SLACK_MS) {
                            Leaf {
                                note: Note::WindowNotCovered {
                                    covered_ms: now_ms - t0,
                                },
                                tags: &variant.tags,
                                ..Leaf::nothing(Note::None)
                            }
                        } else {
                            let change = v1 - v0;
                            let held = match direction {
                                Direction::Increasing => change > *by,
                                Direction::Decreasing => -change > *by,
                            };
                            Leaf {
                                held,
                                value: Some(change),
                                state: None,
                                tags: &variant.tags,
                                note: Note::None,
                            }
                        }
                    }
                    _ => Leaf::nothing(Note::TooFewPoints),
                };
                if best
                    .as_ref()
                    .is_none_or(|b| !b.held && (leaf.held || b.value.is_none()))
                {
                    best = Some(leaf);
                }
            }
            best.unwrap_or(Leaf::nothing(Note::NoSample))
        }
        Condition::Absent { metric, for_ } => {
            let last = obs
                .variants(subject, metric)
                .iter()
                .filter_map(|v| v.latest().map(|(t, _)| t))
                .max();
            let since = last.unwrap_or(i64::MIN).max(obs.started_ms());
            let silent_ms = now_ms - since;
            Leaf {
                held: silent_ms >= millis(for_),
                value: Some(silent_ms as f64 / 1000.0),
                state: None,
                tags: &[],
                note: Note::None,
            }
        }
        Condition::UnitState { unit, expect } => {
            state_leaf(obs, StateKind::Unit, unit.as_deref(), subject, |r| {
                !expect.contains(&r.state)
            })
        }
        Condition::ContainerState {
            container,
            expect,
            unhealthy,
        } => state_leaf(
            obs,
            StateKind::Container,
            container.as_deref(),
            subject,
            |r| r.state != *expect || (*unhealthy && r.health.as_deref() == Some("unhealthy")),
        ),
        Condition::ProcessMissing { process } => {
            state_leaf(obs, StateKind::Process, Some(process), subject, |r| {
                r.state == "missing"
            })
        }
        Condition::HttpCheck { url, failures, .. } => {
            let mut leaf = state_leaf(obs, StateKind::Http, Some(url), subject, |r| {
                r.consecutive_failures >= *failures
            });
            if let Some(r) = obs.state(StateKind::Http, url) {
                leaf.value = Some(f64::from(r.consecutive_failures));
            }
            leaf
        }
        Condition::TcpCheck {
            address, failures, ..
        } => {
            let mut leaf = state_leaf(obs, StateKind::Tcp, Some(address), subject, |r| {
                r.consecutive_failures >= *failures
            });
            if let Some(r) = obs.state(StateKind::Tcp, address) {
                leaf.value = Some(f64::from(r.consecutive_failures));
            }
            leaf
        }
        Condition::All(_) | Condition::Any(_) => Leaf {
            held: holds(condition, obs, subject, now_ms),
            ..Leaf::nothing(Note::None)
        },
    }
}

/// Latest-value comparison over every fresh variant; reports the most extreme one that
/// holds, or the most extreme one overall.
fn compare(
    variants: &[Variant],
    now_ms: i64,
    test: impl Fn(f64) -> bool,
    higher_is_worse: bool,
) -> Leaf<'_> {
    let mut best: Option<(&Variant, f64, bool)> = None;
    for (variant, value) in fresh(variants, now_ms) {
        let held = test(value);
        let worse = match best {
            None => true,
            Some((_, b, bheld)) => {
                (held && !bheld)
                    || (held == bheld && ((value > b) == higher_is_worse) && value != b)
            }
        };
        if worse {
            best = Some((variant, value, held));
        }
    }
    match best {
        Some((variant, value, held)) => Leaf {
            held,
            value: Some(value),
            state: None,
            tags: &variant.tags,
            note: Note::None,
        },
        None => Leaf::nothing(Note::NoSample),
    }
}

/// Applies a window computation to each variant and reports the first that holds (else
/// the last computed).
fn best_of_windows<'a>(
    variants: &'a [Variant],
    now_ms: i64,
    window_ms: i64,
    compute: impl Fn(&mut dyn Iterator<Item = (i64, f64)>) -> Option<(bool, f64)>,
) -> Leaf<'a> {
    let mut result = Leaf::nothing(Note::NoSample);
    for variant in variants {
        let mut points = variant
            .points
            .iter()
            .copied()
            .filter(|(t, _)| *t >= now_ms - window_ms && *t <= now_ms);
        match compute(&mut points) {
            Some((held, value)) => {
                result = Leaf {
                    held,
                    value: Some(value),
                    state: None,
                    tags: &variant.tags,
                    note: Note::None,
                };
                if held {
                    return result;
                }
            }
            None => {
                if result.value.is_none() {
                    result = Leaf::nothing(Note::TooFewPoints);
                }
            }
        }
    }
    result
}

fn state_leaf<'a>(
    obs: &'a Observations,
    kind: StateKind,
    named: Option<&str>,
    subject: &str,
    test: impl Fn(&StateReading) -> bool,
) -> Leaf<'a> {
    let name = named.unwrap_or(subject);
    // A watched object is its own subject: a state leaf speaks only for it.
    if name != subject {
        return Leaf::nothing(Note::OtherSubject);
    }
    match obs.state(kind, name) {
        Some(reading) => Leaf {
            held: test(reading),
            value: None,
            state: Some(&reading.state),
            tags: &[],
            note: Note::None,
        },
        None => Leaf::nothing(Note::NoReading),
    }
}

/// How late the first sample of a trend window may start (at most 1/20 of the window).
const COVER_SLACK_MS: i64 = 30_000;

fn millis(d: &std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn dur(d: &std::time::Duration) -> String {
    crate::time::format_duration(*d)
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::MetricExceeds {
                metric,
                threshold,
                inclusive,
            } => write!(
                f,
                "{metric} {} {threshold}",
                if *inclusive { ">=" } else { ">" }
            ),
            Condition::MetricBelow {
                metric,
                threshold,
                inclusive,
            } => write!(
                f,
                "{metric} {} {threshold}",
                if *inclusive { "<=" } else { "<" }
            ),
            Condition::All(children) | Condition::Any(children) => {
                let joiner = if matches!(self, Condition::All(_)) {
                    " and "
                } else {
                    " or "
                };
                let parts: Vec<String> = children.iter().map(|c| format!("({c})")).collect();
                f.write_str(&parts.join(joiner))
            }
            Condition::Rate {
                metric,
                over,
                per,
                above,
                below,
            } => {
                write!(f, "rate of {metric} per {} over {}", dur(per), dur(over))?;
                if let Some(a) = above {
                    write!(f, " > {a}")?;
                }
                if let Some(b) = below {
                    write!(f, "{} < {b}", if above.is_some() { " or" } else { "" })?;
                }
                Ok(())
            }
            Condition::Trend {
                metric,
                over,
                direction,
                by,
            } => {
                let dir = match direction {
                    Direction::Increasing => "increasing",
                    Direction::Decreasing => "decreasing",
                };
                write!(f, "{metric} {dir} by more than {by} over {}", dur(over))
            }
            Condition::Absent { metric, for_ } => write!(f, "no {metric} sample for {}", dur(for_)),
            Condition::UnitState { unit, expect } => write!(
                f,
                "unit {} not {}",
                unit.as_deref().unwrap_or("<target>"),
                expect.join("|")
            ),
            Condition::ContainerState {
                container,
                expect,
                unhealthy,
            } => write!(
                f,
                "container {} not {expect}{}",
                container.as_deref().unwrap_or("<target>"),
                if *unhealthy { " or unhealthy" } else { "" }
            ),
            Condition::ProcessMissing { process } => write!(f, "process {process} missing"),
            Condition::HttpCheck { url, failures, .. } => {
                write!(f, "GET {url} failing {failures} times in a row")
            }
            Condition::TcpCheck {
                address, failures, ..
            } => write!(f, "connect {address} failing {failures} times in a row"),
        }
    }
}
