//! The REST API's handlers, one module per thing served, in the order data comes in and
//! goes out: [`ingest`] (HTTP ingest), [`agents`] (enrollment, join tokens), [`hosts`],
//! [`query`] (metric history), [`violations`], [`events`] (the live event stream),
//! [`actions`] (the action audit trail and manual actions), [`alertmanager`] (alerts as
//! actions), [`budgets`] (disruption budgets), [`policies`], [`bundles`],
//! [`health`] (health and `/metrics`) and [`status_page`].

pub mod actions;
pub mod agents;
pub mod alertmanager;
pub mod budgets;
pub mod bundles;
pub mod events;
pub mod health;
pub mod hosts;
pub mod ingest;
pub mod policies;
pub mod query;
pub mod status_page;
pub mod violations;
