//! Policy backtest: replays stored metric history through the same engine the agents run
//! ([`vigil_shared::policy::Engine`]) and reports when and where each policy would have
//! fired, acted, been deferred by its disruption budget, or escalated.
//!
//! Per host, in time order, the replay evaluates at every stored sample time of the
//! host (its agent's ticks, see [`crate::store::timeline`]), after recording that tick's
//! samples of the metrics the policies read, exactly as an agent's evaluator does: one
//! engine per host, so `for`, trends, rates, cooldowns, flap limits and escalation chains
//! run as they did live. Then the actions of budgeted policies go, in time order, through
//! a lease table like the coordinator's ([`budget`]): an action that live would have
//! waited for a lease is reported deferred, and acted when (if) a place frees up within
//! the replayed range.
//!
//! Not simulated: what actions do (their outcome, verification against a recovered
//! metric: the history is what it was), unit, container, process and HTTP/TCP check
//! states (not in metric history: conditions on them never hold here), the agent's
//! per-target action queue and circuit breakers, and policy or label changes within the
//! range (today's policies and labels are used throughout).
//!
//! Everything a caller controls is bounded: policies ([`MAX_POLICIES`]), hosts
//! ([`MAX_HOSTS`]), the range ([`MAX_SINCE`]), history read ([`MAX_KEYS`]), budgeted
//! actions held for the lease pass ([`MAX_BUDGETED_ACTS`]) and events returned
//! ([`MAX_EVENTS`]).

pub mod budget;

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vigil_shared::policy::target::Target;
use vigil_shared::policy::{
    Condition, DecisionKind, Engine, EscalationCause, Observations, Policy, TARGET_TAG,
};
use vigil_shared::time::{format_duration, parse_duration, to_rfc3339};
use vigil_shared::wire::Tag;

use crate::budgets::service::group_sizes;
use crate::store::timeline::TimelineEnd;
use crate::store::{HostRecord, Store, StoreError};

/// Most policies in one backtest.
pub const MAX_POLICIES: usize = 100;
/// Most hosts one backtest replays.
pub const MAX_HOSTS: usize = 1_000;
/// The longest range replayed.
pub const MAX_SINCE: Duration = Duration::from_secs(31 * 24 * 3600);
/// Most stored points (history keys) one backtest reads.
pub const MAX_KEYS: u64 = 20_000_000;
/// Most actions of budgeted policies held for the lease pass.
pub const MAX_BUDGETED_ACTS: usize = 1_000_000;
/// Most events a report lists.
pub const MAX_EVENTS: usize = 1_000;
/// Events listed when the caller does not say.
pub const DEFAULT_EVENTS: usize = 100;

/// Which hosts a backtest replays.
#[derive(Debug, Clone)]
pub enum HostSelector {
    /// Hosts whose labels include all of these (none: every host).
    Labels(Vec<Tag>),
    /// Hosts whose name matches (an exact name, a glob such as `web-*`, or `all`).
    Names(Target),
}

impl HostSelector {
    /// Reads `all`, a host name or glob (`web-*`), or labels (`role=web,env=prod`).
    pub fn parse(text: &str) -> Result<HostSelector, String> {
        if text.chars().count() > 1024 {
            return Err("must be at most 1024 characters".into());
        }
        let text = text.trim();
        if !text.contains('=') {
            return Target::parse(text).map(HostSelector::Names);
        }
        let mut labels = Vec::new();
        for part in text.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "`{part}` is not a label (key=value); write labels as role=web,env=prod"
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.is_empty() {
                return Err(format!("label `{part}`: both name and value are needed"));
            }
            vigil_shared::validate::tags([(key, value)])
                .map_err(|e| format!("label `{part}`: {}", e.problem))?;
            labels.push((key.to_string(), value.to_string()));
        }
        labels.sort();
        Ok(HostSelector::Labels(labels))
    }

    /// Whether `host` is selected.
    pub fn matches(&self, host: &HostRecord) -> bool {
        match self {
            HostSelector::Labels(wanted) => wanted.iter().all(|l| host.labels().contains(l)),
            HostSelector::Names(target) => target.matches(&host.host),
        }
    }
}

/// Reads a range such as `7d` or `12h`: longer than zero, at most [`MAX_SINCE`].
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let since = parse_duration(text)?;
    if since.is_zero() || since > MAX_SINCE {
        return Err(format!(
            "must be longer than zero and at most {}, got {}",
            format_duration(MAX_SINCE),
            text.trim()
        ));
    }
    Ok(since)
}

