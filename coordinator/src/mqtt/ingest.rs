//! MQTT ingest: subscribes to every agent's topics, decodes and checks each message, and
//! hands the good ones to the store writer.
//!
//! Every agent message is sealed with the agent's own key
//! ([`vigil_shared::agent_auth`]): the topic name is never trusted. Nothing an agent (or
//! anyone else) publishes can crash this loop: a payload that does not decode, speaks an
//! unknown protocol version, is not sealed by the enrolled key of the host in its topic
//! (unknown or revoked host, bad signature, stale — sealed more than 5 minutes from the
//! coordinator's clock, retained or not —, replayed), breaks a content rule (`invalid`),
//! carries a time outside 2000–2200 (`implausible_time`, see
//! [`vigil_shared::validate::timestamp`]), or
//! claims a host other than the one in its topic is logged with its topic, counted in
//! `vigil_mqtt_messages_rejected_total{channel,reason}`, and dropped. A redelivered
//! duplicate, and the last will of an earlier connection arriving after the agent
//! reconnected, are dropped quietly and counted in `vigil_mqtt_messages_duplicate_total`.
//!
//! The same MQTT connection carries the coordinator's commands to agents: see
//! [`super::publisher`], whose [`connect`](super::publisher::connect) makes the
//! connection that [`run`] drives.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::watch;
use vigil_shared::agent_auth::{self, ReplayGuard, SealedMessage};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{
    self, ActionEvent, AgentStatus, DecodeError, MetricBatch, PolicyEvent, WireMessage,
};

use super::batch_gaps::{BatchGaps, Sequence};
use super::publisher::Publisher;
use crate::events::mirror::MetricsTap;
use crate::security::agent_keys::AgentKeys;
use crate::store::{Source, Store, StoreWriter, Write};
use crate::telemetry::Telemetry;

/// The channels the coordinator listens to.
const CHANNELS: [AgentChannel; 4] = [
    AgentChannel::Metrics,
    AgentChannel::Status,
    AgentChannel::Actions,
    AgentChannel::Events,
];

/// Runs the subscriber until `stop` turns true. Reconnects on its own.
pub async fn run(
    publisher: Publisher,
    mut eventloop: EventLoop,
    store: Store,
    writer: StoreWriter,
    telemetry: Arc<Telemetry>,
    metrics_tap: Option<MetricsTap>,
    mut stop: watch::Receiver<bool>,
) {
    let Publisher {
        client, connects, ..
    } = publisher;
    let mut failures: u32 = 0;
    let mut gaps = BatchGaps::default();
    let mut gate = Gate {
        keys: AgentKeys::new(store),
        guard: ReplayGuard::default(),
    };
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!("ingest connected to broker; subscribing to agent topics");
                for channel in CHANNELS {
                    if let Err(e) = client
                        .subscribe(topics::all_agents(channel), QoS::AtLeastOnce)
                        .await
                    {
                        tracing::error!("cannot subscribe to {channel:?}: {e}");
                    }
                }
                connects.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                handle(
                    &publish,
                    &mut gate,
                    &writer,
                    &telemetry,
                    &mut gaps,
                    metrics_tap.as_ref(),
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(failures, "ingest lost the broker: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
            }
        }
    }
    let _ = client.disconnect().await;
}

/// Checks one message and queues what it carries for the store.
async fn handle(
    publish: &Publish,
    gate: &mut Gate,
    writer: &StoreWriter,
    telemetry: &Telemetry,
    gaps: &mut BatchGaps,
    metrics_tap: Option<&MetricsTap>,
) {
    let Some((host, channel)) = topics::parse_agent(&publish.topic) else {
        reject(
            telemetry,
            "unknown",
            "topic",
            &publish.topic,
            "not an agent topic",
        );
        return;
    };
    let received_ms = now_ms();
    if channel == AgentChannel::Commands {
        return;
    }
    let body = match gate.open(host, channel, publish, received_ms) {
        Ok(body) => body,
        Err(Rejection::Seal(
            agent_auth::Refusal::Duplicate { .. } | agent_auth::Refusal::SupersededWill { .. },
        )) => {
            telemetry
                .mqtt_duplicates
                .with_label_values(&[channel.as_str()])
                .inc();
            return;
        }
        Err(rejection) => return rejection.report(telemetry, channel, &publish.topic),
    };
    let write = match channel {
        AgentChannel::Metrics => match checked::<MetricBatch>(host, &body) {
            Ok(batch) => {
                note_sequence(gaps, telemetry, &batch);
                if let Some(tap) = metrics_tap {
                    tap.offer(&batch, received_ms);
                }
                Write::Samples {
                    host: batch.host,
                    labels: batch.labels,
                    samples: batch.samples,
                    source: Source::Mqtt,
                    received_ms,
                    reply: None,
                }
            }
            Err(rejection) => return rejection.report(telemetry, channel, &publish.topic),
        },
        AgentChannel::Status => match checked::<AgentStatus>(host, &body) {
            Ok(status) => Write::Status {
                status,
                received_ms,
            },
            Err(rejection) => return rejection.report(telemetry, channel, &publish.topic),
        },
        AgentChannel::Actions => match checked::<ActionEvent>(host, &body) {
            Ok(event) => Write::Action { event },
            Err(rejection) => return rejection.report(telemetry, channel, &publish.topic),
        },
        AgentChannel::Events => match checked::<PolicyEvent>(host, &body) {
            Ok(event) => Write::Event { event },
            Err(rejection) => return rejection.report(telemetry, channel, &publish.topic),
        },
        AgentChannel::Commands => return,
    };
    telemetry
        .mqtt_messages
        .with_label_values(&[channel.as_str()])
        .inc();
    if let Err(e) = writer.send(write).await {
        telemetry
            .store_errors
            .with_label_values(&[e.reason()])
            .inc();
        tracing::error!(topic = %publish.topic, "cannot queue message for the store: {e}");
    }
}

