//! Fleet-wide disruption budgets, coordinator side: the [`table`] of leases per budget,
//! the [`authority`] that decides whose limits a request is decided by (the coordinator's
//! copy whenever it has one), and the [`service`] that answers agents' lease requests
//! over MQTT and shows the budgets to the REST API (`GET /api/v1/budgets`).

pub mod authority;
pub mod service;
pub mod table;

pub use service::Budgets;
