//! The agent's main loop. On every tick it samples the host (and the textfile
//! directory), evaluates the policies, queues the actions they ask for, and publishes the
//! samples. Between ticks it reacts at once to state changes from the watchers and
//! probes, to attempt results from the executors, to commands and policy bundles from the
//! coordinator, and re-reads the policy directory when a file changes. The policies in
//! force are the directory's plus the applied bundles' ([`crate::policy::set`]). Policy events and action
//! transitions go through the durable outbox; metrics and status through the link.
//!
//! Before anything touches the network the agent gets its identity ([`crate::reporting::enrollment`]):
//! every message is sealed with its key, it logs in to the broker with its MQTT login
//! (unless the config names another), and it trusts the coordinator's key from it (unless
//! the config gives a bundle key).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use vigil_service::dir_watch;
use vigil_shared::agent_auth::Sealer;
use vigil_shared::policy::{ActionKind, Policy};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::validate;
use vigil_shared::wire::{
    self, AgentState, AgentStatus, BundleRef, Command, CommandKind, MetricBatch,
    PolicyRunnerStatus, RunningPolicies, RunningPolicy, Sample,
};

use crate::acting::audit_log;
use crate::acting::executors::Executors;
use crate::acting::leases::LeaseBook;
use crate::acting::mapping::ActionMappings;
use crate::acting::store::AgentStoreError;
use crate::acting::store::OutboxSignal;
use crate::acting::{ActionQueue, AgentStore, JobBudget, NewAction, Origin, RunFn};
use crate::config::{AgentConfig, BundleKey, ConfigError};
use crate::policy::bundle_store::BundleStore;
use crate::policy::bundles::{Bundles, Outcome};
use crate::policy::evaluator::{EvalOutput, Evaluator, WatchSets};
use crate::policy::set as policy_set;
use crate::policy::source::PolicyDir;
use crate::reporting::command_guard::CommandGuard;
use crate::reporting::delivery::{DeliveryReport, DeliveryTask, SharedSpool};
use crate::reporting::enrollment::{self, Identity, IdentityError};
use crate::reporting::link::{Inbound, Link};
use crate::reporting::service_report::ServiceReport;
use crate::reporting::spool::Spool;
use crate::reporting::status_file;
use crate::sampling::probes::{self, ProbeSet};
use crate::sampling::sampler::HostSampler;
use crate::sampling::watch::{docker, systemd, StateUpdate};
use crate::system::timeline;

/// How often the action queue's counters are compared with the published status.
const QUEUE_STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often the status is re-published with fresh runner counters.
const STATUS_EVERY: Duration = Duration::from_secs(30);
/// When the first refresh of the runner counters is published.
const FIRST_STATUS_REFRESH: Duration = Duration::from_secs(3);

