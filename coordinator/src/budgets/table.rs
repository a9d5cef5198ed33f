//! The lease table: for every disruption budget (its key, see [`Terms`]), the leases held
//! now, the grants of the last hour, and the actions waiting. Pure: time comes in as
//! `now_ms`, and the budget's terms (key, limits, where they come from) come decided
//! with each request ([`super::authority`]).
//!
//! Rules:
//! - a host holds at most one lease per budget (the budget counts disrupted hosts); a
//!   second action of the same host waits for the first to end;
//! - a lease lasts `ttl` from its grant or last renewal, then frees itself;
//! - a grant needs a free place (`held < max`) and, with `max_per_hour`, fewer grants than
//!   that in the last hour;
//! - during the first `ttl` after the coordinator started (the table is in memory), no new
//!   lease is granted, so that agents whose actions still run can renew theirs first;
//! - a renewal of a lease the table does not know (it expired, or the coordinator
//!   restarted) re-records it: the action is running whatever the table says.
//!
//! Bounded: at most [`MAX_BUDGETS`] budgets (idle ones are forgotten after an hour), at
//! most `max` leases per budget (renewals at most [`MAX_BUDGET`]), at most
//! [`MAX_WAITING`] waiting actions and [`MAX_BUDGET`] grant times per budget.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use vigil_shared::lease::{LeaseAnswer, LeaseOp, LeaseOutcome, LeaseRequest};
use vigil_shared::policy::budget::MAX_BUDGET;

/// Most budgets tracked at once.
pub const MAX_BUDGETS: usize = 10_000;
/// Most waiting actions remembered per budget.
pub const MAX_WAITING: usize = 10_000;
/// A waiting action not asked about again for this long is no longer counted as waiting.
pub const WAITING_FORGET_MS: i64 = 30_000;
const HOUR_MS: i64 = 3_600_000;

/// Where a budget's limits come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BudgetSource {
    /// The policy's own `budget:` in the signed bundle of this group.
    Bundle {
        /// The bundle group.
        group: String,
    },
    /// The `budget:` of this group's `group.yaml`: one pool for the group's policies.
    BundleGroup {
        /// The bundle group.
        group: String,
    },
    /// The coordinator's policies (`--policies` directory or REST).
    Coordinator,
    /// The requesting agent's own declaration (a policy the coordinator does not know);
    /// the key holds the declared limits, so each declaration is a budget of its own.
    #[default]
    Agent,
}

impl BudgetSource {
    /// `bundle`, `bundle_group`, `coordinator` or `agent`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BudgetSource::Bundle { .. } => "bundle",
            BudgetSource::BundleGroup { .. } => "bundle_group",
            BudgetSource::Coordinator => "coordinator",
            BudgetSource::Agent => "agent",
        }
    }

    /// The bundle group, if the limits come from one.
    pub fn group(&self) -> Option<&str> {
        match self {
            BudgetSource::Bundle { group } | BudgetSource::BundleGroup { group } => Some(group),
            BudgetSource::Coordinator | BudgetSource::Agent => None,
        }
    }
}

/// The budget a request counts against, as the coordinator decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The budget key.
    pub key: String,
    /// The policy (for a group pool, `@group`).
    pub policy: String,
    /// `max_concurrent` as written (`2`, `10%`).
    pub written: String,
    /// Leases allowed at once now (a share resolved over the label group).
    pub max: u32,
    /// Grants allowed per rolling hour.
    pub max_per_hour: Option<u32>,
    /// Where the limits come from.
    pub source: BudgetSource,
}

