//! Disruption-budget leases ([`crate::policy::budget`]): what an agent asks the
//! coordinator before a budgeted action, and what the coordinator answers.
//!
//! - A [`LeaseRequest`] travels sealed with the agent's key ([`crate::agent_auth`]) on
//!   `vigil/v1/agents/{host}/leases`: acquire a lease for one action, renew it while the
//!   action runs, release it when the action ends.
//! - A [`LeaseAnswer`] travels signed with the coordinator's key in its own signing
//!   context ([`SigningContext::LeaseAnswer`]) on `vigil/v1/agents/{host}/grants`. An
//!   agent takes an answer only for a request it is still waiting on (its `request_id`,
//!   random per request), so a captured answer replayed later is ignored.
//!
//! A lease lasts `ttl_ms` from the answer unless renewed: a dead agent's lease frees
//! itself.

use serde::{Deserialize, Serialize};

use crate::bundle::SigningContext;
use crate::policy::budget::{BudgetMax, MAX_BUDGET};
use crate::signed::CoordinatorSigned;
use crate::validate::{self, FieldError};
use crate::wire::WireMessage;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    /// A lease for an action about to run.
    Acquire,
    /// Extend the lease of a running action.
    Renew,
    /// The action ended: free the lease.
    Release,
}

/// An agent's lease request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The agent's host.
    pub host: String,
    /// Unique per request (the answer names it).
    pub request_id: String,
    /// The action the lease is for.
    pub action_id: String,
    /// The policy whose budget it is.
    pub policy: String,
    /// The `per` label and this host's value of it (empty when the host has no such
    /// label); `None` for a budget over the whole fleet.
    pub per: Option<(String, String)>,
    /// The budget's `max_concurrent`, as the agent's policy says.
    pub max: BudgetMax,
    /// The budget's `max_per_hour`.
    pub max_per_hour: Option<u32>,
    /// Acquire, renew or release.
    pub op: LeaseOp,
    /// When it was sent, epoch ms (the agent's clock).
    pub sent_at_ms: i64,
}

impl LeaseRequest {
    /// The budget key: the policy's name, plus the `per` label's value.
    pub fn key(&self) -> String {
        budget_key(&self.policy, self.per.as_ref())
    }
}

/// The key of `policy`'s budget for the label group `per` (label, value).
pub fn budget_key(policy: &str, per: Option<&(String, String)>) -> String {
    match per {
        None => policy.to_string(),
        Some((label, value)) => format!("{policy}/{label}={value}"),
    }
}

fn id(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > 64 {
        return Err(FieldError::new(field, "must be 1–64 characters"));
    }
    Ok(())
}

impl WireMessage for LeaseRequest {
    const KIND: &'static str = "lease_request";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        id("request_id", &self.request_id)?;
        id("action_id", &self.action_id)?;
        crate::policy::spec::check_policy_name(&self.policy)
            .map_err(|m| FieldError::new("policy", m))?;
        if let Some((label, value)) = &self.per {
            validate::tags([(label.as_str(), value.as_str())])
                .map_err(|e| FieldError::new("per", e.problem))?;
        }
        let in_range = match self.max {
            BudgetMax::Count(n) => (1..=MAX_BUDGET).contains(&n),
            BudgetMax::Percent(p) => (1..=100).contains(&p),
        };
        if !in_range {
            return Err(FieldError::new(
                "max",
                format!("{} is out of range", self.max),
            ));
        }
        if self
            .max_per_hour
            .is_some_and(|n| !(1..=MAX_BUDGET).contains(&n))
        {
            return Err(FieldError::new("max_per_hour", "must be 1–10000"));
        }
        Ok(())
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        validate::timestamp("sent_at_ms", self.sent_at_ms)
    }
}

/// What the coordinator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// The lease is held (acquired or renewed) for `ttl_ms`.
    Granted,
    /// Not now: the budget is spent (or the coordinator is not granting yet); ask again.
    Deferred,
    /// The lease is freed.
    Released,
}

/// The coordinator's answer to one [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// The host it is for.
    pub host: String,
    /// The request it answers.
    pub request_id: String,
    /// The action.
    pub action_id: String,
    /// The budget key.
    pub key: String,
    /// Granted, deferred or released.
    pub outcome: LeaseOutcome,
    /// How long a granted lease lasts unless renewed, ms.
    pub ttl_ms: u64,
    /// Leases now held under this budget.
    pub held: u32,
    /// Leases the budget allows at once.
    pub max: u32,
    /// Why it was deferred, in words.
    pub reason: Option<String>,
    /// The coordinator's clock, epoch ms.
    pub coordinator_ms: i64,
}

impl WireMessage for LeaseAnswer {
    const KIND: &'static str = "lease_answer";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        id("request_id", &self.request_id)?;
        id("action_id", &self.action_id)?;
        validate::timestamp("coordinator_ms", self.coordinator_ms)
    }
}

impl CoordinatorSigned for LeaseAnswer {
    const WHAT: &'static str = "lease answer";
    const CONTEXT: SigningContext = SigningContext::LeaseAnswer;
    const ENVELOPE_KIND: &'static str = "signed_lease_answer";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_are_range_checked() {
        let request = LeaseRequest {
            host: "web-01".into(),
            request_id: "r1".into(),
            action_id: "a1".into(),
            policy: "restart-web".into(),
            per: Some(("role".into(), "web".into())),
            max: BudgetMax::Count(2),
            max_per_hour: Some(10),
            op: LeaseOp::Acquire,
            sent_at_ms: 1_700_000_000_000,
        };
        let bytes = crate::wire::encode(&request);
        assert_eq!(
            crate::wire::decode::<LeaseRequest>(&bytes),
            Ok(request.clone())
        );
        assert_eq!(request.key(), "restart-web/role=web");
        for bad in [
            LeaseRequest {
                max: BudgetMax::Count(0),
                ..request.clone()
            },
            LeaseRequest {
                max: BudgetMax::Percent(101),
                ..request.clone()
            },
            LeaseRequest {
                max_per_hour: Some(0),
                ..request.clone()
            },
            LeaseRequest {
                policy: "bad name".into(),
                ..request.clone()
            },
            LeaseRequest {
                request_id: String::new(),
                ..request.clone()
            },
        ] {
            let err = crate::wire::decode::<LeaseRequest>(&crate::wire::encode(&bad)).unwrap_err();
            assert_eq!(err.reason(), "invalid", "{err}");
        }
    }
}
