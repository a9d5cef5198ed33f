//! The v1 wire protocol: the messages agents and the coordinator exchange over MQTT.
//!
//! Every payload is one version byte ([`PROTOCOL_VERSION`]) followed by the postcard
//! encoding of one message. Which message a payload holds is given by its topic (see
//! [`crate::topics`]). [`decode`] never panics: any byte string becomes either a typed
//! message or a [`DecodeError`] that says what was wrong with it.
//!
//! Postcard is not self-describing, so any change to a message's fields is a new protocol
//! version; the version byte lets a coordinator refuse (and count) what it cannot read
//! instead of misreading it. A message whose layout did not change in a new version is
//! still read at the versions since its last change ([`WireMessage::MIN_VERSION`]): an
//! upgraded agent still reads the bundles and queued messages it stored before, while a
//! message whose layout changed (the sealed envelope in version 3) is refused at the
//! older version as `unknown_version`. A message may also grow at its end by `Option`
//! fields that older senders leave out ([`WireMessage::OPTIONAL_TAIL`]): the agent's
//! [`StatusReport`] is its [`AgentStatus`] followed by the policies it runs, and an older
//! agent's status alone reads as a report without them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::validate::{self, FieldError};

/// The protocol version this build writes (and the newest it reads).
pub const PROTOCOL_VERSION: u8 = 3;

/// The oldest version whose layouts this build still reads, for messages that did not
/// change since (version 3 changed only the sealed agent envelope and added the session
/// handshake: [`crate::agent_auth`]).
pub const OLDEST_READABLE_VERSION: u8 = 2;

/// Largest payload [`decode`] accepts (1 MiB); anything longer is refused unread.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Most bytes a metric batch's samples may take once the agent's labels are merged into
/// each one's tags, as the coordinator stores them (name, tags and labels, plus 16 per
/// sample for its value and time). The labels repeat in every sample, so a payload within
/// [`MAX_PAYLOAD_BYTES`] could otherwise expand a thousandfold in the coordinator's memory
/// and store: 64 labels of 510 bytes each on 80,000 one-byte samples is 2.6 GB.
pub const MAX_BATCH_STORED_BYTES: usize = 16 * 1024 * 1024;

/// A key/value pair attached to a sample or an agent (`mount=/`, `role=web`).
pub type Tag = (String, String);

/// A message that travels on the wire: it can be encoded, decoded and checked.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// What the message is called in errors and counters (`metric_batch`, `agent_status`, …).
    const KIND: &'static str;

    /// The oldest protocol version whose encoding of this message is the current one:
    /// [`decode`] reads versions from here to [`PROTOCOL_VERSION`].
    const MIN_VERSION: u8 = OLDEST_READABLE_VERSION;

    /// How many `Option` fields at the message's end were added after older senders were
    /// built: a message that ends before them is read with them `None` (an absent
    /// `Option` is one zero byte). Anything shorter still is refused.
    const OPTIONAL_TAIL: usize = 0;

    /// The host the message speaks for, checked against the topic it arrived on.
    fn host(&self) -> &str;

    /// Checks the message's content beyond its shape (names, values, host).
    fn validate(&self) -> Result<(), FieldError>;

    /// Checks that every time the message carries is plausible
    /// ([`validate::timestamp`]); refused separately from [`WireMessage::validate`] so
    /// the refusal has its own reason (`implausible_time`) in counters.
    fn validate_times(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Metric name, 1–255 characters (`cpu_percent`, `disk_free_percent`).
    pub name: String,
    /// The measured value; always finite.
    pub value: f64,
    /// When it was measured, epoch milliseconds.
    pub ts_ms: i64,
    /// What the value is about beyond the host (`mount=/`, `iface=eth0`).
    pub tags: Vec<Tag>,
}