impl Terms {
    /// The terms `request` declares, under its own key (`policy[/label=value]`), allowing
    /// `max` at once.
    pub fn declared(request: &LeaseRequest, max: u32, source: BudgetSource) -> Terms {
        Terms {
            key: request.key(),
            policy: request.policy.clone(),
            written: request.max.to_string(),
            max,
            max_per_hour: request.max_per_hour,
            source,
        }
    }
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The host holding it.
    pub host: String,
    /// The policy whose action holds it (in a group pool, one of the group's).
    pub policy: String,
    /// The action it is for.
    pub action_id: String,
    /// When it was granted, epoch ms.
    pub granted_at_ms: i64,
    /// When it frees itself unless renewed, epoch ms.
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct Budget {
    policy: String,
    /// The `max_concurrent` as written by the last request (`2`, `10%`).
    written: String,
    /// The places it allowed at the last request.
    max: u32,
    /// Grants allowed per rolling hour.
    max_per_hour: Option<u32>,
    /// Where its limits come from.
    source: BudgetSource,
    /// Host → its lease.
    leases: BTreeMap<String, Lease>,
    /// Grant times within the last hour, oldest first.
    granted: VecDeque<i64>,
    /// (host, action) → when it last asked and was told to wait.
    waiting: BTreeMap<(String, String), i64>,
    /// Actions told to wait since the budget was created (each counted once).
    deferred_total: u64,
    /// Last request of any kind, epoch ms.
    used_ms: i64,
}

/// A budget as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetView {
    /// The budget key (`policy` or `policy/label=value`).
    pub key: String,
    /// The policy.
    pub policy: String,
    /// `max_concurrent` as written.
    pub max_concurrent: String,
    /// Leases allowed at once now.
    pub max: u32,
    /// Grants allowed per rolling hour.
    pub max_per_hour: Option<u32>,
    /// Where the limits come from.
    pub source: BudgetSource,
    /// The leases held.
    pub leases: Vec<Lease>,
    /// Actions waiting for a lease now.
    pub deferred: usize,
    /// Actions told to wait since the coordinator started.
    pub deferred_total: u64,
    /// Leases granted in the last hour.
    pub granted_last_hour: usize,
}

/// The lease table.
#[derive(Debug)]
pub struct LeaseTable {
    ttl_ms: i64,
    grace_until_ms: i64,
    budgets: BTreeMap<String, Budget>,
}

impl LeaseTable {
    /// An empty table whose leases last `ttl_ms`, started at `now_ms` (no new grants for
    /// one TTL).
    pub fn new(ttl_ms: i64, now_ms: i64) -> LeaseTable {
        LeaseTable {
            ttl_ms: ttl_ms.max(1),
            grace_until_ms: now_ms.saturating_add(ttl_ms.max(1)),
            budgets: BTreeMap::new(),
        }
    }

    /// An empty table that grants at once.
    #[cfg(test)]
    pub fn without_grace(mut self) -> LeaseTable {
        self.grace_until_ms = i64::MIN;
        self
    }

    /// How long a lease lasts, ms.
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Decides `request` (already checked) under `terms`: its budget's key and limits,
    /// `max_concurrent` resolved for the label group's size.
    pub fn decide(&mut self, request: &LeaseRequest, terms: &Terms, now_ms: i64) -> LeaseAnswer {
        let key = terms.key.clone();
        let max = terms.max;
        if let Some(budget) = self.budgets.get_mut(&key) {
            expire(budget, now_ms);
        }
        if !self.budgets.contains_key(&key) && self.budgets.len() >= MAX_BUDGETS {
            self.forget_idle(now_ms);
        }
        let ttl_ms = self.ttl_ms;
        let in_grace = now_ms < self.grace_until_ms;
        let answer = |outcome, budget: Option<&Budget>, reason: Option<String>| LeaseAnswer {
            host: request.host.clone(),
            request_id: request.request_id.clone(),
            action_id: request.action_id.clone(),
            key: key.clone(),
            outcome,
            ttl_ms: u64::try_from(ttl_ms).unwrap_or(0),
            held: budget.map_or(0, |b| u32::try_from(b.leases.len()).unwrap_or(u32::MAX)),
            max,
            reason,
            coordinator_ms: now_ms,
        };
        if !self.budgets.contains_key(&key) {
            if request.op == LeaseOp::Release {
                return answer(LeaseOutcome::Released, None, None);
            }
            if self.budgets.len() >= MAX_BUDGETS {
                return answer(
                    LeaseOutcome::Deferred,
                    None,
                    Some(format!(
                        "the coordinator tracks {MAX_BUDGETS} budgets already (its limit)"
                    )),
                );
            }
        }
        let budget = self.budgets.entry(key.clone()).or_default();
        budget.policy = terms.policy.clone();
        budget.written = terms.written.clone();
        budget.max = max;
        budget.max_per_hour = terms.max_per_hour;
        budget.source = terms.source.clone();
        budget.used_ms = now_ms;
        let host = &request.host;
        let waiting_key = (host.clone(), request.action_id.clone());
        match request.op {
            LeaseOp::Release => {
                if budget
                    .leases
                    .get(host)
                    .is_some_and(|l| l.action_id == request.action_id)
                {
                    budget.leases.remove(host);
                }
                budget.waiting.remove(&waiting_key);
                answer(LeaseOutcome::Released, Some(budget), None)
            }
            LeaseOp::Renew | LeaseOp::Acquire => {
                let expires_at_ms = now_ms.saturating_add(ttl_ms);
                if let Some(lease) = budget.leases.get_mut(host) {
                    if lease.action_id == request.action_id {
                        lease.expires_at_ms = expires_at_ms;
                        return answer(LeaseOutcome::Granted, Some(budget), None);
                    }
                    let reason = format!(
                        "budget `{key}`: this host already holds its lease for action {}",
                        lease.action_id
                    );
                    note_waiting(budget, waiting_key, now_ms);
                    return answer(LeaseOutcome::Deferred, Some(budget), Some(reason));
                }
                let cap = if request.op == LeaseOp::Renew {
                    // The action runs whatever the table says: record it, within bounds.
                    MAX_BUDGET
                } else {
                    max
                };
                let full = u32::try_from(budget.leases.len()).unwrap_or(u32::MAX) >= cap;
                let reason = if full {
                    let holders: Vec<&str> = budget.leases.keys().map(String::as_str).collect();
                    Some(format!(
                        "budget `{key}` is spent: {} of {} leases held (by {})",
                        budget.leases.len(),
                        max,
                        holders.join(", ")
                    ))
                } else if request.op == LeaseOp::Renew {
                    None
                } else if in_grace {
                    Some(format!(
                        "the coordinator started less than a lease TTL ({} ms) ago: it grants \
                         once running actions have renewed their leases",
                        ttl_ms
                    ))
                } else {
                    match terms.max_per_hour {
                        Some(per_hour) if budget.granted.len() >= per_hour as usize => {
                            Some(format!(
                                "budget `{key}`: {} leases granted in the last hour (max_per_hour {per_hour})",
                                budget.granted.len()
                            ))
                        }
                        _ => None,
                    }
                };
                if let Some(reason) = reason {
                    note_waiting(budget, waiting_key, now_ms);
                    return answer(LeaseOutcome::Deferred, Some(budget), Some(reason));
                }
                budget.waiting.remove(&waiting_key);
                budget.leases.insert(
                    host.clone(),
                    Lease {
                        host: host.clone(),
                        policy: request.policy.clone(),
                        action_id: request.action_id.clone(),
                        granted_at_ms: now_ms,
                        expires_at_ms,
                    },
                );
                if request.op == LeaseOp::Acquire {
                    if budget.granted.len() >= MAX_BUDGET as usize {
                        budget.granted.pop_front();
                    }
                    budget.granted.push_back(now_ms);
                }
                answer(LeaseOutcome::Granted, Some(budget), None)
            }
        }
    }

