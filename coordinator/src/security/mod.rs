//! Who may speak to the coordinator, and how it proves who it is: agent identities
//! ([`agents`]: join tokens, enrollment, revocation; [`agent_keys`]: the public keys
//! ingest checks seals with; [`session_keys`]: the agents' session keys from their
//! handshakes; [`local_agent`]: agents enrolled without a join token),
//! REST API [`tokens`] and their roles, and TLS ([`certs`]: a CA and server certificate
//! for users without a PKI; [`tls`]: the listeners' rustls configuration).

pub mod agent_keys;
pub mod agents;
pub mod certs;
pub mod local_agent;
pub mod session_keys;
pub mod tls;
pub mod tokens;
