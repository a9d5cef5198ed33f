//! End-to-end delivery: how an agent knows the coordinator has *stored* what it sent.
//!
//! An agent keeps two durable queues: the outbox (action transitions and policy events)
//! and the metrics spool. Every message taken from one carries a [`Delivery`] header in
//! its seal: which queue ([`Stream`]), the queue's `epoch` (a random number chosen when
//! the queue was created, so a wiped queue is a new stream), the message's sequence
//! number in the queue (it survives agent restarts), and the queue's `floor`, the lowest
//! sequence number the agent still holds.
//!
//! The coordinator keeps a [`Window`] per host and stream, in the same LMDB transaction
//! as the data: a message at or below the window, or already marked in it, is a
//! duplicate and is not stored again; one too far ahead is left for the agent to send
//! again. After each commit the coordinator publishes a [`DeliveryAck`], signed with its
//! key, on the agent's `acks` topic; the agent deletes what is acknowledged, and nothing
//! else. What the agent dropped itself (a full spool drops its oldest batches) it says
//! with its floor; the coordinator counts those as missing and moves on.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bundle::SigningContext;
use crate::signed::CoordinatorSigned;
use crate::validate::{self, FieldError};
use crate::wire::WireMessage;

/// How far ahead of the window's bottom a message may be and still be taken (the agent
/// sends far fewer than this without an acknowledgement).
pub const WINDOW: u64 = 1024;

/// The shortest wait for an acknowledgement before sent messages are sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// The longest wait before sending again: the wait doubles while resends bring nothing,
/// so that a coordinator that is behind is not flooded with copies.
pub const RESEND_MAX: Duration = Duration::from_secs(80);

/// How many messages a queue may have out right after it timed out and sends again
/// from its floor; each message acknowledged then allows one more, so the allowance
/// doubles every round trip (TCP's slow start) until it is the queue's full bound again.
/// A fleet that timed out together (its copies, or the coordinator's backlog, overflowed
/// a broker's queue) thus sends again a sixteenth of what it had out, not all of it at
/// once into the same queue.
pub const RESEND_WINDOW: u64 = 16;

/// When a queue sends its unacknowledged messages again, and how many it may have out.
///
/// The wait is measured as TCP measures its retransmission timeout (RFC 6298): each
/// acknowledgement that moves the floor is a sample of how long the queue waits for one
/// (from the previous such acknowledgement, or from when sending began), and the wait is
/// the smoothed sample plus four times its smoothed deviation, at least [`RESEND_AFTER`]
/// and at most [`RESEND_MAX`]. So a coordinator that answers in milliseconds gets copies
/// after 10 s of silence, and one that is behind (its acknowledgements seconds apart) is
/// not sent copies of what it is still working through. While resends bring nothing the
/// wait doubles, up to [`RESEND_MAX`]; the acknowledgement that ends such a spell is not
/// a sample (it may answer the first sending or the copy), and the doubled wait stays
/// until one that is (Karn's rule). After a timeout the queue starts again with
/// [`RESEND_WINDOW`] messages out ([`ResendTimer::allowance`]).
#[derive(Debug, Clone)]
pub struct ResendTimer {
    /// When an acknowledgement last moved the floor, or sending last (re)started.
    since: Instant,
    /// How long to wait from `since`.
    wait: Duration,
    /// The smoothed wait for an acknowledgement and its smoothed deviation, once sampled.
    smoothed: Option<(Duration, Duration)>,
    /// Whether messages were sent again since the last acknowledgement (its wait is then
    /// not a sample).
    resent: bool,
    /// How many messages may be out since the last timeout; `None`: the full bound.
    window: Option<u64>,
}

impl Default for ResendTimer {
    fn default() -> Self {
        ResendTimer {
            since: Instant::now(),
            wait: RESEND_AFTER,
            smoothed: None,
            resent: false,
            window: None,
        }
    }
}

impl ResendTimer {
    /// An acknowledgement moved the floor over `acked` messages: the wait from now is
    /// the measured one, and as many more messages may be out.
    pub fn progressed(&mut self, acked: u64) {
        self.progressed_at(Instant::now(), acked);
    }

    fn progressed_at(&mut self, now: Instant, acked: u64) {
        // After a resend the wait stays as long as it grew until an acknowledgement that
        // is a sample comes (Karn's rule): measured from the resend, the next gap would
        // look short, and the wait would shrink back below what the queue needs.
        if !std::mem::take(&mut self.resent) {
            let sample = now.saturating_duration_since(self.since);
            let (smooth, deviation) = match self.smoothed {
                None => (sample, sample / 2),
                Some((smooth, deviation)) => {
                    let off = smooth.abs_diff(sample);
                    (smooth * 7 / 8 + sample / 8, deviation * 3 / 4 + off / 4)
                }
            };
            self.smoothed = Some((smooth, deviation));
            self.wait = (smooth + deviation * 4).clamp(RESEND_AFTER, RESEND_MAX);
        }
        self.since = now;
        self.window = self
            .window
            .map(|window| window.saturating_add(acked))
            .filter(|&window| window < WINDOW);
    }

