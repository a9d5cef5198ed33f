//! systemd's notification protocol (`sd_notify(3)`) through the `sd-notify` crate.
//!
//! A unit with `Type=notify` counts as started only when the service sends `READY=1`;
//! with `WatchdogSec=` systemd kills and restarts a service that stops sending
//! `WATCHDOG=1` within that time. [`ServiceManager`] wraps both, plus `STATUS=` lines that
//! `systemctl status` shows. When the process was not started by systemd (no
//! `NOTIFY_SOCKET`), every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager this process reports to, if any.
#[derive(Debug, Clone)]
pub struct ServiceManager {
    /// Whether `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// How often to ping the watchdog: half of `WatchdogSec=`, if the unit sets one.
    watchdog_every: Option<Duration>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> ServiceManager {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog_every = sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| timeout / 2);
        if let Some(every) = watchdog_every {
            tracing::info!(?every, "systemd watchdog on: pinging from the main loop");
        }
        ServiceManager {
            enabled,
            watchdog_every,
        }
    }

    /// One that never notifies (for tests and embedded use).
    pub fn disabled() -> ServiceManager {
        ServiceManager {
            enabled: false,
            watchdog_every: None,
        }
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How often [`ServiceManager::watchdog`] must be called: half the unit's
    /// `WatchdogSec=`, or `None` when no watchdog is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `READY=1` with a status line: start-up is complete.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=…`: what the service is doing, shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&self) {
        if self.watchdog_every.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        // Status lines are one line each in the protocol.
        let states: Vec<NotifyState> = states
            .iter()
            .map(|state| match state {
                NotifyState::Status(text) if text.contains('\n') => {
                    NotifyState::Status(text.lines().next().unwrap_or_default())
                }
                other => other.clone(),
            })
            .collect();
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    /// A real datagram socket stands in for systemd's notification socket.
    #[test]
    fn sends_ready_status_and_watchdog_to_the_notify_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind");
        let manager = ServiceManager {
            enabled: true,
            watchdog_every: Some(Duration::from_secs(5)),
        };
        // The crate reads the socket path from the environment at every call.
        std::env::set_var("NOTIFY_SOCKET", &path);
        manager.ready("up: 3 policies\nsecond line dropped");
        manager.watchdog();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("ready datagram");
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf-8"),
            "READY=1\nSTATUS=up: 3 policies\n"
        );
        let n = socket.recv(&mut buf).expect("watchdog datagram");
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf-8"),
            "WATCHDOG=1\n"
        );
    }

    #[test]
    fn without_systemd_nothing_is_sent_and_no_watchdog_is_due() {
        let manager = ServiceManager::disabled();
        assert!(!manager.is_enabled());
        assert_eq!(manager.watchdog_interval(), None);
        manager.ready("ignored");
    }
}
