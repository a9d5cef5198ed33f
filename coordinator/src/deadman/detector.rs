//! The deadman's memory: when each watched host was last heard from, its sampling
//! interval, and one deadline per host in a min-heap, so that finding the hosts that fell
//! silent costs nothing while none is due (no pass over every host per tick).
//!
//! Pure and clock-free (every call takes the time), so it is tested without waiting.
//! Memory: one entry per host that ever sent a status that passed ingest's checks (so at
//! most the enrolled hosts), and at most one live heap entry per host; stale heap entries
//! (left when a host's interval shrinks) are bounded by a rebuild.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use vigil_shared::validate::{MAX_INTERVAL_MS, MIN_INTERVAL_MS};

/// The shortest silence that counts, ms: an agent sampling every 200 ms is not silent
/// over one slow tick of a busy machine.
pub(crate) const MIN_WINDOW_MS: i64 = 2000;

/// A host found silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The host.
    pub host: String,
    /// When it was last heard from, epoch ms.
    pub last_seen_ms: i64,
}

/// What the detector knows of one host.
#[derive(Debug)]
struct Watch {
    last_seen_ms: i64,
    interval_ms: u64,
    /// Its last status says online and it is not ephemeral: its silence is news.
    watched: bool,
    /// Found silent, and nothing heard since.
    silent: bool,
    /// The deadline of its live heap entry, if it has one.
    due_ms: Option<i64>,
}

/// Finds hosts that stopped reporting: no status and no samples for `silent_after` of
/// their sampling intervals.
#[derive(Debug)]
pub(crate) struct Detector {
    silent_after: u32,
    hosts: HashMap<String, Watch>,
    deadlines: BinaryHeap<Reverse<(i64, String)>>,
    silent: usize,
}

impl Detector {
    /// A detector that calls a host silent after `silent_after` intervals (at least 1).
    pub(crate) fn new(silent_after: u32) -> Detector {
        Detector {
            silent_after: silent_after.max(1),
            hosts: HashMap::new(),
            deadlines: BinaryHeap::new(),
            silent: 0,
        }
    }

