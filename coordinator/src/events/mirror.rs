//! JSON topics for integrations: the coordinator republishes what it validated as JSON
//! under `vigil/v1/json/{stream}/{host}`, so that Telegraf, Node-RED, Home Assistant or a
//! shell with `mosquitto_sub` never need to decode postcard.
//!
//! | stream | what | default QoS | retained |
//! | --- | --- | --- | --- |
//! | `metrics` | every metric batch an agent sent (MQTT) | 0 | no |
//! | `violations` | every policy decision stored | 1 | no |
//! | `actions` | every action transition stored | 1 | no |
//! | `hosts` | a host going online, offline or silent | 1 | yes |
//! | `bundles` | a host applying a bundle version | 1 | no |
//! | `drift` | a host's bundle going out of sync with the published one, or back | 1 | yes |
//!
//! Every message has `version` (the shape's version, [`crate::events::json::JSON_VERSION`]),
//! `kind`, `host`, `timestamp` and `data`; feed messages also carry `seq`, the id of the
//! same event on `GET /api/v1/events`. JSON Schemas: `schemas/json/` in the repository.
//! The mirror has its own MQTT connection, so a slow subscriber never slows ingest:
//! when it falls behind, messages are dropped and counted in
//! `vigil_json_mirror_dropped_total{stream}`. On the embedded broker, the `metrics`
//! stream at QoS 0 is made only while a connection subscribes to it
//! ([`crate::events::audience`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use vigil_shared::topics;
use vigil_shared::wire::MetricBatch;

use crate::events::audience::Audience;
use crate::events::json;
use crate::store::feed::{Feed, FeedEntry, FeedEvent};
use crate::telemetry::Telemetry;

/// Metric batches waiting for the mirror before new ones are dropped.
const METRICS_QUEUE: usize = 4096;

/// One mirrored stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    /// Metric batches.
    Metrics,
    /// Policy decisions.
    Violations,
    /// Action transitions.
    Actions,
    /// Hosts online/offline (retained).
    Hosts,
    /// Bundles applied.
    Bundles,
    /// Drift changes (retained).
    Drift,
}

/// Shows `vigil_json_mirror_dropped_total` at 0 for every stream from the start, so
/// dashboards see the series before the first drop.
pub fn register_metrics(telemetry: &Telemetry) {
    for stream in Stream::ALL {
        telemetry
            .json_mirror_dropped
            .with_label_values(&[stream.as_str()]);
    }
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 6] = [
        Stream::Metrics,
        Stream::Violations,
        Stream::Actions,
        Stream::Hosts,
        Stream::Bundles,
        Stream::Drift,
    ];

    /// The name in topics and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Metrics => "metrics",
            Stream::Violations => "violations",
            Stream::Actions => "actions",
            Stream::Hosts => "hosts",
            Stream::Bundles => "bundles",
            Stream::Drift => "drift",
        }
    }

    /// The stream a feed entry goes to.
    fn of(entry: &FeedEntry) -> Stream {
        match entry.event {
            FeedEvent::Violation(_) => Stream::Violations,
            FeedEvent::Action(_) => Stream::Actions,
            FeedEvent::Host { .. } | FeedEvent::Offline { .. } | FeedEvent::Silence { .. } => {
                Stream::Hosts
            }
            FeedEvent::Bundle { .. } => Stream::Bundles,
            FeedEvent::Drift { .. } => Stream::Drift,
        }
    }

    /// The last topic levels of a feed entry: its host, and for drift its group too
    /// (the topic is retained, so it holds each (host, group)'s current drift state).
    fn topic_key(entry: &FeedEntry) -> String {
        match &entry.event {
            FeedEvent::Drift { host, group, .. } => format!("{host}/{group}"),
            event => event.host().to_string(),
        }
    }

    fn default_qos(self) -> QoS {
        match self {
            Stream::Metrics => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        }
    }
}

/// Which streams are mirrored, at which QoS: `off`, `all`, or a list such as
/// `metrics=0,actions=1,hosts` (a stream without `=N` gets its default QoS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSettings {
    /// The mirrored streams and their QoS.
    pub streams: BTreeMap<Stream, QoS>,
}

impl Default for MirrorSettings {
    fn default() -> Self {
        MirrorSettings {
            streams: Stream::ALL.iter().map(|s| (*s, s.default_qos())).collect(),
        }
    }
}

impl FromStr for MirrorSettings {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "all" => return Ok(MirrorSettings::default()),
            "off" | "none" | "" => {
                return Ok(MirrorSettings {
                    streams: BTreeMap::new(),
                })
            }
            _ => {}
        }
        let mut streams = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, qos) = match item.split_once('=') {
                Some((name, qos)) => (name.trim(), Some(qos.trim())),
                None => (item, None),
            };
            let stream = Stream::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| {
                    format!(
                        "`{name}` is not a stream: use off, all, or a list of metrics, \
                         violations, actions, hosts, bundles, drift (each with an optional =0 \
                         or =1)"
                    )
                })?;
            let qos = match qos {
                None => stream.default_qos(),
                Some("0") => QoS::AtMostOnce,
                Some("1") => QoS::AtLeastOnce,
                Some(other) => {
                    return Err(format!("QoS `{other}` of `{name}` must be 0 or 1"));
                }
            };
            streams.insert(stream, qos);
        }
        Ok(MirrorSettings { streams })
    }
}