/// Counts the batches missing before `batch`, or `batch` as late (see [`BatchGaps`]).
fn note_sequence(gaps: &mut BatchGaps, telemetry: &Telemetry, batch: &MetricBatch) {
    match gaps.observe(&batch.host, batch.seq) {
        Sequence::Gap(missing) => {
            let before = telemetry.batches_missing.get();
            telemetry.batches_missing.inc_by(missing);
            // Logged when the total passes 1, 2, 4, 8, …: loss under overload must not
            // also flood the log.
            let total = before + missing;
            if before == 0 || total.ilog2() > before.ilog2() {
                tracing::warn!(
                    host = %batch.host,
                    seq = batch.seq,
                    missing,
                    total_missing = total,
                    "metric batches lost on the way from this agent \
                     (vigil_metric_batches_missing_total)"
                );
            }
        }
        Sequence::Late => telemetry.batches_late.inc(),
        Sequence::InOrder | Sequence::Restarted => {}
    }
}

/// Checks seals: the enrolled agents' keys and what each has already sent.
struct Gate {
    keys: AgentKeys,
    guard: ReplayGuard,
}

impl Gate {
    /// Opens a sealed payload from `host`'s `channel` topic and returns the message inside
    /// (still encoded), or why it is refused.
    fn open(
        &mut self,
        host: &str,
        channel: AgentChannel,
        publish: &Publish,
        now_ms: i64,
    ) -> Result<Vec<u8>, Rejection> {
        let sealed = wire::decode::<SealedMessage>(&publish.payload).map_err(Rejection::Decode)?;
        let seal = self
            .keys
            .check(host, |key| agent_auth::open(&sealed, key, host, channel))
            .map_err(Rejection::Seal)?;
        self.guard
            .admit(&seal, channel, publish.retain, now_ms)
            .map_err(Rejection::Seal)?;
        Ok(seal.body)
    }
}

/// Why a message was refused.
enum Rejection {
    Decode(DecodeError),
    Seal(agent_auth::Refusal),
    HostMismatch { claimed: String },
}

impl Rejection {
    fn report(self, telemetry: &Telemetry, channel: AgentChannel, topic: &str) {
        match self {
            Rejection::Decode(e) => reject(
                telemetry,
                channel.as_str(),
                e.reason(),
                topic,
                &e.to_string(),
            ),
            Rejection::Seal(refusal) => reject(
                telemetry,
                channel.as_str(),
                refusal.reason(),
                topic,
                &refusal.to_string(),
            ),
            Rejection::HostMismatch { claimed } => reject(
                telemetry,
                channel.as_str(),
                "host_mismatch",
                topic,
                &format!("payload speaks for host `{claimed}`"),
            ),
        }
    }
}

/// Decodes a message and checks that it speaks for the host named in its topic.
fn checked<T: WireMessage>(topic_host: &str, payload: &[u8]) -> Result<T, Rejection> {
    let message = wire::decode::<T>(payload).map_err(Rejection::Decode)?;
    if message.host() != topic_host {
        return Err(Rejection::HostMismatch {
            claimed: message.host().to_string(),
        });
    }
    Ok(message)
}

fn reject(telemetry: &Telemetry, channel: &str, reason: &str, topic: &str, message: &str) {
    telemetry
        .mqtt_rejected
        .with_label_values(&[channel, reason])
        .inc();
    tracing::warn!(%topic, reason, "rejected MQTT message: {message}");
}
