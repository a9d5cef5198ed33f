//! Tests of the queue's own logic, with scripted attempt results standing in for the
//! executors (which are tested against real systemd and Docker elsewhere).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use vigil_shared::policy::ActionKind;
use vigil_shared::wire::{ActionEvent, ActionState};

use super::*;

struct Harness {
    queue: ActionQueue,
    results: mpsc::Receiver<AttemptResult>,
    store: AgentStore,
    _dir: tempfile::TempDir,
}

/// A run function that fails the first `failures` attempts, then succeeds, recording the
/// targets it ran on.
fn scripted(failures: u32, log: Arc<Mutex<Vec<String>>>) -> RunFn {
    let count = Arc::new(AtomicU32::new(0));
    Arc::new(move |req: ExecRequest| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let log = log.clone();
        Box::pin(async move {
            log.lock().unwrap().push(req.target.clone());
            if n < failures {
                Err(ExecError::Failed {
                    executor: "docker",
                    message: format!("attempt {n} broke"),
                })
            } else {
                Ok(ExecOutcome {
                    executor: "docker",
                    detail: format!("{} running", req.target),
                })
            }
        })
    })
}

fn harness(run: RunFn, settings: QueueSettings, dir: Option<tempfile::TempDir>) -> Harness {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let store = AgentStore::open(dir.path()).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let queue = ActionQueue::open(
        store.clone(),
        "h",
        settings,
        run,
        tx,
        OutboxSignal::default(),
        0,
    )
    .unwrap();
    Harness {
        queue,
        results: rx,
        store,
        _dir: dir,
    }
}

fn fast() -> QueueSettings {
    QueueSettings {
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(40),
        ..QueueSettings::default()
    }
}

fn action(id: &str, target: &str) -> NewAction {
    NewAction {
        id: id.into(),
        origin: Origin::Policy {
            name: "p".into(),
            step: 0,
        },
        target: target.into(),
        kind: ActionKind::Restart,
        written: "restart".into(),
        params: BTreeMap::new(),
        dry_run: false,
    }
}

fn events(store: &AgentStore) -> Vec<ActionEvent> {
    store
        .outbox_from(0, 1000)
        .unwrap()
        .into_iter()
        // The version byte, then postcard. Not `wire::decode`: these tests run on a clock
        // that starts at 0, a time `wire::decode` refuses as implausible.
        .map(|e| postcard::from_bytes::<ActionEvent>(&e.payload[1..]).unwrap())
        .collect()
}

fn states(store: &AgentStore, id: &str) -> Vec<ActionState> {
    events(store)
        .into_iter()
        .filter(|e| e.id == id)
        .map(|e| e.state)
        .collect()
}

/// Schedules and feeds results back until nothing runs or waits, advancing a clock.
async fn drive(h: &mut Harness, mut now: i64) -> i64 {
    for _ in 0..100 {
        h.queue.schedule(now).unwrap();
        if h.queue.status(now).running == 0 {
            match h.queue.next_due_ms(now) {
                Some(due) => {
                    now = due;
                    continue;
                }
                None => return now,
            }
        }
        let result = h.results.recv().await.unwrap();
        now += 5;
        h.queue.on_result(result, now).unwrap();
    }
    now
}

#[tokio::test]
async fn lifecycle_with_retries_then_success() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(2, log.clone()), fast(), None);
    h.queue.accept(action("a1", "web"), 0).unwrap();
    drive(&mut h, 0).await;
    use ActionState::*;
    assert_eq!(
        states(&h.store, "a1"),
        vec![Pending, Running, Failed, Running, Failed, Running, Completed]
    );
    let evs = events(&h.store);
    let last = evs.last().unwrap();
    assert_eq!((last.attempt, last.max_attempts), (3, 3));
    assert_eq!(last.executor.as_deref(), Some("docker"));
    assert!(evs[2].detail.as_deref().unwrap().contains("retrying in"));
    let s = h.queue.status(1_000);
    assert_eq!(
        (
            s.enqueued_total,
            s.dequeued_total,
            s.completed_total,
            s.failed_total
        ),
        (1, 3, 1, 2)
    );
}

