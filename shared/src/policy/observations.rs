//! What an evaluator looks at: a window of recent samples per subject, and the latest
//! state readings (units, containers, processes, HTTP/TCP checks).
//!
//! A *subject* is what a sample or reading is about: the host itself (host metrics), a
//! systemd unit, a container, a process, a checked URL or address, or whatever a sample's
//! `target` tag names. Policies select subjects with their `target`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::wire::{Sample, Tag};

/// The sample tag that makes a sample belong to the target it names instead of its host
/// (an agent's evaluator, and the coordinator's replay of stored history, read it so).
pub const TARGET_TAG: &str = "target";

/// A latest value older than this is ignored (its source has stopped reporting).
pub const STALE_AFTER_MS: i64 = 5 * 60 * 1000;

/// The kinds of state the agent observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    /// A systemd unit's `ActiveState`.
    Unit,
    /// A Docker container's state and health.
    Container,
    /// Whether a process with a name runs.
    Process,
    /// An HTTP check.
    Http,
    /// A TCP check.
    Tcp,
}

impl StateKind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Unit => "unit",
            StateKind::Container => "container",
            StateKind::Process => "process",
            StateKind::Http => "http",
            StateKind::Tcp => "tcp",
        }
    }
}

/// One reading of a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReading {
    /// `active`, `failed`, `running`, `exited`, `missing`, `ok`, `failing`, …
    pub state: String,
    /// Container health (`healthy`, `unhealthy`, `starting`), if it has a check.
    pub health: Option<String>,
    /// For HTTP/TCP checks: failures in a row (0 after a success).
    pub consecutive_failures: u32,
    /// What the last check said, for explanations.
    pub detail: Option<String>,
    /// When it was read, epoch ms.
    pub at_ms: i64,
}

/// One tagged variant of a metric on a subject (e.g. `disk_free_percent{mount=/var}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The sample tags that tell variants apart.
    pub tags: Vec<Tag>,
    /// `(time ms, value)`, oldest first.
    pub points: VecDeque<(i64, f64)>,
}

impl Variant {
    /// The newest point.
    pub fn latest(&self) -> Option<(i64, f64)> {
        self.points.back().copied()
    }
}

/// The evaluator's view of the world.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    series: HashMap<String, HashMap<String, Vec<Variant>>>,
    states: HashMap<(StateKind, String), StateReading>,
    subjects: BTreeSet<String>,
    lookback_ms: HashMap<String, i64>,
    started_ms: i64,
}

impl Observations {
    /// Empty observations that started at `started_ms` (absence is counted from then).
    pub fn new(started_ms: i64) -> Observations {
        Observations {
            started_ms,
            ..Observations::default()
        }
    }

    /// When observation started, epoch ms.
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// How far back to keep each metric (from the loaded policies); others keep only
    /// their latest point.
    pub fn set_lookbacks(&mut self, lookbacks: &HashMap<String, Duration>) {
        self.lookback_ms = lookbacks
            .iter()
            .map(|(k, d)| (k.clone(), i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            .collect();
    }

    /// Records a sample about `subject`.
    pub fn record(&mut self, subject: &str, sample: &Sample) {
        if !sample.value.is_finite() {
            return;
        }
        if !self.subjects.contains(subject) {
            self.subjects.insert(subject.to_string());
        }
        let metrics = self.series.entry(subject.to_string()).or_default();
        let variants = match metrics.get_mut(&sample.name) {
            Some(v) => v,
            None => metrics.entry(sample.name.clone()).or_default(),
        };
        let keep = self.lookback_ms.get(&sample.name).copied().unwrap_or(0);
        let variant = match variants.iter_mut().position(|v| v.tags == sample.tags) {
            Some(i) => &mut variants[i],
            None => {
                variants.push(Variant {
                    tags: sample.tags.clone(),
                    points: VecDeque::new(),
                });
                let last = variants.len() - 1;
                &mut variants[last]
            }
        };
        // Keep points in time order even if samples arrive out of order.
        let at = variant
            .points
            .iter()
            .rposition(|(t, _)| *t <= sample.ts_ms)
            .map_or(0, |i| i + 1);
        variant.points.insert(at, (sample.ts_ms, sample.value));
        let newest = variant.points.back().map_or(sample.ts_ms, |p| p.0);
        while variant.points.len() > 1
            && variant
                .points
                .front()
                .is_some_and(|(t, _)| *t < newest - keep)
        {
            variant.points.pop_front();
        }
    }

    /// Records a state reading about `name` (which becomes a subject).
    pub fn record_state(&mut self, kind: StateKind, name: &str, reading: StateReading) {
        if !self.subjects.contains(name) {
            self.subjects.insert(name.to_string());
        }
        self.states.insert((kind, name.to_string()), reading);
    }

    /// Forgets a state (the object is no longer watched).
    pub fn forget_state(&mut self, kind: StateKind, name: &str) {
        self.states.remove(&(kind, name.to_string()));
    }

    /// Every subject seen so far.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        self.subjects.iter().map(String::as_str)
    }

    /// The variants of `metric` on `subject`.
    pub fn variants(&self, subject: &str, metric: &str) -> &[Variant] {
        self.series
            .get(subject)
            .and_then(|m| m.get(metric))
            .map_or(&[], Vec::as_slice)
    }

    /// The latest reading of a state.
    pub fn state(&self, kind: StateKind, name: &str) -> Option<&StateReading> {
        self.states.get(&(kind, name.to_string()))
    }

    /// Every state reading.
    pub fn states(&self) -> impl Iterator<Item = (StateKind, &str, &StateReading)> {
        self.states.iter().map(|((k, n), r)| (*k, n.as_str(), r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, value: f64, ts_ms: i64) -> Sample {
        Sample {
            name: name.into(),
            value,
            ts_ms,
            tags: vec![],
        }
    }

    #[test]
    fn only_the_lookback_is_kept_and_order_is_by_time() {
        let mut obs = Observations::new(0);
        obs.set_lookbacks(&HashMap::from([(
            "mem".to_string(),
            Duration::from_secs(10),
        )]));
        for (t, v) in [(0, 1.0), (5_000, 2.0), (3_000, 1.5), (20_000, 3.0)] {
            obs.record("h", &sample("mem", v, t));
            obs.record("h", &sample("cpu", v, t));
        }
        let mem: Vec<_> = obs.variants("h", "mem")[0].points.iter().copied().collect();
        assert_eq!(mem, vec![(20_000, 3.0)]);
        obs.record("h", &sample("mem", 4.0, 25_000));
        assert_eq!(obs.variants("h", "mem")[0].points.len(), 2);
        assert_eq!(obs.variants("h", "cpu")[0].points.len(), 1);
        assert_eq!(obs.subjects().collect::<Vec<_>>(), vec!["h"]);
    }

    #[test]
    fn nan_samples_are_ignored() {
        let mut obs = Observations::new(0);
        obs.record("h", &sample("x", f64::NAN, 1));
        assert!(obs.variants("h", "x").is_empty());
    }
}
