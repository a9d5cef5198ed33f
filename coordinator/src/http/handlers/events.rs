//! `GET /api/v1/events`: the event feed ([`crate::store::feed`]) as Server-Sent Events — policy
//! violations, action transitions, hosts going online/offline, bundles applied, drift.
//!
//! Each SSE event has `id:` = the feed sequence number, `event:` = the kind, and `data:` =
//! the entry's JSON. Filters: `host=a,b` and `kind=violation,action,host,bundle,drift`. A client
//! that reconnects with `Last-Event-ID: N` (browsers' `EventSource` does it by itself; or
//! `?last_event_id=N`) first gets every stored entry after N, then live ones, each once.
//! Without it, the stream starts with what happens next.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::broadcast::{self, error::RecvError};
use warp::reply::{Reply, Response};

use crate::http::error::ApiError;
use crate::http::Api;
use crate::store::feed::MAX_READ;
use crate::store::feed::{FeedEntry, KINDS};
use crate::store::Store;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which entries a client wants.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these hosts (empty: all).
    pub hosts: HashSet<String>,
    /// Only these kinds (empty: all).
    pub kinds: HashSet<&'static str>,
}

impl EventFilter {
    /// Reads `host` and `kind` from the query string.
    pub fn parse(params: &HashMap<String, String>) -> Result<EventFilter, ApiError> {
        let list = |name: &str| {
            params
                .get(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let mut kinds = HashSet::new();
        for kind in list("kind") {
            let known = KINDS.iter().find(|k| **k == kind).ok_or_else(|| {
                ApiError::bad_request(format!("kind `{kind}` is not one of {}", KINDS.join(", ")))
            })?;
            kinds.insert(*known);
        }
        Ok(EventFilter {
            hosts: list("host").into_iter().collect(),
            kinds,
        })
    }

    /// Whether `entry` passes.
    pub fn matches(&self, entry: &FeedEntry) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(entry.event.host()))
            && (self.kinds.is_empty() || self.kinds.contains(entry.event.kind()))
    }
}

/// Where one client's stream is: the last sequence number it was given (or skipped), the
/// stored entries still to send, and the live subscription.
struct Cursor {
    store: Store,
    live: broadcast::Receiver<Arc<FeedEntry>>,
    last: u64,
    backlog: VecDeque<FeedEntry>,
    read_store: bool,
    filter: EventFilter,
}

impl Cursor {
    /// The next entry for this client, or `None` when the feed ends (shutdown) or the
    /// store cannot be read.
    async fn next(&mut self) -> Option<FeedEntry> {
        loop {
            if let Some(entry) = self.backlog.pop_front() {
                if let Some(entry) = self.take(entry) {
                    return Some(entry);
                }
                continue;
            }
            if self.read_store {
                let (store, after) = (self.store.clone(), self.last);
                let read =
                    tokio::task::spawn_blocking(move || store.feed_after(after, MAX_READ)).await;
                match read {
                    Ok(Ok(entries)) if entries.is_empty() => self.read_store = false,
                    Ok(Ok(entries)) => self.backlog.extend(entries),
                    Ok(Err(e)) => {
                        tracing::error!("event stream cannot read the feed: {e}");
                        return None;
                    }
                    Err(e) => {
                        tracing::error!("event stream read task failed: {e}");
                        return None;
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(entry) if entry.seq <= self.last => {}
                Ok(entry) if entry.seq == self.last.saturating_add(1) => {
                    if let Some(entry) = self.take((*entry).clone()) {
                        return Some(entry);
                    }
                }
                // Something between: read it from the store, in order.
                Ok(_) | Err(RecvError::Lagged(_)) => self.read_store = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Moves past `entry`; returns it if the client wants it.
    fn take(&mut self, entry: FeedEntry) -> Option<FeedEntry> {
        if entry.seq <= self.last {
            return None;
        }
        self.last = entry.seq;
        self.filter.matches(&entry).then_some(entry)
    }
}

/// The `Last-Event-ID` header, if sent (bytes that are not text are kept as text that is
/// no event id, so the request is refused as any bad id is).
pub fn last_event_id(headers: &warp::http::HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Handles `GET /api/v1/events`.
pub async fn stream(
    params: HashMap<String, String>,
    last_event_id: Option<String>,
    api: Arc<Api>,
) -> Response {
    let filter = match EventFilter::parse(&params) {
        Ok(filter) => filter,
        Err(e) => return e.into_response(),
    };
    let resume = match last_event_id
        .as_deref()
        .or(params.get("last_event_id").map(String::as_str))
        .map(|text| text.trim().parse::<u64>())
        .transpose()
    {
        Ok(resume) => resume,
        Err(_) => {
            return ApiError::bad_request(
                "Last-Event-ID (or last_event_id) must be an event id: a whole number",
            )
            .into_response()
        }
    };
    let feed = api.store.feed();
    // Subscribe first, then decide where to start: nothing committed in between is lost.
    let live = feed.subscribe();
    let newest = feed.last_seq();
    let (last, read_store) = match resume {
        // An id from a feed that has since been reset (a new data dir): start afresh.
        Some(id) if id <= newest => (id, true),
        _ => (newest, false),
    };
    let cursor = Cursor {
        store: api.store.clone(),
        live,
        last,
        backlog: VecDeque::new(),
        read_store,
        filter,
    };
    let events = futures_util::stream::unfold(cursor, |mut cursor| async move {
        let entry = cursor.next().await?;
        Some((entry, cursor))
    })
    .map(|entry| {
        Ok::<_, Infallible>(
            warp::sse::Event::default()
                .id(entry.seq.to_string())
                .event(entry.event.kind())
                .data(crate::events::json::entry_json(&entry).to_string()),
        )
    });
    warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(events)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_name_unknown_kinds() {
        let params = HashMap::from([
            ("host".to_string(), "web-01, web-02".to_string()),
            ("kind".to_string(), "action,violation".to_string()),
        ]);
        let filter = EventFilter::parse(&params).unwrap();
        assert_eq!(filter.hosts.len(), 2);
        assert!(filter.kinds.contains("action") && filter.kinds.contains("violation"));
        let bad = HashMap::from([("kind".to_string(), "metrics".to_string())]);
        let err = EventFilter::parse(&bad).unwrap_err();
        assert!(format!("{err:?}").contains("metrics"), "{err:?}");
    }
}
