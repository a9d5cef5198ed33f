//! Checks a finished fleet's run against the coordinator it drove, over the real REST
//! API: every malformed payload was counted as rejected under the reason its kind names
//! (and nothing else was rejected), and every well-formed action transition is stored
//! exactly once (none lost, no re-sealed duplicate or resend stored twice).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::chaos::Malformed;
use crate::fleet::Outcome;
use vigil_testkit::{prometheus_value, with_token};

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
    /// `vigil_actions_total`, every series: distinct action transitions stored.
    pub action_transitions: f64,
    /// `vigil_samples_stored_total`, every series.
    pub samples: f64,
}

impl CoordinatorCounts {
    /// Reads them from `{http}/metrics`.
    pub async fn read(http: &str) -> Result<CoordinatorCounts, String> {
        let page = get_text(&format!("{http}/metrics")).await?;
        Ok(CoordinatorCounts {
            rejected: prometheus_value(&page, "vigil_mqtt_messages_rejected_total"),
            rejected_by_reason: rejected_by_reason(&page),
            duplicates: prometheus_value(&page, "vigil_mqtt_messages_duplicate_total"),
            action_transitions: prometheus_value(&page, "vigil_actions_total"),
            samples: prometheus_value(&page, "vigil_samples_stored_total"),
        })
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

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verification {
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
    /// Distinct action transitions the fleet sent.
    pub transitions_sent: u64,
    /// Transitions the coordinator counted as newly stored during the run.
    pub transitions_counted: u64,
    /// Actions looked up one by one.
    pub actions_checked: usize,
    /// Actions the coordinator does not know, or holds with another number of
    /// transitions than were sent: `(id, sent, stored)`.
    pub mismatches: Vec<(String, u32, usize)>,
}

impl Verification {
    /// Whether everything matched.
    pub fn passed(&self) -> bool {
        self.malformed_sent == self.rejected_counted
            && self
                .by_reason
                .iter()
                .all(|(_, sent, counted)| sent == counted)
            && self.transitions_sent == self.transitions_counted
            && self.mismatches.is_empty()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        writeln!(
            f,
            "verify: action transitions sent {} / stored {}; {} actions checked one by one, {} mismatched",
            self.transitions_sent,
            self.transitions_counted,
            self.actions_checked,
            self.mismatches.len()
        )?;
        for (id, sent, stored) in self.mismatches.iter().take(10) {
            writeln!(f, "  action {id}: sent {sent} transitions, stored {stored}")?;
        }
        write!(
            f,
            "verify: {}",
            if self.passed() { "PASSED" } else { "FAILED" }
        )
    }
}

/// Verifies `outcome` against the coordinator at `http`, whose counters were `before`
/// the run. Waits up to `settle` for the coordinator to catch up with what is in flight.
/// `token` authenticates the REST lookups of actions (`Authorization: Bearer`); the
/// counters come from the open `/metrics`.
pub async fn verify(
    http: &str,
    token: Option<&str>,
    outcome: &Outcome,
    before: CoordinatorCounts,
    settle: Duration,
) -> Result<Verification, String> {
    let malformed_sent = outcome.report.malformed_total();
    let transitions_sent = outcome.report.action_transitions;
    let deadline = tokio::time::Instant::now() + settle;
    let mut now = CoordinatorCounts::read(http).await?;
    while tokio::time::Instant::now() < deadline
        && (((now.rejected - before.rejected) as u64) < malformed_sent
            || ((now.action_transitions - before.action_transitions) as u64) < transitions_sent)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = CoordinatorCounts::read(http).await?;
    }
    // One more look once the counts stop moving, so a late duplicate would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    now = CoordinatorCounts::read(http).await?;
    let client = reqwest::Client::new();
    let mut mismatches = Vec::new();
    for (id, (_host, sent)) in &outcome.actions {
        let url = format!("{http}/api/v1/actions/{id}");
        let response = with_token(client.get(&url), token)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let stored = if response.status().is_success() {
            let body: serde_json::Value = response
                .json()
                .await
                .map_err(|e| format!("GET {url}: not JSON: {e}"))?;
            body["transitions"].as_array().map_or(0, Vec::len)
        } else {
            0
        };
        if stored != *sent as usize {
            mismatches.push((id.clone(), *sent, stored));
        }
    }
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
                .unwrap_or(0.0)) as u64;
        if delta > 0 || by_reason.contains_key(reason) {
            by_reason.entry(reason.clone()).or_insert((0, 0)).1 = delta;
        }
    }
    Ok(Verification {
        malformed_sent,
        rejected_counted: (now.rejected - before.rejected) as u64,
        by_reason: by_reason
            .into_iter()
            .filter(|(_, (sent, counted))| *sent > 0 || *counted > 0)
            .map(|(reason, (sent, counted))| (reason, sent, counted))
            .collect(),
        duplicates_dropped: (now.duplicates - before.duplicates) as u64,
        transitions_sent,
        transitions_counted: (now.action_transitions - before.action_transitions) as u64,
        actions_checked: outcome.actions.len(),
        mismatches,
    })
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
