//! Hostile input, end to end: what an enrolled-but-compromised agent, a viewer token or a
//! stranger with plain sockets can send, against the real binaries. Each module is one
//! kind of attack and what the coordinator and agents must do about it.

mod bundles;
mod connections;
mod rest;
mod time_range;
