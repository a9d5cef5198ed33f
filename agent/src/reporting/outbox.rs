//! The durable outbox publisher: delivers the messages the agent must not lose (action
//! transitions, policy decisions) from the agent store to the broker, at least once.
//!
//! It uses its own MQTT connection so that it can tell which publish a PUBACK
//! acknowledges: on this connection, publishes go out in the order they were queued, so
//! the n-th `Outgoing::Publish` carries the n-th entry sent. An entry leaves the store only
//! when the broker has acknowledged it. After any connection error the client is rebuilt
//! and everything still in the store is sent again; the coordinator ignores what it
//! already has (every message carries a unique id).
//!
//! Entries are stored unsealed (topic and encoded message) and sealed when sent, so that
//! a resend after hours offline is as fresh as the coordinator's replay guard wants it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use vigil_shared::agent_auth::Sealer;
use vigil_shared::topics;

use crate::acting::store::{AgentStore, OutboxSignal};

/// Most unacknowledged publishes in flight.
const IN_FLIGHT: usize = 64;

/// Runs the publisher until `stop` turns true, sealing every entry with `sealer` as it
/// is sent.
pub async fn run(
    store: AgentStore,
    options: MqttOptions,
    sealer: Arc<Sealer>,
    signal: OutboxSignal,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let (client, mut eventloop) = AsyncClient::new(options.clone(), IN_FLIGHT * 2);
        let mut connected = false;
        let mut next_seq: u64 = 0;
        let mut sent: VecDeque<u64> = VecDeque::new();
        let mut by_pkid: HashMap<u16, u64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let result: Result<(), String> = loop {
            tokio::select! {
                _ = stop.changed() => {
                    // Give in-flight acknowledgements a moment, then go.
                    let _ = tokio::time::timeout(Duration::from_millis(300), async {
                        while !by_pkid.is_empty() || !sent.is_empty() {
                            match eventloop.poll().await {
                                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                                    if let Some(seq) = by_pkid.remove(&ack.pkid) {
                                        let _ = store.outbox_delete(&[seq]);
                                    }
                                }
                                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                                    if let Some(seq) = sent.pop_front() {
                                        by_pkid.insert(pkid, seq);
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    })
                    .await;
                    let _ = client.disconnect().await;
                    return;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        failures = 0;
                        next_seq = 0;
                        signal.wake();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(seq) = sent.pop_front() {
                            by_pkid.insert(pkid, seq);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = by_pkid.remove(&ack.pkid) {
                            if let Err(e) = store.outbox_delete(&[seq]) {
                                tracing::error!("outbox: cannot remove a delivered entry: {e}");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break Err(e.to_string()),
                },
                _ = signal.notified() => {}
                _ = tick.tick() => {}
            }
            if !connected {
                continue;
            }
            let room = IN_FLIGHT.saturating_sub(sent.len() + by_pkid.len());
            if room == 0 {
                continue;
            }
            match store.outbox_from(next_seq, room) {
                Ok(entries) => {
                    for entry in entries {
                        let Some((_, channel)) = topics::parse_agent(&entry.topic) else {
                            tracing::error!(
                                topic = %entry.topic,
                                "outbox: entry for a topic that is not an agent channel, dropped"
                            );
                            if let Err(e) = store.outbox_delete(&[entry.seq]) {
                                tracing::error!("outbox: cannot remove an entry: {e}");
                            }
                            next_seq = entry.seq + 1;
                            continue;
                        };
                        let payload = sealer.seal(channel, entry.payload);
                        if client
                            .try_publish(entry.topic, QoS::AtLeastOnce, false, payload)
                            .is_err()
                        {
                            break;
                        }
                        sent.push_back(entry.seq);
                        next_seq = entry.seq + 1;
                    }
                }
                Err(e) => tracing::error!("outbox: cannot read entries: {e}"),
            }
        };
        if let Err(e) = result {
            failures = failures.saturating_add(1);
            if failures == 1 || failures.is_power_of_two() {
                tracing::warn!(
                    failures,
                    "outbox lost the broker (messages stay queued on disk): {e}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(
            200 * u64::from(failures.clamp(1, 10)),
        ))
        .await;
    }
}
