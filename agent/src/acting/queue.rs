//! The action queue: durable (every change is in the [`AgentStore`] before it is
//! reported), one action at a time per target in the order accepted, different targets
//! in parallel up to a limit, with retries (exponential backoff with jitter), a timeout
//! per attempt, a circuit breaker per executor, a dead-letter state after the last
//! attempt, a global dry-run, and a kill switch.
//!
//! The queue does not run executors itself: [`ActionQueue::schedule`] starts attempts as
//! tasks that call a [`RunFn`], and their results come back through the channel the
//! runner passes to [`ActionQueue::on_result`].
//!
//! When the store refuses writes for want of space (or because the disk fails), the queue
//! goes on from memory: actions run, retry and cool down as before, the outbox messages
//! it could not store wait in memory ([`MAX_HELD`] at most, the oldest dropped and
//! counted), and every later save, or one every [`RETRY_SAVE_MS`], writes the whole
//! state and the held messages, in order, once the store takes writes again. The
//! agent's status says so meanwhile (`delivery.storage_error`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use vigil_shared::policy::ActionKind;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, ActionState, QueueStatus};

use super::breaker::Breakers;
use super::job::{Job, Origin};
use super::leases::{LeaseBook, Permit};
use super::store::{AgentStore, AgentStoreError, Counters, OutboxSignal, StorageAlarm};
use crate::acting::executors::{ExecError, ExecOutcome, ExecRequest};
use crate::system::timeline;
use crate::system::units::has_unit_type;

/// Runs one attempt (the executors, behind a function so the queue does not care which).
pub type RunFn = Arc<
    dyn Fn(ExecRequest) -> Pin<Box<dyn Future<Output = Result<ExecOutcome, ExecError>> + Send>>
        + Send
        + Sync,
>;

/// Most outbox messages held in memory while the store refuses writes.
pub(crate) const MAX_HELD: usize = 10_000;

/// How often the queue tries to save again while the store refuses writes (it also tries
/// at every change).
pub(crate) const RETRY_SAVE_MS: i64 = 2_000;

/// What the queue owes the store while the store refuses writes: the jobs themselves are
/// in [`ActionQueue::jobs`] and are all written again at the next save.
struct Unsaved {
    /// Why the last save failed.
    error: String,
    /// Jobs forgotten since (to delete from the store, and to refuse again as done).
    forget: Vec<String>,
    /// Outbox messages not stored yet, oldest first.
    held: VecDeque<(String, Vec<u8>)>,
    /// Messages dropped because `held` was full.
    dropped: u64,
    /// When a save was last tried.
    tried_ms: i64,
}

impl Unsaved {
    /// Keeps `messages` after the ones held, dropping the oldest past [`MAX_HELD`].
    fn hold(&mut self, messages: Vec<(String, Vec<u8>)>) {
        self.held.extend(messages);
        let over = self.held.len().saturating_sub(MAX_HELD);
        if over > 0 {
            if self.dropped == 0 {
                tracing::warn!(
                    held = MAX_HELD,
                    "the agent store still refuses writes: dropping the oldest outbox messages held in memory"
                );
            }
            self.held.drain(..over);
            self.dropped += over as u64;
        }
    }

    /// The text for the agent's status.
    fn describe(&self) -> String {
        format!(
            "cannot write the agent store ({}): remediating from memory; {} outbox \
             messages held, {} dropped",
            self.error,
            self.held.len(),
            self.dropped
        )
    }
}

/// How the queue behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Most actions running at once (on different targets).
    pub max_parallel: usize,
    /// Attempts per action (default 3).
    pub max_attempts: u32,
    /// Time allowed for one attempt (a request's `params.timeout` overrides it).
    pub attempt_timeout: Duration,
    /// First retry delay; doubles per attempt, with ±25 % jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Record every action as done without running anything.
    pub dry_run: bool,
    /// Start with the kill switch on (remediation paused) — from the agent's config; a
    /// resume command from the coordinator lifts it until the agent restarts.
    pub paused: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_parallel: 4,
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            dry_run: false,
            paused: false,
        }
    }
}