/// Why the agent stopped on its own.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The sampler thread failed.
    #[error("sampler failed: {0}")]
    Sampler(String),
    /// The agent's store (action queue, outbox) failed.
    #[error(transparent)]
    Store(#[from] AgentStoreError),
    /// The agent has no usable identity (and could not enroll).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A setting cannot be used (e.g. the `--ca` file).
    #[error(transparent)]
    Settings(#[from] ConfigError),
    /// The broker needs TLS and none is configured.
    #[error(transparent)]
    Tls(#[from] vigil_shared::mqtt::MissingTls),
    /// The metric buffer's directory cannot be made or read.
    #[error(transparent)]
    Spool(#[from] crate::reporting::spool::SpoolError),
    /// The identity's coordinator key is not a key.
    #[error("the coordinator key in the identity file: {0}")]
    CoordinatorKey(ConfigError),
}

/// Runs the agent until `shutdown` resolves, then says goodbye to the broker.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut config = config;
    let service = vigil_service::ServiceManager::from_env();
    service.status("starting");
    let tls = config.client_tls()?;
    let identity = enrollment::load_or_enroll(&config, tls.as_ref()).await?;
    apply_identity(&mut config, &identity)?;
    let store = AgentStore::open(&config.data_dir.join("agent"))?;
    // The session counts the agent's starts (kept in its store), never its clock.
    let session = store.next_session()?;
    // With the coordinator's key the sealer can check Welcomes and move to session keys
    // (the link makes the handshakes); without it every message stays signed.
    let sealer = Arc::new(
        Sealer::with_session(
            config.host.clone(),
            identity.key().map_err(IdentityError::from)?,
            session,
        )
        .with_coordinator_key(config.bundle_key.as_ref().map(|k| k.key.clone())),
    );
    let started_at_ms = now_ms();
    let interval_ms = u64::try_from(config.interval.as_millis()).unwrap_or(u64::MAX);
    let status = AgentStatus {
        host: config.host.clone(),
        state: AgentState::Online,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms,
        sent_at_ms: started_at_ms,
        interval_ms,
        labels: config.labels.clone(),
        bundles: Vec::new(),
        bundle_error: None,
        remediation_paused: false,
        detail: None,
        queue: Default::default(),
        policies: PolicyRunnerStatus {
            interval_ms,
            source: config.policies.as_ref().map(|p| p.display().to_string()),
            ..PolicyRunnerStatus::default()
        },
        delivery: None,
    };
    tracing::info!(
        host = %config.host,
        broker = %config.broker,
        interval = ?config.interval,
        policies = ?config.policies,
        "vigil-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // Persisted bundles are verified and loaded before anything touches the network.
    let mut bundles = open_bundles(&config);
    let mut status = status;
    if let Some((bundles, refusal)) = &bundles {
        status.bundles = bundles.applied();
        status.bundle_error = refusal.clone();
    }
    let mut commands = CommandGuard::open(
        config.bundle_key.as_ref().map(|k| k.key.clone()),
        &config.host,
        &config.data_dir,
    );
    let outbox_signal = OutboxSignal::default();
    let (stop_outbox, stop_outbox_rx) = watch::channel(false);
    let mut outbox_options = vigil_shared::mqtt::client_options(
        &vigil_shared::mqtt::outbox_client_id(&config.host),
        &config.broker,
        config.mqtt_username.as_deref(),
        config.mqtt_password.as_deref(),
        tls.as_ref(),
    )?;
    outbox_options.set_inflight(vigil_shared::mqtt::AGENT_INFLIGHT);
    let opened = Spool::open(
        &config.data_dir.join("metrics-spool"),
        config.metrics_buffer_bytes,
    )?;
    if opened.quarantined_segments > 0 {
        tracing::warn!(
            segments = opened.quarantined_segments,
            bytes = opened.quarantined_bytes,
            "damaged metric buffer segments were set aside (*.corrupt in the spool directory)"
        );
    }
    let spool: SharedSpool = Arc::new(std::sync::Mutex::new(opened.spool));
    let delivery_report = Arc::new(DeliveryReport::new());
    let outbox_task = tokio::spawn(
        DeliveryTask {
            store: store.clone(),
            spool: spool.clone(),
            quarantined_at_open: opened.quarantined_segments,
            options: outbox_options,
            sealer: sealer.clone(),
            signal: outbox_signal.clone(),
            coordinator_key: config.bundle_key.as_ref().map(|k| k.key.clone()),
            report: delivery_report.clone(),
        }
        .run(stop_outbox_rx),
    );
    let executors = Arc::new(Executors::new(config.allow.clone()));
    let run_attempt: RunFn = Arc::new(move |request| {
        let executors = executors.clone();
        Box::pin(async move { executors.run(&request).await })
    });
    let (results_tx, mut results_rx) = mpsc::channel(64);
    let mut queue = ActionQueue::open(
        store.clone(),
        &config.host,
        config.remediation.clone(),
        run_attempt,
        results_tx,
        outbox_signal.clone(),
        started_at_ms,
    )?
    .with_alarm(delivery_report.storage_alarm());
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(64);
    status.remediation_paused = queue.paused();
    status.queue = queue.status(started_at_ms);
    let link = Link::connect(
        &config,
        tls.as_ref(),
        status,
        inbound_tx,
        sealer,
        outbox_signal.clone(),
    )?;
    queue.set_leases(LeaseBook::new(
        &config.host,
        config.labels.clone(),
        link.lease_sender(),
    ));
    let events_topic = topics::agent(&config.host, AgentChannel::Events);
    // sysinfo reads /proc synchronously: keep it off the async workers.
    let sampler = tokio::task::spawn_blocking(HostSampler::new)
        .await
        .map_err(|e| AgentError::Sampler(e.to_string()))?
        .map_err(|e| AgentError::Sampler(format!("cannot read host information: {e}")))?;

    let mut evaluator = Evaluator::new(&config.host, started_at_ms);
    let mut policy_dir = config.policies.clone().map(PolicyDir::new);
    let (state_tx, mut state_rx) = mpsc::channel::<StateUpdate>(1024);
    let mut watchers = Watchers::new(state_tx, config.interval);
    let mut load_errors: u64 = 0;
    // The local directory's last good set; the bundles' are in `bundles`.
    let mut local: Vec<Policy> = Vec::new();
    if let Some(dir) = policy_dir.as_mut() {
        if let Some(result) = dir.poll() {
            local_policies(result, dir, &mut local, &link, &mut load_errors);
        }
    }
    put_in_force(
        &mut evaluator,
        &mut watchers,
        &link,
        &local,
        bundles.as_ref(),
        &config.actions,
    );

    // Sampling runs in its own task, so that a slow /proc scan never delays the reaction
    // to a state change.
    let (samples_tx, mut samples_rx) = mpsc::channel::<Vec<Sample>>(4);
    let sampler_task = tokio::spawn(sample_forever(
        sampler,
        config.interval,
        config.textfile_dir.clone(),
        samples_tx,
    ));
    // The directory is read again when its watch says it may have changed.
    let mut policy_changes = policy_dir.as_ref().map(|dir| {
        dir_watch::spawn(
            dir.path().to_path_buf(),
            dir_watch::Depth::Flat,
            "the policy directory",
        )
    });
    let mut queue_status_every = tokio::time::interval(QUEUE_STATUS_EVERY);
    queue_status_every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // First refresh soon after start, so the runner status shows evaluations at once.
    let mut status_every = tokio::time::interval_at(
        tokio::time::Instant::now() + FIRST_STATUS_REFRESH,
        STATUS_EVERY,
    );
    let mut report =
        ServiceReport::new(service, config.data_dir.clone(), config.broker.to_string())
            .with_delivery(delivery_report.clone());
    let mut watchdog_every = tokio::time::interval(report.watchdog_every());
    watchdog_every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status_file_every = tokio::time::interval(status_file::WRITE_EVERY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watchdog_every.tick() => report.watchdog(),
            _ = status_file_every.tick() => report.refresh(&link, &store),
            _ = queue_status_every.tick() => {
                let queue_status = queue.status(now_ms());
                let paused = queue.paused();
                if link.status().queue != queue_status || link.status().remediation_paused != paused {
                    link.update_status(|s| {
                        s.queue = queue_status;
                        s.remediation_paused = paused;
                    });
                }
            }
            Some(()) = changed(&mut policy_changes) => {
                let Some(dir) = policy_dir.as_mut() else { continue };
                let Some(result) = dir.poll() else { continue };
                if local_policies(result, dir, &mut local, &link, &mut load_errors) {
                    put_in_force(
                        &mut evaluator,
                        &mut watchers,
                        &link,
                        &local,
                        bundles.as_ref(),
                        &config.actions,
                    );
                }
            }
            Some(update) = state_rx.recv() => {
                let now = now_ms();
                timeline::mark("state_received", &update.name, None);
                let output = evaluator.on_state(update, now);
                for action in &output.actions {
                    timeline::mark("policy_fired", &action.target, Some(&action.id));
                }
                handle(output, &mut queue, &events_topic, &config.actions, evaluator.policies(), now)?;
            }
            Some(result) = results_rx.recv() => {
                let now = now_ms();
                queue.on_result(result, now)?;
                queue.schedule(now)?;
            }
            Some(inbound) = inbound_rx.recv() => match inbound {
                Inbound::Command(payload) => {
                    let now = now_ms();
                    match commands.check(&payload, now) {
                        Ok(command) => {
                            run_command(command, &mut queue, &link, &config.actions, now)?;
                            queue.schedule(now)?;
                        }
                        Err(refusal) => {
                            tracing::warn!(reason = refusal.reason(), "refused a command: {refusal}");
                            link.update_status(|s| {
                                s.detail = Some(format!("refused command: {refusal}"));
                            });
                        }
                    }
                }
                Inbound::Grant(payload) => {
                    let key = config.bundle_key.as_ref().map(|k| &k.key);
                    match vigil_shared::signed::open::<vigil_shared::lease::LeaseAnswer>(&payload, key, &config.host) {
                        Ok(answer) => queue.on_lease_answer(&answer, now_ms())?,
                        Err(refusal) => tracing::warn!("refused a lease answer: {refusal}"),
                    }
                }
                Inbound::Bundle { group, payload } => {
                    let Some((set, refusal)) = bundles.as_mut() else { continue };
                    match set.offer(&group, &payload) {
                        Ok(Outcome::Applied { group, version }) => {
                            tracing::info!(%group, version, "policy bundle verified and applied");
                            *refusal = None;
                        }
                        Ok(Outcome::Left { group }) => {
                            tracing::info!(%group, "this host left the group: its policy bundle is dropped");
                            *refusal = None;
                        }
                        Ok(Outcome::Removed { group, version }) => {
                            tracing::info!(%group, version, "the group was removed (signed tombstone): its policy bundle is dropped");
                            *refusal = None;
                        }
                        Ok(Outcome::Unchanged | Outcome::Ignored) => continue,
                        Err(e) => {
                            tracing::warn!(replays_refused = set.replays_refused(), "policy bundle refused, the last good one stays in force: {e}");
                            *refusal = Some(e.to_string());
                        }
                    }
                    put_in_force(
                        &mut evaluator,
                        &mut watchers,
                        &link,
                        &local,
                        bundles.as_ref(),
                        &config.actions,
                    );
                }
            },
            _ = sleep_until_due(queue.next_due_ms(now_ms())) => {
                queue.schedule(now_ms())?;
            }
            _ = status_every.tick() => {
                let stats = evaluator.stats();
                let delivery = delivery_report.status();
                link.update_status(|s| {
                    s.policies.evaluations = stats.evaluations;
                    s.policies.last_evaluation_ms = stats.last_evaluation_ms;
                    s.delivery = Some(delivery);
                });
            }
            Some(samples) = samples_rx.recv() => {
                let now = now_ms();
                let output = evaluator.on_samples(&samples, now);
                handle(output, &mut queue, &events_topic, &config.actions, evaluator.policies(), now)?;
                {
                    let mut spool = spool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let batch = MetricBatch {
                        host: config.host.clone(),
                        seq: spool.next_seq(),
                        sent_at_ms: now_ms(),
                        labels: config.labels.clone(),
                        samples,
                    };
                    spool.push(&wire::encode(&batch));
                }
                outbox_signal.wake();
                report.on_samples(&link, &store, now);
            }
        }
    }
    report.stopping();
    tracing::info!("stopping: publishing offline status");
    let stats = evaluator.stats();
    link.update_status(|s| {
        s.policies.evaluations = stats.evaluations;
        s.policies.last_evaluation_ms = stats.last_evaluation_ms;
    });
    sampler_task.abort();
    link.close(Duration::from_secs(2)).await;
    let _ = stop_outbox.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), outbox_task).await;
    Ok(())
}

