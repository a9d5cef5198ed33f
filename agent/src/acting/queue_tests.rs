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
        budget: None,
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

/// A tmpfs mounted for a test, unmounted (lazily) when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on a new directory in `parent`; `None` (saying why on
    /// stderr) where mounting is not permitted (it needs root).
    fn mount(parent: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let path = parent.join("tmpfs");
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs { path }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Writes `path` until its file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0_u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// A run function whose first attempt of every action fails (retryable), and whose
/// second succeeds, recording the action ids it ran.
fn fails_once(log: Arc<Mutex<Vec<String>>>) -> RunFn {
    Arc::new(move |req: ExecRequest| {
        let log = log.clone();
        Box::pin(async move {
            let first = {
                let mut log = log.lock().unwrap();
                let first = !log.contains(&req.action_id);
                log.push(req.action_id.clone());
                first
            };
            if first {
                Err(ExecError::Failed {
                    executor: "docker",
                    message: "first attempt broke".into(),
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

/// An action with a large parameter: its record needs new pages in the store.
fn padded(id: &str, target: &str, origin: Origin) -> NewAction {
    let mut a = action(id, target);
    a.origin = origin;
    a.params.insert(
        "pad".into(),
        serde_json::Value::String("p".repeat(64 * 1024)),
    );
    a
}

#[tokio::test]
async fn on_a_full_disk_the_queue_runs_from_memory_and_saves_everything_later() {
    use ActionState::*;
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(base.path(), "2m") else {
        return;
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let alarm = crate::acting::store::StorageAlarm::default();
    let h = harness(
        fails_once(log.clone()),
        fast(),
        Some(tempfile::tempdir_in(&fs.path).unwrap()),
    );
    let mut h = Harness {
        queue: h.queue.with_alarm(alarm.clone()),
        ..h
    };

    // Before the disk fills: stored as usual.
    h.queue.accept(action("before", "web"), 0).unwrap();
    let mut now = drive(&mut h, 0).await;
    assert_eq!(
        states(&h.store, "before"),
        vec![Pending, Running, Failed, Running, Completed]
    );

    fill(&fs.path.join("filler"));
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("full-{i}");
        let origin = if i % 2 == 0 {
            Origin::Manual
        } else {
            Origin::Policy {
                name: "p".into(),
                step: 0,
            }
        };
        h.queue
            .accept(padded(&id, &format!("t{i}"), origin), now)
            .unwrap();
        ids.push(id);
        if h.queue.storage_error().is_some() {
            break;
        }
    }
    let error = h
        .queue
        .storage_error()
        .expect("the store took every write on a full file system");
    eprintln!("degraded after {} actions: {error}", ids.len());
    let stored_before = events(&h.store).len();
    // A few more once the store refuses writes.
    for i in 0..3 {
        let id = format!("more-{i}");
        h.queue
            .accept(padded(&id, &format!("m{i}"), Origin::Manual), now)
            .unwrap();
        ids.push(id);
    }

    // Every action runs, fails once, is retried after its backoff and completes, with the
    // store refusing every write.
    now = drive(&mut h, now).await;
    let status = h.queue.status(now);
    assert_eq!(status.completed_total as usize, 1 + ids.len(), "{status:?}");
    assert_eq!((status.pending, status.running), (0, 0), "{status:?}");
    let ran = log.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(ran.iter().filter(|r| *r == id).count(), 2, "{id}: {ran:?}");
    }
    let reported = alarm.get().expect("storage error in the status");
    assert!(
        reported.contains("cannot write the agent store"),
        "{reported}"
    );
    assert_eq!(
        events(&h.store).len(),
        stored_before,
        "stored on a full disk"
    );
    let held = h.queue.held_messages();
    assert!(held >= 4 * ids.len(), "held {held}");
    eprintln!("status while full: {reported}");

    // Space again: the next try saves the queue and the held messages, in order.
    std::fs::remove_file(fs.path.join("filler")).unwrap();
    h.queue.schedule(now + RETRY_SAVE_MS).unwrap();
    assert_eq!(h.queue.storage_error(), None);
    assert_eq!(alarm.get(), None);
    let stored = events(&h.store);
    assert_eq!(stored.len(), stored_before + held);
    for id in &ids {
        assert_eq!(
            states(&h.store, id),
            vec![Pending, Running, Failed, Running, Completed],
            "{id}"
        );
    }
    let seqs: Vec<u64> = h
        .store
        .outbox_from(0, 1000)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "outbox sequence has gaps: {seqs:?}"
    );
    // The queue's state is in the store: manual actions forgotten (and remembered as
    // done), policy ones kept for their verification.
    let jobs = h.store.jobs().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let manual = id.starts_with("more") || i % 2 == 0;
        if manual {
            assert!(jobs.iter().all(|j| &j.id != id), "{id} still stored");
            assert!(h.store.is_done(id).unwrap(), "{id} not done");
        } else {
            let job = jobs
                .iter()
                .find(|j| &j.id == id)
                .expect("policy job stored");
            assert_eq!(job.state, Completed, "{id}");
        }
    }
    let counters = h.store.counters().unwrap();
    assert_eq!(counters.completed_total as usize, 1 + ids.len());
    drop(h);
    drop(fs);
}

#[test]
fn held_messages_are_bounded_and_the_oldest_dropped_are_counted() {
    let mut unsaved = Unsaved {
        error: "full".into(),
        forget: Vec::new(),
        held: VecDeque::new(),
        dropped: 0,
        tried_ms: 0,
    };
    let message = |i: usize| ("t".to_string(), i.to_be_bytes().to_vec());
    unsaved.hold((0..MAX_HELD - 1).map(message).collect());
    assert_eq!(unsaved.dropped, 0);
    unsaved.hold((MAX_HELD - 1..MAX_HELD + 5).map(message).collect());
    assert_eq!((unsaved.held.len(), unsaved.dropped), (MAX_HELD, 5));
    assert_eq!(unsaved.held.front(), Some(&message(5)));
    assert_eq!(unsaved.held.back(), Some(&message(MAX_HELD + 4)));
    assert!(unsaved.describe().contains("5 dropped"));
}

#[tokio::test]
async fn an_action_without_a_mapping_is_recorded_not_runnable_and_runs_nothing() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log.clone()), fast(), None);
    let mut drain = action("D1", "pod-7");
    drain.kind = ActionKind::DrainPod;
    drain.written = "drain-pod".into();
    h.queue.accept(drain, 1).unwrap();
    drive(&mut h, 1).await;
    assert!(log.lock().unwrap().is_empty(), "nothing ran");
    assert_eq!(
        states(&h.store, "D1"),
        vec![ActionState::Pending, ActionState::DeadLetter]
    );
    let last = events(&h.store).into_iter().last().unwrap();
    assert_eq!(last.action, "drain-pod");
    assert_eq!(
        last.detail.as_deref(),
        Some("not_runnable: no mapping for drain-pod on this host ([actions] in agent.toml)")
    );
    assert_eq!(h.queue.status(10).dead_letter, 1);
}

#[tokio::test]
async fn a_mapped_action_runs_as_its_exec_and_keeps_its_name() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log.clone()), fast(), None);
    let allow = crate::acting::executors::ExecutorConfig {
        commands: [("drain-node".to_string(), vec!["/bin/true".to_string()])].into(),
        ..Default::default()
    };
    let file = [(
        "drain-pod".to_string(),
        crate::acting::mapping::MappingFile {
            exec: Some("drain-node".into()),
            webhook: None,
        },
    )]
    .into();
    let mappings = crate::acting::mapping::ActionMappings::resolve(&file, &allow).unwrap();
    let mut drain = action("D2", "pod-8");
    drain.kind = mappings.apply(ActionKind::DrainPod, &mut drain.params);
    drain.written = "drain-pod".into();
    h.queue.accept(drain, 1).unwrap();
    drive(&mut h, 1).await;
    assert_eq!(*log.lock().unwrap(), vec!["pod-8".to_string()]);
    assert_eq!(
        states(&h.store, "D2"),
        vec![
            ActionState::Pending,
            ActionState::Running,
            ActionState::Completed
        ]
    );
    let running = events(&h.store)
        .into_iter()
        .find(|e| e.state == ActionState::Running)
        .unwrap();
    assert_eq!(running.action, "drain-pod");
    assert_eq!(running.executor.as_deref(), Some("exec"));
}

