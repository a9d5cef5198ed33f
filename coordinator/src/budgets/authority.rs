//! Whose limits decide a lease request: the coordinator's copy of the budget whenever it
//! has one, the requesting agent's declaration only for a policy it does not know.
//!
//! For a request from host H for policy P:
//!
//! 1. **Bundles.** The first bundle group (by name, as agents break name clashes between
//!    groups) whose selector H's labels (its last status) match and that holds P decides:
//!    P's own budget (key `P[/label=value]`), else the group's `group.yaml` budget when it
//!    applies to P (one pool per group, key `@GROUP[/label=value]`), else P has no budget.
//! 2. **Coordinator policies** (`--policies` directory, or created over REST): P's budget
//!    there (key `P[/label=value]`).
//! 3. **Unknown** (an agent-local policy file): the agent's declaration, under a key that
//!    holds the declared limits (`P#2[,20/h][/label=value]`). Hosts declaring the same
//!    limits share a budget; a host declaring other limits (looser or tighter) gets a
//!    budget of its own, so no declaration changes a budget another host counts on.
//!    Policy and group names never contain `#` or `@`, so the three kinds of key never
//!    meet.
//!
//! When the coordinator knows P and the request declares other limits (`max_concurrent`,
//! `per`, `max_per_hour`) than its copy, or declares a budget its copy does not have, the
//! request is still decided by the coordinator's copy (or, with no budget there, under the
//! agent-declared key) and counted as a mismatch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_shared::bundle::selects;
use vigil_shared::lease::{budget_key, LeaseRequest};
use vigil_shared::policy::budget::{Budget, BudgetMax};
use vigil_shared::wire::Tag;

use super::table::{BudgetSource, Terms};

/// Which budget a policy of a group takes its leases from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyBudget {
    /// Its own `budget:`.
    Own(Budget),
    /// The group's budget (one pool for the group).
    Group(Budget),
    /// None: its actions take no lease.
    Unbudgeted,
}

/// The budgets of a group's policies as the coordinator enforces them for the group's
/// hosts (the same rule agents apply to the signed bundle).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupBudgets {
    /// The group's budget from `group.yaml`.
    pub group: Option<Budget>,
    /// Every policy of the group (policy files and manifest) by name.
    pub policies: BTreeMap<String, PolicyBudget>,
}

/// What the coordinator's own copies say about a policy's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Its budget, where it comes from, and (for a group budget) the group whose pool
    /// it counts against.
    Budget {
        /// The budget.
        budget: Budget,
        /// Where it comes from.
        source: BudgetSource,
    },
    /// The coordinator knows the policy (from `source`) and it has no budget.
    Unbudgeted {
        /// Where the policy comes from.
        source: BudgetSource,
    },
    /// Not a policy the coordinator publishes to this host or holds itself.
    Unknown,
}

/// One published group, as [`lookup`] reads it.
pub struct GroupView<'a> {
    /// The group.
    pub group: &'a str,
    /// Its selector.
    pub selector: &'a [Tag],
    /// Its policies' budgets.
    pub budgets: &'a GroupBudgets,
}