    /// How many messages may be out unacknowledged now, for a queue whose bound is `full`.
    pub fn allowance(&self, full: u64) -> u64 {
        self.window.map_or(full, |window| window.min(full))
    }

    /// Sending (re)started (a new connection, or the first message after a quiet
    /// spell): the wait counts from now, and stays as long as it was.
    pub fn restarted(&mut self) {
        self.since = Instant::now();
    }

    /// When the wait is over (see [`ResendTimer::expired`]).
    pub fn deadline(&self) -> Instant {
        self.since + self.wait
    }

    /// Whether the wait is over; if so, returns how long it was and starts the next,
    /// twice as long (up to [`RESEND_MAX`]). Call it only while messages wait for an
    /// acknowledgement.
    pub fn expired(&mut self) -> Option<Duration> {
        self.expired_at(Instant::now())
    }

    fn expired_at(&mut self, now: Instant) -> Option<Duration> {
        if now.saturating_duration_since(self.since) < self.wait {
            return None;
        }
        let waited = self.wait;
        self.since = now;
        self.wait = (self.wait * 2).min(RESEND_MAX);
        self.resent = true;
        self.window = Some(RESEND_WINDOW);
        Some(waited)
    }
}

/// An agent's durable queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stream {
    /// Action transitions and policy events.
    Outbox,
    /// Metric batches.
    Metrics,
}

impl Stream {
    /// Both streams.
    pub const ALL: [Stream; 2] = [Stream::Outbox, Stream::Metrics];

    /// A short, stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Outbox => "outbox",
            Stream::Metrics => "metrics",
        }
    }
}

/// Where a message sits in its agent's durable queue (part of the signed seal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The queue.
    pub stream: Stream,
    /// The queue's random identity, chosen when it was created.
    pub epoch: u64,
    /// The message's position in the queue, from 1.
    pub seq: u64,
    /// The lowest position the agent still holds: everything below was acknowledged or
    /// dropped by the agent.
    pub floor: u64,
}

/// What the coordinator has stored of one host's stream: everything up to `upto`, and
/// the positions marked in `above` (bit `i` is `upto + 1 + i`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The stream's epoch.
    pub epoch: u64,
    /// Everything up to here is stored (or was dropped by the agent).
    pub upto: u64,
    /// Stored positions above `upto + 1`, as a bitmap of [`WINDOW`] bits.
    pub above: [u64; 16],
}

/// What to do with a message, by its [`Delivery`] header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Store it. `skipped` positions below it were dropped by the agent (never coming).
    New {
        /// How many positions the window passed over because the agent no longer has them.
        skipped: u64,
    },
    /// Already stored: do not store it again (but acknowledge it).
    Duplicate,
    /// Too far ahead of what is stored: drop it; the agent sends it again.
    Ahead,
}

impl Window {
    /// A window for a stream first seen with `delivery`.
    pub fn new(delivery: &Delivery) -> Window {
        Window {
            epoch: delivery.epoch,
            upto: delivery.floor.saturating_sub(1),
            above: [0; 16],
        }
    }

    /// Decides about `delivery` and, for a new message, records it.
    pub fn admit(&mut self, delivery: &Delivery) -> Admit {
        let mut skipped = 0;
        if delivery.epoch != self.epoch {
            // A new queue (the agent's data was wiped): start over at its floor.
            *self = Window::new(delivery);
        } else if delivery.floor > self.upto.saturating_add(1) {
            // The agent dropped everything below its floor: stop waiting for it.
            let gap = delivery.floor - self.upto - 1;
            if gap >= WINDOW {
                let marked: u64 = self.above.iter().map(|w| u64::from(w.count_ones())).sum();
                skipped = gap - marked;
                self.upto = delivery.floor - 1;
                self.above = [0; 16];
            } else {
                for _ in 0..gap {
                    if !self.bit(self.upto + 1) {
                        skipped += 1;
                    }
                    self.shift();
                }
            }
            self.settle();
        }
        let seq = delivery.seq;
        if seq <= self.upto {
            return Admit::Duplicate;
        }
        if seq - self.upto > WINDOW {
            return Admit::Ahead;
        }
        if self.bit(seq) {
            return Admit::Duplicate;
        }
        let offset = seq - self.upto - 1;
        self.above[(offset / 64) as usize] |= 1 << (offset % 64);
        self.settle();
        Admit::New { skipped }
    }

