//! The deadman: finds hosts that stopped reporting while their agent's last word was
//! "online" — no status and no samples for `--silent-after` of their sampling intervals
//! (the interval each agent reports in its status), and at least 2 s — and records them
//! `silent`.
//!
//! Three ways a host stops are kept apart: a clean stop (the agent publishes its offline
//! status) and a lost connection (the broker publishes the agent's last will, also
//! offline) make it `offline` and are never silence; silence is the third case, the
//! connection apparently up but nothing arriving (a hung or stopped process, a full
//! outbound queue). Hosts expected to come and go — an agent label `ephemeral=true`, or a
//! host name matching `--ephemeral-hosts` — are never called silent.
//!
//! Ingest tells the [`Deadman`] of every status and metric batch it accepts (a map
//! look-up under a short lock); the [`run`] task wakes four times a second and asks the
//! [`detector::Detector`] which deadlines passed. A verdict goes to the store writer as
//! [`Write::Silence`], which records it in the host record and the event feed (and so on
//! SSE and the JSON topics) only if nothing arrived meanwhile; the next status or sample
//! ends the silence in the store writer, with an event too. Counted in
//! `vigil_hosts_silent_total`; `vigil_hosts_silent` is how many are silent now. A
//! configured webhook ([`webhook`]) hears of both.

pub(crate) mod detector;
pub(crate) mod webhook;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use vigil_shared::policy::target::Target;
use vigil_shared::time::now_ms;
use vigil_shared::wire::{AgentState, AgentStatus, Tag};

use crate::store::{Store, StoreWriter, Write};
use crate::telemetry::Telemetry;
use detector::Detector;

/// Default `--silent-after`: intervals without a word before a host is silent (and at
/// least [`detector::MIN_WINDOW_MS`]).
pub const DEFAULT_SILENT_AFTER: u32 = 3;
/// Allowed `--silent-after` values: one late batch is not silence; beyond 1000 intervals
/// the deadman would be of no use.
pub const SILENT_AFTER_RANGE: std::ops::RangeInclusive<u32> = 2..=1000;

/// How often the deadlines are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The label that marks a host as expected to come and go.
pub const EPHEMERAL_LABEL: (&str, &str) = ("ephemeral", "true");

/// The deadman's settings.
#[derive(Debug, Clone)]
pub struct DeadmanSettings {
    /// Intervals without a status or a sample before a host is silent.
    pub silent_after: u32,
    /// Host names (exact or globs) never called silent.
    pub ephemeral_hosts: Vec<String>,
    /// Where to POST silence events, if anywhere (`http://` or `https://`).
    pub webhook: Option<String>,
}

impl Default for DeadmanSettings {
    fn default() -> Self {
        DeadmanSettings {
            silent_after: DEFAULT_SILENT_AFTER,
            ephemeral_hosts: Vec::new(),
            webhook: None,
        }
    }
}

/// Reads `--ephemeral-hosts`: comma-separated host names or globs (`ci-*`).
pub fn parse_ephemeral_hosts(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        Target::parse(item)?;
        out.push(item.to_string());
    }
    Ok(out)
}

/// The handle ingest reports to. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Deadman {
    detector: Arc<Mutex<Detector>>,
    ephemeral: Arc<Vec<Target>>,
}

impl Deadman {
    /// A deadman with `settings` (the ephemeral globs were checked by the config).
    pub(crate) fn new(settings: &DeadmanSettings) -> Deadman {
        Deadman {
            detector: Arc::new(Mutex::new(Detector::new(settings.silent_after))),
            ephemeral: Arc::new(
                settings
                    .ephemeral_hosts
                    .iter()
                    .filter_map(|text| Target::parse(text).ok())
                    .collect(),
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Detector> {
        self.detector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a host with `labels` is expected to come and go.
    fn ephemeral(&self, host: &str, labels: &[Tag]) -> bool {
        labels
            .iter()
            .any(|(k, v)| k == EPHEMERAL_LABEL.0 && v == EPHEMERAL_LABEL.1)
            || self.ephemeral.iter().any(|t| t.matches(host))
    }

    /// Ingest accepted `status` at `received_ms`.
    pub(crate) fn status(&self, status: &AgentStatus, received_ms: i64) {
        let watched =
            status.state == AgentState::Online && !self.ephemeral(&status.host, &status.labels);
        self.lock()
            .status(&status.host, received_ms, status.interval_ms, watched);
    }

    /// Ingest accepted a metric batch from `host` at `received_ms`.
    pub(crate) fn sample(&self, host: &str, received_ms: i64) {
        self.lock().sample(host, received_ms);
    }

    /// Loads what the store knows: every host with an agent status, from `now_ms` at
    /// the earliest (a restart gives every host its full window).
    fn restore(&self, store: &Store, now_ms: i64) -> Result<usize, crate::store::StoreError> {
        let hosts = store.hosts()?;
        let mut detector = self.lock();
        let mut restored = 0;
        for record in hosts {
            let Some(status) = &record.status else {
                continue;
            };
            let watched =
                status.state == AgentState::Online && !self.ephemeral(&record.host, &status.labels);
            detector.restore(
                &record.host,
                record.last_seen_ms.max(now_ms),
                status.interval_ms,
                watched,
                record.silent_since_ms.is_some(),
            );
            restored += 1;
        }
        Ok(restored)
    }
}

/// Restores the detector from the store, then finds silent hosts until `stop`.
pub(crate) async fn run(
    deadman: Deadman,
    store: Store,
    writer: StoreWriter,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let restored = {
        let (deadman, store) = (deadman.clone(), store.clone());
        tokio::task::spawn_blocking(move || deadman.restore(&store, now_ms())).await
    };
    match restored {
        Ok(Ok(hosts)) => tracing::debug!(hosts, "deadman watching"),
        Ok(Err(e)) => tracing::error!(
            "deadman cannot read the hosts (it watches those that report from now): {e}"
        ),
        Err(e) => tracing::error!("deadman start-up task failed: {e}"),
    }
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        let now = now_ms();
        let verdicts = deadman.lock().due(now);
        // Every verdict is queued before any answer is awaited: many hosts falling silent
        // at once (a network split) are written in a few transactions.
        let mut answers = Vec::with_capacity(verdicts.len());
        for verdict in verdicts {
            let (reply, answer) = oneshot::channel();
            let write = Write::Silence {
                host: verdict.host.clone(),
                last_seen_ms: verdict.last_seen_ms,
                at_ms: now,
                reply: Some(reply),
            };
            if let Err(e) = writer.send(write).await {
                tracing::error!("cannot queue a host's silence for the store: {e}");
                return;
            }
            answers.push((verdict, answer));
        }
        for (verdict, answer) in answers {
            match answer.await {
                Ok(Ok(1)) => {
                    telemetry.hosts_silent_total.inc();
                    tracing::warn!(
                        host = %verdict.host,
                        last_seen_ms = verdict.last_seen_ms,
                        silent_for_ms = now.saturating_sub(verdict.last_seen_ms),
                        "host is silent: its agent said online, but no status or sample came"
                    );
                }
                Ok(Ok(_)) => deadman.lock().not_silent(&verdict.host, now),
                Ok(Err(e)) => {
                    tracing::warn!(host = %verdict.host, "cannot record a host's silence: {e}");
                    deadman.lock().not_silent(&verdict.host, now);
                }
                Err(_) => return,
            }
        }
        let silent = deadman.lock().silent_count();
        telemetry
            .hosts_silent
            .set(i64::try_from(silent).unwrap_or(i64::MAX));
    }
}
