//! Checks a finished fleet's run against the coordinator it drove, over the real REST
//! API, one id at a time:
//! - every generated action transition `(id, state, attempt)` is stored exactly once
//!   (`GET /api/v1/actions/{id}`: its `transitions`);
//! - every generated metric sample is stored: each host's batches carried known
//!   timestamps and series, and `GET /api/v1/metrics/query` per host and metric must
//!   return one point per series and timestamp.
//!
//! What is stored survives a coordinator restart, so these hold whatever happened during
//! the run. Besides, every malformed payload must be counted as rejected under the reason
//! its kind names, and nothing else rejected: that comes from the coordinator's counters
//! (`/metrics`), which a restart resets, so it is skipped, with a note, when a restart is
//! seen (a counter went down) or the agents lost their connections on their own (what
//! was in flight then never arrived).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use vigil_shared::time::parse_time;

use crate::chaos::Malformed;
use crate::fleet::Outcome;
use crate::virtual_agent::{series_of_batch, ActionLedger, HostBatches};
use vigil_testkit::{prometheus_value, with_token};

/// REST lookups in flight at once.
const CONCURRENCY: usize = 16;
/// Points asked for per history query (the route's maximum).
const QUERY_LIMIT: usize = 10_000;
/// How long one REST request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How many problems are listed by id.
const LISTED: usize = 10;
/// How many times a GET that failed before any answer is sent again.
const GET_ATTEMPTS: u32 = 3;
/// How long a pooled connection may idle before it is closed: shorter than the
/// coordinator's wait for the next request's headers (10 s), so a request is never sent
/// on a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The coordinator's counters a verification compares (read before and after a run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoordinatorCounts {
    /// `vigil_mqtt_messages_rejected_total`, every series.
    pub rejected: f64,
    /// `vigil_mqtt_messages_rejected_total` by reason, summed over channels.
    pub rejected_by_reason: BTreeMap<String, f64>,
    /// `vigil_mqtt_messages_duplicate_total`, every series: identical sealed payloads
    /// received twice (MQTT redeliveries), dropped before the store.
    pub duplicates: f64,
    /// `vigil_mqtt_messages_total`, every series: messages taken in.
    pub messages: f64,
    /// `vigil_delivery_redelivered_total`, every series: queued messages not stored
    /// again (already stored, or too far ahead).
    pub redelivered: f64,
}

impl CoordinatorCounts {
    /// Reads them from `{http}/metrics`.
    pub async fn read(http: &str) -> Result<CoordinatorCounts, String> {
        let page = get_text(&format!("{http}/metrics")).await?;
        Ok(CoordinatorCounts {
            rejected: prometheus_value(&page, "vigil_mqtt_messages_rejected_total"),
            rejected_by_reason: rejected_by_reason(&page),
            duplicates: prometheus_value(&page, "vigil_mqtt_messages_duplicate_total"),
            messages: prometheus_value(&page, "vigil_mqtt_messages_total"),
            redelivered: prometheus_value(&page, "vigil_delivery_redelivered_total"),
        })
    }

    /// Whether a counter is lower than in `before`: the coordinator restarted since.
    fn went_down_from(&self, before: &CoordinatorCounts) -> bool {
        self.rejected < before.rejected
            || self.duplicates < before.duplicates
            || self.messages < before.messages
            || self.redelivered < before.redelivered
            || before
                .rejected_by_reason
                .iter()
                .any(|(reason, n)| self.rejected_by_reason.get(reason).unwrap_or(&0.0) < n)
    }
}

/// `vigil_mqtt_messages_rejected_total` summed by its `reason` label.
pub fn rejected_by_reason(page: &str) -> BTreeMap<String, f64> {
    let mut by_reason = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| l.starts_with("vigil_mqtt_messages_rejected_total{"))
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(reason) = series
            .split_once("reason=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(reason, _)| reason)
        else {
            continue;
        };
        if let Ok(value) = value.parse::<f64>() {
            *by_reason.entry(reason.to_string()).or_insert(0.0) += value;
        }
    }
    by_reason
}