impl fmt::Display for MirrorSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.streams.is_empty() {
            return f.write_str("off");
        }
        let items: Vec<String> = self
            .streams
            .iter()
            .map(|(s, q)| format!("{}={}", s.as_str(), *q as u8))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// Where ingest hands metric batches to the mirror (without waiting).
#[derive(Clone)]
pub struct MetricsTap {
    tx: mpsc::Sender<(MetricBatch, i64)>,
    telemetry: Arc<Telemetry>,
    /// Who listens, when the stream is made only for listeners.
    audience: Option<Audience>,
}

impl MetricsTap {
    /// Offers a validated batch received at `received_ms`; dropped (and counted) when
    /// the mirror is behind, let go when nobody listens.
    pub fn offer(&self, batch: MetricBatch, received_ms: i64) {
        if self.audience.as_ref().is_some_and(|a| !a.listening()) {
            return;
        }
        if self.tx.try_send((batch, received_ms)).is_err() {
            self.telemetry
                .json_mirror_dropped
                .with_label_values(&[Stream::Metrics.as_str()])
                .inc();
        }
    }
}

/// A metric batch as JSON (see [`crate::events::json::metrics`]).
pub fn metrics_json(batch: &MetricBatch, received_ms: i64) -> Vec<u8> {
    to_bytes(&json::metrics(batch, received_ms))
}

/// The JSON text of a typed shape (the shapes hold only strings, numbers and maps: they
/// always serialize).
fn to_bytes<T: serde::Serialize>(shape: &T) -> Vec<u8> {
    serde_json::to_vec(shape).unwrap_or_default()
}

/// Starts the mirror on its own connection (`options`) if any stream is on; returns the
/// tap ingest feeds metric batches into (when `metrics` is mirrored). With an
/// `audience` (the embedded broker's), `metrics` at QoS 0 is made only while it listens.
pub fn start(
    options: MqttOptions,
    settings: MirrorSettings,
    feed: Feed,
    telemetry: Arc<Telemetry>,
    audience: Option<Audience>,
    stop: watch::Receiver<bool>,
) -> (Option<MetricsTap>, Vec<tokio::task::JoinHandle<()>>) {
    if settings.streams.is_empty() {
        return (None, Vec::new());
    }
    let (client, eventloop) = vigil_shared::mqtt::client(options, 1024);
    let mut tasks = vec![tokio::spawn(drive(eventloop, stop.clone()))];
    let tap = settings.streams.get(&Stream::Metrics).map(|qos| {
        let (tx, rx) = mpsc::channel(METRICS_QUEUE);
        tasks.push(tokio::spawn(mirror_metrics(
            rx,
            client.clone(),
            *qos,
            telemetry.clone(),
            stop.clone(),
        )));
        MetricsTap {
            tx,
            telemetry: telemetry.clone(),
            audience: audience.filter(|_| *qos == QoS::AtMostOnce),
        }
    });
    let feed_streams: BTreeMap<Stream, QoS> = settings
        .streams
        .into_iter()
        .filter(|(s, _)| *s != Stream::Metrics)
        .collect();
    if !feed_streams.is_empty() {
        tasks.push(tokio::spawn(mirror_feed(
            feed,
            feed_streams,
            client,
            telemetry,
            stop,
        )));
    }
    (tap, tasks)
}

