//! The lease service: a connection of its own to the broker that takes agents' lease
//! requests (`vigil/v1/agents/{host}/leases`), checks each seal like ingest does (the
//! enrolled key of the host in the topic, replays refused), decides it in the
//! [`LeaseTable`], and answers on `vigil/v1/agents/{host}/grants`, signed with the
//! coordinator's key.
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
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;
use vigil_shared::agent_auth::{self, ReplayGuard, SealedMessage};
use vigil_shared::bundle::BundleKeys;
use vigil_shared::lease::{LeaseAnswer, LeaseOutcome, LeaseRequest};
use vigil_shared::policy::budget::BudgetMax;
use vigil_shared::signed;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, WireMessage};

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

/// Answers lease requests on a connection made with `options` until `stop` turns true.
pub async fn run(
    budgets: Budgets,
    options: MqttOptions,
    keys: Arc<BundleKeys>,
    store: Store,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let answers = answers_counter(&telemetry);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let mut service = Service {
        budgets,
        keys,
        agent_keys: AgentKeys::new(store.clone()),
        guard: ReplayGuard::default(),
        store,
        telemetry,
        answers,
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
    /// Hosts per (label, value), and in all (`None`), with when they were counted.
    groups: Option<(Instant, GroupSizes)>,
}

impl Service {
    /// Checks one request and decides it; `None` when it is refused.
    fn handle(&mut self, publish: &Publish) -> Option<LeaseAnswer> {
        let Some((host, AgentChannel::Leases)) = topics::parse_agent(&publish.topic) else {
            return None;
        };
        let request = match self.open(host, publish) {
            Ok(request) => request,
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
        let max = match request.max {
            BudgetMax::Count(n) => n,
            share @ BudgetMax::Percent(_) => share.resolve(self.group_size(request.per.as_ref())),
        };
        let answer = self.budgets.lock().decide(&request, max, now_ms());
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

    /// The request inside a sealed payload from `host`, or (reason, message).
    fn open(
        &mut self,
        host: &str,
        publish: &Publish,
    ) -> Result<LeaseRequest, (&'static str, String)> {
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
        if let Some((label, value)) = &request.per {
            self.check_label(host, label, value)?;
        }
        Ok(request)
    }

    /// An agent speaks only for its own host: a lease under `per: label` counts against
    /// the budget of the host's own value of that label, as its last status gave it.
    fn check_label(
        &self,
        host: &str,
        label: &str,
        value: &str,
    ) -> Result<(), (&'static str, String)> {
        let labels = match self.store.host(host) {
            Ok(Some((record, _))) => record.status.map(|s| s.labels).unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(("store", format!("cannot read host `{host}`: {e}"))),
        };
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