impl Sample {
    /// A sample of `name` at `ts_ms` with `tags` (`[("mount", "/")]`).
    pub fn new(name: &str, value: f64, ts_ms: i64, tags: &[(&str, &str)]) -> Sample {
        Sample {
            name: name.into(),
            value,
            ts_ms,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// A batch of samples from one host, published on `vigil/v1/agents/{host}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    /// The host that measured the samples.
    pub host: String,
    /// Increases by one with every batch an agent sends during one run.
    pub seq: u64,
    /// When the batch was sent, epoch milliseconds.
    pub sent_at_ms: i64,
    /// The agent's configured labels; they tag every sample of the batch.
    pub labels: Vec<Tag>,
    /// The samples.
    pub samples: Vec<Sample>,
}

/// Whether an agent is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    /// Running and connected.
    Online,
    /// Stopped cleanly, or lost (sent by the broker as the agent's last will).
    Offline,
}

/// An agent's retained status, published on `vigil/v1/agents/{host}/status`.
/// Its last will is the same message with [`AgentState::Offline`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's host.
    pub host: String,
    /// Online or offline.
    pub state: AgentState,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// When this agent process started, epoch milliseconds.
    pub started_at_ms: i64,
    /// When this status was sent, epoch milliseconds.
    pub sent_at_ms: i64,
    /// The sampling interval, milliseconds.
    pub interval_ms: u64,
    /// The agent's labels (`role=web`, `env=prod`).
    pub labels: Vec<Tag>,
    /// The policy bundles in force, one per host group the agent is in.
    pub bundles: Vec<AppliedBundle>,
    /// Why the last bundle offered was refused, if it was (bad signature, replayed
    /// version, altered content, invalid policies); the previous bundle stays in force.
    pub bundle_error: Option<String>,
    /// Whether remediation is paused on this host (kill switch).
    pub remediation_paused: bool,
    /// Anything the agent wants an operator to read (e.g. why it refused a bundle).
    pub detail: Option<String>,
    /// What the agent's policy evaluator is doing.
    pub policies: PolicyRunnerStatus,
    /// The agent's action queue.
    pub queue: QueueStatus,
    /// How its messages are getting to the coordinator (last: a record stored before
    /// this field existed reads as `None`).
    pub delivery: Option<DeliveryStatus>,
}

/// Most policies a [`StatusReport`] lists; an agent running more lists the first ones
/// and counts all of them in [`RunningPolicies::total`].
pub const MAX_RUNNING_POLICIES: usize = 256;

/// What an agent publishes on its status topic: its status, then the policies it runs.
/// An agent built before the list existed sends the status alone, which reads as a
/// report with `running: None` ([`WireMessage::OPTIONAL_TAIL`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The status.
    pub status: AgentStatus,
    /// The policies in force on the agent (`None`: an agent that does not say).
    pub running: Option<RunningPolicies>,
}

/// The policies in force on an agent: local ones first, then each bundle's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningPolicies {
    /// At most [`MAX_RUNNING_POLICIES`] of them.
    pub policies: Vec<RunningPolicy>,
    /// How many are in force, listed or not.
    pub total: u32,
}

/// One policy in force on an agent and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningPolicy {
    /// Its name (a policy name: 1–128 characters).
    pub name: String,
    /// The bundle it came from; `None` for the agent's local policy directory.
    pub bundle: Option<BundleRef>,
}

/// A bundle by group and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// The host group.
    pub group: String,
    /// The bundle's version.
    pub version: u64,
}

impl RunningPolicy {
    /// `local`, or `bundle:GROUP@VERSION`.
    pub fn source(&self) -> String {
        match &self.bundle {
            None => "local".to_string(),
            Some(b) => format!("bundle:{}@{}", b.group, b.version),
        }
    }
}

impl RunningPolicies {
    /// The list for `policies` (name and bundle, in force order): the first
    /// [`MAX_RUNNING_POLICIES`], and the count of all.
    pub fn new(policies: impl IntoIterator<Item = RunningPolicy>) -> RunningPolicies {
        let mut listed = Vec::new();
        let mut total: u32 = 0;
        for policy in policies {
            total = total.saturating_add(1);
            if listed.len() < MAX_RUNNING_POLICIES {
                listed.push(policy);
            }
        }
        RunningPolicies {
            policies: listed,
            total,
        }
    }

    /// Checks the list: at most [`MAX_RUNNING_POLICIES`] entries, no more than `total`,
    /// policy and group names as their rules say; errors name the field
    /// (`running.policies[3].name`).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.policies.len() > MAX_RUNNING_POLICIES {
            return Err(FieldError::new(
                "running.policies",
                format!(
                    "at most {MAX_RUNNING_POLICIES} entries, got {}",
                    self.policies.len()
                ),
            ));
        }
        if u64::from(self.total) < self.policies.len() as u64 {
            return Err(FieldError::new(
                "running.total",
                format!(
                    "{} is fewer than the {} listed",
                    self.total,
                    self.policies.len()
                ),
            ));
        }
        for (i, policy) in self.policies.iter().enumerate() {
            crate::policy::spec::check_policy_name(&policy.name).map_err(|problem| {
                FieldError::new(format!("running.policies[{i}].name"), problem)
            })?;
            if let Some(bundle) = &policy.bundle {
                validate::host_name(&bundle.group).map_err(|e| {
                    FieldError::new(format!("running.policies[{i}].bundle.group"), e.problem)
                })?;
            }
        }
        Ok(())
    }
}