/// A budgeted action waits for its lease (recorded once as `deferred`), runs when it is
/// granted, and releases it when its attempt ends.
#[tokio::test]
async fn a_budgeted_action_waits_for_its_lease_and_releases_it() {
    use super::super::leases::LeaseBook;
    use vigil_shared::lease::{LeaseAnswer, LeaseOp, LeaseOutcome, LeaseRequest};
    use vigil_shared::policy::budget::{Budget, BudgetMax, OfflineMode};
    use ActionState::*;

    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = harness(scripted(0, log.clone()), fast(), None);
    let sent: Arc<Mutex<Vec<LeaseRequest>>> = Arc::default();
    let out = sent.clone();
    h.queue.set_leases(LeaseBook::new(
        "h",
        vec![],
        Arc::new(move |r| out.lock().unwrap().push(r)),
    ));
    let mut budgeted = action("a1", "web");
    budgeted.budget = Some(super::super::JobBudget {
        policy: "p".into(),
        budget: Budget {
            max: BudgetMax::Count(1),
            per: None,
            max_per_hour: None,
            offline: OfflineMode::Wait,
        },
    });
    h.queue.accept(budgeted, 0).unwrap();
    h.queue.schedule(0).unwrap();
    assert_eq!(h.queue.status(0).running, 0);
    let answer = |request: &LeaseRequest, outcome| LeaseAnswer {
        host: "h".into(),
        request_id: request.request_id.clone(),
        action_id: request.action_id.clone(),
        key: request.key(),
        outcome,
        ttl_ms: 3_000,
        held: 1,
        max: 1,
        reason: Some("budget `p` is spent: 1 of 1 leases held (by other)".into()),
        coordinator_ms: 0,
    };
    let first = sent.lock().unwrap()[0].clone();
    assert_eq!((first.op, first.policy.as_str()), (LeaseOp::Acquire, "p"));
    h.queue
        .on_lease_answer(&answer(&first, LeaseOutcome::Deferred), 10)
        .unwrap();
    h.queue.schedule(20).unwrap();
    h.queue.schedule(30).unwrap();
    assert_eq!(states(&h.store, "a1"), vec![Pending, Deferred]);
    let deferred = events(&h.store).pop().unwrap();
    assert!(
        deferred
            .detail
            .as_deref()
            .unwrap()
            .starts_with("deferred: budget"),
        "{deferred:?}"
    );
    // Asked again after the retry interval; this time granted: it runs at once.
    let due = h.queue.next_due_ms(30).unwrap();
    h.queue.schedule(due).unwrap();
    let second = sent.lock().unwrap().last().unwrap().clone();
    assert_ne!(second.request_id, first.request_id);
    h.queue
        .on_lease_answer(&answer(&second, LeaseOutcome::Granted), due + 1)
        .unwrap();
    assert_eq!(h.queue.status(due + 1).running, 1);
    let result = h.results.recv().await.unwrap();
    h.queue.on_result(result, due + 5).unwrap();
    assert_eq!(
        states(&h.store, "a1"),
        vec![Pending, Deferred, Running, Completed]
    );
    assert_eq!(sent.lock().unwrap().last().unwrap().op, LeaseOp::Release);
}
