//! MQTT clients of a test's broker: logins (an integration's, with its coordinator's admin
//! token, on the embedded broker), connections that wait for the broker's answer, and
//! subscriptions forwarded to a channel.

use std::sync::Mutex;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::KitError;

/// The port of `mqtt://127.0.0.1:PORT`.
pub fn broker_port(broker: &str) -> u16 {
    broker
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("broker port")
}

/// Admin tokens by embedded broker URL.
static BROKER_TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Remembers `token` as the admin token of the coordinator whose embedded broker is
/// `broker`.
pub(crate) fn register_broker_token(broker: &str, token: &str) {
    let mut tokens = BROKER_TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.push((broker.to_string(), token.to_string()));
}

/// The admin token of the coordinator whose embedded broker is `broker`.
pub fn broker_token(broker: &str) -> Option<String> {
    let tokens = BROKER_TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens
        .iter()
        .find(|(b, _)| b == broker)
        .map(|(_, t)| t.clone())
}

/// MQTT options for an integration client of `broker`: on a coordinator's embedded
/// broker it logs in as `api` with the coordinator's admin token (registered when the
/// kit started the coordinator); on Mosquitto, anonymously.
pub fn client_options(broker: &str, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker_port(broker));
    if let Some(token) = broker_token(broker) {
        options.set_credentials("api", token);
    }
    options.set_max_packet_size(2 << 20, 2 << 20);
    options
}

/// Connects with `options` and waits up to 10 s for the broker's answer: the client and
/// its event loop (poll it for the connection to go on) once the broker accepts, or why
/// not (the broker's refusal, such as `NotAuthorized`, a connection error, or no answer).
pub async fn login(options: MqttOptions) -> Result<(AsyncClient, EventLoop), KitError> {
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(KitError::Failed(e.to_string())),
            }
        }
    })
    .await
    .map_err(|_| KitError::Failed("no answer from the broker".to_string()))??;
    if answer.code != ConnectReturnCode::Success {
        return Err(KitError::Failed(format!("{:?}", answer.code)));
    }
    Ok((client, eventloop))
}

/// [`login`], then the event loop polled in the background until the connection fails.
pub async fn connected(options: MqttOptions) -> Result<AsyncClient, KitError> {
    let (client, mut eventloop) = login(options).await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    Ok(client)
}

/// A raw MQTT client for the bundle tests: connects to `broker` (`mqtt://127.0.0.1:PORT`)
/// as an integration named `id` (see [`client_options`]), subscribes to `filter` (waiting
/// for the SUBACK), and forwards every incoming publish as `(topic, payload)`.
pub async fn bundle_subscriber(
    broker: &str,
    id: &str,
    filter: &str,
) -> (AsyncClient, UnboundedReceiver<(String, Vec<u8>)>) {
    let mut options = client_options(broker, id);
    options.set_keep_alive(Duration::from_secs(30));
    subscriber(options, filter).await
}

/// Connects with `options`, subscribes to `filter` (waiting up to 60 s for the SUBACK),
/// and forwards every incoming publish as `(topic, payload)`; reconnects after errors.
pub async fn subscriber(
    options: MqttOptions,
    filter: &str,
) -> (AsyncClient, UnboundedReceiver<(String, Vec<u8>)>) {
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
    let mut subacked_tx = Some(subacked_tx);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subacked_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect)) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), subacked)
        .await
        .expect("SUBACK in time")
        .expect("event loop alive");
    (client, rx)
}