/// How an agent's messages are getting to the coordinator, reported in its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// Action transitions and policy events not yet acknowledged as stored.
    pub outbox_pending: u64,
    /// Metric batches buffered, not yet acknowledged as stored.
    pub metrics_buffered: u64,
    /// Metric batches the agent has made since its buffer was created (the last
    /// sequence number given out).
    pub metrics_generated_total: u64,
    /// Bytes the metric buffer holds on disk.
    pub metrics_buffer_bytes: u64,
    /// Metric batches the full buffer dropped (oldest first), since the agent started.
    pub metrics_dropped_total: u64,
    /// Corrupt buffer segments set aside since the agent started.
    pub quarantined_segments_total: u64,
    /// The agent's clock minus the coordinator's, ms, as last measured (from an
    /// acknowledgement); `None` until one arrived.
    pub clock_skew_ms: Option<i64>,
    /// Why the agent cannot write its data directory, if it cannot (it then keeps what
    /// it must send in memory).
    pub storage_error: Option<String>,
}

/// A bundle an agent has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedBundle {
    /// The host group.
    pub group: String,
    /// Its version.
    pub version: u64,
    /// Its content hash (hex).
    pub hash: String,
}

/// The state of an agent's action queue, reported in its status (the original queue stats
/// shape, per host).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Actions waiting to run (including those waiting for a retry).
    pub pending: u32,
    /// Actions running now.
    pub running: u32,
    /// Actions that failed their last retry.
    pub dead_letter: u32,
    /// Actions accepted since the queue was created.
    pub enqueued_total: u64,
    /// Actions an executor picked up (attempts started).
    pub dequeued_total: u64,
    /// Actions that completed.
    pub completed_total: u64,
    /// Attempts that failed.
    pub failed_total: u64,
    /// The last action that reached a final state: id, target, when (epoch ms).
    pub last_processed: Option<(String, String, i64)>,
    /// Executors whose circuit breaker is open (not tried until it half-opens).
    pub open_circuits: Vec<String>,
}

/// The state of an agent's policy evaluator, reported in its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRunnerStatus {
    /// Policies loaded (enabled or not).
    pub loaded: u32,
    /// Of those, enabled.
    pub enabled: u32,
    /// How often policies are evaluated (the sampling interval), ms.
    pub interval_ms: u64,
    /// When the last evaluation pass ran, epoch ms.
    pub last_evaluation_ms: Option<i64>,
    /// Policy × target evaluations since the agent started.
    pub evaluations: u64,
    /// Where policies come from (a directory, a bundle).
    pub source: Option<String>,
    /// The last load error, if the last attempt to load policies failed (the previous set
    /// stays in force).
    pub load_error: Option<String>,
    /// How many policy loads have failed since the agent started.
    pub load_errors: u64,
}

/// What a policy decided about one target, published on `vigil/v1/agents/{host}/events`
/// (QoS 1). `id` (a ULID) makes redelivery harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEvent {
    /// Unique id (a ULID).
    pub id: String,
    /// The host whose agent decided.
    pub host: String,
    /// The policy.
    pub policy: String,
    /// What it is about (the host, a unit, a container, a process, …).
    pub target: String,
    /// `info`, `warning` or `critical` (escalations are critical).
    pub severity: String,
    /// `fired`, `act`, `verified`, `deferred`, `escalated` or `resolved`.
    pub kind: String,
    /// The leaves that held, with observed values: `cpu_percent > 80 (observed 93.5)`.
    pub summary: String,
    /// The whole explanation (JSON), when there is one.
    pub explanation: Option<String>,
    /// The action requested (for `act`), as the policy wrote it.
    pub action: Option<String>,
    /// The step of the escalation chain (for `act` and `verified`).
    pub step: Option<u32>,
    /// Whether an action is requested by this event.
    pub action_requested: bool,
    /// The policy is in dry-run: decide and record, never act.
    pub dry_run: bool,
    /// More words (why deferred or escalated; whether verification found it resolved).
    pub detail: Option<String>,
    /// When, epoch ms.
    pub at_ms: i64,
}