/// Completes the settings with the identity: its MQTT login when the config names none
/// (an external broker with its own password file), the coordinator's key when no bundle
/// key is configured, and the labels its join token gave (the config's win on a clash).
fn apply_identity(config: &mut AgentConfig, identity: &Identity) -> Result<(), AgentError> {
    if config.mqtt_username.is_none() {
        config.mqtt_username = Some(identity.mqtt_username.clone());
        config.mqtt_password = Some(identity.mqtt_password.clone());
    }
    if config.bundle_key.is_none() {
        if let Some(hex) = &identity.coordinator_key {
            config.bundle_key = Some(BundleKey::load(hex).map_err(AgentError::CoordinatorKey)?);
        }
    }
    for (key, value) in &identity.labels {
        if config.labels.iter().any(|(k, _)| k == key) {
            continue;
        }
        let mut labels = config.labels.clone();
        labels.push((key.clone(), value.clone()));
        match validate::tags(labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(()) => config.labels = labels,
            Err(e) => tracing::warn!(
                label = %key,
                "label from the join token ignored: {}",
                e.problem
            ),
        }
    }
    config.labels.sort();
    Ok(())
}

/// The bundles in force (loaded from the store and verified again) and the reason the last
/// one was refused, if it was; `None` without a bundle key.
fn open_bundles(config: &AgentConfig) -> Option<(Bundles, Option<String>)> {
    let Some(key) = &config.bundle_key else {
        tracing::info!("no bundle key configured (--bundle-key): policy bundles are ignored");
        return None;
    };
    let store = BundleStore::new(config.data_dir.join("bundles"));
    let (bundles, refusals) = Bundles::open(key.key.clone(), config.labels.clone(), store);
    for refusal in &refusals {
        tracing::error!("persisted policy bundle refused: {refusal}");
    }
    let refusal = (!refusals.is_empty()).then(|| {
        refusals
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    });
    Some((bundles, refusal))
}

