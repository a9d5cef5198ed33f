//! Disruption-budget leases, agent side: before a budgeted action runs, the queue asks
//! the [`LeaseBook`] for a permit. The book asks the coordinator for a lease
//! ([`vigil_shared::lease`]), asks again every [`RETRY_MS`] while the budget is spent,
//! renews a granted lease every third of its TTL while the action runs, and releases it
//! when the action's attempt ends.
//!
//! When no answer comes within [`ANSWER_TIMEOUT_MS`] the coordinator counts as
//! unreachable: a policy with `offline: wait` (the default) keeps waiting and asking; one
//! with `offline: act` runs without a lease, and its `running` transition says so.
//!
//! In memory only: after an agent restart a job asks again (its interrupted attempt is
//! retried like any other). An answer is taken only for the request it names, so an old
//! answer replayed is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use vigil_shared::lease::{LeaseAnswer, LeaseOp, LeaseOutcome, LeaseRequest};
use vigil_shared::policy::budget::{Budget, OfflineMode};
use vigil_shared::wire::Tag;

/// How long an answer may take before the coordinator counts as unreachable, ms.
pub const ANSWER_TIMEOUT_MS: i64 = 5_000;
/// How often a waiting action asks again, ms.
pub const RETRY_MS: i64 = 1_000;

/// Sends a request to the coordinator (sealed and published by the agent's link).
pub type SendFn = Arc<dyn Fn(LeaseRequest) + Send + Sync>;

/// What the queue may do with a budgeted job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Run it; the words (if any) go into its `running` transition.
    Go(Option<String>),
    /// Wait; the words (if any) say why, for a `deferred` transition.
    Wait(Option<String>),
}

#[derive(Debug, Clone)]
enum State {
    /// A request is out; `since_ms` is when the first unanswered one went.
    Asking {
        request_id: String,
        sent_ms: i64,
        since_ms: i64,
    },
    /// The coordinator said wait.
    Deferred { reason: String, retry_ms: i64 },
    /// Held; renewed at `renew_ms`.
    Granted { renew_ms: i64, ttl_ms: i64 },
    /// Acting without a lease (the coordinator was unreachable, `offline: act`).
    Alone,
}

#[derive(Debug, Clone)]
struct Entry {
    policy: String,
    budget: Budget,
    state: State,
    /// The reason last reported for a wait (reported again only when it changes kind).
    reported: bool,
}

/// The leases of one agent's budgeted jobs.
pub struct LeaseBook {
    host: String,
    labels: Vec<Tag>,
    send: SendFn,
    entries: HashMap<String, Entry>,
}

impl LeaseBook {
    /// A book for `host` with `labels` (the `per` label's value comes from them) that
    /// sends requests with `send`.
    pub fn new(host: &str, labels: Vec<Tag>, send: SendFn) -> LeaseBook {
        LeaseBook {
            host: host.to_string(),
            labels,
            send,
            entries: HashMap::new(),
        }
    }

    fn request(&self, action_id: &str, entry: &Entry, op: LeaseOp, now_ms: i64) -> LeaseRequest {
        let per = entry.budget.per_value(&self.labels);
        LeaseRequest {
            host: self.host.clone(),
            request_id: format!("{:016x}", rand::random::<u64>()),
            action_id: action_id.to_string(),
            policy: entry.policy.clone(),
            per,
            max: entry.budget.max,
            max_per_hour: entry.budget.max_per_hour,
            op,
            sent_at_ms: now_ms,
        }
    }

    fn ask(&mut self, action_id: &str, op: LeaseOp, since_ms: i64, now_ms: i64) {
        let Some(entry) = self.entries.get(action_id) else {
            return;
        };
        let request = self.request(action_id, entry, op, now_ms);
        let request_id = request.request_id.clone();
        (self.send)(request);
        if let Some(entry) = self.entries.get_mut(action_id) {
            if op == LeaseOp::Acquire {
                entry.state = State::Asking {
                    request_id,
                    sent_ms: now_ms,
                    since_ms,
                };
            }
        }
    }