/// The outcome of one attempt, as it comes back from its task.
#[derive(Debug)]
pub struct AttemptResult {
    /// The job.
    pub id: String,
    /// The executor that was asked.
    pub executor: String,
    /// What happened.
    pub result: Result<ExecOutcome, ExecError>,
}

/// A new action to accept.
#[derive(Debug, Clone)]
pub struct NewAction {
    /// Its id (a ULID; for manual actions, the coordinator's).
    pub id: String,
    /// Who asked.
    pub origin: Origin,
    /// What it acts on.
    pub target: String,
    /// What it does.
    pub kind: ActionKind,
    /// The name as written.
    pub written: String,
    /// Executor parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Record only.
    pub dry_run: bool,
    /// The disruption budget it takes a lease from, if any.
    pub budget: Option<super::job::JobBudget>,
}

/// The queue.
pub struct ActionQueue {
    store: AgentStore,
    host: String,
    settings: QueueSettings,
    run: RunFn,
    results: mpsc::Sender<AttemptResult>,
    outbox: OutboxSignal,
    jobs: HashMap<String, Job>,
    counters: Counters,
    breakers: Breakers,
    busy_targets: HashSet<String>,
    running: usize,
    next_seq: u64,
    /// (policy, target) → the id of the last action that policy took there, for
    /// verification.
    last_policy_action: HashMap<(String, String), String>,
    /// Where the queue says that the store refuses writes.
    alarm: Option<StorageAlarm>,
    /// Set while the store refuses writes.
    unsaved: Option<Unsaved>,
    /// Leases for budgeted actions; without it budgets are not enforced.
    leases: Option<LeaseBook>,
}

impl ActionQueue {
    /// Opens the queue on `store`. Jobs that were running when the agent stopped count as
    /// a failed attempt ("interrupted"), and are retried or dead-lettered like any other.
    pub fn open(
        store: AgentStore,
        host: &str,
        settings: QueueSettings,
        run: RunFn,
        results: mpsc::Sender<AttemptResult>,
        outbox: OutboxSignal,
        now_ms: i64,
    ) -> Result<ActionQueue, AgentStoreError> {
        let counters = store.counters()?;
        let mut jobs: HashMap<String, Job> = HashMap::new();
        for job in store.jobs()? {
            jobs.insert(job.id.clone(), job);
        }
        let next_seq = jobs.values().map(|j| j.seq + 1).max().unwrap_or(0);
        let mut queue = ActionQueue {
            store,
            host: host.to_string(),
            settings,
            run,
            results,
            outbox,
            jobs,
            counters,
            breakers: Breakers::default(),
            busy_targets: HashSet::new(),
            running: 0,
            next_seq,
            last_policy_action: HashMap::new(),
            alarm: None,
            unsaved: None,
            leases: None,
        };
        if queue.settings.paused {
            queue.set_paused(true, now_ms)?;
        }
        let interrupted: Vec<String> = queue
            .jobs
            .values()
            .filter(|j| j.state == ActionState::Running)
            .map(|j| j.id.clone())
            .collect();
        for id in interrupted {
            tracing::warn!(action = %id, "action was running when the agent stopped; counting the attempt as failed");
            queue.attempt_failed(
                &id,
                "interrupted: the agent stopped during this attempt",
                true,
                now_ms,
            )?;
        }
        Ok(queue)
    }

    /// Sets `alarm` (shown as `delivery.storage_error` in the status) while the store
    /// refuses writes.
    pub fn with_alarm(mut self, alarm: StorageAlarm) -> ActionQueue {
        alarm.set(self.unsaved.as_ref().map(Unsaved::describe));
        self.alarm = Some(alarm);
        self
    }

    /// Runs budgeted actions only with a lease from `leases`.
    pub fn set_leases(&mut self, leases: LeaseBook) {
        self.leases = Some(leases);
    }

    /// Takes the coordinator's answer to a lease request, and starts what it lets run.
    pub fn on_lease_answer(
        &mut self,
        answer: &vigil_shared::lease::LeaseAnswer,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let changed = self
            .leases
            .as_mut()
            .is_some_and(|leases| leases.on_answer(answer, now_ms));
        if changed {
            self.schedule(now_ms)?;
        }
        Ok(())
    }

