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
//! What the front counts may never reach ingest (a message published while ingest is
//! not subscribed, one the router refuses). So a wait that sees ingest take nothing for
//! [`STALL`] forgets the difference and lets the connections go on: the count heals
//! itself, and a stalled ingest (a full disk) falls back to the broker's own bounds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use vigil_shared::topics;

use super::ingest::CHANNELS;

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
    /// Whether a connection waits for room (so that [`Backlog::taken`] wakes it).
    waiting: AtomicBool,
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
    /// The bytes a message on `topic` with `payload_len` bytes counts for, if it goes to
    /// ingest (an agent's metrics, status, actions or events).
    pub(crate) fn counted(topic: &[u8], payload_len: usize) -> Option<u64> {
        let topic = std::str::from_utf8(topic).ok()?;
        let (_, channel) = topics::parse_agent(topic)?;
        CHANNELS
            .contains(&channel)
            .then(|| (topic.len() + payload_len) as u64)
    }

    /// The front handed `bytes` to the router.
    pub(crate) fn handed(&self, bytes: u64) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Ingest took `bytes` from the broker.
    pub(crate) fn taken(&self, bytes: u64) {
        self.taken.fetch_add(bytes, Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) && !self.full() {
            self.waiting.store(false, Ordering::Relaxed);
            self.room.notify_waiters();
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

    /// Waits until the backlog is at most [`LIMIT`], or until ingest took nothing for
    /// [`STALL`] (then what is counted is forgotten). Returns whether it forgot.
    pub(crate) async fn room(&self) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::Relaxed);
            if !self.full() {
                return false;
            }
            let before = self.taken.load(Ordering::Relaxed);
            if tokio::time::timeout(STALL, notified).await.is_err()
                && self.taken.load(Ordering::Relaxed) == before
                && self.full()
            {
                let handed = self.handed.load(Ordering::Relaxed);
                self.taken.fetch_max(handed, Ordering::Relaxed);
                self.room.notify_waiters();
                return true;
            }
        }
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
