//! `actions --follow`: new action transitions from the coordinator's event stream
//! (`GET /api/v1/events?kind=action`, Server-Sent Events). The stream is opened before the
//! listing is read, so nothing between the two is missed; after a lost connection it
//! resumes with `last_event_id`, so nothing is missed then either (the coordinator replays
//! what happened meanwhile, each event once).

use std::time::Duration;

use serde_json::Value;

use crate::api::{Client, CtlError};
use crate::routes::EVENTS;

/// The longest event (its `data:` lines) accepted; a longer one ends the stream with an
/// error rather than growing without bound.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// The longest wait before reconnecting after a lost stream.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Which transitions to print: the `actions` filters the stream cannot apply itself.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this host (also sent to the stream).
    pub host: Option<String>,
    /// Only transitions into this state.
    pub status: Option<String>,
    /// Only actions of this policy.
    pub policy: Option<String>,
    /// Only actions on this target.
    pub target: Option<String>,
}

impl Filter {
    /// Whether the feed entry `entry` (an action transition) passes.
    pub fn passes(&self, entry: &Value) -> bool {
        let data = &entry["data"];
        let is = |wanted: &Option<String>, actual: &Value| {
            wanted.as_deref().is_none_or(|w| actual.as_str() == Some(w))
        };
        entry["kind"] == "action"
            && is(&self.host, &entry["host"])
            && is(&self.status, &data["state"])
            && is(&self.policy, &data["policy"])
            && is(&self.target, &data["target"])
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, if sent.
    pub id: Option<String>,
    /// `event:` (`message` when absent).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into Server-Sent Events (the parts of the format the
/// coordinator uses: `id`, `event`, `data`, comments), bounded by [`MAX_EVENT_BYTES`].
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds `chunk`; the events it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut done = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.line.push(byte);
                if self.line.len() + self.current.data.len() > MAX_EVENT_BYTES {
                    return Err(format!(
                        "an event of more than {MAX_EVENT_BYTES} bytes in the stream"
                    ));
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line =
                String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
            if line.is_empty() {
                if self.has_data {
                    let mut event = std::mem::take(&mut self.current);
                    if event.event.is_empty() {
                        event.event = "message".into();
                    }
                    done.push(event);
                } else {
                    self.current = SseEvent::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "id" => self.current.id = Some(value),
                "event" => self.current.event = value,
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        Ok(done)
    }
}

/// A stream opened and waiting to be read.
pub struct Follow<'a> {
    client: &'a Client,
    filter: Filter,
    response: reqwest::Response,
    url: String,
    last_id: Option<String>,
}

impl<'a> Follow<'a> {
    /// Opens the action stream for `filter`.
    pub async fn open(client: &'a Client, filter: Filter) -> Result<Follow<'a>, CtlError> {
        let (url, response) = client.open_stream(EVENTS, &query(&filter, None)).await?;
        Ok(Follow {
            client,
            filter,
            response,
            url,
            last_id: None,
        })
    }

    /// Prints every transition that passes the filter with `print`, until the process is
    /// interrupted; reconnects after a lost stream. Returns only on an error the API
    /// answered with (a revoked token, …).
    pub async fn run(mut self, mut print: impl FnMut(&Value)) -> Result<(), CtlError> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut parser = SseParser::default();
            let lost = loop {
                match self.response.chunk().await {
                    Ok(Some(bytes)) => {
                        let events = match parser.feed(&bytes) {
                            Ok(events) => events,
                            Err(problem) => break problem,
                        };
                        for event in events {
                            if event.id.is_some() {
                                self.last_id = event.id.clone();
                            }
                            let Ok(entry) = serde_json::from_str::<Value>(&event.data) else {
                                eprintln!("vigilctl: skipped an event that is not JSON");
                                continue;
                            };
                            if self.filter.passes(&entry) {
                                print(&entry);
                            }
                        }
                        backoff = Duration::from_millis(500);
                    }
                    Ok(None) => break "the coordinator closed the stream".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            eprintln!(
                "vigilctl: {}: {lost}; reconnecting in {} ms",
                self.url,
                backoff.as_millis()
            );
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let opened = self
                    .client
                    .open_stream(EVENTS, &query(&self.filter, self.last_id.clone()))
                    .await;
                match opened {
                    Ok((url, response)) => {
                        self.url = url;
                        self.response = response;
                        break;
                    }
                    Err(e @ CtlError::Api { .. }) => return Err(e),
                    Err(e) => eprintln!("vigilctl: {e}; retrying"),
                }
            }
        }
    }
}

fn query(filter: &Filter, last_id: Option<String>) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("kind", Some("action".to_string())),
        ("host", filter.host.clone()),
        ("last_event_id", last_id),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let mut parser = SseParser::default();
        let stream = b": keep-alive\n\nid: 7\nevent: action\ndata: {\"a\":\ndata: 1}\n\r\nid: 8\ndata: x\n\n";
        let mut events = Vec::new();
        for chunk in stream.chunks(5) {
            events.extend(parser.feed(chunk).unwrap());
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("7".into()),
                    event: "action".into(),
                    data: "{\"a\":\n1}".into()
                },
                SseEvent {
                    id: Some("8".into()),
                    event: "message".into(),
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut parser = SseParser::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        assert!(parser.feed(b"data: ").is_ok());
        assert!(parser.feed(&big).is_err());
    }

    #[test]
    fn the_filter_looks_at_state_policy_target_and_host() {
        let entry = json!({"kind": "action", "host": "web-01",
            "data": {"state": "completed", "policy": null, "target": "nginx"}});
        assert!(Filter::default().passes(&entry));
        let status = |s: &str| Filter {
            status: Some(s.into()),
            ..Filter::default()
        };
        assert!(status("completed").passes(&entry));
        assert!(!status("failed").passes(&entry));
        let policy = Filter {
            policy: Some("p".into()),
            ..Filter::default()
        };
        assert!(!policy.passes(&entry));
        let host = Filter {
            host: Some("web-02".into()),
            ..Filter::default()
        };
        assert!(!host.passes(&entry));
        assert!(!Filter::default().passes(&json!({"kind": "host", "host": "web-01"})));
    }
}
