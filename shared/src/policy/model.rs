//! The policy model as the evaluator uses it: checked, with defaults filled in.
//! [`super::spec`] is the shape users write (YAML or JSON); it converts into this.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::target::Target;

/// How serious a violation is.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs attention.
    #[default]
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// Reads `info`, `warning` or `critical` (any case).
    pub fn parse(text: &str) -> Option<Severity> {
        match text.to_ascii_lowercase().as_str() {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// What a leaf condition compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The metric's latest value is above `threshold` (or equal, if `inclusive`).
    MetricExceeds {
        /// Metric name.
        metric: String,
        /// Threshold.
        threshold: f64,
        /// `>=` instead of `>`.
        inclusive: bool,
    },
    /// The metric's latest value is below `threshold` (or equal, if `inclusive`).
    MetricBelow {
        /// Metric name.
        metric: String,
        /// Threshold.
        threshold: f64,
        /// `<=` instead of `<`.
        inclusive: bool,
    },
    /// Every sub-condition holds.
    All(Vec<Condition>),
    /// At least one sub-condition holds.
    Any(Vec<Condition>),
    /// The metric's rate of increase over `over`, per `per`, is above `above` and/or below
    /// `below`. Counter resets (a drop) count as a restart from zero, as Prometheus does.
    Rate {
        /// Metric name.
        metric: String,
        /// The window the rate is taken over.
        over: Duration,
        /// The rate's time unit (1s gives per second, 1m per minute).
        per: Duration,
        /// Holds when the rate is above this.
        above: Option<f64>,
        /// Holds when the rate is below this.
        below: Option<f64>,
    },
    /// The metric changed in one direction by more than `by` over the window `over`
    /// (last value minus the first value in the window). The window must be covered: the
    /// first sample in it must be no later than 1/20 of the window (at most 30 s) after
    /// its start.
    Trend {
        /// Metric name.
        metric: String,
        /// The window.
        over: Duration,
        /// Up or down.
        direction: Direction,
        /// Minimum change (0 means any change in that direction).
        by: f64,
    },
    /// No sample of the metric for `for_`.
    Absent {
        /// Metric name.
        metric: String,
        /// How long without a sample.
        for_: Duration,
    },
    /// A systemd unit's `ActiveState` is not one of `expect`.
    UnitState {
        /// The unit; `None` means the subject being evaluated.
        unit: Option<String>,
        /// Acceptable states (default `active`).
        expect: Vec<String>,
    },
    /// A Docker container is not in state `expect` (default `running`), or (if `unhealthy`)
    /// its health check reports `unhealthy`.
    ContainerState {
        /// The container name; `None` means the subject.
        container: Option<String>,
        /// Acceptable state.
        expect: String,
        /// Also hold when the health check says unhealthy.
        unhealthy: bool,
    },
    /// No running process has this name.
    ProcessMissing {
        /// The process name (as in `/proc/PID/comm`).
        process: String,
    },
    /// An HTTP GET has failed (error or unexpected status) `failures` times in a row.
    HttpCheck {
        /// The URL (http:// only).
        url: String,
        /// Expected status; `None` accepts any 2xx.
        expect_status: Option<u16>,
        /// Per-request timeout.
        timeout: Duration,
        /// Consecutive failures needed.
        failures: u32,
    },
    /// A TCP connect to `address` has failed `failures` times in a row.
    TcpCheck {
        /// `host:port`.
        address: String,
        /// Per-attempt timeout.
        timeout: Duration,
        /// Consecutive failures needed.
        failures: u32,
    },
}

/// Which way a trend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Going up.
    Increasing,
    /// Going down.
    Decreasing,
}

/// How long a condition must hold before the policy fires (`for:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Continuously for this long (like Prometheus `for`).
    Duration(Duration),
    /// For this many evaluations in a row (`for: 3 attempts`).
    Evaluations(u32),
}

/// Flap protection: at most `max_actions` actions within `within`; past that the policy
/// stops acting on the target and escalates. Counters reset once the target has been
/// healthy for `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flap {
    /// Actions allowed in the window.
    pub max_actions: u32,
    /// The window.
    pub within: Duration,
    /// Healthy time after which the counters reset.
    pub reset_after: Duration,
}

impl Default for Flap {
    fn default() -> Self {
        Flap {
            max_actions: 5,
            within: Duration::from_secs(15 * 60),
            reset_after: Duration::from_secs(10 * 60),
        }
    }
}

/// What an action does. Seed names map onto these (see [`ActionKind::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Restart a unit or container.
    Restart,
    /// Start a unit or container.
    Start,
    /// Stop a unit or container.
    Stop,
    /// Reload a unit.
    Reload,
    /// Scale a Compose-style service.
    Scale,
    /// Run an allowlisted command.
    Exec,
    /// POST to a URL.
    Webhook,
    /// Record an event only.
    Notify,
    /// The original system's `drain-pod`: runs only where the agent maps it
    /// (`[actions]` in its config), else it is recorded as not runnable.
    #[serde(rename = "drain-pod")]
    DrainPod,
    /// The original system's `rebalance` (mapped like [`ActionKind::DrainPod`]).
    Rebalance,
    /// The original system's `snapshot` (mapped like [`ActionKind::DrainPod`]).
    Snapshot,
}

