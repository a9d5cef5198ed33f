//! Acknowledgements to agents of what the store holds ([`vigil_shared::delivery`]).
//!
//! After every commit that touched agent streams, the store writer says how far each is
//! stored ([`Stored`]). This task gathers those notes for a moment ([`GATHER`]), keeps
//! the latest per host and stream, and publishes one [`DeliveryAck`] per host on
//! `vigil/v1/agents/{host}/acks` (QoS 0: each is superseded by the next), signed with
//! the coordinator's key. An agent forgets
//! queued messages only when such an acknowledgement covers them.
//!
//! They go out on a connection of their own, so that a fleet's acknowledgements never
//! crowd the ingest connection's queue (where the broker's deliveries are acknowledged).
//! An acknowledgement that cannot be queued (the connection is down or busy) is dropped:
//! the agent sends the messages again, the store finds them already stored, and a new
//! acknowledgement follows.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};
use vigil_shared::bundle::BundleKeys;
use vigil_shared::delivery::{DeliveryAck, StreamAck};
use vigil_shared::signed;
use vigil_shared::topics::{self, AgentChannel};

use crate::store::writer::Stored;

/// How long notes are gathered before they are sent: at most four acknowledgements a
/// second per host (each is a signature).
const GATHER: Duration = Duration::from_millis(250);

/// How many notes the writer may leave waiting for this task.
pub const NOTES_QUEUE: usize = 4096;

/// Sends acknowledgements for the writer's notes, signed with `keys`, on a connection
/// made with `options`, until `stop` turns true or the writer is gone.
pub async fn run(
    options: MqttOptions,
    keys: std::sync::Arc<BundleKeys>,
    mut notes: mpsc::Receiver<Vec<Stored>>,
    mut stop: watch::Receiver<bool>,
) {
    let (client, eventloop) = vigil_shared::mqtt::client(options, 8192);
    let driver = tokio::spawn(drive(eventloop, stop.clone()));
    send(&client, &keys, &mut notes, &mut stop).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
}

/// Polls the connection (reconnecting after errors) until `stop` turns true.
async fn drive(mut eventloop: EventLoop, mut stop: watch::Receiver<bool>) {
    let mut reconnect = crate::reconnect::Reconnect::new("acknowledgement connection");
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            event = eventloop.poll() => match event {
                Ok(_) => reconnect.connected(),
                Err(e) => reconnect.failed(&e).await,
            }
        }
    }
}

async fn send(
    client: &AsyncClient,
    keys: &BundleKeys,
    notes: &mut mpsc::Receiver<Vec<Stored>>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut latest: HashMap<String, Vec<StreamAck>> = HashMap::new();
    loop {
        let first = tokio::select! {
            _ = stop.changed() => return,
            first = notes.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        note(&mut latest, first);
        let deadline = tokio::time::Instant::now() + GATHER;
        while let Ok(Some(more)) = tokio::time::timeout_at(deadline, notes.recv()).await {
            note(&mut latest, more);
        }
        let now_ms = vigil_shared::time::now_ms();
        for (host, streams) in latest.drain() {
            let ack = DeliveryAck {
                host,
                coordinator_ms: now_ms,
                streams,
            };
            let topic = topics::agent(&ack.host, AgentChannel::Acks);
            let payload = signed::sign(keys, &ack);
            if let Err(e) = client.try_publish(topic, QoS::AtMostOnce, false, payload) {
                tracing::debug!(host = %ack.host, "acknowledgement dropped: {e}");
            }
        }
    }
}

/// Keeps the newest position per host and stream.
fn note(latest: &mut HashMap<String, Vec<StreamAck>>, stored: Vec<Stored>) {
    for s in stored {
        let ack = StreamAck {
            stream: s.stream,
            epoch: s.epoch,
            upto: s.upto,
        };
        let streams = latest.entry(s.host).or_default();
        match streams.iter_mut().find(|a| a.stream == ack.stream) {
            Some(known) => *known = ack,
            None => streams.push(ack),
        }
    }
}