    /// Whether position `seq` (above `upto`, within the window) is marked.
    fn bit(&self, seq: u64) -> bool {
        let offset = seq - self.upto - 1;
        offset < WINDOW && self.above[(offset / 64) as usize] & (1 << (offset % 64)) != 0
    }

    /// Moves `upto` up by one, dropping the lowest bit.
    fn shift(&mut self) {
        self.upto += 1;
        for i in 0..self.above.len() {
            let carry = self.above.get(i + 1).map_or(0, |next| next & 1);
            self.above[i] = (self.above[i] >> 1) | (carry << 63);
        }
    }

    /// Moves `upto` over every marked position right above it.
    fn settle(&mut self) {
        while self.above[0] & 1 != 0 {
            self.shift();
        }
    }
}

/// How far one stream is stored, as acknowledged to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAck {
    /// The stream.
    pub stream: Stream,
    /// Its epoch.
    pub epoch: u64,
    /// Everything up to here is stored: the agent may forget it.
    pub upto: u64,
}

/// The coordinator's acknowledgement to one agent, on `vigil/v1/agents/{host}/acks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAck {
    /// The host it is for.
    pub host: String,
    /// The coordinator's clock when it sent this, epoch ms (the agent compares it with
    /// its own to notice a clock that is off).
    pub coordinator_ms: i64,
    /// Each stream that has news.
    pub streams: Vec<StreamAck>,
}

impl WireMessage for DeliveryAck {
    const KIND: &'static str = "delivery_ack";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        validate::timestamp("coordinator_ms", self.coordinator_ms)?;
        if self.streams.len() > Stream::ALL.len() {
            return Err(FieldError::new("streams", "at most one entry per stream"));
        }
        Ok(())
    }
}