    /// How long a host sampling every `interval_ms` (clamped to the interval range the
    /// wire allows, whatever was stored) must say nothing to be silent: `silent_after`
    /// intervals, and at least [`MIN_WINDOW_MS`].
    fn window_ms(&self, interval_ms: u64) -> i64 {
        let interval = interval_ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS);
        i64::try_from(interval.saturating_mul(u64::from(self.silent_after)))
            .unwrap_or(i64::MAX)
            .max(MIN_WINDOW_MS)
    }

    /// A status from `host` arrived at `received_ms`: its interval, and whether its
    /// silence would be news (`watched`: it says online and is not ephemeral). Returns
    /// true if the host was silent (it is not any more).
    pub(crate) fn status(
        &mut self,
        host: &str,
        received_ms: i64,
        interval_ms: u64,
        watched: bool,
    ) -> bool {
        if !self.hosts.contains_key(host) {
            self.hosts.insert(
                host.to_string(),
                Watch {
                    last_seen_ms: received_ms,
                    interval_ms,
                    watched,
                    silent: false,
                    due_ms: None,
                },
            );
        }
        let Some(watch) = self.hosts.get_mut(host) else {
            return false;
        };
        watch.interval_ms = interval_ms;
        watch.watched = watched;
        self.heard(host, received_ms)
    }

    /// Samples from `host` arrived at `received_ms`. A host with no status yet is not
    /// watched (its interval is unknown). Returns true if the host was silent.
    pub(crate) fn sample(&mut self, host: &str, received_ms: i64) -> bool {
        if !self.hosts.contains_key(host) {
            return false;
        }
        self.heard(host, received_ms)
    }

    /// Puts back what the store knew at start-up: `host`, heard from at `last_seen_ms`
    /// (pass at least the start time, so that every host gets its full window after a
    /// restart), and already `silent` or not. A host ingest reported meanwhile keeps what
    /// ingest said (it is newer).
    pub(crate) fn restore(
        &mut self,
        host: &str,
        last_seen_ms: i64,
        interval_ms: u64,
        watched: bool,
        silent: bool,
    ) {
        if self.hosts.contains_key(host) {
            return;
        }
        let silent = silent && watched;
        self.hosts.insert(
            host.to_string(),
            Watch {
                last_seen_ms,
                interval_ms,
                watched,
                silent,
                due_ms: None,
            },
        );
        if silent {
            self.silent += 1;
        } else {
            self.schedule(host);
        }
    }

    /// The store did not record `host`'s silence (it was heard from meanwhile, or the
    /// write failed): it counts as heard from at `now_ms`.
    pub(crate) fn not_silent(&mut self, host: &str, now_ms: i64) {
        self.heard(host, now_ms);
    }

    /// The hosts that became silent by `now_ms`; each is reported once until it is heard
    /// from again.
    pub(crate) fn due(&mut self, now_ms: i64) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((at, host))) = self.deadlines.pop() else {
                break;
            };
            let window = match self.hosts.get(&host) {
                Some(watch) => self.window_ms(watch.interval_ms),
                None => continue,
            };
            let Some(watch) = self.hosts.get_mut(&host) else {
                continue;
            };
            if watch.due_ms != Some(at) {
                continue; // superseded by an earlier deadline
            }
            watch.due_ms = None;
            if !watch.watched || watch.silent {
                continue;
            }
            let deadline = watch.last_seen_ms.saturating_add(window);
            if deadline > now_ms {
                watch.due_ms = Some(deadline);
                self.deadlines.push(Reverse((deadline, host)));
                continue;
            }
            watch.silent = true;
            self.silent += 1;
            verdicts.push(Verdict {
                last_seen_ms: watch.last_seen_ms,
                host,
            });
        }
        verdicts
    }

    /// How many hosts are silent now.
    pub(crate) fn silent_count(&self) -> usize {
        self.silent
    }

    /// How many hosts it remembers.
    #[cfg(test)]
    fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Records that `host` (known) was heard from; returns whether it was silent.
    fn heard(&mut self, host: &str, at_ms: i64) -> bool {
        let Some(watch) = self.hosts.get_mut(host) else {
            return false;
        };
        watch.last_seen_ms = watch.last_seen_ms.max(at_ms);
        let was_silent = std::mem::take(&mut watch.silent);
        if was_silent {
            self.silent -= 1;
        }
        self.schedule(host);
        was_silent
    }

    /// Gives a watched, not silent `host` a heap entry at its deadline, unless it has one
    /// due no later.
    fn schedule(&mut self, host: &str) {
        let window = match self.hosts.get(host) {
            Some(watch) => self.window_ms(watch.interval_ms),
            None => return,
        };
        let Some(watch) = self.hosts.get_mut(host) else {
            return;
        };
        if !watch.watched || watch.silent {
            return;
        }
        let deadline = watch.last_seen_ms.saturating_add(window);
        if watch.due_ms.is_some_and(|due| due <= deadline) {
            return; // its entry comes first; it is moved on when it is popped
        }
        watch.due_ms = Some(deadline);
        self.deadlines.push(Reverse((deadline, host.to_string())));
        if self.deadlines.len() > 2 * self.hosts.len() + 64 {
            self.rebuild();
        }
    }

    /// Drops the superseded heap entries: one entry per host with a deadline.
    fn rebuild(&mut self) {
        self.deadlines = self
            .hosts
            .iter()
            .filter_map(|(host, watch)| watch.due_ms.map(|due| Reverse((due, host.clone()))))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    #[test]
    fn a_host_is_silent_after_n_intervals_without_a_word_and_reported_once() {
        let mut d = Detector::new(3);
        d.status("web-01", T, 1000, true);
        d.sample("web-01", T + 1000);
        assert!(d.due(T + 3999).is_empty());
        assert_eq!(
            d.due(T + 4000),
            vec![Verdict {
                host: "web-01".into(),
                last_seen_ms: T + 1000
            }]
        );
        assert_eq!(d.silent_count(), 1);
        assert!(d.due(T + 100_000).is_empty(), "reported once");
        // It reports again: no longer silent, watched again.
        assert!(d.sample("web-01", T + 100_000));
        assert_eq!(d.silent_count(), 0);
        assert!(d.due(T + 102_999).is_empty());
        assert_eq!(d.due(T + 103_000).len(), 1);
    }

    #[test]
    fn samples_keep_a_host_alive_without_moving_its_heap_entry() {
        let mut d = Detector::new(3);
        d.status("web-01", T, 1000, true);
        for i in 1..=100 {
            d.sample("web-01", T + i * 1000);
            assert!(d.due(T + i * 1000).is_empty());
        }
        // One live entry, however many samples came.
        assert!(d.deadlines.len() <= 2, "{}", d.deadlines.len());
        assert_eq!(d.due(T + 103_000).len(), 1);
    }

    #[test]
    fn offline_and_ephemeral_hosts_are_never_silent() {
        let mut d = Detector::new(3);
        d.status("stopped", T, 1000, true);
        d.status("stopped", T + 500, 1000, false); // its offline status
        d.status("ephemeral", T, 1000, false);
        assert!(d.due(T + 1_000_000).is_empty());
        assert_eq!(d.silent_count(), 0);
        // Back online: watched again.
        d.status("stopped", T + 2_000_000, 1000, true);
        assert_eq!(d.due(T + 2_003_000).len(), 1);
    }

    #[test]
    fn a_silent_host_going_offline_is_no_longer_counted_silent() {
        let mut d = Detector::new(2);
        d.status("web-01", T, 1000, true);
        assert_eq!(d.due(T + 2000).len(), 1);
        assert!(d.status("web-01", T + 5000, 1000, false), "was silent");
        assert_eq!(d.silent_count(), 0);
        assert!(d.due(T + 1_000_000).is_empty());
    }

    #[test]
    fn a_silence_shorter_than_two_seconds_never_counts() {
        let mut d = Detector::new(3);
        d.status("fast", T, 200, true);
        assert!(d.due(T + 1999).is_empty(), "3 × 200 ms is not enough");
        assert_eq!(d.due(T + MIN_WINDOW_MS).len(), 1);
    }

    #[test]
    fn samples_from_a_host_without_a_status_are_not_watched() {
        let mut d = Detector::new(3);
        assert!(!d.sample("unknown", T));
        assert!(d.due(T + 1_000_000).is_empty());
        assert_eq!(d.hosts(), 0);
    }

    #[test]
    fn hostile_intervals_are_clamped_and_nothing_overflows() {
        let mut d = Detector::new(u32::MAX);
        d.status("zero", T, 0, true);
        d.status("huge", T, u64::MAX, true);
        d.status("end-of-time", i64::MAX, u64::MAX, true);
        d.sample("end-of-time", i64::MIN);
        assert!(d.due(i64::MAX - 1).len() <= 2);
        let mut d = Detector::new(30);
        d.status("zero", T, 0, true);
        // 0 counts as the shortest interval, 100 ms.
        assert!(d.due(T + 2999).is_empty());
        assert_eq!(d.due(T + 3000).len(), 1);
        let mut d = Detector::new(3);
        d.status("huge", T, u64::MAX, true);
        // u64::MAX counts as the longest, one day.
        assert!(d.due(T + 3 * 86_400_000 - 1).is_empty());
        assert_eq!(d.due(T + 3 * 86_400_000).len(), 1);
    }

    #[test]
    fn a_shorter_interval_takes_effect_at_once_and_stale_entries_stay_bounded() {
        let mut d = Detector::new(3);
        d.status("web-01", T, 86_400_000, true);
        d.status("web-01", T, 1000, true);
        assert_eq!(d.due(T + 3000).len(), 1);
        // An agent flipping its interval cannot grow the heap without bound.
        let mut d = Detector::new(3);
        for i in 0..100_000i64 {
            let interval = if i % 2 == 0 { 86_400_000 } else { 1000 };
            d.status("flip", T + i, interval, true);
            d.due(T + i);
        }
        assert!(
            d.deadlines.len() <= 2 * d.hosts() + 65,
            "{}",
            d.deadlines.len()
        );
    }

    #[test]
    fn restored_hosts_get_a_full_window_and_silent_ones_stay_silent() {
        let mut d = Detector::new(3);
        d.restore("quiet", T, 1000, true, false);
        d.restore("was-silent", T - 60_000, 1000, true, true);
        d.restore("offline", T, 1000, false, true);
        assert_eq!(d.silent_count(), 1);
        assert!(d.due(T + 2999).is_empty());
        assert_eq!(d.due(T + 3000).len(), 1);
        assert!(d.sample("was-silent", T + 4000));
        assert_eq!(
            d.silent_count(),
            1,
            "`quiet` is silent, `was-silent` is back"
        );
        // What ingest said first is newer than the store.
        d.status("went-offline", T, 1000, false);
        d.restore("went-offline", T, 1000, true, false);
        assert!(d
            .due(T + 1_000_000)
            .iter()
            .all(|v| v.host != "went-offline"));
    }

    #[test]
    fn a_verdict_the_store_refused_restarts_the_window() {
        let mut d = Detector::new(3);
        d.status("web-01", T, 1000, true);
        assert_eq!(d.due(T + 3000).len(), 1);
        d.not_silent("web-01", T + 3000);
        assert_eq!(d.silent_count(), 0);
        assert!(d.due(T + 5999).is_empty());
        assert_eq!(d.due(T + 6000).len(), 1);
    }
}
