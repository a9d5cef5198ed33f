//! The lease service: a connection of its own to the broker that takes agents' lease
//! requests (`vigil/v1/agents/{host}/leases`), checks each seal like ingest does (the
//! enrolled key of the host in the topic, replays refused), decides it in the
//! [`LeaseTable`], and answers on `vigil/v1/agents/{host}/grants`, signed with the
//! coordinator's key.
//!
//! The budget a request counts against, and its limits, are the coordinator's whenever it
//! has a copy of the policy ([`super::authority`]); a request declaring other limits is
//! decided by the coordinator's, counted in `vigil_budget_declaration_mismatches_total
//! {source}` and logged (once per host and policy every ten minutes at most).
//!
//! Nothing here is stored: the table lives in memory. After a restart it starts empty
//! and grants nothing new for one lease TTL, while agents whose actions still run renew
//! (and so re-record) their leases. A request that does not decode, is not sealed by
//! the host's enrolled key, is replayed, speaks for another host or asks under a label
//! value its host does not carry (its last status says which it does) is counted in
//! `vigil_mqtt_messages_rejected_total{channel="leases",reason}` and dropped. An answer
//! that cannot be queued is dropped: the agent asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts};
use rumqttc::{Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;
use vigil_shared::agent_auth::{self, ReplayGuard, SealedMessage};
use vigil_shared::bundle::BundleKeys;
use vigil_shared::lease::{LeaseAnswer, LeaseOutcome, LeaseRequest};
use vigil_shared::policy::budget::BudgetMax;
use vigil_shared::signed;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::Tag;
use vigil_shared::wire::{self, WireMessage};

use super::authority::{self, Catalog, MismatchLog};
use super::table::{BudgetView, LeaseTable};
use crate::security::agent_keys::AgentKeys;
use crate::store::{HostRecord, Store};
use crate::telemetry::Telemetry;

/// How long the label-group sizes (for `max_concurrent: N%`) are reused.
const GROUPS_TTL: Duration = Duration::from_secs(10);

/// The budgets' state, for the REST API. Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    table: Arc<Mutex<LeaseTable>>,
}

impl Budgets {
    /// A handle on a new table whose leases last `ttl` (no grants for one TTL from now).
    pub fn new(ttl: Duration) -> Budgets {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        Budgets {
            table: Arc::new(Mutex::new(LeaseTable::new(ttl_ms, now_ms()))),
        }
    }

    /// Every budget now.
    pub fn view(&self) -> Vec<BudgetView> {
        self.lock().view(now_ms())
    }