    /// Whether job `action_id` of `policy`, under `budget`, may run now.
    pub fn permit(
        &mut self,
        action_id: &str,
        policy: &str,
        budget: &Budget,
        now_ms: i64,
    ) -> Permit {
        let Some(entry) = self.entries.get(action_id) else {
            self.entries.insert(
                action_id.to_string(),
                Entry {
                    policy: policy.to_string(),
                    budget: budget.clone(),
                    state: State::Alone,
                    reported: false,
                },
            );
            self.ask(action_id, LeaseOp::Acquire, now_ms, now_ms);
            return Permit::Wait(None);
        };
        match entry.state.clone() {
            State::Granted { .. } => Permit::Go(None),
            State::Alone => Permit::Go(None),
            State::Deferred { reason, retry_ms } => {
                let report = (!entry.reported).then(|| format!("deferred: budget — {reason}"));
                if let Some(entry) = self.entries.get_mut(action_id) {
                    entry.reported = true;
                }
                if now_ms >= retry_ms {
                    self.ask(action_id, LeaseOp::Acquire, now_ms, now_ms);
                }
                Permit::Wait(report)
            }
            State::Asking {
                sent_ms, since_ms, ..
            } => {
                if now_ms - since_ms < ANSWER_TIMEOUT_MS {
                    return Permit::Wait(None);
                }
                let waited = vigil_shared::time::format_duration(std::time::Duration::from_millis(
                    u64::try_from(now_ms - since_ms).unwrap_or(0),
                ));
                match entry.budget.offline {
                    OfflineMode::Act => {
                        if let Some(entry) = self.entries.get_mut(action_id) {
                            entry.state = State::Alone;
                        }
                        Permit::Go(Some(format!(
                            "acting without a budget lease: the coordinator did not answer \
                             within {waited} (budget offline: act)"
                        )))
                    }
                    OfflineMode::Wait => {
                        let report = (!entry.reported).then(|| {
                            format!(
                                "deferred: budget — the coordinator did not answer within \
                                 {waited}; waiting for a lease (budget offline: wait)"
                            )
                        });
                        if let Some(entry) = self.entries.get_mut(action_id) {
                            entry.reported = true;
                        }
                        if now_ms - sent_ms >= RETRY_MS {
                            self.ask(action_id, LeaseOp::Acquire, since_ms, now_ms);
                        }
                        Permit::Wait(report)
                    }
                }
            }
        }
    }

    /// Takes an answer from the coordinator; true when a job's permit changed (the queue
    /// should schedule).
    pub fn on_answer(&mut self, answer: &LeaseAnswer, now_ms: i64) -> bool {
        let Some(entry) = self.entries.get_mut(&answer.action_id) else {
            return false;
        };
        let ttl_ms = i64::try_from(answer.ttl_ms).unwrap_or(i64::MAX).max(1);
        match (&entry.state, answer.outcome) {
            (State::Asking { request_id, .. }, outcome) if *request_id == answer.request_id => {
                match outcome {
                    LeaseOutcome::Granted => {
                        tracing::info!(
                            action = %answer.action_id,
                            key = %answer.key,
                            held = answer.held,
                            max = answer.max,
                            "budget lease granted"
                        );
                        entry.state = State::Granted {
                            renew_ms: now_ms + ttl_ms / 3,
                            ttl_ms,
                        };
                    }
                    LeaseOutcome::Deferred | LeaseOutcome::Released => {
                        let reason = answer
                            .reason
                            .clone()
                            .unwrap_or_else(|| format!("budget `{}` is spent", answer.key));
                        entry.state = State::Deferred {
                            reason,
                            retry_ms: now_ms + RETRY_MS,
                        };
                    }
                }
                true
            }
            (State::Granted { .. }, LeaseOutcome::Deferred) => {
                tracing::warn!(
                    action = %answer.action_id,
                    key = %answer.key,
                    "the coordinator refused to renew a running action's lease: {}",
                    answer.reason.as_deref().unwrap_or("no reason given")
                );
                false
            }
            _ => false,
        }
    }

