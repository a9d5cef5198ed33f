//! The backtest's disruption budgets: the actions of budgeted policies, from every
//! replayed host, go in time order through a [`LeaseTable`] (the coordinator's own), each
//! asking for a lease as its agent would have. A granted action holds its lease for the
//! policy's verify window (when the engine judges it; real actions usually end sooner,
//! so this errs on the side of deferring); one told to wait asks again whenever a place
//! may have freed up (a lease ended, an hour of `max_per_hour` rolled on), in the order
//! the actions came, until the end of the range.

use std::collections::{BTreeSet, HashMap, VecDeque};

use vigil_shared::lease::{LeaseOp, LeaseOutcome, LeaseRequest};
use vigil_shared::policy::budget::BudgetMax;
use vigil_shared::policy::Policy;

use crate::budgets::service::GroupSizes;
use crate::budgets::table::{BudgetSource, LeaseTable, Terms};
use crate::store::HostRecord;

const HOUR_MS: i64 = 3_600_000;

/// An action of a budgeted policy, as the engine asked for it.
#[derive(Debug, Clone)]
pub struct BudgetedAct {
    /// When the engine asked, epoch ms.
    pub at_ms: i64,
    /// The host (its index in the replayed hosts).
    pub host: usize,
    /// What it acts on.
    pub subject: String,
    /// The policy (its index in the backtest's policies).
    pub policy: usize,
    /// The action as written.
    pub action: String,
}

/// What became of one action.
#[derive(Debug, Clone)]
pub struct BudgetOutcome {
    /// The action.
    pub act: BudgetedAct,
    /// Why it had to wait, if it did (the first answer that deferred it).
    pub deferred: Option<String>,
    /// When it got its lease, if it did within the range.
    pub granted_ms: Option<i64>,
}

/// Runs `acts` (any order) through one lease table per policy, up to `to_ms`.
pub fn simulate(
    policies: &[Policy],
    hosts: &[HostRecord],
    sizes: &GroupSizes,
    mut acts: Vec<BudgetedAct>,
    to_ms: i64,
) -> Vec<BudgetOutcome> {
    acts.sort_by_key(|a| a.at_ms);
    let mut outcomes: Vec<BudgetOutcome> = acts
        .into_iter()
        .map(|act| BudgetOutcome {
            act,
            deferred: None,
            granted_ms: None,
        })
        .collect();
    let mut tables: HashMap<usize, LeaseTable> = HashMap::new();
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut retries: BTreeSet<i64> = BTreeSet::new();
    let mut next = 0;
    loop {
        let arrival = outcomes.get(next).map(|o| o.act.at_ms);
        let retry = if waiting.is_empty() {
            None
        } else {
            retries.first().copied()
        };
        let now = match (arrival, retry) {
            (Some(a), Some(r)) => a.min(r),
            (Some(a), None) => a,
            (None, Some(r)) => r,
            (None, None) => break,
        };
        if now > to_ms {
            break;
        }
        retries.retain(|t| *t > now);
        let mut ask = |i: usize, outcomes: &mut Vec<BudgetOutcome>| -> bool {
            let outcome = &mut outcomes[i];
            let policy = &policies[outcome.act.policy];
            let Some(budget) = &policy.budget else {
                outcome.granted_ms = Some(now);
                return true;
            };
            let hold_ms = i64::try_from(policy.verify.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            // Made so that it grants at once: the replay has no restart grace.
            let table = tables
                .entry(outcome.act.policy)
                .or_insert_with(|| LeaseTable::new(hold_ms, i64::MIN / 2));
            let labels = hosts[outcome.act.host].labels();
            let per = budget.per_value(labels);
            let max = match budget.max {
                BudgetMax::Count(n) => n,
                share @ BudgetMax::Percent(_) => {
                    share.resolve(sizes.get(&per).copied().unwrap_or(0))
                }
            };
            let request = LeaseRequest {
                host: hosts[outcome.act.host].host.clone(),
                request_id: format!("r{i}"),
                action_id: format!("a{i}"),
                policy: policy.name.clone(),
                per,
                max: budget.max,
                max_per_hour: budget.max_per_hour,
                op: LeaseOp::Acquire,
                sent_at_ms: now,
            };
            let terms = Terms::declared(&request, max, BudgetSource::Coordinator);
            let answer = table.decide(&request, &terms, now);
            if answer.outcome == LeaseOutcome::Granted {
                outcome.granted_ms = Some(now);
                retries.insert(now.saturating_add(hold_ms));
                if budget.max_per_hour.is_some() {
                    retries.insert(now.saturating_add(HOUR_MS));
                }
                true
            } else {
                if outcome.deferred.is_none() {
                    outcome.deferred = Some(
                        answer
                            .reason
                            .unwrap_or_else(|| format!("budget `{}` spent", request.key())),
                    );
                }
                false
            }
        };
        let before = std::mem::take(&mut waiting);
        for i in before {
            if !ask(i, &mut outcomes) {
                waiting.push_back(i);
            }
        }
        while outcomes.get(next).is_some_and(|o| o.act.at_ms == now) {
            if !ask(next, &mut outcomes) {
                waiting.push_back(next);
            }
            next += 1;
        }
    }
    outcomes
}