/// Takes a read of the policy directory: keeps a good set in `local` (true), or reports
/// the error and keeps the previous set (false).
fn local_policies(
    result: Result<Vec<Policy>, vigil_shared::policy::load::LoadError>,
    dir: &PolicyDir,
    local: &mut Vec<Policy>,
    link: &Link,
    load_errors: &mut u64,
) -> bool {
    match result {
        Ok(policies) => {
            tracing::info!(count = policies.len(), dir = %dir.path().display(), "policies loaded");
            *local = policies;
            link.update_status(|s| s.policies.load_error = None);
            true
        }
        Err(e) => {
            *load_errors += 1;
            tracing::error!("policy files rejected, previous policies stay in force: {e}");
            let message = e.to_string();
            let count = *load_errors;
            link.update_status(|s| {
                s.policies.load_error = Some(message);
                s.policies.load_errors = count;
            });
            false
        }
    }
}

/// Puts the local policies plus the bundles' in force (see [`crate::policy::set`] for name
/// clashes), points the watchers at what they need, and reports the policy counts, the
/// bundles in force, and the last refusal or the clashes as `bundle_error`.
fn put_in_force(
    evaluator: &mut Evaluator,
    watchers: &mut Watchers,
    link: &Link,
    local: &[Policy],
    bundles: Option<&(Bundles, Option<String>)>,
    actions: &ActionMappings,
) {
    let combined = match bundles {
        Some((set, _)) => policy_set::combine(local, set.group_policies()),
        None => policy_set::combine(local, []),
    };
    for clash in &combined.clashes {
        tracing::warn!("{clash}");
    }
    for policy in &combined.policies {
        for warning in policy.unmapped_actions(|kind| actions.runs(kind)) {
            tracing::warn!("{warning}");
        }
    }
    let applied = bundles.map(|(set, _)| set.applied()).unwrap_or_default();
    let running = RunningPolicies::new(combined.policies.iter().zip(&combined.groups).map(
        |(policy, group)| RunningPolicy {
            name: policy.name.clone(),
            bundle: group.as_ref().map(|group| {
                BundleRef {
                    group: group.clone(),
                    version: applied
                        .iter()
                        .find(|b| &b.group == group)
                        .map_or(0, |b| b.version),
                }
            }),
        },
    ));
    evaluator.set_policies(combined.policies);
    watchers.follow(evaluator.watch_sets());
    let (loaded, enabled) = counts(evaluator);
    let refusal = bundles.and_then(|(_, refusal)| refusal.clone());
    let bundle_error = refusal
        .into_iter()
        .chain(combined.clashes)
        .reduce(|a, b| format!("{a}; {b}"));
    link.update_status(|s| {
        s.policies.loaded = loaded;
        s.policies.enabled = enabled;
        s.bundles = applied;
        s.bundle_error = bundle_error;
    });
    link.set_running(running);
}

