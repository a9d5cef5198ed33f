//! How far the coordinator's ingest is behind what the front has handed to the embedded
//! broker, so that agents wait (their sockets are not read) instead of overflowing the
//! broker.
//!
//! rumqttd keeps what a filter's subscribers have yet to read in a log of bounded size
//! (`max_segment_size` × `max_segment_count`); when the log is full it drops its oldest
//! segment, and a subscriber that had not read it yet jumps ahead, losing those messages
//! (agents send them again, after their resend timeout, since the store never
//! acknowledged them). Under a load ingest cannot keep up with, that is a loss and a
//! retransmission of thousands of messages at a time. So the front counts the bytes of
//! every agent message it hands to the router on a channel ingest subscribes to
//! ([`Backlog::handed`]), ingest counts the bytes it takes from the broker
//! ([`Backlog::taken`]), and an agent's connection reads nothing more while the
//! difference is above [`LIMIT`] ([`Backlog::room`]): TCP pushes back, and the agent
//! keeps its messages in its durable queue meanwhile.
//!
//! A connection that must wait still reads its socket, so that the agent's pings are
//! answered (its MQTT client gives up on a connection whose PINGRESP is late): what it
//! publishes meanwhile is held, not handed over and not acknowledged, and its client
//! stops at its in-flight window. A connection holds at most [`HOLD_EACH`], and all of
//! them at most [`HOLD_ALL`] ([`Held`]); past that, its socket is not read either.
//!
//! Waiting connections take turns in the order they began to wait: while there is room,
//! ingest taking a message, or a connection handing over, wakes the one that has waited
//! longest, which then hands over all it holds. Woken all at once, they would race, and
//! some would lose for longer than their agents wait before sending again. (A connection
//! that finds room when it has something to hand over goes at once, ahead of those in
//! line: making it wait behind them, measured under a load far above what ingest stores,
//! cost more throughput than the order gained.)
//!
//! What the front counts may never reach ingest (a message published while ingest is
//! not subscribed, one the router refuses). So a wait that sees ingest take nothing for
//! [`STALL`] forgets the difference and lets the connections go on: the count heals
//! itself, and a stalled ingest (a full disk) falls back to the broker's own bounds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use vigil_shared::topics::{self, AgentChannel};

/// The channels of agents' messages that ingest subscribes to and stores, and that
/// count here.
pub(crate) const CHANNELS: [AgentChannel; 4] = [
    AgentChannel::Metrics,
    AgentChannel::Status,
    AgentChannel::Actions,
    AgentChannel::Events,
];

/// Most bytes handed to the router and not yet taken by ingest before agents wait: a
/// quarter of the log rumqttd keeps per filter (`broker::router_config`), so that no
/// segment is dropped unread, and ≈ 5,000 batches of 100 samples, seconds of ingest's
/// work.
pub(crate) const LIMIT: u64 = 16 * 1024 * 1024;

/// How long a wait lasts without ingest taking anything before the count is forgotten.
pub(crate) const STALL: Duration = Duration::from_millis(500);

/// Most bytes of publishes one waiting connection holds before its socket waits too: an
/// agent's in-flight window ([`vigil_shared::mqtt::AGENT_INFLIGHT`]) of metric batches
/// of a few KiB, with room to spare.
pub(crate) const HOLD_EACH: u64 = 256 * 1024;

/// Most bytes of publishes all waiting connections hold together: a thousand agents'
/// full windows.
pub(crate) const HOLD_ALL: u64 = 128 * 1024 * 1024;

/// The two counts (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// Bytes the front handed to the router on ingest's channels.
    handed: AtomicU64,
    /// Bytes ingest took, plus what was forgotten.
    taken: AtomicU64,
    /// How many connections wait for their turn ([`Backlog::room`]).
    waiting: AtomicUsize,
    room: Notify,
    /// Bytes of publishes waiting connections hold ([`Held`]).
    held: AtomicU64,
}

