//! Fleet-wide disruption budgets, coordinator side: the [`table`] of leases per budget,
//! and the [`service`] that answers agents' lease requests over MQTT and shows the
//! budgets to the REST API (`GET /api/v1/budgets`).

pub mod service;
pub mod table;

pub use service::Budgets;