/// Samples the host (and the textfile directory) every `interval` and sends the samples,
/// until the receiver is gone.
async fn sample_forever(
    mut sampler: HostSampler,
    interval: Duration,
    textfile_dir: Option<std::path::PathBuf>,
    samples: mpsc::Sender<Vec<Sample>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let dir = textfile_dir.clone();
        let Ok((returned, batch)) = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let mut batch = sampler.sample(now);
            if let Some(dir) = dir {
                batch.extend(crate::sampling::textfile::read_dir(&dir, now));
            }
            (sampler, batch)
        })
        .await
        else {
            tracing::error!("the sampler thread panicked; sampling stops");
            return;
        };
        sampler = returned;
        if samples.send(batch).await.is_err() {
            return;
        }
    }
}

/// Records an evaluation's events in the outbox, queues the actions it asked for, and
/// reports verification results on the actions they judge.
fn handle(
    output: EvalOutput,
    queue: &mut ActionQueue,
    events_topic: &str,
    actions: &ActionMappings,
    policies: &[Policy],
    now_ms: i64,
) -> Result<(), AgentStoreError> {
    if !output.events.is_empty() {
        for event in &output.events {
            // An `act` event's action: the one this evaluation queues for its policy and target.
            let action_id = (event.kind == "act")
                .then(|| {
                    output
                        .actions
                        .iter()
                        .find(|a| a.policy == event.policy && a.target == event.target)
                })
                .flatten()
                .map(|a| a.id.as_str());
            audit_log::policy_event(event, action_id);
        }
        let messages: Vec<(String, Vec<u8>)> = output
            .events
            .iter()
            .map(|e| (events_topic.to_string(), wire::encode(e)))
            .collect();
        // Through the queue: held in memory with its own messages while the store
        // refuses writes, so the outbox keeps their order.
        queue.enqueue_messages(messages, now_ms)?;
    }
    for (policy, target, resolved) in output.verified {
        queue.verify(&policy, &target, resolved, now_ms)?;
    }
    for mut action in output.actions {
        let kind = actions.apply(action.request.kind, &mut action.request.params);
        let budget = policies
            .iter()
            .find(|p| p.name == action.policy)
            .and_then(|p| p.budget.clone())
            .map(|budget| JobBudget {
                policy: action.policy.clone(),
                budget,
            });
        queue.accept(
            NewAction {
                id: action.id,
                origin: Origin::Policy {
                    name: action.policy,
                    step: u32::try_from(action.request.step).unwrap_or(u32::MAX),
                },
                target: action.target,
                kind,
                written: action.request.written,
                params: action.request.params,
                dry_run: action.request.dry_run,
                budget,
            },
            now_ms,
        )?;
    }
    queue.schedule(now_ms)
}