/// A backtest to run.
#[derive(Debug, Clone)]
pub struct Backtest {
    /// The policies (at most [`MAX_POLICIES`]).
    pub policies: Vec<Policy>,
    /// The hosts.
    pub hosts: HostSelector,
    /// How far back from now.
    pub since: Duration,
    /// How many events to list (at most [`MAX_EVENTS`]).
    pub events: usize,
}

/// Why a backtest was refused.
#[derive(Debug, Error)]
pub enum BacktestError {
    /// A request field is out of bounds.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`policies`, `hosts`, `since`, `limit`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> BacktestError {
    BacktestError::Invalid {
        field,
        message: message.into(),
    }
}

/// What one policy would have done. Fields (and keys on the wire) are alphabetical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyCounts {
    /// Actions that would have run (granted a lease first, for a budgeted policy).
    pub acted: u64,
    /// Actions due while the cooldown lasted (the engine waited).
    pub cooldown: u64,
    /// Actions that had to wait for a lease of the policy's disruption budget (each
    /// counted once; if a place freed up later in the range it is also counted in
    /// `acted`).
    pub deferred: u64,
    /// Actions recorded only (`dry_run: true`).
    pub dry_run: u64,
    /// Escalations because the action chain ran out with the condition still holding.
    pub escalated: u64,
    /// Violations: the condition held long enough (`for`).
    pub fired: u64,
    /// Escalations by flap protection (the engine stopped acting on the subject).
    pub flap: u64,
    /// The policy.
    pub policy: String,
    /// Whether the condition reads unit, container, process or check states, which are
    /// not in metric history (those parts never hold in the replay).
    pub reads_states: bool,
}

/// One thing that would have happened. Fields (and keys on the wire) are alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BacktestEvent {
    /// When, RFC 3339.
    pub at: String,
    /// When, epoch ms.
    pub at_ms: i64,
    /// The action, a reason, or how long an action waited.
    pub detail: Option<String>,
    /// The host.
    pub host: String,
    /// `fired`, `act`, `dry_run`, `deferred`, `cooldown`, `flap` or `escalated`.
    pub kind: String,
    /// The policy.
    pub policy: String,
    /// What it is about (the host, or a sample's `target`).
    pub subject: String,
}

/// A backtest's answer. Fields (and keys on the wire) are alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BacktestReport {
    /// Actions that would have run, over all policies.
    pub actions: u64,
    /// The earliest events, in time order (at most the limit asked for).
    pub events: Vec<BacktestEvent>,
    /// How many events there were in all.
    pub events_total: u64,
    /// Start of the range, RFC 3339.
    pub from: String,
    /// The hosts replayed, by name.
    pub hosts: Vec<String>,
    /// Always true.
    pub ok: bool,
    /// Per policy, in the order given.
    pub policies: Vec<PolicyCounts>,
    /// Stored points read.
    pub points: u64,
    /// Evaluation passes (host ticks).
    pub ticks: u64,
    /// End of the range (now), RFC 3339.
    pub to: String,
}