#[tokio::test]
async fn the_last_failed_attempt_goes_to_dead_letter() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(99, log), fast(), None);
    h.queue.accept(action("a1", "web"), 0).unwrap();
    drive(&mut h, 0).await;
    use ActionState::*;
    assert_eq!(
        states(&h.store, "a1"),
        vec![Pending, Running, Failed, Running, Failed, Running, Failed, DeadLetter]
    );
    assert_eq!(h.queue.status(1).dead_letter, 1);
}

#[tokio::test]
async fn refusals_are_not_retried() {
    let run: RunFn = Arc::new(|_req| {
        Box::pin(async {
            Err(ExecError::NotAllowed(
                "unit x is not in [allow] units".into(),
            ))
        })
    });
    let mut h = harness(run, fast(), None);
    h.queue.accept(action("a1", "x.service"), 0).unwrap();
    drive(&mut h, 0).await;
    use ActionState::*;
    assert_eq!(
        states(&h.store, "a1"),
        vec![Pending, Running, Failed, DeadLetter]
    );
}

#[tokio::test]
async fn one_target_runs_in_order_and_targets_run_in_parallel() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log.clone()), fast(), None);
    for (id, target) in [("a", "web"), ("b", "web"), ("c", "db")] {
        h.queue.accept(action(id, target), 0).unwrap();
    }
    h.queue.schedule(0).unwrap();
    assert_eq!(
        h.queue.status(0).running,
        2,
        "web and db at once; second web waits"
    );
    drive(&mut h, 0).await;
    let order: Vec<String> = events(&h.store)
        .into_iter()
        .filter(|e| e.state == ActionState::Running)
        .map(|e| e.id)
        .collect();
    assert_eq!(
        order.iter().filter(|id| *id != "c").collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

#[tokio::test]
async fn dry_run_kill_switch_and_duplicates() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log.clone()), fast(), None);
    let mut dry = action("d", "web");
    dry.dry_run = true;
    h.queue.accept(dry, 0).unwrap();
    drive(&mut h, 0).await;
    assert_eq!(
        states(&h.store, "d"),
        vec![ActionState::Pending, ActionState::Completed]
    );
    assert!(log.lock().unwrap().is_empty(), "dry run touched nothing");

    h.queue.accept(action("q", "web"), 1).unwrap();
    h.queue.set_paused(true, 2).unwrap();
    h.queue.accept(action("r", "web"), 3).unwrap();
    h.queue.accept(action("r", "web"), 3).unwrap();
    drive(&mut h, 3).await;
    assert_eq!(
        states(&h.store, "q"),
        vec![ActionState::Pending, ActionState::Cancelled]
    );
    assert_eq!(
        states(&h.store, "r"),
        vec![ActionState::Pending, ActionState::Cancelled],
        "once"
    );
    assert!(log.lock().unwrap().is_empty());
    h.queue.set_paused(false, 4).unwrap();
    h.queue.accept(action("s", "web"), 5).unwrap();
    drive(&mut h, 5).await;
    assert_eq!(states(&h.store, "s").last(), Some(&ActionState::Completed));
}

#[tokio::test]
async fn the_kill_switch_from_config_cancels_new_actions() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let settings = QueueSettings {
        paused: true,
        ..fast()
    };
    let mut h = harness(scripted(0, log.clone()), settings, None);
    assert!(h.queue.paused());
    h.queue.accept(action("a", "web"), 0).unwrap();
    drive(&mut h, 0).await;
    assert_eq!(
        states(&h.store, "a"),
        vec![ActionState::Pending, ActionState::Cancelled]
    );
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn verification_closes_a_completed_policy_action() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log), fast(), None);
    h.queue.accept(action("a", "web"), 0).unwrap();
    drive(&mut h, 0).await;
    h.queue.verify("p", "web", false, 100).unwrap();
    assert_eq!(
        states(&h.store, "a").last(),
        Some(&ActionState::NotResolved)
    );
    assert!(
        h.store.jobs().unwrap().is_empty(),
        "final: forgotten by the agent"
    );
}