/// What the lookups of one kind (action transitions or metric samples) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdCheck {
    /// Distinct items generated (transitions; or points: series × timestamp).
    pub generated: u64,
    /// Generated and not stored.
    pub lost: u64,
    /// Stored copies beyond the first.
    pub stored_twice: u64,
    /// Stored items this run did not generate (an earlier run's under the same host
    /// names, or the coordinator's own): reported, not a failure.
    pub other: u64,
    /// Lookups made (actions, or host × metric series).
    pub looked_up: usize,
    /// The first few problems, by id.
    pub problems: Vec<String>,
}

impl IdCheck {
    fn add(&mut self, other: IdCheck) {
        self.generated += other.generated;
        self.lost += other.lost;
        self.stored_twice += other.stored_twice;
        self.other += other.other;
        self.looked_up += other.looked_up;
        for problem in other.problems {
            if self.problems.len() < LISTED {
                self.problems.push(problem);
            }
        }
    }

    fn clean(&self) -> bool {
        self.lost == 0 && self.stored_twice == 0
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verification {
    /// Action transitions, looked up by action id.
    pub transitions: IdCheck,
    /// Metric samples, looked up by host, metric and timestamp.
    pub samples: IdCheck,
    /// Why nothing was looked up by id, if nothing was (no REST token, and the
    /// coordinator wants one).
    pub lookups_skipped: Option<String>,
    /// Queued messages the agents still held unacknowledged when they finished.
    pub unacknowledged: u64,
    /// Why the rejection counters were not compared, if they were not.
    pub counters_skipped: Option<String>,
    /// Malformed payloads the fleet sent.
    pub malformed_sent: u64,
    /// Rejections the coordinator counted during the run.
    pub rejected_counted: u64,
    /// By reason: `(reason, malformed payloads sent that it should be counted under,
    /// rejections counted under it)`, every reason that either side has.
    pub by_reason: Vec<(String, u64, u64)>,
    /// Identical sealed payloads the coordinator dropped as duplicates during the run
    /// (the simulator re-seals every copy it sends, so these are MQTT redeliveries).
    pub duplicates_dropped: u64,
    /// Queued messages the coordinator did not store again during the run (already
    /// stored: resends and injected duplicates).
    pub redelivered: u64,
}

impl Verification {
    /// Whether everything matched: nothing lost or stored twice, and (unless skipped)
    /// every malformed payload counted under its reason.
    pub fn passed(&self) -> bool {
        self.transitions.clean() && self.samples.clean() && self.counters_match()
    }

    fn counters_match(&self) -> bool {
        self.counters_skipped.is_some()
            || (self.malformed_sent == self.rejected_counted
                && self
                    .by_reason
                    .iter()
                    .all(|(_, sent, counted)| sent == counted))
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.lookups_skipped {
            writeln!(f, "verify: nothing looked up by id: {why}")?;
        }
        for (what, unit, check) in [
            ("action transitions", "actions", &self.transitions),
            ("metric samples", "host series", &self.samples),
        ] {
            if self.lookups_skipped.is_some() {
                break;
            }
            writeln!(
                f,
                "verify: {what} generated {}: lost {}, stored twice {} ({} {unit} looked up; {} stored that this run did not generate)",
                check.generated, check.lost, check.stored_twice, check.looked_up, check.other
            )?;
            for problem in &check.problems {
                writeln!(f, "  {problem}")?;
            }
        }
        if self.unacknowledged > 0 {
            writeln!(
                f,
                "verify: {} queued messages were still unacknowledged when the agents finished",
                self.unacknowledged
            )?;
        }
        match &self.counters_skipped {
            Some(why) => writeln!(f, "verify: rejection counters not compared: {why}")?,
            None => {
                writeln!(
                    f,
                    "verify: malformed sent {} / rejections counted by the coordinator {}",
                    self.malformed_sent, self.rejected_counted
                )?;
                let reasons: Vec<String> = self
                    .by_reason
                    .iter()
                    .map(|(reason, sent, counted)| {
                        let mark = if sent == counted { "" } else { " MISMATCH" };
                        format!("{reason} {sent}/{counted}{mark}")
                    })
                    .collect();
                if !reasons.is_empty() {
                    writeln!(
                        f,
                        "verify: by reason (sent/counted): {}",
                        reasons.join(", ")
                    )?;
                }
                if self.duplicates_dropped > 0 {
                    writeln!(
                        f,
                        "verify: {} sealed payloads dropped as MQTT redeliveries or superseded last wills",
                        self.duplicates_dropped
                    )?;
                }
                if self.redelivered > 0 {
                    writeln!(
                        f,
                        "verify: {} queued messages sent again were not stored again",
                        self.redelivered
                    )?;
                }
            }
        }
        write!(
            f,
            "verify: {}",
            if self.passed() { "PASSED" } else { "FAILED" }
        )
    }
}

/// Verifies `outcome` against the coordinator at `http`, whose counters were `before`
/// the run. Waits up to `settle` for the coordinator to catch up (rejections counted,
/// everything stored). `token` authenticates the REST lookups (`Authorization: Bearer`);
/// the counters come from the open `/metrics`.
pub async fn verify(
    http: &str,
    token: Option<&str>,
    outcome: &Outcome,
    before: CoordinatorCounts,
    settle: Duration,
) -> Result<Verification, String> {
    let deadline = tokio::time::Instant::now() + settle;
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let malformed_sent = outcome.report.malformed_total();

    // The counters, unless a restart (or lost connections) make them meaningless.
    let mut now = CoordinatorCounts::read(http).await?;
    let mut counters_skipped = restart_note(&before, &now, outcome);
    while counters_skipped.is_none()
        && tokio::time::Instant::now() < deadline
        && ((now.rejected - before.rejected) as u64) < malformed_sent
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = CoordinatorCounts::read(http).await?;
        counters_skipped = restart_note(&before, &now, outcome);
    }
    // One more look once the counts stop moving, so a late rejection would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    now = CoordinatorCounts::read(http).await?;
    if counters_skipped.is_none() {
        counters_skipped = restart_note(&before, &now, outcome);
    }

    // Every id, again while something is missing and time is left.
    let lookups_skipped = lookups_refused(&client, http, token).await?;
    let (transitions, samples) = loop {
        if lookups_skipped.is_some() {
            break (IdCheck::default(), IdCheck::default());
        }
        let transitions = check_actions(&client, http, token, &outcome.actions).await?;
        let samples = check_samples(&client, http, token, &outcome.batches).await?;
        let missing = transitions.lost > 0 || samples.lost > 0;
        if !missing || tokio::time::Instant::now() >= deadline {
            break (transitions, samples);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, n) in &outcome.report.malformed {
        *expected.entry(kind.reason().to_string()).or_insert(0) += n;
    }
    for kind in Malformed::ALL {
        expected.entry(kind.reason().to_string()).or_insert(0);
    }
    let mut by_reason: BTreeMap<String, (u64, u64)> = expected
        .into_iter()
        .map(|(reason, sent)| (reason, (sent, 0)))
        .collect();
    for (reason, value) in &now.rejected_by_reason {
        let delta = (value
            - before
                .rejected_by_reason
                .get(reason)
                .copied()
                .unwrap_or(0.0))
        .max(0.0) as u64;
        if delta > 0 || by_reason.contains_key(reason) {
            by_reason.entry(reason.clone()).or_insert((0, 0)).1 = delta;
        }
    }
    Ok(Verification {
        transitions,
        samples,
        lookups_skipped,
        unacknowledged: outcome.report.unacknowledged,
        counters_skipped,
        malformed_sent,
        rejected_counted: (now.rejected - before.rejected).max(0.0) as u64,
        by_reason: by_reason
            .into_iter()
            .filter(|(_, (sent, counted))| *sent > 0 || *counted > 0)
            .map(|(reason, (sent, counted))| (reason, sent, counted))
            .collect(),
        duplicates_dropped: (now.duplicates - before.duplicates).max(0.0) as u64,
        redelivered: (now.redelivered - before.redelivered).max(0.0) as u64,
    })
}

/// Why the REST API cannot be asked about ids, if it cannot: no token, and the
/// coordinator wants one. A token it refuses is an error.
async fn lookups_refused(
    client: &reqwest::Client,
    http: &str,
    token: Option<&str>,
) -> Result<Option<String>, String> {
    let url = format!("{http}/api/v1/actions?limit=1");
    let response = get(with_token(client.get(&url), token))
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(None);
    }
    if token.is_none()
        && matches!(
            status,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
        )
    {
        return Ok(Some(format!(
            "the coordinator's REST API wants a token (HTTP {status}): give --token to \
             have every action transition and metric sample looked up"
        )));
    }
    Err(format!("GET {url}: HTTP {status}"))
}

/// Why the counters cannot be compared, if they cannot.
fn restart_note(
    before: &CoordinatorCounts,
    now: &CoordinatorCounts,
    outcome: &Outcome,
) -> Option<String> {
    if now.went_down_from(before) {
        return Some("the coordinator restarted during the run (its counters went down)".into());
    }
    let lost = outcome.report.connection_errors;
    (lost > 0).then(|| {
        format!(
            "the agents lost {lost} connections on their own (a broker or coordinator \
             restart?): what was in flight then never arrived"
        )
    })
}

/// Runs `jobs`, [`CONCURRENCY`] at a time; the first error ends it.
async fn bounded<F>(jobs: Vec<F>) -> Result<IdCheck, String>
where
    F: Future<Output = Result<IdCheck, String>> + Send + 'static,
{
    let mut jobs = jobs.into_iter();
    let mut running = JoinSet::new();
    let mut total = IdCheck::default();
    loop {
        while running.len() < CONCURRENCY {
            match jobs.next() {
                Some(job) => {
                    running.spawn(job);
                }
                None => break,
            }
        }
        match running.join_next().await {
            Some(Ok(Ok(check))) => total.add(check),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(format!("lookup task: {e}")),
            None => return Ok(total),
        }
    }
}

/// Looks up every action: each generated transition stored once.
async fn check_actions(
    client: &reqwest::Client,
    http: &str,
    token: Option<&str>,
    actions: &HashMap<String, ActionLedger>,
) -> Result<IdCheck, String> {
    let jobs = actions
        .iter()
        .map(|(id, ledger)| {
            let client = client.clone();
            let url = format!("{http}/api/v1/actions/{id}");
            let token = token.map(str::to_string);
            let id = id.clone();
            let generated: Vec<(&'static str, u32)> = ledger
                .transitions
                .iter()
                .map(|(state, attempt)| (state.as_str(), *attempt))
                .collect();
            async move {
                let response = get(with_token(client.get(&url), token.as_deref()))
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                let stored: Vec<(String, u64)> = if response.status().is_success() {
                    let body: serde_json::Value = response
                        .json()
                        .await
                        .map_err(|e| format!("GET {url}: not JSON: {e}"))?;
                    body["transitions"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|t| {
                            (
                                t["state"].as_str().unwrap_or_default().to_string(),
                                t["attempt"].as_u64().unwrap_or_default(),
                            )
                        })
                        .collect()
                } else if response.status() == reqwest::StatusCode::NOT_FOUND {
                    Vec::new()
                } else {
                    return Err(format!("GET {url}: HTTP {}", response.status()));
                };
                Ok(compare_transitions(&id, &generated, &stored))
            }
        })
        .collect();
    bounded(jobs).await
}

/// Compares one action's generated transitions with the stored ones.
fn compare_transitions(id: &str, generated: &[(&str, u32)], stored: &[(String, u64)]) -> IdCheck {
    let mut counts: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for (state, attempt) in generated {
        counts
            .entry((state.to_string(), u64::from(*attempt)))
            .or_default()
            .0 += 1;
    }
    for key in stored {
        counts.entry(key.clone()).or_default().1 += 1;
    }
    let mut check = IdCheck {
        looked_up: 1,
        ..IdCheck::default()
    };
    for ((state, attempt), (made, kept)) in counts {
        check.generated += made;
        if made == 0 {
            check.other += kept;
            continue;
        }
        let lost = made.saturating_sub(kept);
        let twice = kept.saturating_sub(made);
        check.lost += lost;
        check.stored_twice += twice;
        if lost > 0 || twice > 0 {
            check.problems.push(format!(
                "action {id}: {state} (attempt {attempt}) generated {made}, stored {kept}"
            ));
        }
    }
    check
}

/// Looks up every host's series: one point per generated batch timestamp.
async fn check_samples(
    client: &reqwest::Client,
    http: &str,
    token: Option<&str>,
    batches: &HashMap<String, HostBatches>,
) -> Result<IdCheck, String> {
    let mut jobs = Vec::new();
    for (host, made) in batches {
        let (Some(&from), Some(&to)) = (made.timestamps.first(), made.timestamps.last()) else {
            continue;
        };
        let mut cores: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for (name, core) in series_of_batch(made.samples_per_batch) {
            cores.entry(name).or_default().insert(core);
        }
        for (name, cores) in cores {
            let client = client.clone();
            let http = http.to_string();
            let token = token.map(str::to_string);
            let host = host.clone();
            let timestamps = made.timestamps.clone();
            jobs.push(async move {
                let stored =
                    stored_points(&client, &http, token.as_deref(), &host, name, from, to).await?;
                Ok(compare_points(&host, name, &cores, &timestamps, &stored))
            });
        }
    }
    bounded(jobs).await
}

/// Sends a GET, again (up to [`GET_ATTEMPTS`] in all) when it failed before any answer
/// came (a refused or reset connection: a GET is safe to repeat). The error names its
/// causes, not only reqwest's summary.
async fn get(request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(copy) = request.try_clone() else {
            return request.send().await.map_err(|e| causes(&e));
        };
        match copy.send().await {
            Err(e) if attempt < GET_ATTEMPTS && (e.is_connect() || e.is_request()) => {
                tracing::debug!("GET failed, sending it again: {}", causes(&e));
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            outcome => return outcome.map_err(|e| causes(&e)),
        }
    }
}

/// An error and its causes, `: `-separated.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The stored points of `host`'s metric `name` from `from` to `to` (inclusive), as
/// `(timestamp, core tag)`; a window with more than [`QUERY_LIMIT`] points is split.
async fn stored_points(
    client: &reqwest::Client,
    http: &str,
    token: Option<&str>,
    host: &str,
    name: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, String)>, String> {
    let url = format!("{http}/api/v1/metrics/query");
    let mut windows = vec![(from, to)];
    let mut out = Vec::new();
    while let Some((a, b)) = windows.pop() {
        let request = client.get(&url).query(&[
            ("name", name.to_string()),
            ("host", host.to_string()),
            ("from", a.to_string()),
            ("to", b.to_string()),
            ("limit", QUERY_LIMIT.to_string()),
        ]);
        let response = get(with_token(request, token))
            .await
            .map_err(|e| format!("GET {url} ({host} {name}): {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "GET {url} ({host} {name}): HTTP {}",
                response.status()
            ));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("GET {url} ({host} {name}): not JSON: {e}"))?;
        let points = body["points"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if points.len() >= QUERY_LIMIT {
            if b <= a {
                return Err(format!(
                    "{host} {name}: more than {QUERY_LIMIT} points at one millisecond"
                ));
            }
            let mid = a + (b - a) / 2;
            windows.push((a, mid));
            windows.push((mid + 1, b));
            continue;
        }
        for point in points {
            let at = point["timestamp"].as_str().unwrap_or_default();
            let ts =
                parse_time(at).map_err(|e| format!("{host} {name}: point time `{at}`: {e}"))?;
            let core = point["tags"]["core"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            out.push((ts, core));
        }
    }
    Ok(out)
}

/// Compares the points a host's batches generated for one metric with the stored ones.
fn compare_points(
    host: &str,
    name: &str,
    cores: &BTreeSet<String>,
    timestamps: &BTreeSet<i64>,
    stored: &[(i64, String)],
) -> IdCheck {
    let mut kept: HashMap<(i64, &str), u64> = HashMap::new();
    for (ts, core) in stored {
        *kept.entry((*ts, core.as_str())).or_default() += 1;
    }
    let mut check = IdCheck {
        looked_up: 1,
        ..IdCheck::default()
    };
    let mut first_lost: Option<i64> = None;
    for &ts in timestamps {
        for core in cores {
            check.generated += 1;
            match kept.remove(&(ts, core.as_str())) {
                None | Some(0) => {
                    check.lost += 1;
                    first_lost.get_or_insert(ts);
                }
                Some(n) => check.stored_twice += n - 1,
            }
        }
    }
    check.other = kept.values().sum();
    if check.lost > 0 || check.stored_twice > 0 {
        check.problems.push(format!(
            "{host} {name}: {} points generated, {} lost{}, {} stored twice",
            check.generated,
            check.lost,
            first_lost.map_or(String::new(), |ts| format!(" (the first at {ts} ms)")),
            check.stored_twice
        ));
    }
    check
}

async fn get_text(url: &str) -> Result<String, String> {
    let response = reqwest::get(url)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    response.text().await.map_err(|e| format!("GET {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_lost_and_stored_twice_are_told_apart() {
        let generated = [("pending", 1), ("running", 1), ("completed", 1)];
        let stored = vec![
            ("pending".to_string(), 1),
            ("running".to_string(), 1),
            ("running".to_string(), 1),
            ("resolved".to_string(), 1),
        ];
        let check = compare_transitions("a1", &generated, &stored);
        assert_eq!(
            (check.generated, check.lost, check.stored_twice, check.other),
            (3, 1, 1, 1)
        );
        assert_eq!(check.problems.len(), 2, "{:?}", check.problems);
        let clean = compare_transitions(
            "a2",
            &generated,
            &generated
                .iter()
                .map(|(s, a)| (s.to_string(), u64::from(*a)))
                .collect::<Vec<_>>(),
        );
        assert!(clean.clean() && clean.problems.is_empty());
    }

    #[test]
    fn points_are_matched_by_timestamp_and_series() {
        let cores: BTreeSet<String> = ["0".to_string(), "1".to_string()].into();
        let timestamps: BTreeSet<i64> = [10, 20].into();
        let stored = vec![
            (10, "0".to_string()),
            (10, "1".to_string()),
            (20, "0".to_string()),
            (5, "0".to_string()),
        ];
        let check = compare_points("h", "load1", &cores, &timestamps, &stored);
        assert_eq!(
            (check.generated, check.lost, check.stored_twice, check.other),
            (4, 1, 0, 1)
        );
        assert!(
            check.problems[0].contains("the first at 20 ms"),
            "{:?}",
            check.problems
        );
    }

    #[test]
    fn a_counter_going_down_is_a_restart() {
        let before = CoordinatorCounts {
            messages: 100.0,
            rejected_by_reason: [("invalid".to_string(), 3.0)].into(),
            ..CoordinatorCounts::default()
        };
        let mut after = before.clone();
        after.messages = 150.0;
        assert!(!after.went_down_from(&before));
        after.rejected_by_reason.clear();
        assert!(after.went_down_from(&before));
    }
}