    /// Why the store refuses writes, while it does (the queue goes on from memory).
    pub fn storage_error(&self) -> Option<String> {
        self.unsaved.as_ref().map(Unsaved::describe)
    }

    /// How many outbox messages wait in memory for the store to take writes again.
    #[cfg(test)]
    pub fn held_messages(&self) -> usize {
        self.unsaved.as_ref().map_or(0, |u| u.held.len())
    }

    /// Adds messages to the outbox (after any held in memory), then wakes it.
    pub fn enqueue_messages(
        &mut self,
        messages: Vec<(String, Vec<u8>)>,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        self.save(&[], &[], messages, now_ms)?;
        self.outbox.wake();
        Ok(())
    }

    /// Whether remediation is paused (the kill switch).
    pub fn paused(&self) -> bool {
        self.counters.paused
    }

    /// Accepts an action: stored (and reported `pending`) before this returns. A known id
    /// (a redelivered command) is ignored. While paused, the action is recorded as
    /// cancelled.
    pub fn accept(&mut self, action: NewAction, now_ms: i64) -> Result<(), AgentStoreError> {
        let forgotten_unsaved = self
            .unsaved
            .as_ref()
            .is_some_and(|u| u.forget.contains(&action.id));
        if self.jobs.contains_key(&action.id)
            || forgotten_unsaved
            || self.store.is_done(&action.id)?
        {
            return Ok(());
        }
        let max_attempts = action
            .params
            .get("max_attempts")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .unwrap_or(self.settings.max_attempts);
        let job = Job {
            id: action.id,
            host: self.host.clone(),
            origin: action.origin,
            target: action.target,
            kind: action.kind,
            written: action.written,
            params: action.params,
            dry_run: action.dry_run || self.settings.dry_run,
            state: ActionState::Pending,
            attempt: 0,
            max_attempts,
            created_at_ms: now_ms,
            not_before_ms: now_ms,
            executor: None,
            detail: None,
            seq: self.next_seq,
            early_verification: None,
            budget: action.budget,
            deferred_attempt: None,
        };
        self.next_seq += 1;
        if let Origin::Policy { name, .. } = &job.origin {
            self.last_policy_action
                .insert((name.clone(), job.target.clone()), job.id.clone());
        }
        self.counters.enqueued_total += 1;
        let mut events = vec![job.event(ActionState::Pending, now_ms, None)];
        let mut job = job;
        if self.counters.paused {
            job.state = ActionState::Cancelled;
            job.detail = Some("remediation is paused on this host (kill switch)".into());
            events.push(job.event(ActionState::Cancelled, now_ms, job.detail.clone()));
        }
        let (id, target) = (job.id.clone(), job.target.clone());
        self.persist(job, events, now_ms)?;
        timeline::mark("queued", &target, Some(&id));
        Ok(())
    }

    /// Starts every attempt that may start now (and, while the store refuses writes,
    /// tries to save again if it has not for [`RETRY_SAVE_MS`]).
    pub fn schedule(&mut self, now_ms: i64) -> Result<(), AgentStoreError> {
        if self
            .unsaved
            .as_ref()
            .is_some_and(|u| now_ms - u.tried_ms >= RETRY_SAVE_MS)
        {
            self.retry_save(now_ms)?;
        }
        self.forget_unverified(now_ms)?;
        if self.counters.paused {
            return Ok(());
        }
        if let Some(leases) = self.leases.as_mut() {
            leases.tick(now_ms);
        }
        let mut candidates: Vec<(u64, String)> = self
            .jobs
            .values()
            .filter(|j| j.state == ActionState::Pending && j.not_before_ms <= now_ms)
            .map(|j| (j.seq, j.id.clone()))
            .collect();
        candidates.sort();
        let mut claimed: HashSet<String> = HashSet::new();
        for (_, id) in candidates {
            if self.running >= self.settings.max_parallel {
                break;
            }
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            // One action per target at a time, in order of acceptance.
            if self.busy_targets.contains(&job.target) || !claimed.insert(job.target.clone()) {
                continue;
            }
            if job.dry_run {
                let detail = format!("dry run: would {} {}", job.written, job.target);
                self.finish(&id, ActionState::Completed, Some(detail), now_ms)?;
                continue;
            }
            // Still an action that needs a mapping: this host has none for it.
            if job.kind.needs_mapping() {
                let detail = super::mapping::not_runnable(job.kind);
                self.counters.failed_total += 1;
                self.finish(&id, ActionState::DeadLetter, Some(detail), now_ms)?;
                continue;
            }
            let mut running_detail = None;
            if let (Some(budget), Some(leases)) = (&job.budget, self.leases.as_mut()) {
                match leases.permit(&id, &budget.policy, &budget.budget, now_ms) {
                    Permit::Go(detail) => running_detail = detail,
                    Permit::Wait(report) => {
                        if let Some(detail) = report {
                            self.record_deferred(&id, detail, now_ms)?;
                        }
                        continue;
                    }
                }
            }
            let executor = executor_name(job.kind, &job.target, &job.params);
            if !self.breakers.allow(executor, now_ms) {
                continue;
            }
            self.start(&id, executor, running_detail, now_ms)?;
        }
        Ok(())
    }