/// An event waiting in the bounded list: ordered by time, then by when it was made.
struct Queued {
    at_ms: i64,
    seq: u64,
    event: BacktestEvent,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// Counts and the earliest `limit` events.
struct Tally {
    counts: Vec<PolicyCounts>,
    events: BinaryHeap<Queued>,
    limit: usize,
    total: u64,
}

impl Tally {
    fn event(
        &mut self,
        at_ms: i64,
        host: &str,
        subject: &str,
        policy: &str,
        kind: &str,
        detail: Option<String>,
    ) {
        self.total += 1;
        if self.limit == 0 {
            return;
        }
        if self.events.len() >= self.limit
            && self
                .events
                .peek()
                .is_some_and(|latest| latest.at_ms <= at_ms)
        {
            return;
        }
        self.events.push(Queued {
            at_ms,
            seq: self.total,
            event: BacktestEvent {
                at: to_rfc3339(at_ms),
                at_ms,
                detail,
                host: host.to_string(),
                kind: kind.to_string(),
                policy: policy.to_string(),
                subject: subject.to_string(),
            },
        });
        if self.events.len() > self.limit {
            self.events.pop();
        }
    }
}

/// The metrics `condition` reads, and whether it reads states.
fn walk(condition: &Condition, metrics: &mut BTreeSet<String>) -> bool {
    match condition {
        Condition::All(cs) | Condition::Any(cs) => {
            // Every part is walked (for its metrics), not only up to the first on states.
            let mut states = false;
            for c in cs {
                states |= walk(c, metrics);
            }
            states
        }
        Condition::MetricExceeds { metric, .. }
        | Condition::MetricBelow { metric, .. }
        | Condition::Rate { metric, .. }
        | Condition::Trend { metric, .. }
        | Condition::Absent { metric, .. } => {
            metrics.insert(metric.clone());
            false
        }
        Condition::UnitState { .. }
        | Condition::ContainerState { .. }
        | Condition::ProcessMissing { .. }
        | Condition::HttpCheck { .. }
        | Condition::TcpCheck { .. } => true,
    }
}

/// The hosts of `store` that `selector` picks, refused past [`MAX_HOSTS`]; and every
/// host (for the sizes of budget shares).
pub fn select_hosts(
    store: &Store,
    selector: &HostSelector,
) -> Result<(Vec<HostRecord>, Vec<HostRecord>), BacktestError> {
    let all = store.hosts()?;
    let picked: Vec<HostRecord> = all
        .iter()
        .filter(|h| selector.matches(h))
        .cloned()
        .collect();
    if picked.len() > MAX_HOSTS {
        return Err(invalid(
            "hosts",
            format!(
                "selects {} hosts, more than a backtest replays ({MAX_HOSTS}); narrow it",
                picked.len()
            ),
        ));
    }
    Ok((picked, all))
}

/// Runs `backtest` over the history in `store` up to `now_ms`. Blocks (LMDB reads and
/// the replay): call it from `spawn_blocking` in async code.
pub fn run(
    store: &Store,
    backtest: &Backtest,
    now_ms: i64,
) -> Result<BacktestReport, BacktestError> {
    run_with_progress(store, backtest, now_ms, |_, _| {})
}

/// [`run`], calling `progress(replayed, hosts)` as it starts and after each host (for a
/// progress bar).
pub fn run_with_progress(
    store: &Store,
    backtest: &Backtest,
    now_ms: i64,
    mut progress: impl FnMut(usize, usize),
) -> Result<BacktestReport, BacktestError> {
    if backtest.policies.is_empty() {
        return Err(invalid("policies", "no policy to backtest"));
    }
    if backtest.policies.len() > MAX_POLICIES {
        return Err(invalid(
            "policies",
            format!(
                "{} policies, more than one backtest takes ({MAX_POLICIES})",
                backtest.policies.len()
            ),
        ));
    }
    if backtest.since.is_zero() || backtest.since > MAX_SINCE {
        return Err(invalid(
            "since",
            format!(
                "must be longer than zero and at most {}",
                format_duration(MAX_SINCE)
            ),
        ));
    }
    if backtest.events > MAX_EVENTS {
        return Err(invalid(
            "limit",
            format!("at most {MAX_EVENTS} events are listed"),
        ));
    }
    let (hosts, all_hosts) = select_hosts(store, &backtest.hosts)?;
    let since_ms = i64::try_from(backtest.since.as_millis()).unwrap_or(i64::MAX);
    let from_ms = now_ms.saturating_sub(since_ms);
    let mut metrics = BTreeSet::new();
    let mut tally = Tally {
        counts: backtest
            .policies
            .iter()
            .map(|p| PolicyCounts {
                policy: p.name.clone(),
                reads_states: walk(&p.condition, &mut metrics),
                ..PolicyCounts::default()
            })
            .collect(),
        events: BinaryHeap::new(),
        limit: backtest.events,
        total: 0,
    };
    let index: HashMap<&str, usize> = backtest
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut keys_left = MAX_KEYS;
    let mut ticks = 0u64;
    let mut budgeted: Vec<budget::BudgetedAct> = Vec::new();
    let mut overflow = false;
    progress(0, hosts.len());
    for (host_index, host) in hosts.iter().enumerate() {
        if host_index > 0 {
            progress(host_index, hosts.len());
        }
        let mut engine = Engine::new(backtest.policies.clone());
        let mut observations = Observations::new(from_ms);
        observations.set_lookbacks(&engine.lookbacks());
        let mut decisions = Vec::new();
        let end = store.timeline(
            &host.host,
            &metrics,
            from_ms,
            now_ms,
            &mut keys_left,
            |at, samples| {
                ticks += 1;
                for sample in samples {
                    let subject = sample
                        .tags
                        .iter()
                        .find(|(k, _)| k == TARGET_TAG)
                        .map_or(host.host.as_str(), |(_, v)| v.as_str());
                    observations.record(subject, sample);
                }
                engine.evaluate(&observations, at, &mut decisions);
                for decision in decisions.drain(..) {
                    let Some(&p) = index.get(decision.policy.as_str()) else {
                        continue;
                    };
                    let policy = &backtest.policies[p];
                    let (name, subject) = (policy.name.as_str(), decision.subject.as_str());
                    let note = |kind: &str, tally: &mut Tally, detail: Option<String>| {
                        tally.event(at, &host.host, subject, name, kind, detail)
                    };
                    match decision.kind {
                        DecisionKind::Fired => {
                            tally.counts[p].fired += 1;
                            note("fired", &mut tally, None);
                        }
                        DecisionKind::Act(request) if request.dry_run => {
                            tally.counts[p].dry_run += 1;
                            note("dry_run", &mut tally, Some(request.written));
                        }
                        DecisionKind::Act(request) if policy.budget.is_some() => {
                            if budgeted.len() >= MAX_BUDGETED_ACTS {
                                overflow = true;
                                continue;
                            }
                            budgeted.push(budget::BudgetedAct {
                                at_ms: at,
                                host: host_index,
                                subject: subject.to_string(),
                                policy: p,
                                action: request.written,
                            });
                        }
                        DecisionKind::Act(request) => {
                            tally.counts[p].acted += 1;
                            note("act", &mut tally, Some(request.written));
                        }
                        DecisionKind::Deferred { reason } => {
                            tally.counts[p].cooldown += 1;
                            note("cooldown", &mut tally, Some(reason));
                        }
                        DecisionKind::Escalated { reason, cause } => {
                            let kind = match cause {
                                EscalationCause::FlapLimit => {
                                    tally.counts[p].flap += 1;
                                    "flap"
                                }
                                EscalationCause::ChainExhausted => {
                                    tally.counts[p].escalated += 1;
                                    "escalated"
                                }
                            };
                            note(kind, &mut tally, Some(reason));
                        }
                        DecisionKind::Verified { .. } | DecisionKind::Resolved => {}
                    }
                }
            },
        )?;
        if end == TimelineEnd::BudgetSpent {
            return Err(invalid(
                "since",
                format!(
                    "the range holds more than {MAX_KEYS} stored points on the selected hosts; \
                     shorten since or narrow hosts"
                ),
            ));
        }
        if overflow {
            return Err(invalid(
                "since",
                format!(
                    "more than {MAX_BUDGETED_ACTS} actions of budgeted policies in the range; \
                     shorten since or narrow hosts"
                ),
            ));
        }
    }
    progress(hosts.len(), hosts.len());
    let sizes = group_sizes(&all_hosts);
    for outcome in budget::simulate(&backtest.policies, &hosts, &sizes, budgeted, now_ms) {
        let act = &outcome.act;
        let (name, host) = (&backtest.policies[act.policy].name, &hosts[act.host].host);
        if let Some(reason) = outcome.deferred {
            tally.counts[act.policy].deferred += 1;
            tally.event(
                act.at_ms,
                host,
                &act.subject,
                name,
                "deferred",
                Some(reason),
            );
        }
        if let Some(granted_ms) = outcome.granted_ms {
            tally.counts[act.policy].acted += 1;
            let detail = if granted_ms > act.at_ms {
                format!(
                    "{} (after waiting {} for a lease)",
                    act.action,
                    format_duration(Duration::from_millis(
                        u64::try_from(granted_ms - act.at_ms).unwrap_or(0)
                    ))
                )
            } else {
                act.action.clone()
            };
            tally.event(granted_ms, host, &act.subject, name, "act", Some(detail));
        }
    }
    Ok(BacktestReport {
        actions: tally.counts.iter().map(|c| c.acted).sum(),
        events: tally
            .events
            .into_sorted_vec()
            .into_iter()
            .map(|q| q.event)
            .collect(),
        events_total: tally.total,
        from: to_rfc3339(from_ms),
        hosts: hosts.into_iter().map(|h| h.host).collect(),
        ok: true,
        policies: tally.counts,
        points: MAX_KEYS - keys_left,
        ticks,
        to: to_rfc3339(now_ms),
    })
}

#[cfg(test)]
mod tests;