impl CoordinatorSigned for DeliveryAck {
    const WHAT: &'static str = "acknowledgement";
    const CONTEXT: SigningContext = SigningContext::DeliveryAck;
    const ENVELOPE_KIND: &'static str = "signed_ack";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_wait_longer_while_they_bring_nothing_and_start_over_on_progress() {
        let mut timer = ResendTimer::default();
        let start = timer.since;
        assert_eq!(timer.expired_at(start + Duration::from_secs(9)), None);
        let mut at = start;
        let mut waits = Vec::new();
        for _ in 0..5 {
            at += RESEND_MAX;
            waits.push(timer.expired_at(at).map(|d| d.as_secs()));
        }
        assert_eq!(waits, [Some(10), Some(20), Some(40), Some(80), Some(80)]);
        // The acknowledgement after resends is not a sample: the wait stays long.
        timer.progressed_at(at, 1);
        assert_eq!(timer.wait, RESEND_MAX);
        // The next is (one second on), and brings the shortest wait back.
        at += Duration::from_secs(1);
        timer.progressed_at(at, 1);
        let since = timer.since;
        assert_eq!(timer.expired_at(since + Duration::from_secs(5)), None);
        assert_eq!(
            timer.expired_at(since + RESEND_AFTER),
            Some(RESEND_AFTER),
            "progress brings the first wait back"
        );
    }

    #[test]
    fn the_wait_stretches_with_slow_acknowledgements_and_shrinks_back() {
        let mut timer = ResendTimer::default();
        let mut at = timer.since;
        let secs = |timer: &ResendTimer| timer.wait.as_secs_f64();
        // A coordinator that answers in milliseconds: the shortest wait.
        for _ in 0..20 {
            at += Duration::from_millis(5);
            timer.progressed_at(at, 1);
        }
        assert_eq!(timer.wait, RESEND_AFTER);
        // One falling behind, its acknowledgements further and further apart, then 9 to
        // 13 s apart: copies only after longer than any of those gaps, so none while it
        // works through the queue.
        let falling_behind = (1..=8).chain([9, 13, 9, 12, 10, 13, 9, 11].repeat(5));
        for gap in falling_behind {
            at += Duration::from_secs(gap);
            assert_eq!(timer.expired_at(at), None, "no copies after a {gap} s gap");
            timer.progressed_at(at, 1);
        }
        assert!(
            secs(&timer) > 13.0 && secs(&timer) < 30.0,
            "{}",
            secs(&timer)
        );
        // Never past the longest wait.
        for _ in 0..10 {
            at += Duration::from_secs(75);
            timer.progressed_at(at, 1);
        }
        assert_eq!(timer.wait, RESEND_MAX);
        // Prompt again: back to the shortest wait.
        for _ in 0..60 {
            at += Duration::from_millis(5);
            timer.progressed_at(at, 1);
        }
        assert_eq!(timer.wait, RESEND_AFTER);
    }

    #[test]
    fn the_acknowledgement_after_a_resend_is_not_a_sample() {
        let mut timer = ResendTimer::default();
        let start = timer.since;
        assert!(timer.expired_at(start + RESEND_AFTER).is_some());
        // 70 s on: it may answer the first sending, 80 s ago; not measured, and the
        // doubled wait stays.
        timer.progressed_at(start + Duration::from_secs(80), 1);
        assert_eq!(timer.smoothed, None);
        assert_eq!(timer.wait, RESEND_AFTER * 2);
        timer.progressed_at(start + Duration::from_secs(81), 1);
        assert_eq!(timer.smoothed.map(|(s, _)| s), Some(Duration::from_secs(1)));
        assert_eq!(timer.wait, RESEND_AFTER);
    }

    #[test]
    fn after_a_timeout_the_allowance_starts_small_and_grows_with_acknowledgements() {
        let mut timer = ResendTimer::default();
        assert_eq!(timer.allowance(256), 256);
        let start = timer.since;
        assert!(timer.expired_at(start + RESEND_AFTER).is_some());
        assert_eq!(timer.allowance(256), RESEND_WINDOW);
        assert_eq!(timer.allowance(4), 4, "never above the queue's bound");
        let mut rounds = 0;
        while timer.allowance(256) < 256 {
            let out = timer.allowance(256);
            timer.progressed(out);
            rounds += 1;
        }
        assert_eq!(rounds, 4, "16, 32, 64, 128, then the full 256");
        // Another timeout starts small again; progress past the coordinator's window
        // brings back the full bound for good.
        let since = timer.since;
        assert!(timer.expired_at(since + RESEND_AFTER).is_some());
        assert_eq!(timer.allowance(256), RESEND_WINDOW);
        timer.progressed(WINDOW);
        assert_eq!(timer.window, None);
        assert_eq!(timer.allowance(256), 256);
    }

    fn at(seq: u64, floor: u64) -> Delivery {
        Delivery {
            stream: Stream::Outbox,
            epoch: 7,
            seq,
            floor,
        }
    }

    #[test]
    fn in_order_messages_advance_the_window_and_repeats_are_duplicates() {
        let mut w = Window::new(&at(1, 1));
        for seq in 1..=3000 {
            assert_eq!(w.admit(&at(seq, 1)), Admit::New { skipped: 0 });
        }
        assert_eq!(w.upto, 3000);
        assert_eq!(w.above, [0; 16]);
        assert_eq!(w.admit(&at(17, 1)), Admit::Duplicate);
        assert_eq!(w.admit(&at(3000, 1)), Admit::Duplicate);
    }

    #[test]
    fn out_of_order_messages_are_taken_once_within_the_window() {
        let mut w = Window::new(&at(1, 1));
        assert_eq!(w.admit(&at(3, 1)), Admit::New { skipped: 0 });
        assert_eq!(w.admit(&at(3, 1)), Admit::Duplicate);
        assert_eq!(w.upto, 0);
        assert_eq!(w.admit(&at(2, 1)), Admit::New { skipped: 0 });
        assert_eq!(w.admit(&at(1, 1)), Admit::New { skipped: 0 });
        assert_eq!(w.upto, 3);
        assert_eq!(w.admit(&at(3 + WINDOW + 1, 1)), Admit::Ahead);
        assert_eq!(w.admit(&at(3 + WINDOW, 1)), Admit::New { skipped: 0 });
        assert_eq!(w.upto, 3);
        // Bits far up the map survive shifts.
        for seq in 4..3 + WINDOW {
            assert_eq!(w.admit(&at(seq, 1)), Admit::New { skipped: 0 });
        }
        assert_eq!(w.upto, 3 + WINDOW);
    }

    #[test]
    fn a_raised_floor_skips_what_the_agent_dropped_and_counts_it() {
        let mut w = Window::new(&at(1, 1));
        assert_eq!(w.admit(&at(1, 1)), Admit::New { skipped: 0 });
        assert_eq!(w.admit(&at(5, 1)), Admit::New { skipped: 0 });
        // The agent dropped 2..=9 from its full spool; 5 was stored, so 7 are missing.
        assert_eq!(w.admit(&at(10, 10)), Admit::New { skipped: 7 });
        assert_eq!(w.upto, 10);
    }

    #[test]
    fn a_new_epoch_starts_over_at_its_floor() {
        let mut w = Window::new(&at(1, 1));
        for seq in 1..=50 {
            w.admit(&at(seq, 1));
        }
        let fresh = Delivery {
            epoch: 8,
            ..at(1, 1)
        };
        assert_eq!(w.admit(&fresh), Admit::New { skipped: 0 });
        assert_eq!((w.epoch, w.upto), (8, 1));
    }
}