    /// Renews the leases that are due; call when [`LeaseBook::next_due_ms`] comes.
    pub fn tick(&mut self, now_ms: i64) {
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(
                |(_, e)| matches!(e.state, State::Granted { renew_ms, .. } if renew_ms <= now_ms),
            )
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            let request = self.request(&id, entry, LeaseOp::Renew, now_ms);
            (self.send)(request);
            if let Some(Entry {
                state: State::Granted { renew_ms, ttl_ms },
                ..
            }) = self.entries.get_mut(&id)
            {
                *renew_ms = now_ms + *ttl_ms / 3;
            }
        }
    }

    /// The job's attempt ended (or the job was withdrawn): its lease, if held, is
    /// released, and it asks anew next time.
    pub fn release(&mut self, action_id: &str, now_ms: i64) {
        let Some(entry) = self.entries.remove(action_id) else {
            return;
        };
        if matches!(entry.state, State::Granted { .. }) {
            let request = self.request(action_id, &entry, LeaseOp::Release, now_ms);
            (self.send)(request);
        }
    }

    /// When the book next needs [`LeaseBook::permit`] (through the queue's schedule) or
    /// [`LeaseBook::tick`]: a renewal, a retry, or an answer's deadline.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.entries
            .values()
            .filter_map(|e| match &e.state {
                State::Asking {
                    sent_ms, since_ms, ..
                } => {
                    let deadline = since_ms + ANSWER_TIMEOUT_MS;
                    Some(if *since_ms + ANSWER_TIMEOUT_MS > *sent_ms + RETRY_MS {
                        deadline
                    } else {
                        sent_ms + RETRY_MS
                    })
                }
                State::Deferred { retry_ms, .. } => Some(*retry_ms),
                State::Granted { renew_ms, .. } => Some(*renew_ms),
                State::Alone => None,
            })
            .min()
    }

    /// How many jobs hold a lease now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.state, State::Granted { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use vigil_shared::policy::budget::BudgetMax;

    fn budget(offline: OfflineMode) -> Budget {
        Budget {
            max: BudgetMax::Count(1),
            per: Some("role".into()),
            max_per_hour: None,
            offline,
        }
    }

    fn book() -> (LeaseBook, Arc<Mutex<Vec<LeaseRequest>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let out = sent.clone();
        let send: SendFn = Arc::new(move |r| out.lock().unwrap().push(r));
        (
            LeaseBook::new("web-01", vec![("role".into(), "web".into())], send),
            sent,
        )
    }

    fn answer(request: &LeaseRequest, outcome: LeaseOutcome) -> LeaseAnswer {
        LeaseAnswer {
            host: request.host.clone(),
            request_id: request.request_id.clone(),
            action_id: request.action_id.clone(),
            key: request.key(),
            outcome,
            ttl_ms: 3_000,
            held: 1,
            max: 1,
            reason: Some("spent".into()),
            coordinator_ms: 0,
        }
    }

    #[test]
    fn waits_for_a_grant_renews_it_and_releases_it() {
        let (mut book, sent) = book();
        let b = budget(OfflineMode::Wait);
        assert_eq!(book.permit("a1", "p", &b, 0), Permit::Wait(None));
        let first = sent.lock().unwrap()[0].clone();
        assert_eq!(first.op, LeaseOp::Acquire);
        assert_eq!(first.per, Some(("role".into(), "web".into())));
        // Deferred: reported once, asked again after RETRY_MS.
        assert!(book.on_answer(&answer(&first, LeaseOutcome::Deferred), 10));
        assert_eq!(
            book.permit("a1", "p", &b, 20),
            Permit::Wait(Some("deferred: budget — spent".into()))
        );
        assert_eq!(book.permit("a1", "p", &b, 30), Permit::Wait(None));
        assert_eq!(sent.lock().unwrap().len(), 1);
        assert_eq!(book.next_due_ms(), Some(10 + RETRY_MS));
        book.permit("a1", "p", &b, 10 + RETRY_MS);
        let second = sent.lock().unwrap()[1].clone();
        assert_ne!(second.request_id, first.request_id);
        // An answer to the old request is ignored; the new one grants.
        assert!(!book.on_answer(&answer(&first, LeaseOutcome::Granted), 1_100));
        assert!(book.on_answer(&answer(&second, LeaseOutcome::Granted), 1_100));
        assert_eq!(book.permit("a1", "p", &b, 1_100), Permit::Go(None));
        assert_eq!(book.held(), 1);
        // Renewed every third of the TTL.
        assert_eq!(book.next_due_ms(), Some(2_100));
        book.tick(2_100);
        assert_eq!(sent.lock().unwrap()[2].op, LeaseOp::Renew);
        assert_eq!(book.next_due_ms(), Some(3_100));
        book.release("a1", 2_500);
        assert_eq!(sent.lock().unwrap()[3].op, LeaseOp::Release);
        assert_eq!(book.held(), 0);
        assert_eq!(book.next_due_ms(), None);
    }

    #[test]
    fn an_unreachable_coordinator_holds_wait_policies_and_frees_act_policies() {
        let (mut book, sent) = book();
        let wait = budget(OfflineMode::Wait);
        let act = budget(OfflineMode::Act);
        assert_eq!(book.permit("w", "p", &wait, 0), Permit::Wait(None));
        assert_eq!(book.permit("a", "q", &act, 0), Permit::Wait(None));
        assert_eq!(book.next_due_ms(), Some(ANSWER_TIMEOUT_MS));
        assert_eq!(
            book.permit("w", "p", &wait, ANSWER_TIMEOUT_MS - 1),
            Permit::Wait(None)
        );
        let held = book.permit("w", "p", &wait, ANSWER_TIMEOUT_MS);
        assert!(
            matches!(&held, Permit::Wait(Some(m)) if m.contains("offline: wait")),
            "{held:?}"
        );
        // It keeps asking, and reports the wait once.
        assert_eq!(
            book.permit("w", "p", &wait, ANSWER_TIMEOUT_MS + RETRY_MS),
            Permit::Wait(None)
        );
        assert!(
            sent.lock()
                .unwrap()
                .iter()
                .filter(|r| r.action_id == "w")
                .count()
                >= 2
        );
        let alone = book.permit("a", "q", &act, ANSWER_TIMEOUT_MS);
        assert!(
            matches!(&alone, Permit::Go(Some(m)) if m.contains("without a budget lease")),
            "{alone:?}"
        );
        assert_eq!(
            book.permit("a", "q", &act, ANSWER_TIMEOUT_MS + 1),
            Permit::Go(None)
        );
        // Nothing to release for a job that acted alone.
        let before = sent.lock().unwrap().len();
        book.release("a", ANSWER_TIMEOUT_MS + 2);
        assert_eq!(sent.lock().unwrap().len(), before);
    }
}
