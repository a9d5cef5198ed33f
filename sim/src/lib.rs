//! Vigil's fleet simulator and benchmark suite.
//!
//! [`fleet`] runs many virtual agents in one process, each with its own MQTT connection,
//! publishing metric batches and action events the way real agents do, in one of the
//! [`mode::Mode`]s, with the failures of [`chaos::Chaos`] injected (or a known metric
//! [`pattern`] its agents evaluate policies on, as real agents do); [`report`] counts
//! what was sent, acknowledged and rejected. Every virtual agent is first enrolled at the
//! coordinator ([`enroll`]) and seals what it publishes with its enrolled key, as a real
//! agent does. [`bench`] uses the fleet, real coordinator
//! processes, a real agent and Mosquitto to measure the README's performance figures.

pub mod bench;
pub mod chaos;
pub mod enroll;
pub mod fleet;
pub mod mode;
pub mod pattern;
pub mod report;
pub mod verify;
pub mod virtual_agent;