/// What the coordinator knows of `policy` for a host with `labels`: from the first of
/// `groups` (sorted by name) that selects the host and holds the policy, else from its
/// own policies (`coordinator`: `None` for a policy it does not hold, `Some(None)` for one
/// without a budget).
pub fn lookup(
    groups: &[GroupView<'_>],
    coordinator: impl FnOnce(&str) -> Option<Option<Budget>>,
    labels: &[Tag],
    policy: &str,
) -> Known {
    for view in groups {
        if !selects(view.selector, labels) {
            continue;
        }
        let Some(which) = view.budgets.policies.get(policy) else {
            continue;
        };
        let group = view.group.to_string();
        return match which {
            PolicyBudget::Own(budget) => Known::Budget {
                budget: budget.clone(),
                source: BudgetSource::Bundle { group },
            },
            PolicyBudget::Group(budget) => Known::Budget {
                budget: budget.clone(),
                source: BudgetSource::BundleGroup { group },
            },
            PolicyBudget::Unbudgeted => Known::Unbudgeted {
                source: BudgetSource::Bundle { group },
            },
        };
    }
    match coordinator(policy) {
        Some(Some(budget)) => Known::Budget {
            budget,
            source: BudgetSource::Coordinator,
        },
        Some(None) => Known::Unbudgeted {
            source: BudgetSource::Coordinator,
        },
        None => Known::Unknown,
    }
}

/// The terms a request is decided by (with `max` still to resolve for a share: the
/// returned `BudgetMax` and the `per` label group), and the source of the coordinator's
/// copy when the request's declaration differs from it.
pub struct Decision {
    /// Key, limits and source (`max` is 0 until resolved).
    pub terms: Terms,
    /// `max_concurrent` to resolve.
    pub max: BudgetMax,
    /// The label group a share is taken of.
    pub per: Option<(String, String)>,
    /// The coordinator's copy differs from the declaration: where that copy comes from.
    pub mismatch: Option<BudgetSource>,
}

/// Decides whose limits apply to `request` from a host with `labels`, given what the
/// coordinator knows.
pub fn decide(known: Known, request: &LeaseRequest, labels: &[Tag]) -> Decision {
    let (budget, source) = match known {
        Known::Budget { budget, source } => (budget, source),
        Known::Unbudgeted { source } => {
            let mut decision = declared(request);
            decision.mismatch = Some(source);
            return decision;
        }
        Known::Unknown => return declared(request),
    };
    let per = budget.per_value(labels);
    let differs = request.max != budget.max
        || request.max_per_hour != budget.max_per_hour
        || request.per.as_ref().map(|(label, _)| label) != budget.per.as_ref();
    let (key, policy) = match &source {
        BudgetSource::BundleGroup { group } => {
            let pool = format!("@{group}");
            (budget_key(&pool, per.as_ref()), pool)
        }
        _ => (
            budget_key(&request.policy, per.as_ref()),
            request.policy.clone(),
        ),
    };
    Decision {
        terms: Terms {
            key,
            policy,
            written: budget.max.to_string(),
            max: 0,
            max_per_hour: budget.max_per_hour,
            source: source.clone(),
        },
        max: budget.max,
        per,
        mismatch: differs.then_some(source),
    }
}

/// The agent's own declaration, under a key holding the declared limits.
fn declared(request: &LeaseRequest) -> Decision {
    let mut base = format!("{}#{}", request.policy, request.max);
    if let Some(per_hour) = request.max_per_hour {
        base.push_str(&format!(",{per_hour}/h"));
    }
    Decision {
        terms: Terms {
            key: budget_key(&base, request.per.as_ref()),
            policy: request.policy.clone(),
            written: request.max.to_string(),
            max: 0,
            max_per_hour: request.max_per_hour,
            source: BudgetSource::Agent,
        },
        max: request.max,
        per: request.per.clone(),
        mismatch: None,
    }
}

/// How often one (host, policy) pair's mismatch is logged at most.
pub const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(600);
/// Most (host, policy) pairs remembered for [`MismatchLog`].
pub const MISMATCH_LOG_PAIRS: usize = 10_000;

/// Says whether a mismatch should be logged: the first of each (host, policy) pair, then
/// at most once per [`MISMATCH_LOG_EVERY`]; at most [`MISMATCH_LOG_PAIRS`] pairs are
/// remembered (when full, pairs not logged for a period are forgotten; if none is, new
/// pairs are not logged, only counted).
#[derive(Default)]
pub struct MismatchLog {
    last: HashMap<(String, String), Instant>,
}

impl MismatchLog {
    /// Whether to log the mismatch of `host` for `policy` now.
    pub fn should_log(&mut self, host: &str, policy: &str, now: Instant) -> bool {
        let key = (host.to_string(), policy.to_string());
        if let Some(at) = self.last.get_mut(&key) {
            if now.saturating_duration_since(*at) < MISMATCH_LOG_EVERY {
                return false;
            }
            *at = now;
            return true;
        }
        if self.last.len() >= MISMATCH_LOG_PAIRS {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < MISMATCH_LOG_EVERY);
            if self.last.len() >= MISMATCH_LOG_PAIRS {
                return false;
            }
        }
        self.last.insert(key, now);
        true
    }
}

/// Where the coordinator's copies of budgets are: the published bundles and its own
/// policies (both above this layer; the application wires them in).
pub trait Catalog: Send + Sync {
    /// Every published group's name, selector and policy budgets, sorted by name.
    fn groups(&self) -> Vec<(String, Vec<Tag>, Arc<GroupBudgets>)>;

    /// The budget of the coordinator's own policy `name`: `None` when it has no such
    /// policy, `Some(None)` when it has one without a budget.
    fn coordinator_budget(&self, name: &str) -> Option<Option<Budget>>;
}