/// What one connection holds while it waits; given back when dropped.
pub(crate) struct Held<'a> {
    backlog: &'a Backlog,
    bytes: u64,
}

impl<'a> Held<'a> {
    /// Nothing held yet.
    pub(crate) fn new(backlog: &'a Backlog) -> Held<'a> {
        Held { backlog, bytes: 0 }
    }

    /// The connection holds `bytes` now.
    pub(crate) fn set(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            self.backlog
                .held
                .fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            self.backlog
                .held
                .fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }

    /// Whether the connection may read (and so hold) more while it waits.
    pub(crate) fn may_grow(&self) -> bool {
        self.bytes < HOLD_EACH && self.backlog.held.load(Ordering::Relaxed) < HOLD_ALL
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

impl Backlog {
    /// The bytes a message with a `topic_len`-byte topic and a `payload_len`-byte payload
    /// counts for: what the front holds and hands over, and what ingest takes (every
    /// message ingest is sent is on one of its channels, so it counts them all).
    pub(crate) fn size(topic_len: usize, payload_len: usize) -> u64 {
        (topic_len + payload_len) as u64
    }

    /// The bytes a message on `topic` with `payload_len` bytes counts for, if it goes to
    /// ingest (an agent's metrics, status, actions or events).
    pub(crate) fn counted(topic: &[u8], payload_len: usize) -> Option<u64> {
        let topic = std::str::from_utf8(topic).ok()?;
        let (_, channel) = topics::parse_agent(topic)?;
        CHANNELS
            .contains(&channel)
            .then(|| Backlog::size(topic.len(), payload_len))
    }

    /// The front handed `bytes` to the router. While there is room, the connection that
    /// has waited longest goes next: each one that hands over passes the turn on.
    pub(crate) fn handed(&self, bytes: u64) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
        self.next_turn();
    }

    /// Ingest took `bytes` from the broker.
    pub(crate) fn taken(&self, bytes: u64) {
        self.taken.fetch_add(bytes, Ordering::Relaxed);
        self.next_turn();
    }

    /// Wakes the connection that has waited longest, if any waits and there is room.
    fn next_turn(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 && !self.full() {
            self.room.notify_one();
        }
    }

    /// Bytes handed and not yet taken.
    pub(crate) fn behind(&self) -> u64 {
        let taken = self.taken.load(Ordering::Relaxed);
        self.handed.load(Ordering::Relaxed).saturating_sub(taken)
    }

    /// Whether agents should wait before sending more.
    pub(crate) fn full(&self) -> bool {
        self.behind() > LIMIT
    }

    /// Waits for this connection's turn to hand over what it holds: connections go in
    /// the order they began to wait, one at a time while there is room ([`LIMIT`]). A
    /// connection whose turn came hands over what it holds even if the backlog filled up
    /// meanwhile (at most [`HOLD_EACH`]), so that it does not lose its place. If ingest
    /// takes nothing for [`STALL`] while the backlog is full, what is counted is
    /// forgotten and every waiting connection goes on; with room again and no turn
    /// given, it goes on. Returns whether it forgot.
    pub(crate) async fn room(&self) -> bool {
        let _waiting = Waiting::new(self);
        let notified = self.room.notified();
        tokio::pin!(notified);
        // In line from here on (a turn given to a dropped wait passes to the next).
        notified.as_mut().enable();
        if !self.full() {
            return false;
        }
        loop {
            let before = self.taken.load(Ordering::Relaxed);
            if tokio::time::timeout(STALL, notified.as_mut()).await.is_ok() {
                return false;
            }
            if self.taken.load(Ordering::Relaxed) == before && self.full() {
                let handed = self.handed.load(Ordering::Relaxed);
                self.taken.fetch_max(handed, Ordering::Relaxed);
                self.room.notify_waiters();
                return true;
            }
            if !self.full() {
                return false;
            }
        }
    }
}

/// Counts a connection in [`Backlog::room`] while it is there.
struct Waiting<'a>(&'a Backlog);

impl<'a> Waiting<'a> {
    fn new(backlog: &'a Backlog) -> Waiting<'a> {
        backlog.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(backlog)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &[u8] = b"vigil/v1/agents/web-1/metrics";

    #[test]
    fn only_what_ingest_subscribes_to_counts() {
        assert_eq!(
            Backlog::counted(METRICS, 100),
            Some(METRICS.len() as u64 + 100)
        );
        assert!(Backlog::counted(b"vigil/v1/agents/web-1/status", 1).is_some());
        assert_eq!(Backlog::counted(b"vigil/v1/agents/web-1/session", 1), None);
        assert_eq!(Backlog::counted(b"vigil/v1/bundles/web", 1), None);
        assert_eq!(Backlog::counted(&[0xff, 0xfe], 1), None);
    }

    #[test]
    fn what_connections_hold_is_bounded_each_and_together() {
        let backlog = Backlog::default();
        let mut one = Held::new(&backlog);
        assert!(one.may_grow());
        one.set(HOLD_EACH);
        assert!(!one.may_grow(), "its own share is full");
        one.set(10);
        let mut others: Vec<Held> = (0..HOLD_ALL / HOLD_EACH)
            .map(|_| {
                let mut held = Held::new(&backlog);
                held.set(HOLD_EACH);
                held
            })
            .collect();
        assert!(!one.may_grow(), "all together hold their most");
        others.truncate(1);
        assert!(one.may_grow());
        drop(others);
        drop(one);
        assert_eq!(
            backlog.held.load(Ordering::Relaxed),
            0,
            "given back when dropped"
        );
    }

    #[tokio::test]
    async fn a_full_backlog_waits_until_ingest_takes_enough() {
        let backlog = std::sync::Arc::new(Backlog::default());
        backlog.handed(LIMIT + 1000);
        assert!(backlog.full());
        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.room().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while full");
        backlog.taken(500);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "still above the limit");
        backlog.taken(600);
        let forgot = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once below the limit")
            .unwrap();
        assert!(!forgot);
        assert_eq!(backlog.behind(), LIMIT - 100);
    }

    #[tokio::test]
    async fn waiting_connections_take_turns_in_the_order_they_began_to_wait() {
        let backlog = std::sync::Arc::new(Backlog::default());
        backlog.handed(LIMIT + 1000);
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let backlog = backlog.clone();
            let order_tx = order_tx.clone();
            tokio::spawn(async move {
                assert!(!backlog.room().await, "a turn, not a forgotten count");
                order_tx.send(n).unwrap();
            });
            // Each in line before the next begins to wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let next = |order: &mut tokio::sync::mpsc::UnboundedReceiver<i32>| {
            let got = order.try_recv();
            got.ok()
        };
        // Room for one: the first in line goes; the turn it hands over with fills the
        // backlog again, so the others keep waiting.
        backlog.taken(2000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(next(&mut order), Some(0));
        assert_eq!(next(&mut order), None);
        backlog.handed(5000);
        backlog.taken(1000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(next(&mut order), None, "still full");
        // Room again: the second, then (its hand-over leaving room) the third.
        backlog.taken(10_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(next(&mut order), Some(1));
        backlog.handed(100);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(next(&mut order), Some(2));
        assert_eq!(backlog.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_count_ingest_never_takes_is_forgotten_after_a_stall() {
        let backlog = Backlog::default();
        backlog.handed(LIMIT * 2);
        assert!(
            backlog.room().await,
            "forgot after STALL with nothing taken"
        );
        assert_eq!(backlog.behind(), 0);
        assert!(!backlog.full());
        // Ingest taking what was forgotten later leaves the count at zero, not below.
        backlog.taken(LIMIT);
        assert_eq!(backlog.behind(), 0);
    }
}