/// Keeps the mirror's connection going (rumqttc reconnects when polled again).
async fn drive(mut eventloop: EventLoop, mut stop: watch::Receiver<bool>) {
    let mut reconnect = crate::reconnect::Reconnect::new("JSON mirror");
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(_) => reconnect.connected(),
                Err(e) => reconnect.failed(&e).await,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Publishes `body` on `vigil/v1/json/{stream}/{key}` and counts it.
async fn publish(
    client: &AsyncClient,
    telemetry: &Telemetry,
    stream: Stream,
    key: &str,
    qos: QoS,
    body: Vec<u8>,
) {
    // Retained streams say a current state: a host's online state, a drift state.
    let topic = topics::json(stream.as_str(), key);
    let retain = matches!(stream, Stream::Hosts | Stream::Drift);
    match client.publish(topic, qos, retain, body).await {
        Ok(()) => telemetry
            .json_mirror_messages
            .with_label_values(&[stream.as_str()])
            .inc(),
        Err(e) => {
            telemetry
                .json_mirror_dropped
                .with_label_values(&[stream.as_str()])
                .inc();
            tracing::debug!("JSON mirror cannot queue a message: {e}");
        }
    }
}

async fn mirror_metrics(
    mut rx: mpsc::Receiver<(MetricBatch, i64)>,
    client: AsyncClient,
    qos: QoS,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (batch, received_ms) = tokio::select! {
            next = rx.recv() => match next {
                Some(item) => item,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let body = metrics_json(&batch, received_ms);
        publish(&client, &telemetry, Stream::Metrics, &batch.host, qos, body).await;
    }
}

async fn mirror_feed(
    feed: Feed,
    streams: BTreeMap<Stream, QoS>,
    client: AsyncClient,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut live = feed.subscribe();
    loop {
        let entry = tokio::select! {
            next = live.recv() => match next {
                Ok(entry) => entry,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "JSON mirror fell behind the event feed; dropped events");
                    telemetry
                        .json_mirror_dropped
                        .with_label_values(&["feed"])
                        .inc_by(missed);
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        };
        let stream = Stream::of(&entry);
        if let Some(qos) = streams.get(&stream) {
            publish(
                &client,
                &telemetry,
                stream,
                &Stream::topic_key(&entry),
                *qos,
                to_bytes(&json::entry(&entry)),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_counters_exist_for_every_stream_from_the_start() {
        let telemetry = Telemetry::new();
        register_metrics(&telemetry);
        let text = telemetry.render();
        for stream in Stream::ALL {
            let series = format!(
                r#"vigil_json_mirror_dropped_total{{stream="{}"}} 0"#,
                stream.as_str()
            );
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing:\n{text}"
            );
        }
    }

    #[test]
    fn settings_parse_lists_defaults_and_off() {
        assert_eq!(
            "all".parse::<MirrorSettings>().unwrap(),
            MirrorSettings::default()
        );
        assert!("off".parse::<MirrorSettings>().unwrap().streams.is_empty());
        let s: MirrorSettings = "actions=0, hosts".parse().unwrap();
        assert_eq!(s.streams.len(), 2);
        assert_eq!(s.streams[&Stream::Actions], QoS::AtMostOnce);
        assert_eq!(s.streams[&Stream::Hosts], QoS::AtLeastOnce);
        assert_eq!(s.to_string(), "actions=0,hosts=1");
        let e = "metric".parse::<MirrorSettings>().unwrap_err();
        assert!(e.contains("`metric`"), "{e}");
        let e = "actions=2".parse::<MirrorSettings>().unwrap_err();
        assert!(e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn feed_entries_go_to_their_stream_and_topic() {
        let entry = |event| FeedEntry {
            seq: 1,
            stored_ms: 0,
            at_ms: 0,
            event,
        };
        let drift = entry(FeedEvent::Drift {
            host: "web-01".into(),
            group: "web".into(),
            desired_version: Some(2),
            applied_version: Some(1),
            in_sync: false,
        });
        assert_eq!(Stream::of(&drift), Stream::Drift);
        assert_eq!(Stream::topic_key(&drift), "web-01/web");
        let bundle = entry(FeedEvent::Bundle {
            host: "web-01".into(),
            group: "web".into(),
            version: 2,
            hash: "ab".into(),
        });
        assert_eq!(Stream::of(&bundle), Stream::Bundles);
        assert_eq!(Stream::topic_key(&bundle), "web-01");
    }

    #[test]
    fn metric_batches_render_with_version_and_samples() {
        let batch = MetricBatch {
            host: "web-01".into(),
            seq: 4,
            sent_at_ms: 0,
            labels: vec![("role".into(), "web".into())],
            samples: vec![vigil_shared::wire::Sample {
                name: "cpu_percent".into(),
                value: 12.5,
                ts_ms: 1_700_000_000_000,
                tags: vec![("core".into(), "0".into())],
            }],
        };
        let json: serde_json::Value =
            serde_json::from_slice(&metrics_json(&batch, 1_700_000_000_100)).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["kind"], "metrics");
        assert_eq!(json["data"]["labels"]["role"], "web");
        assert_eq!(json["data"]["samples"][0]["value"], 12.5);
        assert_eq!(json["data"]["samples"][0]["tags"]["core"], "0");
    }

    #[test]
    fn metric_batches_keep_their_key_order_and_null_for_non_finite_values() {
        let sample = |value: f64, tags: Vec<(String, String)>| vigil_shared::wire::Sample {
            name: "load1".into(),
            value,
            ts_ms: 1_700_000_000_000,
            tags,
        };
        let batch = MetricBatch {
            host: "db-1".into(),
            seq: 9,
            sent_at_ms: 0,
            labels: vec![("zone".into(), "b".into()), ("role".into(), "db".into())],
            samples: vec![
                sample(f64::NAN, vec![]),
                sample(
                    0.25,
                    vec![
                        ("b".into(), "1".into()),
                        ("a".into(), "2".into()),
                        ("b".into(), "3".into()),
                    ],
                ),
            ],
        };
        let text = String::from_utf8(metrics_json(&batch, 1_700_000_000_100)).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"data":{"labels":{"role":"db","zone":"b"},"samples":["#,
                r#"{"name":"load1","tags":{},"timestamp":"2023-11-14T22:13:20.000Z","value":null},"#,
                r#"{"name":"load1","tags":{"a":"2","b":"3"},"timestamp":"2023-11-14T22:13:20.000Z","value":0.25}"#,
                r#"],"seq":9},"host":"db-1","kind":"metrics","timestamp":"2023-11-14T22:13:20.100Z","version":1}"#
            )
        );
    }
}
