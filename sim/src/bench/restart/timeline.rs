//! Where the milliseconds of one restart go: the agent's own timestamps (its
//! `vigil_agent::timeline` debug events, read back from its log), the engine's events,
//! Docker's `State.StartedAt`, and the action's audit transitions from the coordinator's
//! REST API, all as offsets from the kill.

use std::fmt::Write as _;

/// The log target of the agent's timeline events.
const TARGET: &str = " vigil_agent::timeline: ";

/// One timeline event of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The step (`die_seen`, `policy_fired`, …).
    pub(crate) step: String,
    /// The container.
    pub(crate) subject: String,
    /// The action's id (`None` before there is one).
    pub(crate) action: Option<String>,
    /// When, µs since the epoch.
    pub(crate) at_us: i64,
}

impl Mark {
    /// Reads one log line (`… vigil_agent::timeline: step=S subject=N action=ID at_us=T`);
    /// `None` for any other line, or one whose fields are missing or out of range.
    pub(crate) fn parse(line: &str) -> Option<Mark> {
        let (_, fields) = line.split_once(TARGET)?;
        let (mut step, mut subject, mut action, mut at_us) = (None, None, None, None);
        for field in fields.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "step" => step = Some(value),
                "subject" => subject = Some(value),
                "action" => action = Some(value),
                "at_us" => at_us = value.parse::<i64>().ok().filter(|t| *t > 0),
                _ => {}
            }
        }
        let (step, subject, action) = (step?, subject?, action?);
        if step.is_empty() || subject.is_empty() || step.len() > 64 || subject.len() > 255 {
            return None;
        }
        Some(Mark {
            step: step.to_string(),
            subject: subject.to_string(),
            action: (action != "-" && !action.is_empty()).then(|| action.to_string()),
            at_us: at_us?,
        })
    }

    /// Every mark in a log's text.
    pub(crate) fn all(log: &str) -> Vec<Mark> {
        log.lines().filter_map(Mark::parse).collect()
    }
}

/// The first mark of `step` about `subject` at or after `since_us`.
pub(crate) fn first_of(marks: &[Mark], step: &str, subject: &str, since_us: i64) -> Option<i64> {
    marks
        .iter()
        .filter(|m| m.step == step && m.subject == subject && m.at_us >= since_us)
        .map(|m| m.at_us)
        .min()
}

/// The mark of `step` for action `id`.
pub(crate) fn of_action(marks: &[Mark], step: &str, id: &str) -> Option<i64> {
    marks
        .iter()
        .find(|m| m.step == step && m.action.as_deref() == Some(id))
        .map(|m| m.at_us)
}

/// One round's timeline: named moments, µs since the epoch (`None`: not seen).
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    /// When the engine sent SIGKILL (its `kill` event).
    pub(crate) kill_us: i64,
    /// The moments, in the order they are listed when two are equal.
    pub(crate) steps: Vec<(&'static str, Option<i64>)>,
}

impl Timeline {
    /// A timeline starting at the kill.
    pub(crate) fn new(kill_us: i64) -> Timeline {
        Timeline {
            kill_us,
            steps: Vec::new(),
        }
    }

    /// Adds a moment.
    pub(crate) fn add(&mut self, what: &'static str, at_us: Option<i64>) {
        self.steps.push((what, at_us));
    }

    /// The timeline as indented lines, in time order: ms after the kill, ms since the
    /// moment before, and what happened; moments not seen last.
    pub(crate) fn render(&self, indent: &str) -> String {
        let mut seen: Vec<(&str, i64)> = self
            .steps
            .iter()
            .filter_map(|(w, at)| at.map(|at| (*w, at)))
            .collect();
        seen.sort_by_key(|(_, at)| *at);
        let mut out = String::new();
        let mut before = self.kill_us;
        for (what, at) in seen {
            let _ = writeln!(
                out,
                "{indent}{:>8.1} ms  (+{:>6.1})  {what}",
                (at - self.kill_us) as f64 / 1000.0,
                (at - before) as f64 / 1000.0,
            );
            before = at;
        }
        for (what, at) in &self.steps {
            if at.is_none() {
                let _ = writeln!(out, "{indent}       —            {what} (not seen)");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_timeline_events_and_nothing_else() {
        let log = "\
2026-12-03T21:47:50.123456Z DEBUG vigil_agent::timeline: step=die_seen subject=web-1 action=- at_us=1764798470123456
2026-12-03T21:47:50.125Z  WARN vigil_agent::runner: something else at_us=5
2026-12-03T21:47:50.126Z DEBUG vigil_agent::timeline: step=queued subject=web-1 action=01JXYZ at_us=1764798470126000
2026-12-03T21:47:50.127Z DEBUG vigil_agent::timeline: step=queued subject=web-1 action=01JXYZ at_us=-4
2026-12-03T21:47:50.127Z DEBUG vigil_agent::timeline: step=queued action=01JXYZ at_us=7
";
        let marks = Mark::all(log);
        assert_eq!(marks.len(), 2, "{marks:?}");
        assert_eq!(marks[0].action, None);
        assert_eq!(marks[1].action.as_deref(), Some("01JXYZ"));
        assert_eq!(
            first_of(&marks, "die_seen", "web-1", 1_764_798_470_000_000),
            Some(1_764_798_470_123_456)
        );
        assert_eq!(
            first_of(&marks, "die_seen", "web-1", 1_764_798_471_000_000),
            None
        );
        assert_eq!(
            of_action(&marks, "queued", "01JXYZ"),
            Some(1_764_798_470_126_000)
        );
    }

    #[test]
    fn renders_in_time_order_with_offsets_from_the_kill() {
        let mut t = Timeline::new(1_000_000);
        t.add("kill", Some(1_000_000));
        t.add("running", Some(1_300_000));
        t.add("die", Some(1_002_500));
        t.add("never", None);
        let text = t.render("  ");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].contains("2.5 ms") && lines[1].ends_with("die"),
            "{text}"
        );
        assert!(
            lines[2].contains("300.0 ms") && lines[2].contains("+ 297.5"),
            "{text}"
        );
        assert!(lines[3].contains("never (not seen)"), "{text}");
    }
}
