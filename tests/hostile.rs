//! Hostile input, end to end: what an enrolled-but-compromised agent, a viewer token or a
//! stranger with plain sockets can send, against the real binaries. Each module is one
//! kind of attack and what the coordinator and agents must do about it.

#[path = "hostile/bundles.rs"]
mod bundles;
#[path = "hostile/connections.rs"]
mod connections;
#[path = "hostile/rest.rs"]
mod rest;
#[path = "hostile/time_range.rs"]
mod time_range;