/// What `catalog` knows of `policy` for a host with `labels`.
pub fn lookup_in(catalog: &dyn Catalog, labels: &[Tag], policy: &str) -> Known {
    let groups = catalog.groups();
    let views: Vec<GroupView<'_>> = groups
        .iter()
        .map(|(group, selector, budgets)| GroupView {
            group,
            selector,
            budgets,
        })
        .collect();
    lookup(
        &views,
        |name| catalog.coordinator_budget(name),
        labels,
        policy,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::lease::LeaseOp;
    use vigil_shared::policy::budget::OfflineMode;

    fn budget(max: u32, per: Option<&str>) -> Budget {
        Budget {
            max: BudgetMax::Count(max),
            per: per.map(str::to_string),
            max_per_hour: None,
            offline: OfflineMode::Wait,
        }
    }

    fn request(policy: &str, max: u32, per: Option<(&str, &str)>) -> LeaseRequest {
        LeaseRequest {
            host: "h1".into(),
            request_id: "r".into(),
            action_id: "a".into(),
            policy: policy.into(),
            per: per.map(|(l, v)| (l.into(), v.into())),
            max: BudgetMax::Count(max),
            max_per_hour: None,
            op: LeaseOp::Acquire,
            sent_at_ms: 0,
        }
    }

    fn web() -> GroupBudgets {
        let mut policies = BTreeMap::new();
        policies.insert("own".into(), PolicyBudget::Own(budget(1, None)));
        policies.insert(
            "pooled".into(),
            PolicyBudget::Group(budget(2, Some("role"))),
        );
        policies.insert("plain".into(), PolicyBudget::Unbudgeted);
        GroupBudgets {
            group: Some(budget(2, Some("role"))),
            policies,
        }
    }

    fn labels() -> Vec<Tag> {
        vec![("role".into(), "web".into())]
    }

    #[test]
    fn a_bundled_budget_wins_over_the_declaration_and_the_mismatch_is_reported() {
        let budgets = web();
        let selector = labels();
        let groups = [GroupView {
            group: "web",
            selector: &selector,
            budgets: &budgets,
        }];
        let known = lookup(&groups, |_| None, &labels(), "own");
        let d = decide(known, &request("own", 100, None), &labels());
        assert_eq!((d.terms.key.as_str(), d.max), ("own", BudgetMax::Count(1)));
        assert_eq!(
            d.mismatch,
            Some(BudgetSource::Bundle {
                group: "web".into()
            })
        );
        // The same limits declared: no mismatch.
        let known = lookup(&groups, |_| None, &labels(), "own");
        assert_eq!(
            decide(known, &request("own", 1, None), &labels()).mismatch,
            None
        );
        // A host outside the group's selector: the coordinator does not know it for them.
        let db = vec![("role".to_string(), "db".to_string())];
        assert_eq!(lookup(&groups, |_| None, &db, "own"), Known::Unknown);
    }

    #[test]
    fn a_group_budget_is_one_pool_per_group_and_label_value() {
        let budgets = web();
        let selector = labels();
        let groups = [GroupView {
            group: "web",
            selector: &selector,
            budgets: &budgets,
        }];
        let known = lookup(&groups, |_| None, &labels(), "pooled");
        let d = decide(
            known,
            &request("pooled", 2, Some(("role", "web"))),
            &labels(),
        );
        assert_eq!(d.terms.key, "@web/role=web");
        assert_eq!(d.terms.policy, "@web");
        assert_eq!(d.per, Some(("role".into(), "web".into())));
        assert_eq!(d.mismatch, None);
        // Declared without `per` (a stale agent): still the pool, with the host's value.
        let known = lookup(&groups, |_| None, &labels(), "pooled");
        let d = decide(known, &request("pooled", 2, None), &labels());
        assert_eq!(d.terms.key, "@web/role=web");
        assert!(d.mismatch.is_some());
    }

    #[test]
    fn unknown_policies_are_kept_apart_per_declaration() {
        let known = lookup(&[], |_| None, &labels(), "local");
        let two = decide(
            known,
            &request("local", 2, Some(("role", "web"))),
            &labels(),
        );
        assert_eq!(two.terms.key, "local#2/role=web");
        assert_eq!(two.terms.source, BudgetSource::Agent);
        let mut loose = request("local", 100, None);
        loose.max_per_hour = Some(50);
        let hundred = decide(Known::Unknown, &loose, &labels());
        assert_eq!(hundred.terms.key, "local#100,50/h");
        // The coordinator's own policies decide before the declaration.
        let known = lookup(&[], |_| Some(Some(budget(3, None))), &labels(), "local");
        let d = decide(known, &loose, &labels());
        assert_eq!(
            (d.terms.key.as_str(), d.max),
            ("local", BudgetMax::Count(3))
        );
        assert_eq!(d.terms.max_per_hour, None);
        assert_eq!(d.mismatch, Some(BudgetSource::Coordinator));
        // Known without a budget: the declaration, apart, and counted.
        let known = lookup(&[], |_| Some(None), &labels(), "local");
        let d = decide(known, &loose, &labels());
        assert_eq!(d.terms.key, "local#100,50/h");
        assert_eq!(d.mismatch, Some(BudgetSource::Coordinator));
    }

    #[test]
    fn mismatches_are_logged_once_per_pair_and_period_within_a_bound() {
        let mut log = MismatchLog::default();
        let t0 = Instant::now();
        assert!(log.should_log("h1", "p", t0));
        assert!(!log.should_log("h1", "p", t0 + Duration::from_secs(1)));
        assert!(log.should_log("h2", "p", t0));
        assert!(log.should_log("h1", "p", t0 + MISMATCH_LOG_EVERY));
        for i in 0..MISMATCH_LOG_PAIRS * 2 {
            log.should_log(&format!("x{i}"), "p", t0);
        }
        assert!(log.last.len() <= MISMATCH_LOG_PAIRS);
    }
}