    /// How long a lease lasts, ms.
    pub fn ttl_ms(&self) -> i64 {
        self.lock().ttl_ms()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `vigil_budget_answers_total{outcome}`: lease requests answered.
fn answers_counter(telemetry: &Telemetry) -> IntCounterVec {
    let counter = IntCounterVec::new(
        Opts::new(
            "vigil_budget_answers_total",
            "Disruption-budget lease requests answered, by outcome (granted, deferred, released)",
        ),
        &["outcome"],
    )
    .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
    if let Err(e) = telemetry.registry().register(Box::new(counter.clone())) {
        tracing::warn!("cannot register vigil_budget_answers_total: {e}");
    }
    for outcome in ["granted", "deferred", "released"] {
        counter.with_label_values(&[outcome]);
    }
    counter
}

/// `vigil_budget_declaration_mismatches_total{source}`: lease requests whose declared
/// limits differ from the coordinator's copy (decided by the coordinator's).
fn mismatches_counter(telemetry: &Telemetry) -> IntCounterVec {
    let counter = IntCounterVec::new(
        Opts::new(
            "vigil_budget_declaration_mismatches_total",
            "Lease requests whose declared budget differs from the coordinator's copy \
             (decided by the coordinator's), by where that copy comes from \
             (bundle, bundle_group, coordinator)",
        ),
        &["source"],
    )
    .unwrap_or_else(|e| unreachable!("the metric is well-formed: {e}"));
    if let Err(e) = telemetry.registry().register(Box::new(counter.clone())) {
        tracing::warn!("cannot register vigil_budget_declaration_mismatches_total: {e}");
    }
    for source in ["bundle", "bundle_group", "coordinator"] {
        counter.with_label_values(&[source]);
    }
    counter
}

/// Answers lease requests on a connection made with `options` until `stop` turns true;
/// budgets the coordinator knows are taken from `catalog`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    budgets: Budgets,
    options: MqttOptions,
    keys: Arc<BundleKeys>,
    store: Store,
    catalog: Arc<dyn Catalog>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let answers = answers_counter(&telemetry);
    let mismatches = mismatches_counter(&telemetry);
    let (client, mut eventloop) = vigil_shared::mqtt::client(options, 1024);
    let mut service = Service {
        budgets,
        keys,
        agent_keys: AgentKeys::new(store.clone()),
        guard: ReplayGuard::default(),
        store,
        telemetry,
        answers,
        mismatches,
        mismatch_log: MismatchLog::default(),
        catalog,
        groups: None,
    };
    let mut reconnect = crate::reconnect::Reconnect::new("lease service");
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                reconnect.connected();
                if let Err(e) =
                    client.try_subscribe(topics::all_agents(AgentChannel::Leases), QoS::AtLeastOnce)
                {
                    tracing::error!("cannot subscribe to lease requests: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(answer) = service.handle(&publish) {
                    let topic = topics::agent(&answer.host, AgentChannel::Grants);
                    let payload = signed::sign(&service.keys, &answer);
                    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                        tracing::warn!(host = %answer.host, "cannot queue a lease answer: {e}");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                reconnect.failed(&e).await;
            }
        }
    }
    let _ = client.disconnect().await;
}

/// Hosts per label (`None`: all hosts).
pub type GroupSizes = HashMap<Option<(String, String)>, usize>;

/// How many of `hosts` run an agent, in all (`None`) and per label: the group sizes a
/// share (`max_concurrent: N%`) is taken of.
pub fn group_sizes(hosts: &[HostRecord]) -> GroupSizes {
    let mut groups = GroupSizes::new();
    for host in hosts {
        let Some(status) = &host.status else { continue };
        *groups.entry(None).or_default() += 1;
        for label in &status.labels {
            *groups.entry(Some(label.clone())).or_default() += 1;
        }
    }
    groups
}

struct Service {
    budgets: Budgets,
    keys: Arc<BundleKeys>,
    agent_keys: AgentKeys,
    guard: ReplayGuard,
    store: Store,
    telemetry: Arc<Telemetry>,
    answers: IntCounterVec,
    mismatches: IntCounterVec,
    mismatch_log: MismatchLog,
    catalog: Arc<dyn Catalog>,
    /// Hosts per (label, value), and in all (`None`), with when they were counted.
    groups: Option<(Instant, GroupSizes)>,
}

impl Service {
    /// Checks one request and decides it; `None` when it is refused.
    fn handle(&mut self, publish: &Publish) -> Option<LeaseAnswer> {
        let Some((host, AgentChannel::Leases)) = topics::parse_agent(&publish.topic) else {
            return None;
        };
        let (request, labels) = match self.open(host, publish) {
            Ok(opened) => opened,
            Err((reason, message)) => {
                if !matches!(reason, "duplicate") {
                    self.telemetry
                        .mqtt_rejected
                        .with_label_values(&[AgentChannel::Leases.as_str(), reason])
                        .inc();
                    tracing::warn!(topic = %publish.topic, reason, "rejected lease request: {message}");
                }
                return None;
            }
        };
        let known = authority::lookup_in(self.catalog.as_ref(), &labels, &request.policy);
        let mut decision = authority::decide(known, &request, &labels);
        if let Some(source) = &decision.mismatch {
            self.mismatches.with_label_values(&[source.as_str()]).inc();
            if self
                .mismatch_log
                .should_log(host, &request.policy, Instant::now())
            {
                tracing::warn!(
                    host,
                    policy = %request.policy,
                    declared_max = %request.max,
                    declared_per = ?request.per.as_ref().map(|(label, _)| label),
                    declared_max_per_hour = ?request.max_per_hour,
                    source = source.as_str(),
                    group = source.group().unwrap_or(""),
                    key = %decision.terms.key,
                    "lease request declares other budget limits than the coordinator's copy; \
                     decided by the coordinator's"
                );
            }
        }
        decision.terms.max = match decision.max {
            BudgetMax::Count(n) => n,
            share @ BudgetMax::Percent(_) => share.resolve(self.group_size(decision.per.as_ref())),
        };
        let answer = self
            .budgets
            .lock()
            .decide(&request, &decision.terms, now_ms());
        let outcome = match answer.outcome {
            LeaseOutcome::Granted => "granted",
            LeaseOutcome::Deferred => "deferred",
            LeaseOutcome::Released => "released",
        };
        self.answers.with_label_values(&[outcome]).inc();
        tracing::debug!(
            host = %request.host,
            action = %request.action_id,
            key = %answer.key,
            op = ?request.op,
            outcome,
            held = answer.held,
            max = answer.max,
            "lease request"
        );
        Some(answer)
    }