/// Where an action is in its lifecycle (the original system's statuses, plus the outcomes of
/// verification and the dead-letter state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionState {
    /// Accepted and queued.
    Pending,
    /// An executor is working on it.
    Running,
    /// The executor finished successfully.
    Completed,
    /// The executor failed (a retry may follow).
    Failed,
    /// Withdrawn before it ran.
    Cancelled,
    /// Verified: the condition that caused it cleared.
    Resolved,
    /// Verified: the condition still holds after the verify window.
    NotResolved,
    /// Failed on its last retry; no further attempts.
    DeadLetter,
    /// Waiting for a lease of its policy's disruption budget (`deferred: budget`); it
    /// runs when one frees.
    Deferred,
}

impl ActionState {
    /// Every action state, in lifecycle order.
    pub const ALL: [ActionState; 9] = [
        ActionState::Pending,
        ActionState::Running,
        ActionState::Completed,
        ActionState::Failed,
        ActionState::Cancelled,
        ActionState::Resolved,
        ActionState::NotResolved,
        ActionState::DeadLetter,
        ActionState::Deferred,
    ];

    /// The lowercase name used in JSON and the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Running => "running",
            ActionState::Completed => "completed",
            ActionState::Failed => "failed",
            ActionState::Cancelled => "cancelled",
            ActionState::Resolved => "resolved",
            ActionState::NotResolved => "not_resolved",
            ActionState::DeadLetter => "dead_letter",
            ActionState::Deferred => "deferred",
        }
    }
}

/// One transition of one action, published on `vigil/v1/agents/{host}/actions` (QoS 1).
/// `(id, state, attempt)` identifies the transition, so redelivery is harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionEvent {
    /// The action's unique id (a ULID).
    pub id: String,
    /// The host the action runs on.
    pub host: String,
    /// The policy that asked for it; `None` for a manual action.
    pub policy: Option<String>,
    /// What it acts on (a unit, a container, the host).
    pub target: String,
    /// What it does (`restart`, `exec`, `webhook`, …).
    pub action: String,
    /// The state this event reports.
    pub state: ActionState,
    /// Which attempt (1-based).
    pub attempt: u32,
    /// Whether it was only decided and recorded, not performed.
    pub dry_run: bool,
    /// What happened, in words.
    pub detail: Option<String>,
    /// When the action was created, epoch milliseconds.
    pub created_at_ms: i64,
    /// When this transition happened, epoch milliseconds.
    pub at_ms: i64,
    /// Most attempts the action may take.
    pub max_attempts: u32,
    /// The executor that handles it (`systemd`, `docker`, `exec`, `webhook`, `notify`).
    pub executor: Option<String>,
    /// The step of the policy's escalation chain (0-based), for policy actions.
    pub step: Option<u32>,
    /// Executor parameters, as JSON.
    pub params: Option<String>,
}

/// What the coordinator asks an agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Run an action now (a human override).
    RunAction {
        /// The action id the coordinator allotted.
        action_id: String,
        /// What to act on.
        target: String,
        /// What to do.
        action: String,
        /// Parameters for the executor.
        params: Vec<Tag>,
        /// Decide and record only.
        dry_run: bool,
    },
    /// Pause (`true`) or resume (`false`) all remediation on the host.
    PauseRemediation(bool),
    /// Publish status again and re-read the current bundle.
    Resync,
    /// Run an action now under a policy's disruption budget: it waits for a lease like
    /// that policy's own actions do.
    RunBudgetedAction {
        /// The action id the coordinator allotted.
        action_id: String,
        /// What to act on.
        target: String,
        /// What to do.
        action: String,
        /// Parameters for the executor.
        params: Vec<Tag>,
        /// Decide and record only.
        dry_run: bool,
        /// The policy whose budget it takes a lease from.
        policy: String,
        /// That budget.
        budget: crate::policy::budget::Budget,
    },
}

/// A command for one agent, published on `vigil/v1/agents/{host}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique id (a ULID); agents refuse one they have already seen.
    pub id: String,
    /// The host it is meant for.
    pub host: String,
    /// When it was issued, epoch milliseconds.
    pub issued_at_ms: i64,
    /// After this, the agent refuses it, epoch milliseconds.
    pub expires_at_ms: i64,
    /// What to do.
    pub kind: CommandKind,
}

