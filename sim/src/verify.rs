//! Checks a finished fleet's run against the coordinator it drove, over the real REST
//! API: every malformed payload was counted as rejected, and every well-formed action
//! transition is stored exactly once (none lost, no redelivery stored twice).

use std::fmt;
use std::time::Duration;

use crate::fleet::Outcome;
use crate::procs::{prometheus_value, with_token};

/// The coordinator's counters a verification compares (read before and after a run).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoordinatorCounts {
    /// `vigil_mqtt_messages_rejected_total`, every series.
    pub rejected: f64,
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
            action_transitions: prometheus_value(&page, "vigil_actions_total"),
            samples: prometheus_value(&page, "vigil_samples_stored_total"),
        })
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verification {
    /// Malformed payloads the fleet sent.
    pub malformed_sent: u64,
    /// Rejections the coordinator counted during the run.
    pub rejected_counted: u64,
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
    Ok(Verification {
        malformed_sent,
        rejected_counted: (now.rejected - before.rejected) as u64,
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
