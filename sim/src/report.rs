//! What a simulated fleet did: counters shared by every virtual agent, a one-line
//! progress summary, and the final report.
//!
//! Well-formed batches and action transitions are *queued* by their agent and count as
//! `stored` once the coordinator's acknowledgement covers them
//! ([`vigil_shared::delivery`]); what was still unacknowledged when the agents finished
//! is reported as such.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::chaos::Malformed;

/// Counters every virtual agent adds to. All counts are of MQTT publishes unless named
/// otherwise.
#[derive(Debug, Default)]
pub struct Counters {
    /// Agents currently connected.
    pub connected: AtomicU64,
    /// Successful connects, first ones included.
    pub connects: AtomicU64,
    /// Connections lost on their own (broker gone, refused, network).
    pub connection_errors: AtomicU64,
    /// Connections dropped on purpose without an MQTT DISCONNECT (chaos).
    pub abrupt_disconnects: AtomicU64,
    /// Retained status messages published (online on connect, offline on a clean stop).
    pub statuses: AtomicU64,
    /// Well-formed metric batches generated (queued for delivery).
    pub batches: AtomicU64,
    /// Samples in those batches.
    pub samples: AtomicU64,
    /// Of those batches, ones with out-of-order timestamps and sequence numbers.
    pub out_of_order: AtomicU64,
    /// Distinct well-formed action transitions generated (queued for delivery; each
    /// counted once however often it was sent).
    pub action_transitions: AtomicU64,
    /// Extra publishes of an action transition already sent: injected duplicates and
    /// resends of what was not acknowledged (after a reconnection or a wait).
    pub action_redeliveries: AtomicU64,
    /// Extra publishes of a metric batch already sent: resends of what was not
    /// acknowledged (after a reconnection or a wait).
    pub batch_resends: AtomicU64,
    /// Queued messages (batches and transitions) the coordinator acknowledged as stored.
    pub stored: AtomicU64,
    /// Queued messages still unacknowledged when their agent finished.
    pub unacknowledged: AtomicU64,
    /// Acknowledgements an agent refused (bad signature, malformed, another host's).
    pub acks_refused: AtomicU64,
    /// Times a queue had messages out and no acknowledgement for its resend wait
    /// ([`vigil_shared::delivery::ResendTimer`]), and sent them again.
    pub stalls: AtomicU64,
    /// Malformed payloads published, by [`Malformed`] kind (in [`Malformed::ALL`] order).
    pub malformed: [AtomicU64; Malformed::ALL.len()],
    /// Publishes the broker acknowledged (PUBACK; everything is sent at QoS 1).
    pub acked: AtomicU64,
    /// Publishes that could not be handed to the connection (it was gone).
    pub send_failures: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one malformed payload of `kind`.
    pub fn malformed_sent(&self, kind: Malformed) {
        let index = Malformed::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        Counters::inc(&self.malformed[index]);
    }

    /// A consistent-enough copy for printing.
    pub fn snapshot(&self, elapsed: Duration, agents: usize) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            elapsed,
            agents,
            connected: get(&self.connected),
            connects: get(&self.connects),
            connection_errors: get(&self.connection_errors),
            abrupt_disconnects: get(&self.abrupt_disconnects),
            statuses: get(&self.statuses),
            batches: get(&self.batches),
            samples: get(&self.samples),
            out_of_order: get(&self.out_of_order),
            action_transitions: get(&self.action_transitions),
            action_redeliveries: get(&self.action_redeliveries),
            batch_resends: get(&self.batch_resends),
            stored: get(&self.stored),
            unacknowledged: get(&self.unacknowledged),
            acks_refused: get(&self.acks_refused),
            stalls: get(&self.stalls),
            malformed: Malformed::ALL
                .iter()
                .zip(&self.malformed)
                .map(|(k, c)| (*k, get(c)))
                .collect(),
            acked: get(&self.acked),
            send_failures: get(&self.send_failures),
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Time since the fleet started.
    pub elapsed: Duration,
    /// Virtual agents in the fleet.
    pub agents: usize,
    /// See [`Counters::connected`].
    pub connected: u64,
    /// See [`Counters::connects`].
    pub connects: u64,
    /// See [`Counters::connection_errors`].
    pub connection_errors: u64,
    /// See [`Counters::abrupt_disconnects`].
    pub abrupt_disconnects: u64,
    /// See [`Counters::statuses`].
    pub statuses: u64,
    /// See [`Counters::batches`].
    pub batches: u64,
    /// See [`Counters::samples`].
    pub samples: u64,
    /// See [`Counters::out_of_order`].
    pub out_of_order: u64,
    /// See [`Counters::action_transitions`].
    pub action_transitions: u64,
    /// See [`Counters::action_redeliveries`].
    pub action_redeliveries: u64,
    /// See [`Counters::batch_resends`].
    pub batch_resends: u64,
    /// See [`Counters::stored`].
    pub stored: u64,
    /// See [`Counters::unacknowledged`].
    pub unacknowledged: u64,
    /// See [`Counters::acks_refused`].
    pub acks_refused: u64,
    /// See [`Counters::stalls`].
    pub stalls: u64,
    /// See [`Counters::malformed`].
    pub malformed: Vec<(Malformed, u64)>,
    /// See [`Counters::acked`].
    pub acked: u64,
    /// See [`Counters::send_failures`].
    pub send_failures: u64,
}

