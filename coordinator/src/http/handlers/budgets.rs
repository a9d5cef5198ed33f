//! `GET /api/v1/budgets`: every disruption budget the coordinator knows now (from the
//! lease requests agents made since it started): its key, how many leases it allows and
//! where that limit comes from (a bundle group, the coordinator's policies, or the
//! agents' declaration), the leases held (host, policy, action, expiry), the actions
//! waiting, and the grants of the last hour.

use std::sync::Arc;

use serde::Serialize;
use warp::reply::{Reply, Response};

use crate::budgets::table::BudgetView;
use crate::http::Api;

/// The answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BudgetList {
    /// How long a lease lasts unless renewed, seconds.
    pub lease_ttl_seconds: f64,
    /// The budgets, by key.
    pub budgets: Vec<BudgetJson>,
}

/// One budget.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BudgetJson {
    /// `policy`, or `policy/label=value` for a budget split by a label; `@group…` for a
    /// bundle group's pool; `policy#2[,20/h]…` for limits an agent declared for a policy
    /// the coordinator does not know.
    pub key: String,
    /// The policy (`@group` for a bundle group's pool).
    pub policy: String,
    /// Where the limits come from: `bundle` (the policy's own budget in a bundle),
    /// `bundle_group` (the group's `group.yaml` budget), `coordinator` (the
    /// coordinator's policies) or `agent` (declared by the agents).
    pub source: String,
    /// The bundle group, for `bundle` and `bundle_group`.
    pub group: Option<String>,
    /// `max_concurrent` as the policy writes it (`2`, `10%`).
    pub max_concurrent: String,
    /// Leases allowed at once now (a share resolved over the label group).
    pub max: u32,
    /// Grants allowed per rolling hour, if limited.
    pub max_per_hour: Option<u32>,
    /// Leases held now.
    pub held: usize,
    /// The leases.
    pub leases: Vec<LeaseJson>,
    /// Actions waiting for a lease now (`deferred: budget`).
    pub deferred: usize,
    /// Actions told to wait since the coordinator started.
    pub deferred_total: u64,
    /// Leases granted in the last hour.
    pub granted_last_hour: usize,
}

/// One lease.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LeaseJson {
    /// The host holding it.
    pub host: String,
    /// The policy whose action holds it.
    pub policy: String,
    /// The action it is for.
    pub action_id: String,
    /// When it was granted (RFC 3339).
    pub granted_at: String,
    /// When it frees itself unless renewed (RFC 3339).
    pub expires_at: String,
}

impl From<BudgetView> for BudgetJson {
    fn from(view: BudgetView) -> BudgetJson {
        BudgetJson {
            key: view.key,
            policy: view.policy,
            source: view.source.as_str().to_string(),
            group: view.source.group().map(str::to_string),
            max_concurrent: view.max_concurrent,
            max: view.max,
            max_per_hour: view.max_per_hour,
            held: view.leases.len(),
            leases: view
                .leases
                .into_iter()
                .map(|l| LeaseJson {
                    host: l.host,
                    policy: l.policy,
                    action_id: l.action_id,
                    granted_at: vigil_shared::time::to_rfc3339(l.granted_at_ms),
                    expires_at: vigil_shared::time::to_rfc3339(l.expires_at_ms),
                })
                .collect(),
            deferred: view.deferred,
            deferred_total: view.deferred_total,
            granted_last_hour: view.granted_last_hour,
        }
    }
}

/// `GET /api/v1/budgets`.
pub async fn list(api: Arc<Api>) -> Response {
    let budgets = api.budgets.view();
    warp::reply::json(&BudgetList {
        lease_ttl_seconds: api.budgets.ttl_ms() as f64 / 1000.0,
        budgets: budgets.into_iter().map(BudgetJson::from).collect(),
    })
    .into_response()
}
