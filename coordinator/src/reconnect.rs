//! How the coordinator's own MQTT connections (ingest, handshakes, acknowledgements, the
//! lease service, the JSON mirror) behave after losing the broker: each failure in a row
//! waits a little longer (200 ms per failure, at most 2 s) before the event loop is
//! polled again (rumqttc reconnects on that poll), and is logged at the 1st, 2nd, 4th,
//! 8th… failure so a broker down for an hour does not flood the log.

use std::time::Duration;

/// The failures in a row of one connection.
pub(crate) struct Reconnect {
    /// What the log calls the connection ("ingest", "JSON mirror", …).
    connection: &'static str,
    failures: u32,
}

impl Reconnect {
    /// No failure yet for `connection`.
    pub(crate) fn new(connection: &'static str) -> Reconnect {
        Reconnect {
            connection,
            failures: 0,
        }
    }

    /// The connection works again.
    pub(crate) fn connected(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure, logs it when due, and waits before the next attempt.
    pub(crate) async fn failed(&mut self, error: &rumqttc::ConnectionError) {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::warn!(
                failures = self.failures,
                "{} lost the broker: {error}",
                self.connection
            );
        }
        tokio::time::sleep(Duration::from_millis(
            200 * u64::from(self.failures.min(10)),
        ))
        .await;
    }
}
