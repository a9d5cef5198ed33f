//! The agent's main loop. On every tick it samples the host (and the textfile
//! directory), evaluates the policies, and publishes the samples and any policy events.
//! Between ticks it reacts at once to state changes from the watchers and probes, and
//! re-reads the policy directory when a file changes.

use std::future::Future;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use vigil_shared::time::now_ms;
use vigil_shared::wire::{AgentState, AgentStatus, MetricBatch, PolicyRunnerStatus};

use crate::config::AgentConfig;
use crate::evaluator::{Evaluator, WatchSets};
use crate::link::Link;
use crate::policy_source::PolicyDir;
use crate::probes::{self, ProbeSet};
use crate::sampler::HostSampler;
use crate::watch::{docker, systemd, StateUpdate};

/// How often the policy directory is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(1);
/// How often the status is re-published with fresh runner counters.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Why the agent stopped on its own.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The sampler thread failed.
    #[error("sampler failed: {0}")]
    Sampler(String),
}

/// Runs the agent until `shutdown` resolves, then says goodbye to the broker.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let started_at_ms = now_ms();
    let interval_ms = u64::try_from(config.interval.as_millis()).unwrap_or(u64::MAX);
    let status = AgentStatus {
        host: config.host.clone(),
        state: AgentState::Online,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms,
        sent_at_ms: started_at_ms,
        interval_ms,
        labels: config.labels.clone(),
        bundle_version: None,
        bundle_hash: None,
        remediation_paused: false,
        detail: None,
        queue: Default::default(),
        policies: PolicyRunnerStatus {
            interval_ms,
            source: config.policies.as_ref().map(|p| p.display().to_string()),
            ..PolicyRunnerStatus::default()
        },
    };
    tracing::info!(
        host = %config.host,
        broker = %config.broker,
        interval = ?config.interval,
        policies = ?config.policies,
        "vigil-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let link = Link::connect(&config, status);
    // sysinfo reads /proc synchronously: keep it off the async workers.
    let mut sampler = tokio::task::spawn_blocking(HostSampler::new)
        .await
        .map_err(|e| AgentError::Sampler(e.to_string()))?
        .map_err(|e| AgentError::Sampler(format!("cannot read host information: {e}")))?;

    let mut evaluator = Evaluator::new(&config.host, started_at_ms);
    let mut policy_dir = config.policies.clone().map(PolicyDir::new);
    let (state_tx, mut state_rx) = mpsc::channel::<StateUpdate>(1024);
    let mut watchers = Watchers::new(state_tx, config.interval);
    let mut load_errors: u64 = 0;

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut policy_poll = tokio::time::interval(POLICY_POLL);
    let mut status_every = tokio::time::interval(STATUS_EVERY);
    let mut seq: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = policy_poll.tick() => {
                let Some(dir) = policy_dir.as_mut() else { continue };
                let Some(result) = dir.poll() else { continue };
                match result {
                    Ok(policies) => {
                        tracing::info!(count = policies.len(), dir = %dir.path().display(), "policies loaded");
                        evaluator.set_policies(policies);
                        watchers.follow(evaluator.watch_sets());
                        let (loaded, enabled) = counts(&evaluator);
                        link.update_status(|s| {
                            s.policies.loaded = loaded;
                            s.policies.enabled = enabled;
                            s.policies.load_error = None;
                        });
                    }
                    Err(e) => {
                        load_errors += 1;
                        tracing::error!("policy files rejected, previous policies stay in force: {e}");
                        let message = e.to_string();
                        link.update_status(|s| {
                            s.policies.load_error = Some(message);
                            s.policies.load_errors = load_errors;
                        });
                    }
                }
            }
            Some(update) = state_rx.recv() => {
                for event in evaluator.on_state(update, now_ms()) {
                    link.publish_event(&event);
                }
            }
            _ = status_every.tick() => {
                let stats = evaluator.stats();
                link.update_status(|s| {
                    s.policies.evaluations = stats.evaluations;
                    s.policies.last_evaluation_ms = stats.last_evaluation_ms;
                });
            }
            _ = ticker.tick() => {
                let textfile_dir = config.textfile_dir.clone();
                let (returned, samples) = tokio::task::spawn_blocking(move || {
                    let now = now_ms();
                    let mut samples = sampler.sample(now);
                    if let Some(dir) = textfile_dir {
                        samples.extend(crate::textfile::read_dir(&dir, now));
                    }
                    (sampler, samples)
                })
                .await
                .map_err(|e| AgentError::Sampler(e.to_string()))?;
                sampler = returned;
                for event in evaluator.on_samples(&samples, now_ms()) {
                    link.publish_event(&event);
                }
                seq += 1;
                let batch = MetricBatch {
                    host: config.host.clone(),
                    seq,
                    sent_at_ms: now_ms(),
                    labels: config.labels.clone(),
                    samples,
                };
                link.publish_metrics(&batch);
            }
        }
    }
    tracing::info!("stopping: publishing offline status");
    let stats = evaluator.stats();
    link.update_status(|s| {
        s.policies.evaluations = stats.evaluations;
        s.policies.last_evaluation_ms = stats.last_evaluation_ms;
    });
    link.close(Duration::from_secs(2)).await;
    Ok(())
}

fn counts(evaluator: &Evaluator) -> (u32, u32) {
    let policies = evaluator.policies();
    let loaded = u32::try_from(policies.len()).unwrap_or(u32::MAX);
    let enabled = u32::try_from(policies.iter().filter(|p| p.enabled).count()).unwrap_or(u32::MAX);
    (loaded, enabled)
}

/// The watchers and probes, started when the policies first need them.
struct Watchers {
    updates: mpsc::Sender<StateUpdate>,
    interval: Duration,
    units: Option<watch::Sender<Vec<String>>>,
    containers: Option<watch::Sender<Vec<String>>>,
    probes: Option<watch::Sender<ProbeSet>>,
}

impl Watchers {
    fn new(updates: mpsc::Sender<StateUpdate>, interval: Duration) -> Watchers {
        Watchers {
            updates,
            interval,
            units: None,
            containers: None,
            probes: None,
        }
    }

    /// Points the watchers at what the policies now need, starting any not yet running.
    fn follow(&mut self, sets: WatchSets) {
        if !sets.units.is_empty() || self.units.is_some() {
            let tx = self.units.get_or_insert_with(|| {
                let (tx, rx) = watch::channel(Vec::new());
                tokio::spawn(systemd::run(rx, self.updates.clone()));
                tx
            });
            tx.send_replace(sets.units);
        }
        if !sets.containers.is_empty() || self.containers.is_some() {
            let tx = self.containers.get_or_insert_with(|| {
                let (tx, rx) = watch::channel(Vec::new());
                tokio::spawn(docker::run(rx, self.updates.clone(), None));
                tx
            });
            tx.send_replace(sets.containers);
        }
        if sets.probes != ProbeSet::default() || self.probes.is_some() {
            let tx = self.probes.get_or_insert_with(|| {
                let (tx, rx) = watch::channel(ProbeSet::default());
                tokio::spawn(probes::run(rx, self.interval, self.updates.clone()));
                tx
            });
            tx.send_replace(sets.probes);
        }
    }
}