/// Why a payload could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty payload")]
    Empty,
    /// Longer than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The first byte names a protocol version this build does not speak.
    #[error("unknown protocol version {found} (this build speaks version {PROTOCOL_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The bytes after the version are not a valid message of the expected kind.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// The expected message kind.
        kind: &'static str,
        /// What postcard reported.
        reason: String,
    },
    /// A valid message followed by extra bytes.
    #[error("malformed {kind}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The expected message kind.
        kind: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// Well-formed, but its content breaks a rule.
    #[error("invalid {kind}: {error}")]
    Invalid {
        /// The message kind.
        kind: &'static str,
        /// Which field and why.
        error: FieldError,
    },
    /// Well-formed, but a time it carries is not plausible (year 10000, before 2000).
    #[error("invalid {kind}: {error}")]
    ImplausibleTime {
        /// The message kind.
        kind: &'static str,
        /// Which field and why (boxed: it keeps this error as small as it was).
        error: Box<FieldError>,
    },
}

impl DecodeError {
    /// A short, stable label for counters (`empty`, `unknown_version`, `malformed`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::Malformed { .. } | DecodeError::TrailingBytes { .. } => "malformed",
            DecodeError::Invalid { .. } => "invalid",
            DecodeError::ImplausibleTime { .. } => "implausible_time",
        }
    }
}

/// Encodes a message: the version byte, then postcard.
pub fn encode<T: WireMessage>(message: &T) -> Vec<u8> {
    let out = vec![PROTOCOL_VERSION];
    // Serializing into a growable Vec cannot fail for these types: they hold only strings,
    // numbers, options, enums and sequences of known length.
    match postcard::to_extend(message, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail to encode a {}: {e}", T::KIND),
    }
}

/// Decodes and validates a payload, never panicking.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if !(T::MIN_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    let message = match postcard::take_from_bytes::<T>(body) {
        Ok((message, [])) => message,
        Ok((_, rest)) => {
            return Err(DecodeError::TrailingBytes {
                kind: T::KIND,
                extra: rest.len(),
            })
        }
        Err(postcard::Error::DeserializeUnexpectedEnd) if T::OPTIONAL_TAIL > 0 => {
            without_tail::<T>(body)?
        }
        Err(e) => {
            return Err(DecodeError::Malformed {
                kind: T::KIND,
                reason: e.to_string(),
            })
        }
    };
    check(message)
}

/// Reads `body`, which ended early, as a message from an older sender: without its last
/// one to [`WireMessage::OPTIONAL_TAIL`] `Option`s.
fn without_tail<T: WireMessage>(body: &[u8]) -> Result<T, DecodeError> {
    for absent in 1..=T::OPTIONAL_TAIL {
        let mut padded = body.to_vec();
        padded.resize(body.len() + absent, 0);
        if let Ok((message, [])) = postcard::take_from_bytes::<T>(&padded) {
            return Ok(message);
        }
    }
    Err(DecodeError::Malformed {
        kind: T::KIND,
        reason: postcard::Error::DeserializeUnexpectedEnd.to_string(),
    })
}

/// Checks a decoded message's content and times.
fn check<T: WireMessage>(message: T) -> Result<T, DecodeError> {
    message.validate().map_err(|error| DecodeError::Invalid {
        kind: T::KIND,
        error,
    })?;
    message
        .validate_times()
        .map_err(|error| DecodeError::ImplausibleTime {
            kind: T::KIND,
            error: Box::new(error),
        })?;
    Ok(message)
}

/// An event id (a ULID in practice): 1–64 characters.
fn event_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > 64 {
        return Err(FieldError::new("id", "must be 1–64 characters"));
    }
    Ok(())
}

/// A field that must not be empty.
fn non_empty(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(())
}

fn validate_tags(tags: &[Tag]) -> Result<(), FieldError> {
    validate::tags(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

impl WireMessage for MetricBatch {
    const KIND: &'static str = "metric_batch";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        validate_tags(&self.labels).map_err(|e| FieldError::new("labels", e.problem))?;
        for (i, sample) in self.samples.iter().enumerate() {
            let at =
                |e: FieldError| FieldError::new(format!("samples[{i}].{}", e.field), e.problem);
            validate::metric_name(&sample.name).map_err(at)?;
            validate::metric_value(sample.value).map_err(at)?;
            validate_tags(&sample.tags).map_err(at)?;
        }
        let tag_bytes = |tags: &[Tag]| tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let labels = tag_bytes(&self.labels);
        let stored = self.samples.iter().fold(0usize, |sum, sample| {
            sum.saturating_add(sample.name.len() + tag_bytes(&sample.tags) + labels + 16)
        });
        if stored > MAX_BATCH_STORED_BYTES {
            return Err(FieldError::new(
                "samples",
                format!(
                    "{} samples with the labels merged into each take {stored} bytes; at most \
                     {MAX_BATCH_STORED_BYTES}",
                    self.samples.len()
                ),
            ));
        }
        Ok(())
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        validate::timestamp("sent_at_ms", self.sent_at_ms)?;
        for (i, sample) in self.samples.iter().enumerate() {
            validate::timestamp(&format!("samples[{i}].ts_ms"), sample.ts_ms)?;
        }
        Ok(())
    }
}

impl WireMessage for AgentStatus {
    const KIND: &'static str = "agent_status";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        validate::interval_ms("interval_ms", self.interval_ms)?;
        validate_tags(&self.labels).map_err(|e| FieldError::new("labels", e.problem))
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        validate::timestamp("started_at_ms", self.started_at_ms)?;
        validate::timestamp("sent_at_ms", self.sent_at_ms)?;
        validate::timestamp_opt(
            "policies.last_evaluation_ms",
            self.policies.last_evaluation_ms,
        )?;
        validate::timestamp_opt(
            "queue.last_processed",
            self.queue.last_processed.as_ref().map(|(_, _, at)| *at),
        )
    }
}