impl Snapshot {
    /// Malformed payloads of every kind.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().map(|(_, n)| n).sum()
    }

    /// Every publish attempted.
    pub fn published(&self) -> u64 {
        self.statuses
            + self.batches
            + self.action_transitions
            + self.action_redeliveries
            + self.batch_resends
            + self.malformed_total()
    }

    /// Queued messages: well-formed batches and distinct action transitions.
    pub fn queued(&self) -> u64 {
        self.batches + self.action_transitions
    }

    /// The one-line progress summary printed while a fleet runs.
    pub fn progress_line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        format!(
            "[{:>5.0}s] agents {}/{} connected | batches {} ({:.0} samples/s, +{} resent) | actions {} (+{} redelivered) | malformed {} | stored {}/{} | disconnects {} | errors {}",
            self.elapsed.as_secs_f64(),
            self.connected,
            self.agents,
            self.batches,
            self.samples as f64 / secs,
            self.batch_resends,
            self.action_transitions,
            self.action_redeliveries,
            self.malformed_total(),
            self.stored,
            self.queued(),
            self.abrupt_disconnects,
            self.connection_errors + self.send_failures,
        )
    }
}

impl fmt::Display for Snapshot {
    /// The final report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        writeln!(f, "simulated {} agents for {:.1} s", self.agents, secs)?;
        writeln!(
            f,
            "  connects             {} ({} lost on their own, {} dropped on purpose)",
            self.connects, self.connection_errors, self.abrupt_disconnects
        )?;
        writeln!(
            f,
            "  metric batches       {} ({} samples, {:.0} samples/s; {} out of order), {} resent",
            self.batches,
            self.samples,
            self.samples as f64 / secs,
            self.out_of_order,
            self.batch_resends
        )?;
        writeln!(
            f,
            "  action transitions   {} distinct, {} redelivered",
            self.action_transitions, self.action_redeliveries
        )?;
        let kinds: Vec<String> = self
            .malformed
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect();
        writeln!(
            f,
            "  malformed payloads   {}{}",
            self.malformed_total(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        )?;
        writeln!(
            f,
            "  stored               {} of {} queued messages acknowledged by the coordinator; {} unacknowledged at the end; {} acknowledgements refused; {} resend waits ({:?} or more) without one",
            self.stored,
            self.queued(),
            self.unacknowledged,
            self.acks_refused,
            self.stalls,
            vigil_shared::delivery::RESEND_AFTER
        )?;
        writeln!(
            f,
            "  broker               {} of {} publishes acknowledged (PUBACK); {} could not be sent",
            self.acked,
            self.published(),
            self.send_failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_what_was_sent_acked_and_malformed() {
        let counters = Counters::default();
        Counters::inc(&counters.batches);
        counters.samples.fetch_add(100, Ordering::Relaxed);
        counters.malformed_sent(Malformed::Garbage);
        counters.malformed_sent(Malformed::Garbage);
        Counters::inc(&counters.action_transitions);
        counters.acked.fetch_add(3, Ordering::Relaxed);
        counters.stored.fetch_add(2, Ordering::Relaxed);
        let snap = counters.snapshot(Duration::from_secs(2), 5);
        assert_eq!(snap.malformed_total(), 2);
        assert_eq!(snap.published(), 4);
        let text = snap.to_string();
        assert!(text.contains("simulated 5 agents"), "{text}");
        assert!(text.contains("garbage 2"), "{text}");
        assert!(text.contains("3 of 4 publishes"), "{text}");
        assert!(text.contains("2 of 2 queued messages"), "{text}");
        assert!(snap.progress_line().contains("50 samples/s"));
    }
}