/// Carries out a command from the coordinator (checked by the [`CommandGuard`]).
fn run_command(
    command: Command,
    queue: &mut ActionQueue,
    link: &Link,
    actions: &ActionMappings,
    now_ms: i64,
) -> Result<(), AgentStoreError> {
    match command.kind {
        CommandKind::RunAction {
            action_id,
            target,
            action,
            params,
            dry_run,
        } => manual_action(
            &command.id,
            ManualAction {
                action_id,
                target,
                action,
                params,
                dry_run,
                budget: None,
            },
            queue,
            actions,
            now_ms,
        ),
        CommandKind::RunBudgetedAction {
            action_id,
            target,
            action,
            params,
            dry_run,
            policy,
            budget,
        } => manual_action(
            &command.id,
            ManualAction {
                action_id,
                target,
                action,
                params,
                dry_run,
                budget: Some(JobBudget { policy, budget }),
            },
            queue,
            actions,
            now_ms,
        ),
        CommandKind::PauseRemediation(paused) => {
            queue.set_paused(paused, now_ms)?;
            link.update_status(|s| s.remediation_paused = paused);
            Ok(())
        }
        CommandKind::Resync => {
            link.update_status(|_| {});
            Ok(())
        }
    }
}

/// A manual action from a command.
struct ManualAction {
    action_id: String,
    target: String,
    action: String,
    params: Vec<vigil_shared::wire::Tag>,
    dry_run: bool,
    budget: Option<JobBudget>,
}

/// Queues a manual action (refused, with a warning, when its action name is unknown).
fn manual_action(
    command_id: &str,
    manual: ManualAction,
    queue: &mut ActionQueue,
    actions: &ActionMappings,
    now_ms: i64,
) -> Result<(), AgentStoreError> {
    let ManualAction {
        action_id,
        target,
        action,
        params,
        dry_run,
        budget,
    } = manual;
    let kind = match ActionKind::parse(&action) {
        Ok(kind) => kind,
        Err(e) => {
            tracing::warn!(command = %command_id, "refused a manual action: {e}");
            return Ok(());
        }
    };
    let mut params = params
        .into_iter()
        .map(|(k, v)| {
            let value = serde_json::from_str::<serde_json::Value>(&v)
                .ok()
                .filter(|v| v.is_number() || v.is_boolean())
                .unwrap_or(serde_json::Value::String(v));
            (k, value)
        })
        .collect();
    let kind = actions.apply(kind, &mut params);
    tracing::info!(action = %action_id, %target, budget = ?budget.as_ref().map(|b| &b.policy), "manual action from the coordinator");
    queue.accept(
        NewAction {
            id: action_id,
            origin: Origin::Manual,
            target,
            kind,
            written: action,
            params,
            dry_run,
            budget,
        },
        now_ms,
    )
}