impl WireMessage for StatusReport {
    const KIND: &'static str = AgentStatus::KIND;
    const OPTIONAL_TAIL: usize = 1;

    fn host(&self) -> &str {
        &self.status.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        self.status.validate()?;
        match &self.running {
            Some(running) => running.validate(),
            None => Ok(()),
        }
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        self.status.validate_times()
    }
}

impl WireMessage for ActionEvent {
    const KIND: &'static str = "action_event";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        event_id(&self.id)?;
        non_empty("target", &self.target)?;
        non_empty("action", &self.action)
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        validate::timestamp("created_at_ms", self.created_at_ms)?;
        validate::timestamp("at_ms", self.at_ms)
    }
}

impl WireMessage for PolicyEvent {
    const KIND: &'static str = "policy_event";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        event_id(&self.id)?;
        non_empty("policy", &self.policy)?;
        non_empty("target", &self.target)?;
        if !matches!(self.severity.as_str(), "info" | "warning" | "critical") {
            return Err(FieldError::new(
                "severity",
                format!("`{}` is not info, warning or critical", self.severity),
            ));
        }
        if !matches!(
            self.kind.as_str(),
            "fired" | "act" | "verified" | "deferred" | "escalated" | "resolved"
        ) {
            return Err(FieldError::new(
                "kind",
                format!("unknown kind `{}`", self.kind),
            ));
        }
        Ok(())
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        validate::timestamp("at_ms", self.at_ms)
    }
}

impl WireMessage for Command {
    const KIND: &'static str = "command";

    fn host(&self) -> &str {
        &self.host
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate::host_name(&self.host)?;
        if self.id.is_empty() {
            return Err(FieldError::new("id", "must not be empty"));
        }
        Ok(())
    }