    /// The request inside a sealed payload from `host` and the host's labels (its last
    /// status), or (reason, message).
    fn open(
        &mut self,
        host: &str,
        publish: &Publish,
    ) -> Result<(LeaseRequest, Vec<Tag>), (&'static str, String)> {
        let sealed = wire::decode::<SealedMessage>(&publish.payload)
            .map_err(|e| (e.reason(), e.to_string()))?;
        let seal = self
            .agent_keys
            .check(host, |key| {
                agent_auth::open(&sealed, key, host, AgentChannel::Leases)
            })
            .map_err(|r| (r.reason(), r.to_string()))?;
        self.guard
            .admit(&seal, AgentChannel::Leases, publish.retain)
            .map_err(|r| (r.reason(), r.to_string()))?;
        let request =
            wire::decode::<LeaseRequest>(&seal.body).map_err(|e| (e.reason(), e.to_string()))?;
        if request.host() != host {
            return Err((
                "host_mismatch",
                format!("payload speaks for host `{}`", request.host),
            ));
        }
        let labels = match self.store.host(host) {
            Ok(Some((record, _))) => record.status.map(|s| s.labels).unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(("store", format!("cannot read host `{host}`: {e}"))),
        };
        if let Some((label, value)) = &request.per {
            check_label(host, &labels, label, value)?;
        }
        Ok((request, labels))
    }

    /// How many hosts carry the label `per` (all hosts for `None`).
    fn group_size(&mut self, per: Option<&(String, String)>) -> usize {
        let fresh = self
            .groups
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < GROUPS_TTL);
        if !fresh {
            let groups = match self.store.hosts() {
                Ok(hosts) => group_sizes(&hosts),
                Err(e) => {
                    tracing::warn!("cannot count hosts for a budget share: {e}");
                    GroupSizes::new()
                }
            };
            self.groups = Some((Instant::now(), groups));
        }
        self.groups
            .as_ref()
            .and_then(|(_, groups)| groups.get(&per.cloned()).copied())
            .unwrap_or(0)
    }
}

/// An agent speaks only for its own host: a lease under `per: label` counts against the
/// budget of the host's own value of that label, as its last status (`labels`) gave it.
fn check_label(
    host: &str,
    labels: &[Tag],
    label: &str,
    value: &str,
) -> Result<(), (&'static str, String)> {
    // A host without the label is in the group `label=` (empty value).
    let carries = match labels.iter().find(|(l, _)| l == label) {
        Some((_, v)) => v == value,
        None => value.is_empty(),
    };
    if carries {
        return Ok(());
    }
    let carried = labels
        .iter()
        .find(|(l, _)| l == label)
        .map_or("no such label".to_string(), |(_, v)| {
            format!("`{label}={v}`")
        });
    Err((
        "label_mismatch",
        format!("asks under `{label}={value}`, but host `{host}` carries {carried}"),
    ))
}