/// The next wake-up of the policy directory's watch (never, without a directory).
async fn changed(changes: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the earliest backed-off action is due (never, if none waits).
async fn sleep_until_due(due_ms: Option<i64>) {
    match due_ms {
        Some(due) => {
            let wait = (due - now_ms()).max(0);
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        }
        None => std::future::pending().await,
    }
}

fn counts(evaluator: &Evaluator) -> (u32, u32) {
    let policies = evaluator.policies();
    let loaded = u32::try_from(policies.len()).unwrap_or(u32::MAX);
    let enabled = u32::try_from(policies.iter().filter(|p| p.enabled).count()).unwrap_or(u32::MAX);
    (loaded, enabled)
}

/// The watchers and probes, started when the policies first need them.
struct Watchers {
    updates: mpsc::Sender<StateUpdate>,
    interval: Duration,
    units: Option<watch::Sender<Vec<String>>>,
    containers: Option<watch::Sender<Vec<String>>>,
    probes: Option<watch::Sender<ProbeSet>>,
}

impl Watchers {
    fn new(updates: mpsc::Sender<StateUpdate>, interval: Duration) -> Watchers {
        Watchers {
            updates,
            interval,
            units: None,
            containers: None,
            probes: None,
        }
    }

    /// Points the watchers at what the policies now need, starting any not yet running.
    fn follow(&mut self, sets: WatchSets) {
        if !sets.units.is_empty() || self.units.is_some() {
            let tx = self.units.get_or_insert_with(|| {
                let (tx, rx) = watch::channel(Vec::new());
                tokio::spawn(systemd::run(rx, self.updates.clone()));
                tx
            });
            tx.send_replace(sets.units);
        }
        if !sets.containers.is_empty() || self.containers.is_some() {
            let tx = self.containers.get_or_insert_with(|| {
                let (tx, rx) = watch::channel(Vec::new());
                tokio::spawn(docker::run(rx, self.updates.clone(), None));
                tx
            });
            tx.send_replace(sets.containers);
        }
        if sets.probes != ProbeSet::default() || self.probes.is_some() {
            let tx = self.probes.get_or_insert_with(|| {
                let (tx, rx) = watch::channel(ProbeSet::default());
                tokio::spawn(probes::run(rx, self.interval, self.updates.clone()));
                tx
            });
            tx.send_replace(sets.probes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn identity(coordinator_key: Option<String>) -> Identity {
        Identity {
            host: "web-01".into(),
            private_key: vigil_shared::agent_auth::AgentKey::generate().private_hex(),
            mqtt_username: "web-01".into(),
            mqtt_password: "from-enrollment".into(),
            coordinator_key,
            labels: BTreeMap::from([
                ("role".to_string(), "db".to_string()),
                ("zone".to_string(), "a".to_string()),
            ]),
            enrolled_at_ms: 0,
        }
    }

    #[test]
    fn the_identity_fills_in_login_key_and_labels_but_the_config_wins() {
        let keys = vigil_shared::bundle::BundleKeys::generate();
        let mut config = AgentConfig::for_host("web-01");
        config.labels = vec![("role".into(), "web".into())];
        apply_identity(&mut config, &identity(Some(keys.public_hex()))).unwrap();
        assert_eq!(config.mqtt_username.as_deref(), Some("web-01"));
        assert_eq!(config.mqtt_password.as_deref(), Some("from-enrollment"));
        assert_eq!(
            config.bundle_key.as_ref().map(|k| k.spec.clone()),
            Some(keys.public_hex())
        );
        assert_eq!(
            config.labels,
            vec![("role".into(), "web".into()), ("zone".into(), "a".into())]
        );

        let mut config = AgentConfig::for_host("web-01");
        config.mqtt_username = Some("mosquitto-user".into());
        config.mqtt_password = Some("mosquitto-pw".into());
        let own_key = BundleKey::load(&keys.public_hex()).unwrap();
        config.bundle_key = Some(own_key.clone());
        let other = vigil_shared::bundle::BundleKeys::generate().public_hex();
        apply_identity(&mut config, &identity(Some(other))).unwrap();
        assert_eq!(config.mqtt_username.as_deref(), Some("mosquitto-user"));
        assert_eq!(config.mqtt_password.as_deref(), Some("mosquitto-pw"));
        assert_eq!(config.bundle_key, Some(own_key));

        let mut config = AgentConfig::for_host("web-01");
        let err = apply_identity(&mut config, &identity(Some("zz".into()))).unwrap_err();
        assert!(err.to_string().contains("coordinator key"), "{err}");
    }
}