impl ActionKind {
    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Restart => "restart",
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
            ActionKind::Reload => "reload",
            ActionKind::Scale => "scale",
            ActionKind::Exec => "exec",
            ActionKind::Webhook => "webhook",
            ActionKind::Notify => "notify",
            ActionKind::DrainPod => "drain-pod",
            ActionKind::Rebalance => "rebalance",
            ActionKind::Snapshot => "snapshot",
        }
    }

    /// The original system's actions that have no built-in meaning on a host: an agent
    /// runs them through its `[actions]` mapping (an allowlisted command or webhook), or
    /// records them as not runnable.
    pub const MAPPED: [ActionKind; 3] = [
        ActionKind::DrainPod,
        ActionKind::Rebalance,
        ActionKind::Snapshot,
    ];

    /// Whether this action runs only through an agent's mapping (see [`Self::MAPPED`]).
    pub fn needs_mapping(self) -> bool {
        Self::MAPPED.contains(&self)
    }

    /// Reads an action name, accepting the original system's names: those with an edge
    /// meaning (`restart-service`, `scale-up`, `custom`, …) map onto it, and those without
    /// one (`drain-pod`, `rebalance`, `snapshot`) are kinds that run through an agent's
    /// mapping ([`Self::needs_mapping`]).
    pub fn parse(name: &str) -> Result<ActionKind, String> {
        let normal = name.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match normal.as_str() {
            "restart" | "restart-service" => ActionKind::Restart,
            "start" => ActionKind::Start,
            "stop" => ActionKind::Stop,
            "reload" => ActionKind::Reload,
            "scale" | "scale-up" | "scale-down" => ActionKind::Scale,
            "exec" => ActionKind::Exec,
            "webhook" | "custom" => ActionKind::Webhook,
            "notify" | "alert" | "none" => ActionKind::Notify,
            "drain-pod" => ActionKind::DrainPod,
            "rebalance" => ActionKind::Rebalance,
            "snapshot" => ActionKind::Snapshot,
            _ => {
                return Err(format!(
                    "unknown action `{name}`; expected one of restart, start, stop, reload, scale, \
                     exec, webhook, notify, or the original system's drain-pod, rebalance, \
                     snapshot (run through an agent's [actions] mapping)"
                ))
            }
        })
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a policy's escalation chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionStep {
    /// What to do.
    pub kind: ActionKind,
    /// The name as written (e.g. `scale-up`), for the audit trail.
    pub written: String,
    /// Parameters for the executor (the policy's `params` merged under the step's own).
    pub params: BTreeMap<String, serde_json::Value>,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// How serious a violation is.
    pub severity: Severity,
    /// Which subjects it applies to.
    pub target: Target,
    /// Whether it is evaluated at all.
    pub enabled: bool,
    /// Whether violations run the actions.
    pub auto_remediate: bool,
    /// The condition.
    pub condition: Condition,
    /// How long the condition must hold before the policy fires.
    pub hold: Option<Hold>,
    /// Least time between two actions of this policy on one target.
    pub cooldown: Duration,
    /// After an action, how long to wait before judging whether it worked.
    pub verify: Duration,
    /// Flap protection.
    pub flap: Flap,
    /// Decide and record, never act.
    pub dry_run: bool,
    /// The escalation chain (empty: violations are recorded only).
    pub actions: Vec<ActionStep>,
    /// The fleet-wide disruption budget its actions take leases from, if any.
    pub budget: Option<super::budget::Budget>,
}

impl Policy {
    /// Warnings for the steps of this policy that run only through an agent's mapping
    /// ([`ActionKind::needs_mapping`]) and `mapped` says are not mapped: such a step is
    /// recorded as not runnable.
    pub fn unmapped_actions(&self, mapped: impl Fn(ActionKind) -> bool) -> Vec<String> {
        self.actions
            .iter()
            .filter(|step| step.kind.needs_mapping() && !mapped(step.kind))
            .map(|step| {
                format!(
                    "policy `{}`: action `{}` has no built-in meaning on a host; it runs only \
                     where the agent maps it (`[actions] {} = {{ exec = \"…\" }}` or \
                     `{{ webhook = \"…\" }}` in agent.toml), elsewhere it is recorded as \
                     not_runnable",
                    self.name,
                    step.written,
                    step.kind.as_str()
                )
            })
            .collect()
    }

    /// The longest history any of this policy's conditions looks at.
    pub fn lookback(&self) -> Duration {
        fn walk(c: &Condition) -> Duration {
            match c {
                Condition::All(cs) | Condition::Any(cs) => {
                    cs.iter().map(walk).max().unwrap_or_default()
                }
                Condition::Rate { over, .. } | Condition::Trend { over, .. } => *over,
                Condition::Absent { for_, .. } => *for_,
                _ => Duration::ZERO,
            }
        }
        walk(&self.condition)
    }
}
