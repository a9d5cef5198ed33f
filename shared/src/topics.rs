//! The v1 MQTT topic plan (design.md), as builders and a parser.
//!
//! | topic | direction |
//! | --- | --- |
//! | `vigil/v1/agents/{host}/metrics` | agent → coordinator |
//! | `vigil/v1/agents/{host}/actions` | agent → coordinator |
//! | `vigil/v1/agents/{host}/events` | agent → coordinator (policy decisions) |
//! | `vigil/v1/agents/{host}/status` | agent → coordinator, retained, last will |
//! | `vigil/v1/agents/{host}/commands` | coordinator → agent |
//! | `vigil/v1/agents/{host}/acks` | coordinator → agent (what is stored) |
//! | `vigil/v1/agents/{host}/session` | agent → coordinator (session key handshake: hello) |
//! | `vigil/v1/agents/{host}/welcome` | coordinator → agent (session key handshake: answer) |
//! | `vigil/v1/agents/{host}/leases` | agent → coordinator (disruption-budget lease requests) |
//! | `vigil/v1/agents/{host}/grants` | coordinator → agent (answers to lease requests) |
//! | `vigil/v1/bundles/{group}` | coordinator → agents, retained |
//! | `vigil/v1/json/...` | coordinator → integrations |

/// Every v1 topic starts with this.
pub const ROOT: &str = "vigil/v1";

/// The channels under one agent's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentChannel {
    /// Metric batches.
    Metrics,
    /// Action lifecycle events.
    Actions,
    /// Policy decisions (violations, escalations, resolutions).
    Events,
    /// Retained status and last will.
    Status,
    /// Commands for the agent.
    Commands,
    /// The coordinator's acknowledgements of what it stored.
    Acks,
    /// The agent's session key handshake ([`crate::agent_auth::SignedHello`]).
    Session,
    /// The coordinator's answer to a handshake ([`crate::agent_auth::Welcome`], a [`crate::signed::Signed`] envelope).
    Welcome,
    /// Disruption-budget lease requests ([`crate::lease`]).
    Leases,
    /// The coordinator's answers to lease requests.
    Grants,
}

impl AgentChannel {
    /// The last topic level for this channel.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentChannel::Metrics => "metrics",
            AgentChannel::Actions => "actions",
            AgentChannel::Events => "events",
            AgentChannel::Status => "status",
            AgentChannel::Commands => "commands",
            AgentChannel::Acks => "acks",
            AgentChannel::Session => "session",
            AgentChannel::Welcome => "welcome",
            AgentChannel::Leases => "leases",
            AgentChannel::Grants => "grants",
        }
    }

    fn parse(level: &str) -> Option<Self> {
        Some(match level {
            "metrics" => AgentChannel::Metrics,
            "actions" => AgentChannel::Actions,
            "events" => AgentChannel::Events,
            "status" => AgentChannel::Status,
            "commands" => AgentChannel::Commands,
            "acks" => AgentChannel::Acks,
            "session" => AgentChannel::Session,
            "welcome" => AgentChannel::Welcome,
            "leases" => AgentChannel::Leases,
            "grants" => AgentChannel::Grants,
            _ => return None,
        })
    }
}

/// `vigil/v1/agents/{host}/{channel}`.
pub fn agent(host: &str, channel: AgentChannel) -> String {
    format!("{ROOT}/agents/{host}/{}", channel.as_str())
}

/// The filter matching one channel of every agent: `vigil/v1/agents/+/{channel}`.
pub fn all_agents(channel: AgentChannel) -> String {
    format!("{ROOT}/agents/+/{}", channel.as_str())
}

/// `vigil/v1/bundles/{group}`.
pub fn bundle(group: &str) -> String {
    format!("{ROOT}/bundles/{group}")
}

/// `vigil/v1/json/{stream}/{host}`: the JSON mirror for integrations.
pub fn json(stream: &str, host: &str) -> String {
    format!("{ROOT}/json/{stream}/{host}")
}

/// Splits `vigil/v1/agents/{host}/{channel}` into host and channel; `None` for any other topic.
pub fn parse_agent(topic: &str) -> Option<(&str, AgentChannel)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/agents/")?;
    let (host, channel) = rest.split_once('/')?;
    if host.is_empty() {
        return None;
    }
    Some((host, AgentChannel::parse(channel)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_parser_agree() {
        for channel in [
            AgentChannel::Metrics,
            AgentChannel::Actions,
            AgentChannel::Events,
            AgentChannel::Status,
            AgentChannel::Commands,
            AgentChannel::Acks,
            AgentChannel::Session,
            AgentChannel::Welcome,
            AgentChannel::Leases,
            AgentChannel::Grants,
        ] {
            let topic = agent("web-01", channel);
            assert_eq!(parse_agent(&topic), Some(("web-01", channel)));
        }
        assert_eq!(
            agent("h", AgentChannel::Metrics),
            "vigil/v1/agents/h/metrics"
        );
        assert_eq!(all_agents(AgentChannel::Status), "vigil/v1/agents/+/status");
    }

    #[test]
    fn other_topics_do_not_parse() {
        for topic in [
            "vigil/v1/agents//metrics",
            "vigil/v1/agents/h/metrics/extra",
            "vigil/v1/agents/h/unknown",
            "vigil/v2/agents/h/metrics",
            "vigil/v1/bundles/web",
        ] {
            assert_eq!(parse_agent(topic), None, "{topic}");
        }
    }
}
