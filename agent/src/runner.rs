//! The agent's main loop: sample on every tick, publish the batch, until told to stop.

use std::future::Future;
use std::time::Duration;

use thiserror::Error;
use tokio::time::MissedTickBehavior;
use vigil_shared::time::now_ms;
use vigil_shared::wire::{AgentState, AgentStatus, MetricBatch};

use crate::config::AgentConfig;
use crate::link::Link;
use crate::sampler::HostSampler;

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
    let status = AgentStatus {
        host: config.host.clone(),
        state: AgentState::Online,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms,
        sent_at_ms: started_at_ms,
        interval_ms: u64::try_from(config.interval.as_millis()).unwrap_or(u64::MAX),
        labels: config.labels.clone(),
        bundle_version: None,
        bundle_hash: None,
        remediation_paused: false,
        detail: None,
        policies: Default::default(),
    };
    tracing::info!(
        host = %config.host,
        broker = %config.broker,
        interval = ?config.interval,
        "vigil-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let link = Link::connect(&config, status);
    // sysinfo reads /proc synchronously: keep it off the async workers.
    let mut sampler = tokio::task::spawn_blocking(HostSampler::new)
        .await
        .map_err(|e| AgentError::Sampler(e.to_string()))?
        .map_err(|e| AgentError::Sampler(format!("cannot read host information: {e}")))?;

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut seq: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                let (returned, samples) = tokio::task::spawn_blocking(move || {
                    let samples = sampler.sample(now_ms());
                    (sampler, samples)
                })
                .await
                .map_err(|e| AgentError::Sampler(e.to_string()))?;
                sampler = returned;
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
    link.close(Duration::from_secs(2)).await;
    Ok(())
}
