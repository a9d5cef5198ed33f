//! Pacing while a backend (Docker, the system bus) is away: waits that double from
//! 100 ms up to 5 s before a watcher reconnects, and one warning per outage rather than
//! one per attempt (the executors log their backends' outages with it too).

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The first wait after a failure.
const FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
const CAP: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: the next failure starts a new outage
/// with short waits again.
const HEALTHY: Duration = Duration::from_secs(30);

/// Tracks one backend's outages.
#[derive(Debug)]
pub struct Retry {
    backend: &'static str,
    delay: Duration,
    down: bool,
    connected_at: Option<Instant>,
}

impl Retry {
    /// Pacing for `backend` (named in log lines).
    pub fn new(backend: &'static str) -> Retry {
        Retry {
            backend,
            delay: FIRST,
            down: false,
            connected_at: None,
        }
    }

    /// The backend is reachable: logs the recovery if it had been away.
    pub fn connected(&mut self) {
        if self.down {
            tracing::info!("{} is reachable again", self.backend);
        }
        self.down = false;
        self.connected_at = Some(Instant::now());
    }

    /// An attempt failed or a connection was lost: warns on the first failure of an
    /// outage (later ones are logged at debug level) and returns how long to wait.
    pub fn failed(&mut self, error: &dyn Display) -> Duration {
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= HEALTHY)
        {
            self.delay = FIRST;
        }
        if self.down {
            tracing::debug!("{} still unavailable: {error}", self.backend);
        } else {
            tracing::warn!(
                "{} unavailable, retrying with backoff (up to {CAP:?}): {error}",
                self.backend
            );
            self.down = true;
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(CAP);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let mut retry = Retry::new("test");
        let waits: Vec<_> = (0..8).map(|_| retry.failed(&"no").as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // A short-lived connection does not reset the pacing (a flapping backend).
        retry.connected();
        assert_eq!(retry.failed(&"no").as_millis(), 5000);
    }
}