    fn validate_times(&self) -> Result<(), FieldError> {
        validate::timestamp("issued_at_ms", self.issued_at_ms)?;
        validate::timestamp("expires_at_ms", self.expires_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A plausible time (2023-11-14).
    const T: i64 = 1_700_000_000_000;

    fn batch() -> MetricBatch {
        MetricBatch {
            host: "web-01".into(),
            seq: 7,
            sent_at_ms: 1_700_000_000_000,
            labels: vec![("role".into(), "web".into())],
            samples: vec![
                Sample {
                    name: "cpu_percent".into(),
                    value: 42.5,
                    ts_ms: 1_700_000_000_000,
                    tags: vec![],
                },
                Sample {
                    name: "disk_free_percent".into(),
                    value: 71.0,
                    ts_ms: 1_700_000_000_000,
                    tags: vec![("mount".into(), "/".into())],
                },
            ],
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = batch();
        assert_eq!(decode::<MetricBatch>(&encode(&b)), Ok(b));
    }

    #[test]
    fn a_small_payload_whose_labels_would_repeat_into_gigabytes_is_refused() {
        // 64 labels of 510 bytes on 20,000 one-letter samples: a 340 KB payload, 650 MB
        // once each sample carries the labels.
        let mut b = batch();
        b.labels = (0..64)
            .map(|i| (format!("{i:0>255}"), "v".repeat(255)))
            .collect();
        b.samples = (0..20_000)
            .map(|_| Sample {
                name: "c".into(),
                value: 1.0,
                ts_ms: T,
                tags: vec![],
            })
            .collect();
        let payload = encode(&b);
        assert!(payload.len() < MAX_PAYLOAD_BYTES, "{}", payload.len());
        match decode::<MetricBatch>(&payload) {
            Err(DecodeError::Invalid { error, .. }) => {
                assert_eq!(error.field, "samples");
                assert!(error.problem.contains("at most"), "{}", error.problem);
            }
            other => panic!("expected refused as invalid, got {other:?}"),
        }
        // The same labels on the samples a real agent sends stay well within the bound.
        b.samples.truncate(500);
        assert!(decode::<MetricBatch>(&encode(&b)).is_ok());
    }

    #[test]
    fn a_status_report_reads_an_older_agents_status_and_checks_its_list() {
        let status = AgentStatus {
            host: "h".into(),
            state: AgentState::Online,
            agent_version: "0.1.0".into(),
            started_at_ms: T,
            sent_at_ms: T + 2,
            interval_ms: 5000,
            labels: vec![],
            bundles: vec![],
            bundle_error: None,
            remediation_paused: false,
            detail: None,
            policies: PolicyRunnerStatus::default(),
            queue: QueueStatus::default(),
            delivery: None,
        };
        // An older agent's status alone: a report without the list.
        let old = encode(&status);
        assert_eq!(
            decode::<StatusReport>(&old),
            Ok(StatusReport {
                status: status.clone(),
                running: None
            })
        );
        // One byte short of that is still refused.
        assert_eq!(
            decode::<StatusReport>(&old[..old.len() - 1]).map_err(|e| e.reason()),
            Err("malformed")
        );
        let running = RunningPolicies::new((0..300).map(|i| RunningPolicy {
            name: format!("p{i}"),
            bundle: (i % 2 == 1).then(|| BundleRef {
                group: "web".into(),
                version: 3,
            }),
        }));
        assert_eq!(
            (running.policies.len(), running.total),
            (MAX_RUNNING_POLICIES, 300)
        );
        assert_eq!(running.policies[0].source(), "local");
        assert_eq!(running.policies[1].source(), "bundle:web@3");
        let report = StatusReport {
            status: status.clone(),
            running: Some(running.clone()),
        };
        assert_eq!(decode::<StatusReport>(&encode(&report)), Ok(report));
        // Out of range, each named.
        let field =
            |running: RunningPolicies| match decode::<StatusReport>(&encode(&StatusReport {
                status: status.clone(),
                running: Some(running),
            })) {
                Err(DecodeError::Invalid { error, .. }) => error.field,
                other => panic!("{other:?}"),
            };
        let mut long = running.clone();
        long.policies.push(long.policies[0].clone());
        assert_eq!(field(long), "running.policies");
        let mut short_total = running.clone();
        short_total.total = 2;
        assert_eq!(field(short_total), "running.total");
        let mut bad_name = running.clone();
        bad_name.policies[7].name = "x".repeat(129);
        assert_eq!(field(bad_name), "running.policies[7].name");
        let mut bad_group = running;
        if let Some(bundle) = bad_group.policies[3].bundle.as_mut() {
            bundle.group = "no spaces".into();
        }
        assert_eq!(field(bad_group), "running.policies[3].bundle.group");
    }

    #[test]
    fn status_event_and_command_round_trip() {
        let status = AgentStatus {
            host: "h".into(),
            state: AgentState::Offline,
            agent_version: "0.1.0".into(),
            started_at_ms: T,
            sent_at_ms: T + 2,
            interval_ms: 5000,
            labels: vec![],
            bundles: vec![AppliedBundle {
                group: "web".into(),
                version: 3,
                hash: "ab".into(),
            }],
            bundle_error: None,
            remediation_paused: false,
            detail: None,
            policies: PolicyRunnerStatus::default(),
            queue: QueueStatus::default(),
            delivery: Some(DeliveryStatus::default()),
        };
        assert_eq!(decode::<AgentStatus>(&encode(&status)), Ok(status.clone()));
        // The coordinator times silence by the interval: 0 or u64::MAX is refused,
        // naming the field.
        for interval_ms in [0, 99, 86_400_001, u64::MAX] {
            let bad = AgentStatus {
                interval_ms,
                ..status.clone()
            };
            match decode::<AgentStatus>(&encode(&bad)) {
                Err(DecodeError::Invalid { error, .. }) => assert_eq!(error.field, "interval_ms"),
                other => panic!("interval {interval_ms}: {other:?}"),
            }
        }
        let event = PolicyEvent {
            id: "01J".into(),
            host: "h".into(),
            policy: "p".into(),
            target: "t".into(),
            severity: "critical".into(),
            kind: "escalated".into(),
            summary: "cpu > 1 (observed 2)".into(),
            explanation: None,
            action: None,
            step: None,
            action_requested: false,
            dry_run: false,
            detail: Some("flap".into()),
            at_ms: T + 5,
        };
        assert_eq!(decode::<PolicyEvent>(&encode(&event)), Ok(event.clone()));
        let bad = PolicyEvent {
            kind: "exploded".into(),
            ..event
        };
        assert_eq!(
            decode::<PolicyEvent>(&encode(&bad)).unwrap_err().reason(),
            "invalid"
        );
        let event = ActionEvent {
            id: "01HZX".into(),
            host: "h".into(),
            policy: None,
            target: "nginx.service".into(),
            action: "restart".into(),
            state: ActionState::Running,
            attempt: 1,
            dry_run: false,
            detail: Some("x".into()),
            created_at_ms: T + 1,
            at_ms: T + 2,
            max_attempts: 3,
            executor: Some("systemd".into()),
            step: Some(0),
            params: None,
        };
        assert_eq!(decode::<ActionEvent>(&encode(&event)), Ok(event));
        let command = Command {
            id: "c1".into(),
            host: "h".into(),
            issued_at_ms: T + 1,
            expires_at_ms: T + 2,
            kind: CommandKind::PauseRemediation(true),
        };
        assert_eq!(decode::<Command>(&encode(&command)), Ok(command));
    }

    #[test]
    fn empty_unknown_version_truncated_and_trailing_are_typed_errors() {
        assert_eq!(decode::<MetricBatch>(&[]), Err(DecodeError::Empty));
        let mut bytes = encode(&batch());
        bytes[0] = 9;
        assert_eq!(
            decode::<MetricBatch>(&bytes),
            Err(DecodeError::UnknownVersion { found: 9 })
        );
        let bytes = encode(&batch());
        let truncated = &bytes[..bytes.len() - 3];
        assert_eq!(
            decode::<MetricBatch>(truncated).unwrap_err().reason(),
            "malformed"
        );
        let mut trailing = encode(&batch());
        trailing.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode::<MetricBatch>(&trailing),
            Err(DecodeError::TrailingBytes { extra: 2, .. })
        ));
    }

    #[test]
    fn content_rules_are_checked_after_decoding() {
        let mut b = batch();
        b.samples[1].value = f64::NAN;
        let err = decode::<MetricBatch>(&encode(&b)).unwrap_err();
        assert_eq!(err.reason(), "invalid");
        assert!(err.to_string().contains("samples[1].value"), "{err}");
        let mut b = batch();
        b.host = "a/b".into();
        assert_eq!(
            decode::<MetricBatch>(&encode(&b)).unwrap_err().reason(),
            "invalid"
        );
    }

    #[test]
    fn implausible_times_are_refused_and_named() {
        const YEAR_10000: i64 = 253_402_300_800_000;
        let mut b = batch();
        b.samples[1].ts_ms = YEAR_10000;
        let err = decode::<MetricBatch>(&encode(&b)).unwrap_err();
        assert_eq!(err.reason(), "implausible_time");
        assert!(err.to_string().contains("samples[1].ts_ms"), "{err}");
        let mut b = batch();
        b.sent_at_ms = -1;
        assert_eq!(
            decode::<MetricBatch>(&encode(&b)).unwrap_err().reason(),
            "implausible_time"
        );
        let event = ActionEvent {
            id: "01HZX".into(),
            host: "h".into(),
            policy: None,
            target: "t".into(),
            action: "restart".into(),
            state: ActionState::Completed,
            attempt: 1,
            dry_run: false,
            detail: None,
            created_at_ms: T,
            at_ms: YEAR_10000,
            max_attempts: 1,
            executor: None,
            step: None,
            params: None,
        };
        let err = decode::<ActionEvent>(&encode(&event)).unwrap_err();
        assert_eq!(err.reason(), "implausible_time");
        assert!(err.to_string().contains("`at_ms`"), "{err}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for len in 0..2000 {
            let mut bytes: Vec<u8> = (0..len % 300).map(|_| rng.random()).collect();
            if len % 2 == 0 && !bytes.is_empty() {
                bytes[0] = PROTOCOL_VERSION;
            }
            let _ = decode::<MetricBatch>(&bytes);
            let _ = decode::<AgentStatus>(&bytes);
            let _ = decode::<ActionEvent>(&bytes);
            let _ = decode::<Command>(&bytes);
            let _ = decode::<PolicyEvent>(&bytes);
        }
    }
}