    /// Drops expired leases, grants older than an hour, and waiting actions no longer
    /// asking.
    pub fn expire(&mut self, now_ms: i64) {
        for budget in self.budgets.values_mut() {
            expire(budget, now_ms);
        }
    }

    /// Forgets budgets with no lease, no waiting action and no grant in the last hour
    /// that nobody asked about for an hour.
    fn forget_idle(&mut self, now_ms: i64) {
        self.budgets.retain(|_, b| {
            !b.leases.is_empty()
                || !b.waiting.is_empty()
                || !b.granted.is_empty()
                || now_ms.saturating_sub(b.used_ms) < HOUR_MS
        });
    }

    /// Every budget, by key.
    pub fn view(&mut self, now_ms: i64) -> Vec<BudgetView> {
        self.expire(now_ms);
        self.forget_idle(now_ms);
        self.budgets
            .iter()
            .map(|(key, b)| BudgetView {
                key: key.clone(),
                policy: b.policy.clone(),
                max_concurrent: b.written.clone(),
                max: b.max,
                max_per_hour: b.max_per_hour,
                source: b.source.clone(),
                leases: b.leases.values().cloned().collect(),
                deferred: b.waiting.len(),
                deferred_total: b.deferred_total,
                granted_last_hour: b.granted.len(),
            })
            .collect()
    }
}

fn expire(budget: &mut Budget, now_ms: i64) {
    budget.leases.retain(|_, l| l.expires_at_ms > now_ms);
    while budget
        .granted
        .front()
        .is_some_and(|t| now_ms.saturating_sub(*t) >= HOUR_MS)
    {
        budget.granted.pop_front();
    }
    budget
        .waiting
        .retain(|_, asked| now_ms.saturating_sub(*asked) < WAITING_FORGET_MS);
}