    /// Records that a job waits for a budget lease (once per attempt).
    fn record_deferred(
        &mut self,
        id: &str,
        detail: String,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return Ok(());
        };
        if job.deferred_attempt == Some(job.attempt) {
            return Ok(());
        }
        job.deferred_attempt = Some(job.attempt);
        job.detail = Some(detail.clone());
        let event = job.event(ActionState::Deferred, now_ms, Some(detail));
        self.persist(job, vec![event], now_ms)
    }

    /// Frees the lease of job `id`, if it holds one.
    fn release_lease(&mut self, id: &str, now_ms: i64) {
        if let Some(leases) = self.leases.as_mut() {
            leases.release(id, now_ms);
        }
    }

    fn start(
        &mut self,
        id: &str,
        executor: &'static str,
        detail: Option<String>,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return Ok(());
        };
        job.state = ActionState::Running;
        job.attempt += 1;
        job.executor = Some(executor.to_string());
        self.counters.dequeued_total += 1;
        let event = job.event(ActionState::Running, now_ms, detail);
        let timeout = job
            .params
            .get("timeout")
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|s| format!("{s}s")))
            })
            .and_then(|t| vigil_shared::time::parse_duration(&t).ok())
            .unwrap_or(self.settings.attempt_timeout);
        let request = ExecRequest {
            action_id: job.id.clone(),
            kind: job.kind,
            target: job.target.clone(),
            params: job.params.clone(),
            timeout,
            decided_at_ms: match job.origin {
                Origin::Policy { .. } if job.attempt == 1 => Some(job.created_at_ms),
                _ => None,
            },
        };
        self.busy_targets.insert(job.target.clone());
        self.running += 1;
        self.persist(job, vec![event], now_ms)?;
        timeline::mark("dispatched", &request.target, Some(id));
        let run = self.run.clone();
        let results = self.results.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            // The executor enforces the timeout; this is the backstop if it does not.
            let grace = timeout + Duration::from_secs(5);
            let target = request.target.clone();
            timeline::mark("executor_called", &target, Some(&id));
            let result = match tokio::time::timeout(grace, run(request)).await {
                Ok(result) => result,
                Err(_) => Err(ExecError::Timeout {
                    executor,
                    after: timeout,
                }),
            };
            timeline::mark("executor_returned", &target, Some(&id));
            let _ = results
                .send(AttemptResult {
                    id,
                    executor: executor.to_string(),
                    result,
                })
                .await;
        });
        Ok(())
    }

    /// Takes an attempt's result: completed, or failed with a retry or dead-letter.
    pub fn on_result(
        &mut self,
        attempt: AttemptResult,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let id = attempt.id.clone();
        self.release_lease(&id, now_ms);
        let Some(job) = self.jobs.get(&attempt.id) else {
            return Ok(());
        };
        self.busy_targets.remove(&job.target);
        self.running = self.running.saturating_sub(1);
        match attempt.result {
            Ok(outcome) => {
                self.breakers.record(&attempt.executor, true, now_ms);
                let early = job.early_verification;
                self.finish(
                    &attempt.id,
                    ActionState::Completed,
                    Some(outcome.detail),
                    now_ms,
                )?;
                match early {
                    Some(resolved) => self.record_verification(&attempt.id, resolved, now_ms),
                    None => Ok(()),
                }
            }
            Err(error) => {
                if error.executor().is_some() {
                    self.breakers.record(&attempt.executor, false, now_ms);
                }
                self.attempt_failed(&attempt.id, &error.to_string(), error.retryable(), now_ms)
            }
        }
    }

    /// Records a failed attempt: a retry after backoff, or the dead-letter state.
    fn attempt_failed(
        &mut self,
        id: &str,
        why: &str,
        retryable: bool,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return Ok(());
        };
        self.counters.failed_total += 1;
        if retryable && job.attempt < job.max_attempts {
            let delay = backoff(&self.settings, job.attempt);
            let detail = format!(
                "attempt {} of {} failed: {why}; retrying in {}",
                job.attempt,
                job.max_attempts,
                vigil_shared::time::format_duration(delay)
            );
            let event = job.event(ActionState::Failed, now_ms, Some(detail.clone()));
            job.state = ActionState::Pending;
            job.not_before_ms = now_ms + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            job.detail = Some(detail);
            return self.persist(job, vec![event], now_ms);
        }
        let detail = if retryable {
            format!(
                "attempt {} of {} failed: {why}; no attempts left",
                job.attempt, job.max_attempts
            )
        } else {
            format!("failed: {why}; not retried")
        };
        let failed = job.event(ActionState::Failed, now_ms, Some(detail.clone()));
        self.jobs.insert(job.id.clone(), job);
        self.finish_with(
            id,
            ActionState::DeadLetter,
            Some(detail),
            now_ms,
            vec![failed],
        )
    }

    fn finish(
        &mut self,
        id: &str,
        state: ActionState,
        detail: Option<String>,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        self.finish_with(id, state, detail, now_ms, Vec::new())
    }

    fn finish_with(
        &mut self,
        id: &str,
        state: ActionState,
        detail: Option<String>,
        now_ms: i64,
        mut events: Vec<wire::ActionEvent>,
    ) -> Result<(), AgentStoreError> {
        let Some(mut job) = self.jobs.get(id).cloned() else {
            return Ok(());
        };
        job.state = state;
        job.detail = detail.clone();
        if state == ActionState::Completed {
            self.counters.completed_total += 1;
        }
        self.counters.last_processed = Some((job.id.clone(), job.target.clone(), now_ms));
        events.push(job.event(state, now_ms, detail));
        self.persist(job, events, now_ms)
    }

    /// Reports whether a policy's last action on `target` fixed the problem (the policy
    /// engine's verification after its verify window).
    pub fn verify(
        &mut self,
        policy: &str,
        target: &str,
        resolved: bool,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let Some(id) = self
            .last_policy_action
            .get(&(policy.to_string(), target.to_string()))
            .cloned()
        else {
            return Ok(());
        };
        let Some(job) = self.jobs.get(&id) else {
            return Ok(());
        };
        match job.state {
            ActionState::Completed => {}
            ActionState::Pending | ActionState::Running => {
                // Judged before the executor finished: apply it when the action completes.
                let mut job = job.clone();
                job.early_verification = Some(resolved);
                return self.persist(job, Vec::new(), now_ms);
            }
            _ => return Ok(()),
        }
        self.record_verification(&id, resolved, now_ms)
    }

    fn record_verification(
        &mut self,
        id: &str,
        resolved: bool,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let state = if resolved {
            ActionState::Resolved
        } else {
            ActionState::NotResolved
        };
        let detail = if resolved {
            "the condition cleared after the action"
        } else {
            "the condition still holds after the verify window"
        };
        self.finish(id, state, Some(detail.to_string()), now_ms)
    }

    /// Forgets completed policy actions that no verification came for within an hour (the
    /// policy was removed or changed).
    fn forget_unverified(&mut self, now_ms: i64) -> Result<(), AgentStoreError> {
        const KEEP_MS: i64 = 3_600_000;
        let stale: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.state == ActionState::Completed && now_ms - j.created_at_ms > KEEP_MS)
            .map(|j| j.id.clone())
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        for id in &stale {
            self.jobs.remove(id);
        }
        self.last_policy_action.retain(|_, id| !stale.contains(id));
        self.save(&[], &stale, Vec::new(), now_ms)?;
        if self.unsaved.is_none() {
            match self.store.prune_done(now_ms - 24 * KEEP_MS) {
                Ok(_) => {}
                // Pruning waits for the next time: the store will say so at the next save.
                Err(e) if e.is_write_failure() => tracing::debug!("cannot prune done ids: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The kill switch: pausing cancels every pending action and stops new ones from
    /// running (they are recorded as cancelled); resuming lets new actions run again.
    pub fn set_paused(&mut self, paused: bool, now_ms: i64) -> Result<(), AgentStoreError> {
        if self.counters.paused == paused {
            return Ok(());
        }
        self.counters.paused = paused;
        tracing::warn!(paused, "remediation kill switch changed");
        let pending: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.state == ActionState::Pending)
            .map(|j| j.id.clone())
            .collect();
        if paused && !pending.is_empty() {
            for id in pending {
                self.release_lease(&id, now_ms);
                self.finish(
                    &id,
                    ActionState::Cancelled,
                    Some("remediation was paused on this host (kill switch)".into()),
                    now_ms,
                )?;
            }
            Ok(())
        } else {
            self.save(&[], &[], Vec::new(), now_ms)
        }
    }

    /// When [`ActionQueue::schedule`] should next run on its own: the earliest future
    /// backoff deadline, or in a second if a due job waits for an open circuit, or the next
    /// try to save while the store refuses writes. (Jobs that wait for a busy target are
    /// started when that target's attempt ends.)
    pub fn next_due_ms(&self, now_ms: i64) -> Option<i64> {
        let retry = self.unsaved.as_ref().map(|u| u.tried_ms + RETRY_SAVE_MS);
        if self.counters.paused {
            return retry;
        }
        let leases = self.leases.as_ref().and_then(LeaseBook::next_due_ms);
        let open = self.breakers.open(now_ms);
        self.jobs
            .values()
            .filter(|j| j.state == ActionState::Pending)
            .filter_map(|j| {
                if j.not_before_ms > now_ms {
                    Some(j.not_before_ms)
                } else if !j.dry_run
                    && open
                        .iter()
                        .any(|e| e == executor_name(j.kind, &j.target, &j.params))
                {
                    Some(now_ms + 1_000)
                } else {
                    None
                }
            })
            .chain(retry)
            .chain(leases)
            .min()
    }

    /// The queue's status for the agent's status message.
    pub fn status(&self, now_ms: i64) -> QueueStatus {
        let count = |state| {
            u32::try_from(self.jobs.values().filter(|j| j.state == state).count())
                .unwrap_or(u32::MAX)
        };
        QueueStatus {
            pending: count(ActionState::Pending),
            running: count(ActionState::Running),
            dead_letter: u32::try_from(self.counters_dead_letter()).unwrap_or(u32::MAX),
            enqueued_total: self.counters.enqueued_total,
            dequeued_total: self.counters.dequeued_total,
            completed_total: self.counters.completed_total,
            failed_total: self.counters.failed_total,
            last_processed: self.counters.last_processed.clone(),
            open_circuits: self.breakers.open(now_ms),
        }
    }

    fn counters_dead_letter(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.state == ActionState::DeadLetter)
            .count()
    }

    /// Stores a job and its events in one transaction, then wakes the outbox. Final jobs
    /// that need no verification are kept as a dead-letter record or forgotten.
    fn persist(
        &mut self,
        job: Job,
        events: Vec<wire::ActionEvent>,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        let topic = topics::agent(&self.host, AgentChannel::Actions);
        let messages: Vec<(String, Vec<u8>)> = events
            .iter()
            .inspect(|e| super::audit_log::action_event(e))
            .map(|e| (topic.clone(), wire::encode(e)))
            .collect();
        let forget = match job.state {
            ActionState::Cancelled | ActionState::Resolved | ActionState::NotResolved => true,
            ActionState::Completed => job.origin == Origin::Manual,
            _ => false,
        };
        if forget {
            self.last_policy_action.retain(|_, id| *id != job.id);
            self.jobs.remove(&job.id);
            self.save(&[], std::slice::from_ref(&job.id), messages, now_ms)?;
            if self.unsaved.is_none() {
                if let Err(e) = self.store.remember_finished(&job) {
                    // Only `vigil-agent status` reads this list.
                    tracing::warn!("cannot keep {} among the recent actions: {e}", job.id);
                }
            }
        } else {
            self.jobs.insert(job.id.clone(), job.clone());
            self.save(&[&job], &[], messages, now_ms)?;
        }
        self.outbox.wake();
        Ok(())
    }

    /// Writes `jobs`, the removal of `forget`, the counters and `messages` in one
    /// transaction. When the store refuses the write for want of space (or a failing
    /// disk), the queue goes on from memory (see [`Unsaved`]) and this still succeeds;
    /// only other store errors are returned.
    fn save(
        &mut self,
        jobs: &[&Job],
        forget: &[String],
        messages: Vec<(String, Vec<u8>)>,
        now_ms: i64,
    ) -> Result<(), AgentStoreError> {
        if let Some(unsaved) = &mut self.unsaved {
            unsaved.forget.extend_from_slice(forget);
            unsaved.hold(messages);
            return self.retry_save(now_ms);
        }
        match self.store.commit(jobs, forget, &self.counters, &messages) {
            Ok(()) => Ok(()),
            Err(e) if e.is_write_failure() => {
                tracing::error!(
                    "cannot write the agent store: {e}; remediating from memory and holding \
                     outbox messages (up to {MAX_HELD}) until it takes writes again"
                );
                let mut unsaved = Unsaved {
                    error: e.to_string(),
                    forget: forget.to_vec(),
                    held: VecDeque::new(),
                    dropped: 0,
                    tried_ms: now_ms,
                };
                unsaved.hold(messages);
                self.unsaved = Some(unsaved);
                self.report_storage();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// While the store refuses writes: writes every job, the forgotten ones' removal, the
    /// counters and the held messages (in order) in one transaction; on success the queue
    /// is saved again and the outbox is woken.
    fn retry_save(&mut self, now_ms: i64) -> Result<(), AgentStoreError> {
        let Some(unsaved) = &mut self.unsaved else {
            return Ok(());
        };
        unsaved.tried_ms = now_ms;
        let jobs: Vec<&Job> = self.jobs.values().collect();
        let held = unsaved.held.make_contiguous();
        match self
            .store
            .commit(&jobs, &unsaved.forget, &self.counters, held)
        {
            Ok(()) => {
                tracing::info!(
                    written = unsaved.held.len(),
                    dropped = unsaved.dropped,
                    "the agent store takes writes again: the queue and the held outbox messages are saved"
                );
                self.unsaved = None;
                self.report_storage();
                self.outbox.wake();
                Ok(())
            }
            Err(e) if e.is_write_failure() => {
                unsaved.error = e.to_string();
                self.report_storage();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Puts the store's state into the alarm, if the queue has one.
    fn report_storage(&self) {
        if let Some(alarm) = &self.alarm {
            alarm.set(self.storage_error());
        }
    }
}

/// The executor that will handle an action (for circuit breaking and the audit trail):
/// `params.executor` if given; unit-like targets go to systemd; other restart/start/stop/
/// scale targets to Docker; `exec`, `webhook` and `notify` to their own.
pub fn executor_name(
    kind: ActionKind,
    target: &str,
    params: &BTreeMap<String, serde_json::Value>,
) -> &'static str {
    match kind {
        ActionKind::Exec => return "exec",
        ActionKind::Webhook => return "webhook",
        ActionKind::Notify => return "notify",
        kind if kind.needs_mapping() => return "none",
        _ => {}
    }
    match params.get("executor").and_then(serde_json::Value::as_str) {
        Some("systemd") => return "systemd",
        Some("docker") => return "docker",
        _ => {}
    }
    if has_unit_type(target) || kind == ActionKind::Reload {
        "systemd"
    } else {
        "docker"
    }
}

/// The delay before retry number `attempt` (1-based): base × 2^(attempt−1), capped, ±25 %.
fn backoff(settings: &QueueSettings, attempt: u32) -> Duration {
    let base =
        settings.backoff_base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = base.min(settings.backoff_cap.as_secs_f64());
    let jitter = rand::rng().random_range(0.75..=1.25);
    Duration::from_secs_f64((capped * jitter).max(0.0))
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
