//! Who listens to the `metrics` JSON stream on the embedded broker.
//!
//! Mirroring every metric batch as JSON is most of the coordinator's work per sample
//! after storing it (the batch copied, every sample written out with its tags as an
//! object and its time as RFC 3339, and the message taken in by the broker), and at
//! QoS 0 a message nobody subscribed to is simply dropped by the broker. On the
//! embedded broker every integration's subscription passes the front, so the front
//! counts the connections holding one that matches `vigil/v1/json/metrics/{host}`
//! ([`Audience`]), and the mirror makes the `metrics` stream only while there is one.
//! (A stream mirrored at QoS 1, or on an external broker, is always made: a session kept
//! for an integration that is away would be sent them later.)

use std::collections::BTreeSet;

use prometheus::IntGauge;
use vigil_shared::topics;

/// The connections on the embedded broker subscribed to the `metrics` stream, counted
/// in a gauge (`vigil_json_mirror_metrics_listeners`).
#[derive(Clone)]
pub struct Audience {
    listeners: IntGauge,
}

impl Audience {
    /// An audience counted in `listeners`.
    pub fn new(listeners: IntGauge) -> Audience {
        Audience { listeners }
    }

    /// Whether any connection is subscribed to the `metrics` stream now.
    pub fn listening(&self) -> bool {
        self.listeners.get() > 0
    }

    /// One connection's place in the audience: empty until it subscribes to the stream.
    pub(crate) fn seat(&self) -> Seat {
        Seat {
            audience: self.clone(),
            filters: BTreeSet::new(),
            for_good: false,
        }
    }
}

/// How many of its matching filters a connection's seat remembers; past that it counts
/// as listening until it disconnects (its unsubscribes are no longer followed), so that a
/// client subscribing to ever more filters costs no more memory here.
const MAX_FILTERS: usize = 256;

/// One connection's subscriptions that match the `metrics` stream. The connection counts
/// once in its [`Audience`] while it holds any, and no more once the seat is dropped.
pub(crate) struct Seat {
    audience: Audience,
    filters: BTreeSet<String>,
    /// Listening until the connection ends ([`MAX_FILTERS`] were exceeded).
    for_good: bool,
}

impl Seat {
    /// The connection subscribed to `filter`.
    pub(crate) fn subscribed(&mut self, filter: &str) {
        if self.for_good || !hears_metrics(filter) || self.filters.contains(filter) {
            return;
        }
        if self.filters.len() == MAX_FILTERS {
            self.filters.clear();
            self.for_good = true;
            return;
        }
        self.filters.insert(filter.to_string());
        if self.filters.len() == 1 {
            self.audience.listeners.inc();
        }
    }

    /// The connection unsubscribed from `filter`.
    pub(crate) fn unsubscribed(&mut self, filter: &str) {
        if !self.for_good && self.filters.remove(filter) && self.filters.is_empty() {
            self.audience.listeners.dec();
        }
    }

    fn listening(&self) -> bool {
        self.for_good || !self.filters.is_empty()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.listening() {
            self.audience.listeners.dec();
        }
    }
}

/// Whether a subscription to `filter` receives the `metrics` stream of some host (of
/// one host only, too: the stream is made for all hosts or none).
fn hears_metrics(filter: &str) -> bool {
    let stream = topics::json("metrics", "+");
    let mut wanted = stream.split('/');
    for level in filter.split('/') {
        match wanted.next() {
            None => return false,
            Some(_) if level == "#" => return true,
            Some(want) => {
                if level != "+" && want != "+" && level != want {
                    return false;
                }
                if want == "+" && level.is_empty() {
                    return false;
                }
            }
        }
    }
    wanted.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_reach_the_metrics_stream() {
        for filter in [
            "vigil/v1/json/metrics/web-01",
            "vigil/v1/json/metrics/+",
            "vigil/v1/json/metrics/#",
            "vigil/v1/json/+/web-01",
            "vigil/v1/json/#",
            "vigil/v1/#",
            "vigil/+/json/metrics/+",
            "#",
        ] {
            assert!(hears_metrics(filter), "{filter}");
        }
        for filter in [
            "vigil/v1/json/actions/+",
            "vigil/v1/json/metrics",
            "vigil/v1/json/metrics/web-01/x",
            "vigil/v1/json/metrics/",
            "vigil/v1/agents/+/metrics",
            "vigil/v1/json/+",
        ] {
            assert!(!hears_metrics(filter), "{filter}");
        }
    }

    #[test]
    fn a_connection_counts_once_while_it_holds_a_matching_subscription() {
        let gauge = IntGauge::new("listeners", "test").unwrap();
        let audience = Audience::new(gauge.clone());
        assert!(!audience.listening());
        let mut one = audience.seat();
        one.subscribed("vigil/v1/json/actions/+");
        assert!(!audience.listening());
        one.subscribed("vigil/v1/json/metrics/+");
        one.subscribed("vigil/v1/json/#");
        one.subscribed("vigil/v1/json/#");
        assert_eq!(gauge.get(), 1);
        let mut two = audience.seat();
        two.subscribed("vigil/v1/json/metrics/db-1");
        assert_eq!(gauge.get(), 2);
        one.unsubscribed("vigil/v1/json/metrics/+");
        assert_eq!(gauge.get(), 2, "still subscribed to vigil/v1/json/#");
        one.unsubscribed("vigil/v1/json/#");
        assert_eq!(gauge.get(), 1);
        one.unsubscribed("vigil/v1/json/#");
        assert_eq!(gauge.get(), 1, "an unsubscribe of nothing changes nothing");
        drop(two);
        assert!(!audience.listening());
        let mut three = audience.seat();
        three.subscribed("#");
        assert!(audience.listening());
        drop(three);
        drop(one);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_connection_with_too_many_filters_listens_until_it_leaves() {
        let gauge = IntGauge::new("listeners", "test").unwrap();
        let audience = Audience::new(gauge.clone());
        let mut seat = audience.seat();
        for n in 0..=MAX_FILTERS * 4 {
            seat.subscribed(&format!("vigil/v1/json/metrics/host-{n}"));
        }
        assert_eq!(gauge.get(), 1);
        assert!(seat.filters.is_empty(), "nothing more remembered");
        for n in 0..=MAX_FILTERS * 4 {
            seat.unsubscribed(&format!("vigil/v1/json/metrics/host-{n}"));
        }
        assert_eq!(
            gauge.get(),
            1,
            "still counted: its filters are no longer followed"
        );
        drop(seat);
        assert_eq!(gauge.get(), 0);
    }
}
