//! What the agent tells the machine it runs on: systemd (readiness, a `STATUS=` line,
//! watchdog pings from the main loop) and the status file `vigil-agent status` reads.
//!
//! The runner calls [`ServiceReport::on_samples`] after each sample batch (the first one
//! marks the agent ready: identity loaded, stores open, policies in force, sampling
//! running), [`ServiceReport::refresh`] every [`status_file::WRITE_EVERY`], and
//! [`ServiceReport::watchdog`] on its own tick. All of it happens on the main loop, so a
//! hung loop stops the pings and systemd's watchdog restarts the agent.

use std::path::PathBuf;
use std::time::Duration;

use vigil_service::ServiceManager;
use vigil_shared::time::now_ms;

use crate::acting::AgentStore;
use crate::reporting::link::Link;
use crate::reporting::status_file::{self, RecentAction, StatusSnapshot};

/// The agent's reports to systemd and to its status file.
pub struct ServiceReport {
    manager: ServiceManager,
    data_dir: PathBuf,
    broker: String,
    ready: bool,
    last_sample_at_ms: Option<i64>,
    status_line: String,
    write_failed: bool,
    delivery: Option<std::sync::Arc<super::delivery::DeliveryReport>>,
}

impl ServiceReport {
    /// For an agent keeping its data in `data_dir` and reporting to `broker`.
    pub fn new(manager: ServiceManager, data_dir: PathBuf, broker: String) -> ServiceReport {
        ServiceReport {
            manager,
            data_dir,
            broker,
            ready: false,
            last_sample_at_ms: None,
            status_line: String::new(),
            write_failed: false,
            delivery: None,
        }
    }

    /// Takes the delivery figures for the status file from `report` (current, where the
    /// published status has them as of its last refresh).
    pub fn with_delivery(
        mut self,
        report: std::sync::Arc<super::delivery::DeliveryReport>,
    ) -> ServiceReport {
        self.delivery = Some(report);
        self
    }

    /// How often the main loop must call [`ServiceReport::watchdog`]; an hour when
    /// systemd set no watchdog (the tick then does nothing).
    pub fn watchdog_every(&self) -> Duration {
        self.manager
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Pings systemd's watchdog.
    pub fn watchdog(&self) {
        self.manager.watchdog();
    }

    /// A sample batch was taken and handled; the first one makes the agent ready.
    pub fn on_samples(&mut self, link: &Link, store: &AgentStore, now_ms: i64) {
        self.last_sample_at_ms = Some(now_ms);
        if !self.ready {
            self.ready = true;
            let line = self.line(link);
            self.manager.ready(&line);
            self.status_line = line;
            self.refresh(link, store);
        }
    }

    /// Rewrites the status file and, if it changed, the `STATUS=` line.
    pub fn refresh(&mut self, link: &Link, store: &AgentStore) {
        let line = self.line(link);
        if self.ready && line != self.status_line {
            self.manager.status(&line);
            self.status_line = line;
        }
        let snapshot = self.snapshot(link, store);
        match status_file::write(&self.data_dir, &snapshot) {
            Ok(()) => self.write_failed = false,
            Err(e) if !self.write_failed => {
                self.write_failed = true;
                tracing::warn!(
                    "cannot write {}: {e} (`vigil-agent status` will call the agent stale)",
                    status_file::path(&self.data_dir).display()
                );
            }
            Err(_) => {}
        }
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.manager.stopping();
    }

    fn line(&self, link: &Link) -> String {
        let status = link.status();
        let link_state = if link.is_connected() {
            format!("connected to {}", self.broker)
        } else {
            format!("not connected to {} (retrying)", self.broker)
        };
        format!(
            "{link_state}; {} policies; {} actions queued, {} running",
            status.policies.enabled, status.queue.pending, status.queue.running
        )
    }

    fn snapshot(&self, link: &Link, store: &AgentStore) -> StatusSnapshot {
        let status = link.status();
        let mut jobs = store.jobs().unwrap_or_default();
        jobs.extend(store.recent_finished().unwrap_or_default());
        let recent_actions = RecentAction::latest(&jobs);
        StatusSnapshot {
            pid: std::process::id(),
            written_at_ms: now_ms(),
            host: status.host.clone(),
            version: status.agent_version.clone(),
            started_at_ms: status.started_at_ms,
            broker: self.broker.clone(),
            connected: link.is_connected(),
            last_sample_at_ms: self.last_sample_at_ms,
            policies_loaded: status.policies.loaded,
            policies_enabled: status.policies.enabled,
            bundles: status.bundles.clone(),
            bundle_error: status.bundle_error.clone(),
            remediation_paused: status.remediation_paused,
            queue: status.queue.clone(),
            outbox_queued: store.outbox_len().unwrap_or(0),
            delivery: self
                .delivery
                .as_ref()
                .map(|report| report.status())
                .or_else(|| status.delivery.clone()),
            recent_actions,
            detail: status.detail.clone(),
        }
    }
}
