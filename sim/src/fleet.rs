//! A fleet of virtual agents in one process: starts them (paced, so thousands of
//! connections do not arrive in one instant), prints progress, stops them, and returns
//! what they did.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use vigil_shared::wire::Tag;

use crate::enroll::AgentLogin;
use crate::report::Snapshot;
use crate::virtual_agent::{self, ActionLedger, BundleTally, HostBatches, Identity, Plan, Shared};

/// Roles handed out round-robin as the `role` label, so fleets have groups to target.
const ROLES: [&str; 3] = ["web", "db", "cache"];

/// A fleet's settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// How many virtual agents (1 to 10,000).
    pub agents: usize,
    /// Host names are this prefix and the agent's index, e.g. `sim-00042`.
    pub host_prefix: String,
    /// Labels every agent carries, besides its `role`.
    pub labels: Vec<Tag>,
    /// New connections per second while the fleet starts.
    pub connect_rate: u32,
    /// What each agent does.
    pub plan: Plan,
    /// Each agent's enrollment by host ([`crate::enroll::Enroller::enroll`] of
    /// [`FleetConfig::hosts`]). Empty: the agents are not enrolled (they seal with keys
    /// of their own, which only a bare broker takes).
    pub logins: HashMap<String, AgentLogin>,
}

impl FleetConfig {
    /// The host names of the fleet's agents, in order.
    pub fn hosts(&self) -> Vec<String> {
        (0..self.agents)
            .map(|index| host_name(&self.host_prefix, index))
            .collect()
    }

    /// Checks the settings (before anything is enrolled or started).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_AGENTS).contains(&self.agents) {
            return Err(format!(
                "--agents must be between 1 and {MAX_AGENTS}, got {}",
                self.agents
            ));
        }
        self.plan.chaos.validate()?;
        if self.plan.samples_per_batch == 0 {
            return Err("--samples-per-batch must be at least 1".into());
        }
        Ok(())
    }
}

/// The host name of the agent at `index`: the prefix and the index, e.g. `sim-00042`.
pub fn host_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:05}")
}

/// Most virtual agents in one fleet.
pub const MAX_AGENTS: usize = 10_000;

/// What a finished fleet did.
#[derive(Debug)]
pub struct Outcome {
    /// The final counters.
    pub report: Snapshot,
    /// Action id → its host and the transitions generated.
    pub actions: HashMap<String, ActionLedger>,
    /// Host → the metric batches it generated.
    pub batches: HashMap<String, HostBatches>,
    /// Policy → what the agents' engines decided (with a pattern in the plan).
    pub decided: std::collections::BTreeMap<String, crate::pattern::Decided>,
}

/// Stops a fleet: every agent finishes (waiting for its queues to be acknowledged first).
#[derive(Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    /// Asks every agent to finish.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

/// A running fleet.
pub struct Fleet {
    shared: Arc<Shared>,
    stop: StopHandle,
    spawner: JoinHandle<()>,
    started: Instant,
    agents: usize,
}

impl Fleet {
    /// Starts the fleet's agents in the background.
    pub fn start(mut config: FleetConfig) -> Result<Fleet, String> {
        config.validate()?;
        if !config.logins.is_empty() {
            if let Some(host) = config
                .hosts()
                .into_iter()
                .find(|h| !config.logins.contains_key(h))
            {
                return Err(format!("virtual agent `{host}` was not enrolled"));
            }
        }
        let mut logins = std::mem::take(&mut config.logins);
        raise_open_files_limit(config.agents);
        let shared = Arc::new(Shared::default());
        shared.start_line.expect(config.agents);
        let (stop, stop_rx) = watch::channel(false);
        let plan = Arc::new(config.plan);
        let pause = Duration::from_secs_f64(1.0 / f64::from(config.connect_rate.max(1)));
        let spawner = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut agents = Vec::with_capacity(config.agents);
                for index in 0..config.agents {
                    let mut labels =
                        vec![("role".to_string(), ROLES[index % ROLES.len()].to_string())];
                    labels.extend(config.labels.iter().cloned());
                    let host = host_name(&config.host_prefix, index);
                    let me = Identity {
                        login: logins.remove(&host),
                        host,
                        labels,
                        index,
                    };
                    agents.push(tokio::spawn(virtual_agent::run(
                        me,
                        Arc::clone(&plan),
                        Arc::clone(&shared),
                        stop_rx.clone(),
                    )));
                    tokio::time::sleep(pause).await;
                }
                for agent in agents {
                    let _ = agent.await;
                }
            })
        };
        Ok(Fleet {
            shared,
            stop: StopHandle(Arc::new(stop)),
            spawner,
            started: Instant::now(),
            agents: config.agents,
        })
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared
            .counters
            .snapshot(self.started.elapsed(), self.agents)
    }

    /// How many agents applied `group`'s bundle `version`, and when the last did (agents
    /// following bundles, [`Plan::follow_bundles`]).
    pub fn bundle_applied(&self, group: &str, version: u64) -> Option<BundleTally> {
        self.shared
            .bundles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(group.to_string(), version))
            .copied()
    }

    /// Asks every agent to finish (they wait for their queues to be acknowledged first).
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops the fleet from elsewhere (e.g. on Ctrl-C).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Whether every agent has finished.
    pub fn is_finished(&self) -> bool {
        self.spawner.is_finished()
    }

    /// Waits for every agent to finish, printing a progress line every `progress` if set.
    pub async fn wait(mut self, progress: Option<Duration>) -> Outcome {
        let mut ticker = tokio::time::interval(progress.unwrap_or(Duration::from_secs(3600)));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut self.spawner => break,
                _ = ticker.tick() => {
                    if progress.is_some() {
                        eprintln!("{}", self.snapshot().progress_line());
                    }
                }
            }
        }
        let report = self.snapshot();
        let actions = std::mem::take(
            &mut *self
                .shared
                .ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let batches = std::mem::take(
            &mut *self
                .shared
                .batches
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let decided = std::mem::take(
            &mut *self
                .shared
                .decided
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        Outcome {
            report,
            actions,
            batches,
            decided,
        }
    }
}

/// Raises this process's open-file limit towards its hard limit: each agent holds a
/// socket.
fn raise_open_files_limit(agents: usize) {
    let wanted = (agents as u64 + 256).max(1024);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur < wanted {
            tracing::warn!(
                "open-file limit is {} but {agents} agents need about {wanted}: raise `ulimit -n`",
                limit.rlim_cur
            );
        }
    }
}