#[tokio::test]
async fn a_verification_that_arrives_while_the_action_runs_is_applied_on_completion() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log), fast(), None);
    h.queue.accept(action("a", "web"), 0).unwrap();
    h.queue.schedule(0).unwrap();
    h.queue.verify("p", "web", true, 1).unwrap();
    let result = h.results.recv().await.unwrap();
    h.queue.on_result(result, 2).unwrap();
    use ActionState::*;
    assert_eq!(
        states(&h.store, "a"),
        vec![Pending, Running, Completed, Resolved]
    );
}

#[tokio::test]
async fn an_attempt_interrupted_by_a_crash_is_retried_exactly_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    {
        // A run function that never finishes: the "agent" dies while it runs.
        let hang: RunFn = Arc::new(|_req| Box::pin(std::future::pending()));
        let mut h = harness(hang, fast(), Some(dir));
        h.queue.accept(action("a", "web"), 0).unwrap();
        h.queue.accept(action("b", "web"), 0).unwrap();
        h.queue.schedule(0).unwrap();
        assert_eq!(h.queue.status(0).running, 1);
        // No orderly shutdown: the attempt never finished, the store says "running".
        let Harness { queue, _dir, .. } = h;
        drop(queue);
        std::mem::forget(_dir); // keep the files for the "restarted agent"
    }
    let store = AgentStore::open(&path).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let log = Arc::new(Mutex::new(Vec::new()));
    let queue = ActionQueue::open(
        store.clone(),
        "h",
        fast(),
        scripted(0, log),
        tx,
        OutboxSignal::default(),
        1_000,
    )
    .unwrap();
    let mut h = Harness {
        queue,
        results: rx,
        store,
        _dir: tempfile::tempdir().unwrap(),
    };
    drive(&mut h, 1_000).await;
    use ActionState::*;
    assert_eq!(
        states(&h.store, "a"),
        vec![Pending, Running, Failed, Running, Completed]
    );
    assert_eq!(states(&h.store, "b"), vec![Pending, Running, Completed]);
    let finals = events(&h.store)
        .into_iter()
        .filter(|e| e.state == Completed)
        .count();
    assert_eq!(
        finals, 2,
        "each action reached its final state exactly once"
    );
}

#[test]
fn executors_are_chosen_by_kind_target_and_params() {
    let none = BTreeMap::new();
    assert_eq!(
        executor_name(ActionKind::Restart, "nginx.service", &none),
        "systemd"
    );
    assert_eq!(executor_name(ActionKind::Restart, "web-1", &none), "docker");
    assert_eq!(executor_name(ActionKind::Exec, "x", &none), "exec");
    let forced = BTreeMap::from([("executor".to_string(), serde_json::json!("systemd"))]);
    assert_eq!(
        executor_name(ActionKind::Restart, "nginx", &forced),
        "systemd"
    );
}

#[tokio::test]
async fn a_finished_manual_action_is_forgotten_by_the_queue_but_kept_among_the_recent() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log), fast(), None);
    let mut manual = action("m1", "web");
    manual.origin = Origin::Manual;
    h.queue.accept(manual, 0).unwrap();
    drive(&mut h, 0).await;
    assert!(h.store.jobs().unwrap().iter().all(|j| j.id != "m1"));
    let recent = h.store.recent_finished().unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(
        (recent[0].id.as_str(), recent[0].state),
        ("m1", ActionState::Completed)
    );
    for i in 0..crate::acting::store::RECENT_FINISHED + 2 {
        let mut job = recent[0].clone();
        job.id = format!("x{i}");
        h.store.remember_finished(&job).unwrap();
    }
    let recent = h.store.recent_finished().unwrap();
    assert_eq!(recent.len(), crate::acting::store::RECENT_FINISHED);
    assert_eq!(
        recent[0].id,
        format!("x{}", crate::acting::store::RECENT_FINISHED + 1)
    );
}
