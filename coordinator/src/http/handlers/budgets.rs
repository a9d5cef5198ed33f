//! `GET /api/v1/budgets`: every disruption budget the coordinator knows now (from the
//! lease requests agents made since it started): its key, how many leases it allows,
//! the leases held (host, action, expiry), the actions waiting, and the grants of the
//! last hour.

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
    /// `policy`, or `policy/label=value` for a budget split by a label.
    pub key: String,
    /// The policy.
    pub policy: String,
    /// `max_concurrent` as the policy writes it (`2`, `10%`).
    pub max_concurrent: String,
    /// Leases allowed at once now (a share resolved over the label group).
    pub max: u32,
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
            max_concurrent: view.max_concurrent,
            max: view.max,
            held: view.leases.len(),
            leases: view
                .leases
                .into_iter()
                .map(|l| LeaseJson {
                    host: l.host,
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