fn note_waiting(budget: &mut Budget, key: (String, String), now_ms: i64) {
    if let Some(asked) = budget.waiting.get_mut(&key) {
        *asked = now_ms;
        return;
    }
    if budget.waiting.len() < MAX_WAITING {
        budget.waiting.insert(key, now_ms);
        budget.deferred_total += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::policy::budget::BudgetMax;

    impl BudgetView {
        fn written_or_source(&self) -> (&str, &str) {
            (self.max_concurrent.as_str(), self.source.as_str())
        }
    }

    const T: i64 = 1_700_000_000_000;
    const TTL: i64 = 10_000;

    fn request(host: &str, action: &str, op: LeaseOp) -> LeaseRequest {
        LeaseRequest {
            host: host.into(),
            request_id: format!("r-{host}-{action}"),
            action_id: action.into(),
            policy: "restart-web".into(),
            per: Some(("role".into(), "web".into())),
            max: BudgetMax::Count(2),
            max_per_hour: None,
            op,
            sent_at_ms: T,
        }
    }

    fn table() -> LeaseTable {
        LeaseTable::new(TTL, T).without_grace()
    }

    impl LeaseTable {
        /// Decides `r` under the terms it declares, allowing `max`.
        fn ask(&mut self, r: &LeaseRequest, max: u32, now_ms: i64) -> LeaseAnswer {
            self.decide(r, &Terms::declared(r, max, BudgetSource::Agent), now_ms)
        }
    }

    #[test]
    fn the_terms_decide_not_the_request_and_one_key_pools_several_policies() {
        let mut t = table();
        let pool = Terms {
            key: "@web/role=web".into(),
            policy: "@web".into(),
            written: "1".into(),
            max: 1,
            max_per_hour: None,
            source: BudgetSource::BundleGroup {
                group: "web".into(),
            },
        };
        let mut loose = request("h1", "a1", LeaseOp::Acquire);
        loose.max = BudgetMax::Count(100);
        let first = t.decide(&loose, &pool, T);
        assert_eq!(first.outcome, LeaseOutcome::Granted);
        assert_eq!((first.key.as_str(), first.max), ("@web/role=web", 1));
        // Another policy of the group on another host, also claiming 100: same pool.
        let mut other = request("h2", "a2", LeaseOp::Acquire);
        other.policy = "restart-db".into();
        other.max = BudgetMax::Count(100);
        let second = t.decide(&other, &pool, T + 1);
        assert_eq!(second.outcome, LeaseOutcome::Deferred);
        assert!(second.reason.unwrap().contains("1 of 1"));
        let view = t.view(T + 2);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].written_or_source(), ("1", "bundle_group"));
        assert_eq!(view[0].leases[0].policy, "restart-web");
    }

    #[test]
    fn grants_up_to_max_then_defers_until_a_lease_is_released() {
        let mut t = table();
        let a = t.ask(&request("h1", "a1", LeaseOp::Acquire), 2, T);
        assert_eq!(a.outcome, LeaseOutcome::Granted);
        assert_eq!(a.key, "restart-web/role=web");
        assert_eq!((a.held, a.max, a.ttl_ms), (1, 2, TTL as u64));
        assert_eq!(
            t.ask(&request("h2", "a2", LeaseOp::Acquire), 2, T).outcome,
            LeaseOutcome::Granted
        );
        let third = t.ask(&request("h3", "a3", LeaseOp::Acquire), 2, T + 1);
        assert_eq!(third.outcome, LeaseOutcome::Deferred);
        let reason = third.reason.unwrap();
        assert!(
            reason.contains("2 of 2") && reason.contains("h1, h2"),
            "{reason}"
        );
        // Asking again is the same wait, counted once.
        t.ask(&request("h3", "a3", LeaseOp::Acquire), 2, T + 2);
        let view = t.view(T + 3);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].deferred, 1);
        assert_eq!(view[0].deferred_total, 1);
        assert_eq!(view[0].granted_last_hour, 2);
        assert_eq!(view[0].leases.len(), 2);
        // A release by someone else's action id frees nothing.
        t.ask(&request("h1", "other", LeaseOp::Release), 2, T + 4);
        assert_eq!(
            t.ask(&request("h3", "a3", LeaseOp::Acquire), 2, T + 5)
                .outcome,
            LeaseOutcome::Deferred
        );
        let freed = t.ask(&request("h1", "a1", LeaseOp::Release), 2, T + 6);
        assert_eq!(freed.outcome, LeaseOutcome::Released);
        assert_eq!(freed.held, 1);
        assert_eq!(
            t.ask(&request("h3", "a3", LeaseOp::Acquire), 2, T + 7)
                .outcome,
            LeaseOutcome::Granted
        );
        assert_eq!(t.view(T + 8)[0].deferred, 0);
    }

    #[test]
    fn a_lease_not_renewed_frees_itself_after_its_ttl_and_renewals_keep_it() {
        let mut t = table();
        t.ask(&request("h1", "a1", LeaseOp::Acquire), 1, T);
        t.ask(&request("h2", "a2", LeaseOp::Acquire), 1, T);
        // h1 renews before its TTL: still held, h2 still waits.
        let renewed = t.ask(&request("h1", "a1", LeaseOp::Renew), 1, T + TTL - 1);
        assert_eq!(renewed.outcome, LeaseOutcome::Granted);
        assert_eq!(
            t.ask(&request("h2", "a2", LeaseOp::Acquire), 1, T + TTL + 1)
                .outcome,
            LeaseOutcome::Deferred
        );
        // h1 dies: one TTL after its last renewal the place is free.
        assert_eq!(
            t.ask(&request("h2", "a2", LeaseOp::Acquire), 1, T + 2 * TTL - 1)
                .outcome,
            LeaseOutcome::Granted
        );
        assert_eq!(t.view(T + 2 * TTL)[0].leases[0].host, "h2");
    }

    #[test]
    fn one_lease_per_host_and_budget() {
        let mut t = table();
        t.ask(&request("h1", "a1", LeaseOp::Acquire), 5, T);
        let second = t.ask(&request("h1", "a2", LeaseOp::Acquire), 5, T);
        assert_eq!(second.outcome, LeaseOutcome::Deferred);
        assert!(second.reason.unwrap().contains("already holds"));
        // Another label group is another budget.
        let mut db = request("h1", "a3", LeaseOp::Acquire);
        db.per = Some(("role".into(), "db".into()));
        assert_eq!(t.ask(&db, 5, T).outcome, LeaseOutcome::Granted);
        assert_eq!(t.view(T).len(), 2);
    }

    #[test]
    fn max_per_hour_counts_grants_in_a_rolling_hour() {
        let mut t = table();
        let ask = |action: &str| {
            let mut r = request("h1", action, LeaseOp::Acquire);
            r.max_per_hour = Some(2);
            r
        };
        for (i, action) in ["a1", "a2"].iter().enumerate() {
            let at = T + i as i64 * 1000;
            assert_eq!(t.ask(&ask(action), 5, at).outcome, LeaseOutcome::Granted);
            t.ask(&request("h1", action, LeaseOp::Release), 5, at + 1);
        }
        let third = t.ask(&ask("a3"), 5, T + 5000);
        assert_eq!(third.outcome, LeaseOutcome::Deferred);
        assert!(third.reason.unwrap().contains("max_per_hour 2"));
        assert_eq!(
            t.ask(&ask("a3"), 5, T + HOUR_MS).outcome,
            LeaseOutcome::Granted
        );
    }

    #[test]
    fn a_restarted_table_waits_one_ttl_but_takes_renewals() {
        let mut t = LeaseTable::new(TTL, T);
        let fresh = t.ask(&request("h2", "a2", LeaseOp::Acquire), 1, T + 1);
        assert_eq!(fresh.outcome, LeaseOutcome::Deferred);
        assert!(fresh.reason.unwrap().contains("started less than"));
        // A running action renews the lease it held before the restart.
        assert_eq!(
            t.ask(&request("h1", "a1", LeaseOp::Renew), 1, T + 2)
                .outcome,
            LeaseOutcome::Granted
        );
        // After the grace, the budget is what the renewals left.
        assert_eq!(
            t.ask(&request("h2", "a2", LeaseOp::Acquire), 1, T + TTL + 1)
                .outcome,
            LeaseOutcome::Deferred
        );
    }

    #[test]
    fn the_number_of_budgets_and_waiting_actions_is_bounded() {
        let mut t = table();
        for i in 0..MAX_BUDGETS + 5 {
            let mut r = request("h1", "a1", LeaseOp::Acquire);
            r.policy = format!("p{i}");
            let a = t.ask(&r, 1, T);
            if i >= MAX_BUDGETS {
                assert_eq!(a.outcome, LeaseOutcome::Deferred);
            }
        }
        assert_eq!(t.budgets.len(), MAX_BUDGETS);
        let mut t = table();
        t.ask(&request("h0", "a0", LeaseOp::Acquire), 1, T);
        for i in 0..MAX_WAITING + 5 {
            t.ask(
                &request(&format!("h{}", i + 1), "a", LeaseOp::Acquire),
                1,
                T,
            );
        }
        let view = t.view(T);
        assert_eq!(view[0].deferred, MAX_WAITING);
        // Waiting actions that stop asking are forgotten.
        assert_eq!(t.view(T + WAITING_FORGET_MS)[0].deferred, 0);
    }
}
