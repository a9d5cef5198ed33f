//! The deadman's optional action: every host silence event (going silent, and reporting
//! again) POSTed as JSON — the event feed's own form, as SSE and the JSON topics carry it
//! — to the URL of `--silent-webhook`.
//!
//! It never slows ingest or the store: one task picks the silence events off the feed's
//! broadcast into a small queue, another POSTs them one at a time, each within
//! [`TIMEOUT`]. When the queue is full (a slow or dead receiver) events are dropped.
//! Outcomes are counted in `vigil_deadman_webhooks_total{result}` (`sent`, `failed`,
//! `dropped`) and failures logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

use crate::events::json::entry_json;
use crate::store::feed::{Feed, FeedEntry, FeedEvent};
use crate::telemetry::Telemetry;

/// How long one POST may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Events waiting for the poster before new ones are dropped.
const QUEUE: usize = 64;

/// Checks a `--silent-webhook` URL: `http://` or `https://` with a host.
pub fn check_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    Ok(url.to_string())
}

/// Starts the webhook's two tasks; they end with `stop`.
pub(crate) fn start(
    url: String,
    feed: Feed,
    telemetry: Arc<Telemetry>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    vec![
        tokio::spawn(pick(feed, tx, telemetry.clone(), stop.clone())),
        tokio::spawn(post_all(url, rx, telemetry, stop)),
    ]
}

/// Forwards the feed's silence events to the poster's queue.
async fn pick(
    feed: Feed,
    queue: mpsc::Sender<Arc<FeedEntry>>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut live = feed.subscribe();
    loop {
        let entry = tokio::select! {
            _ = stop.changed() => return,
            next = live.recv() => match next {
                Ok(entry) => entry,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "silence webhook fell behind the event feed; some events may be lost");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        if !matches!(entry.event, FeedEvent::Silence { .. }) {
            continue;
        }
        if queue.try_send(entry).is_err() {
            telemetry
                .deadman_webhooks
                .with_label_values(&["dropped"])
                .inc();
            tracing::warn!("silence webhook queue is full; dropped an event");
        }
    }
}

/// POSTs each queued event.
async fn post_all(
    url: String,
    mut queue: mpsc::Receiver<Arc<FeedEntry>>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("vigil-coordinator/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("silence webhook disabled: cannot make an HTTP client: {e}");
            return;
        }
    };
    loop {
        let entry = tokio::select! {
            _ = stop.changed() => return,
            next = queue.recv() => match next {
                Some(entry) => entry,
                None => return,
            },
        };
        let result = client.post(&url).json(&entry_json(&entry)).send().await;
        let outcome = match result {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            // (Without the URL, which may carry a token.)
            Err(e) => Err(e.without_url().to_string()),
        };
        match outcome {
            Ok(()) => telemetry
                .deadman_webhooks
                .with_label_values(&["sent"])
                .inc(),
            Err(why) => {
                telemetry
                    .deadman_webhooks
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(host = entry.event.host(), "silence webhook failed: {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_pass() {
        assert_eq!(
            check_url("https://hooks.example/x?y=1").unwrap(),
            "https://hooks.example/x?y=1"
        );
        assert!(check_url("http://127.0.0.1:9/").is_ok());
        for bad in [
            "",
            "hooks.example",
            "ftp://x/",
            "file:///etc/passwd",
            "http://",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
