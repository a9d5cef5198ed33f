//! The action audit trail: one [`ActionRecord`] per action id, built from the
//! [`ActionEvent`]s agents report for every transition (and from manual actions created
//! over REST), with secondary indexes so that a filtered page is a range scan.
//!
//! Records only ever gain transitions. `(id, state, attempt)` identifies a transition, so
//! QoS 1 redelivery and outbox replay add nothing. Transitions may arrive out of order;
//! the record's status is the state of the *latest* transition, ordered by time, then
//! attempt, then lifecycle order (see [`lifecycle_rank`]).
//!
//! Index keys (database `action_index`, values empty) are
//! `tag · value length (u32, big-endian) · value · created time (8 bytes, sortable) · id`,
//! with one tag per index: `t` by created time (empty value), `h` host, `g` target,
//! `p` policy, `s` status. The length prefix keeps one value's keys contiguous whatever
//! bytes a target holds. A page is read newest first; a query with several filters walks
//! their indexes together (a leapfrog intersection: each index jumps to the newest key not
//! newer than the others' candidate), so its cost follows the matches and the gaps between
//! them, never the size of the store. Counts per status live in `meta`.

use std::collections::BTreeMap;
use std::ops::Bound;

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};
use vigil_shared::wire::{ActionEvent, ActionState};

use super::{codec, keys, Store, StoreError, Write};
use crate::telemetry::Telemetry;

/// Most transitions one record keeps; any beyond are refused (and logged), so a
/// misbehaving agent cannot grow one record without bound.
pub const MAX_TRANSITIONS: usize = 256;

/// Every action state, in lifecycle order.
pub const ALL_STATES: [ActionState; 9] = ActionState::ALL;

const TAG_TIME: u8 = b't';
const TAG_HOST: u8 = b'h';
const TAG_TARGET: u8 = b'g';
const TAG_POLICY: u8 = b'p';
const TAG_STATUS: u8 = b's';

const META_TOTAL: &[u8] = b"actions_total";
const META_STATUS: &str = "actions_status/";

/// Who created an action record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionSource {
    /// An agent reported it (a policy's action, or one it ran on its own).
    Agent,
    /// `POST /api/v1/actions`.
    Api,
    /// An Alertmanager alert (`POST /api/v1/alertmanager`).
    Alertmanager,
}

impl ActionSource {
    /// Lowercase name for JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionSource::Agent => "agent",
            ActionSource::Api => "api",
            ActionSource::Alertmanager => "alertmanager",
        }
    }
}

/// One transition of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: ActionState,
    /// The attempt it belongs to (0 before the first attempt).
    pub attempt: u32,
    /// When, epoch ms.
    pub at_ms: i64,
    /// What happened, in words.
    pub detail: Option<String>,
}

/// Everything known about one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The action's id (a ULID).
    pub id: String,
    /// The host whose agent runs it; empty for a manual record that names no host.
    pub host: String,
    /// The policy that asked for it; `None` for a manual action.
    pub policy: Option<String>,
    /// What it acts on.
    pub target: String,
    /// What it does, as written (`restart`, `scale-up`, …).
    pub action: String,
    /// The state of the latest transition.
    pub status: ActionState,
    /// Attempts started (the highest attempt number reported).
    pub attempts: u32,
    /// Most attempts allowed (0 while unknown).
    pub max_attempts: u32,
    /// Decided and recorded only, not performed.
    pub dry_run: bool,
    /// The executor that handled it, when known.
    pub executor: Option<String>,
    /// The step of the policy's escalation chain (0-based), for policy actions.
    pub step: Option<u32>,
    /// Executor parameters, as JSON text.
    pub params: Option<String>,
    /// Who created the record.
    pub source: ActionSource,
    /// When the action was created, epoch ms (fixed by the first event seen).
    pub created_at_ms: i64,
    /// When it first ran, epoch ms.
    pub started_at_ms: Option<i64>,
    /// When it reached a final state (completed, cancelled, dead letter, or failed on its
    /// last attempt), epoch ms.
    pub finished_at_ms: Option<i64>,
    /// The verdict of verification: resolved or not resolved.
    pub outcome: Option<ActionState>,
    /// Every transition, oldest first.
    pub transitions: Vec<Transition>,
}

impl ActionRecord {
    /// The latest words any transition carried (the seed's `details`).
    pub fn details(&self) -> Option<&str> {
        self.transitions
            .iter()
            .rev()
            .find_map(|t| t.detail.as_deref())
    }

    fn new(event: &ActionEvent, source: ActionSource) -> ActionRecord {
        ActionRecord {
            id: event.id.clone(),
            host: event.host.clone(),
            policy: event.policy.clone(),
            target: event.target.clone(),
            action: event.action.clone(),
            status: event.state,
            attempts: 0,
            max_attempts: 0,
            dry_run: event.dry_run,
            executor: None,
            step: None,
            params: None,
            source,
            created_at_ms: event.created_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            transitions: Vec::new(),
        }
    }

    /// Adds the transition `event` reports and recomputes what follows from the
    /// transitions. The caller has checked that it is not already there.
    fn add(&mut self, event: &ActionEvent) {
        let transition = Transition {
            state: event.state,
            attempt: event.attempt,
            at_ms: event.at_ms,
            detail: event.detail.clone(),
        };
        let at = self
            .transitions
            .partition_point(|t| order(t) <= order(&transition));
        let newest = at == self.transitions.len();
        self.transitions.insert(at, transition);
        // Descriptive fields: the newest transition's word wins; older ones only fill gaps.
        if newest || self.executor.is_none() {
            self.executor = event.executor.clone().or(self.executor.take());
        }
        if newest || self.step.is_none() {
            self.step = event.step.or(self.step);
        }
        if newest || self.params.is_none() {
            self.params = event.params.clone().or(self.params.take());
        }
        self.max_attempts = self.max_attempts.max(event.max_attempts);
        self.attempts = self.attempts.max(event.attempt);
        self.refresh();
    }

    /// Status, start, finish and outcome, from the transitions.
    fn refresh(&mut self) {
        if let Some(last) = self.transitions.last() {
            self.status = last.state;
        }
        self.started_at_ms = self
            .transitions
            .iter()
            .filter(|t| t.state == ActionState::Running)
            .map(|t| t.at_ms)
            .min();
        let max_attempts = self.max_attempts;
        self.finished_at_ms = self
            .transitions
            .iter()
            .filter(|t| match t.state {
                ActionState::Completed | ActionState::Cancelled | ActionState::DeadLetter => true,
                ActionState::Failed => max_attempts > 0 && t.attempt >= max_attempts,
                _ => false,
            })
            .map(|t| t.at_ms)
            .max();
        self.outcome = self
            .transitions
            .iter()
            .rev()
            .map(|t| t.state)
            .find(|s| matches!(s, ActionState::Resolved | ActionState::NotResolved));
    }
}

/// Where a state comes within one attempt, for transitions that share a millisecond:
/// an attempt runs, then fails or completes; a failed attempt waits (pending) for its
/// retry; dead letter, cancellation and verification come last.
pub fn lifecycle_rank(state: ActionState) -> u8 {
    match state {
        ActionState::Running => 0,
        ActionState::Failed => 1,
        ActionState::Pending | ActionState::Deferred => 2,
        ActionState::Completed => 3,
        ActionState::DeadLetter => 4,
        ActionState::Cancelled => 5,
        ActionState::NotResolved | ActionState::Resolved => 6,
    }
}

fn order(t: &Transition) -> (i64, u32, u8) {
    (t.at_ms, t.attempt, lifecycle_rank(t.state))
}

/// Reads a state's API name (`pending`, `not_resolved`, …).
pub fn parse_state(name: &str) -> Option<ActionState> {
    ALL_STATES.into_iter().find(|s| s.as_str() == name)
}

/// A filter for action records (every field optional).
#[derive(Debug, Clone, Default)]
pub struct ActionQuery {
    /// Only this host.
    pub host: Option<String>,
    /// Only this policy.
    pub policy: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only actions whose current status is this.
    pub status: Option<ActionState>,
    /// Only actions created at or after this time, epoch ms.
    pub since_ms: Option<i64>,
    /// At most this many (newest first).
    pub limit: usize,
}

/// A page of actions, with what reading it cost.
#[derive(Debug, Clone)]
pub struct ActionPage {
    /// The records, newest first.
    pub actions: Vec<ActionRecord>,
    /// Index seeks plus records read: the work done, for tests and diagnostics.
    pub touched: usize,
}

/// How many actions the audit trail holds, in total and by current status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ActionCounts {
    /// Every action.
    pub total: u64,
    /// By current status (every state present, zero included).
    pub by_status: BTreeMap<&'static str, u64>,
}

fn index_prefix(tag: u8, value: &str) -> Vec<u8> {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    let mut key = Vec::with_capacity(5 + value.len() + 8 + 26);
    key.push(tag);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(value.as_bytes());
    key
}

fn index_key(tag: u8, value: &str, created_ms: i64, id: &str) -> Vec<u8> {
    let mut key = index_prefix(tag, value);
    key.extend_from_slice(&keys::time_bytes(created_ms));
    key.extend_from_slice(id.as_bytes());
    key
}

/// Every index key of `record` (its status key for its current status).
fn index_keys(record: &ActionRecord) -> Vec<Vec<u8>> {
    let (created, id) = (record.created_at_ms, record.id.as_str());
    let mut index = vec![
        index_key(TAG_TIME, "", created, id),
        index_key(TAG_HOST, &record.host, created, id),
        index_key(TAG_TARGET, &record.target, created, id),
        index_key(TAG_STATUS, record.status.as_str(), created, id),
    ];
    if let Some(policy) = &record.policy {
        index.push(index_key(TAG_POLICY, policy, created, id));
    }
    index
}

/// The smallest key greater than every key starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn status_key(state: ActionState) -> Vec<u8> {
    format!("{META_STATUS}{}", state.as_str()).into_bytes()
}

fn read_counter(store: &Store, txn: &RoTxn, key: &[u8]) -> Result<u64, StoreError> {
    match store.dbs.meta.get(txn, key)? {
        Some(bytes) => Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
            StoreError::Corrupt {
                db: "meta",
                reason: format!("counter {} is not 8 bytes", String::from_utf8_lossy(key)),
            }
        })?)),
        None => Ok(0),
    }
}

fn bump(store: &Store, txn: &mut RwTxn, key: &[u8], up: bool) -> Result<(), StoreError> {
    let n = read_counter(store, txn, key)?;
    let n = if up {
        n.saturating_add(1)
    } else {
        n.saturating_sub(1)
    };
    store.dbs.meta.put(txn, key, &n.to_be_bytes())?;
    Ok(())
}

/// Stores the transition `event` reports: creates the record (and its index keys) for a
/// new id, or adds the transition to the existing record, moving its status index key
/// when the status changes. Returns 1 if a transition was added, 0 if it was already
/// there (redelivery) or refused (another host's id, too many transitions).
pub(crate) fn store_action(
    store: &Store,
    txn: &mut RwTxn,
    event: &ActionEvent,
    source: ActionSource,
) -> Result<u64, StoreError> {
    let id = event.id.as_bytes();
    let Some(bytes) = store.dbs.actions.get(txn, id)? else {
        let mut record = ActionRecord::new(event, source);
        record.add(event);
        for key in index_keys(&record) {
            store.dbs.action_index.put(txn, &key, &[])?;
        }
        store.dbs.actions.put(txn, id, &codec::encode(&record))?;
        bump(store, txn, META_TOTAL, true)?;
        bump(store, txn, &status_key(record.status), true)?;
        return Ok(1);
    };
    let mut record = codec::decode::<ActionRecord>("actions", bytes)?;
    if record.host != event.host {
        tracing::warn!(
            id = %event.id,
            stored = %record.host,
            claimed = %event.host,
            "ignored an action event for another host's action"
        );
        return Ok(0);
    }
    if record
        .transitions
        .iter()
        .any(|t| t.state == event.state && t.attempt == event.attempt)
    {
        return Ok(0);
    }
    if record.transitions.len() >= MAX_TRANSITIONS {
        tracing::warn!(id = %event.id, "action has {MAX_TRANSITIONS} transitions; ignored another");
        return Ok(0);
    }
    let before = record.status;
    record.add(event);
    if record.status != before {
        let (created, id) = (record.created_at_ms, record.id.as_str());
        store
            .dbs
            .action_index
            .delete(txn, &index_key(TAG_STATUS, before.as_str(), created, id))?;
        store.dbs.action_index.put(
            txn,
            &index_key(TAG_STATUS, record.status.as_str(), created, id),
            &[],
        )?;
        bump(store, txn, &status_key(before), false)?;
        bump(store, txn, &status_key(record.status), true)?;
    }
    store
        .dbs
        .actions
        .put(txn, record.id.as_bytes(), &codec::encode(&record))?;
    Ok(1)
}

/// What one walk of [`prune`] did.
pub(crate) struct PruneWalk {
    /// Index keys walked (records removed, kept, or missing).
    pub walked: usize,
    /// Records removed.
    pub deleted: u64,
    /// The last key walked: the next walk starts after it.
    pub last: Option<Vec<u8>>,
    /// The walk reached the cut-off: nothing created earlier is left to look at.
    pub done: bool,
}

/// Walks up to `limit` actions created before `before_ms`, oldest first, starting after
/// the time index key `after`; removes each whose latest transition is also before
/// `before_ms`: its record, every index key and its counts.
pub(crate) fn prune(
    store: &Store,
    txn: &mut RwTxn,
    before_ms: i64,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<PruneWalk, StoreError> {
    let prefix = index_prefix(TAG_TIME, "");
    let mut end = prefix.clone();
    end.extend_from_slice(&keys::time_bytes(before_ms));
    let start = match after {
        Some(after) => Bound::Excluded(after),
        None => Bound::Included(prefix.as_slice()),
    };
    let range = (start, Bound::Excluded(end.as_slice()));
    let mut walked: Vec<Vec<u8>> = Vec::new();
    for entry in store.dbs.action_index.range(txn, &range)? {
        if walked.len() >= limit {
            break;
        }
        let (key, _) = entry?;
        walked.push(key.to_vec());
    }
    let mut walk = PruneWalk {
        walked: walked.len(),
        deleted: 0,
        last: walked.last().cloned(),
        done: walked.len() < limit,
    };
    for key in walked {
        let id = key.get(prefix.len() + 8..).unwrap_or_default();
        let Some(bytes) = store.dbs.actions.get(txn, id)? else {
            tracing::warn!(
                id = %String::from_utf8_lossy(id),
                "the action time index names a record that is not stored; removed the key"
            );
            store.dbs.action_index.delete(txn, &key)?;
            continue;
        };
        let record = codec::decode::<ActionRecord>("actions", bytes)?;
        let latest = record
            .transitions
            .iter()
            .map(|t| t.at_ms)
            .max()
            .unwrap_or(record.created_at_ms);
        if latest >= before_ms {
            continue;
        }
        remove(store, txn, &record)?;
        walk.deleted += 1;
    }
    Ok(walk)
}

/// Deletes `record`, its index keys and its counts.
fn remove(store: &Store, txn: &mut RwTxn, record: &ActionRecord) -> Result<(), StoreError> {
    for key in index_keys(record) {
        store.dbs.action_index.delete(txn, &key)?;
    }
    store.dbs.actions.delete(txn, record.id.as_bytes())?;
    bump(store, txn, META_TOTAL, false)?;
    bump(store, txn, &status_key(record.status), false)?;
    Ok(())
}

/// Counts a stored transition in `vigil_actions_total{state}` once its write committed
/// (`outcome` 1: new; 0: a redelivery, not counted).
pub(crate) fn count_stored(telemetry: &Telemetry, write: &Write, outcome: u64) {
    let event = match write {
        Write::Action { event } | Write::ManualAction { event, .. } => Some(event),
        Write::Alert { action, .. } => action.as_ref(),
        _ => None,
    };
    if let Some(event) = event {
        if outcome == 1 {
            telemetry
                .actions
                .with_label_values(&[event.state.as_str()])
                .inc();
        }
    }
}

/// The newest index suffix (`time · id`) under `prefix` that is at least `floor` and
/// below (or, if `inclusive`, at) `upper`.
fn seek(
    store: &Store,
    txn: &RoTxn,
    prefix: &[u8],
    floor: Option<[u8; 8]>,
    upper: Option<(&[u8], bool)>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut low = prefix.to_vec();
    if let Some(floor) = floor {
        low.extend_from_slice(&floor);
    }
    let high = match upper {
        Some((suffix, inclusive)) => {
            let mut key = prefix.to_vec();
            key.extend_from_slice(suffix);
            if inclusive {
                Bound::Included(key)
            } else {
                Bound::Excluded(key)
            }
        }
        None => prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded),
    };
    if let Bound::Included(high) | Bound::Excluded(high) = &high {
        if *high < low {
            return Ok(None);
        }
    }
    let range = (
        Bound::Included(low.as_slice()),
        high.as_ref().map(Vec::as_slice),
    );
    match store.dbs.action_index.rev_range(txn, &range)?.next() {
        Some(entry) => {
            let (key, _) = entry?;
            Ok(key.get(prefix.len()..).map(<[u8]>::to_vec))
        }
        None => Ok(None),
    }
}

impl Store {
    /// Actions matching `query`, newest created first.
    pub fn actions(&self, query: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError> {
        self.actions_page(query).map(|page| page.actions)
    }

    /// Like [`Store::actions`], and says how much it read.
    pub fn actions_page(&self, query: &ActionQuery) -> Result<ActionPage, StoreError> {
        self.read_actions(|txn| {
            let mut prefixes = Vec::new();
            if let Some(target) = &query.target {
                prefixes.push(index_prefix(TAG_TARGET, target));
            }
            if let Some(policy) = &query.policy {
                prefixes.push(index_prefix(TAG_POLICY, policy));
            }
            if let Some(host) = &query.host {
                prefixes.push(index_prefix(TAG_HOST, host));
            }
            if let Some(status) = query.status {
                prefixes.push(index_prefix(TAG_STATUS, status.as_str()));
            }
            if prefixes.is_empty() {
                prefixes.push(index_prefix(TAG_TIME, ""));
            }
            let floor = query.since_ms.map(keys::time_bytes);
            let n = prefixes.len();
            let mut page = ActionPage {
                actions: Vec::new(),
                touched: 0,
            };
            let mut upper: Option<Vec<u8>> = None;
            'page: while page.actions.len() < query.limit {
                let Some(mut candidate) = seek(
                    self,
                    txn,
                    &prefixes[0],
                    floor,
                    upper.as_deref().map(|u| (u, false)),
                )?
                else {
                    break;
                };
                page.touched += 1;
                // Leapfrog: every index must hold the candidate; an index that does not
                // offers its newest older key as the next candidate.
                let mut agreed = 1;
                let mut i = 1 % n;
                while agreed < n {
                    let Some(found) =
                        seek(self, txn, &prefixes[i], floor, Some((&candidate, true)))?
                    else {
                        break 'page;
                    };
                    page.touched += 1;
                    if found == candidate {
                        agreed += 1;
                    } else {
                        candidate = found;
                        agreed = 1;
                    }
                    i = (i + 1) % n;
                }
                let id = candidate.get(8..).unwrap_or_default();
                let bytes = self
                    .dbs
                    .actions
                    .get(txn, id)?
                    .ok_or_else(|| StoreError::Corrupt {
                        db: "action_index",
                        reason: format!(
                            "index names action `{}`, which is not stored",
                            String::from_utf8_lossy(id)
                        ),
                    })?;
                page.touched += 1;
                page.actions
                    .push(codec::decode::<ActionRecord>("actions", bytes)?);
                upper = Some(candidate);
            }
            Ok(page)
        })
    }

    /// One action, if its id is known.
    pub fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        self.read_actions(|txn| {
            self.dbs
                .actions
                .get(txn, id.as_bytes())?
                .map(|bytes| codec::decode::<ActionRecord>("actions", bytes))
                .transpose()
        })
    }

    /// How many actions there are, in total and by current status.
    pub fn action_counts(&self) -> Result<ActionCounts, StoreError> {
        self.read_actions(|txn| {
            let mut counts = ActionCounts {
                total: read_counter(self, txn, META_TOTAL)?,
                by_status: BTreeMap::new(),
            };
            for state in ALL_STATES {
                counts
                    .by_status
                    .insert(state.as_str(), read_counter(self, txn, &status_key(state))?);
            }
            Ok(counts)
        })
    }

    fn read_actions<R>(
        &self,
        f: impl FnOnce(&RoTxn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.env.read_txn()?;
        f(&txn)
    }
}

/// Checks that the action records, their index keys and the counts agree: every index
/// key names a stored record and is one of its keys, every record has all its keys, and
/// the counters match the records. Returns the number of records.
#[cfg(test)]
pub(crate) fn check_consistency(store: &Store) -> Result<u64, String> {
    let e = |e: StoreError| e.to_string();
    store
        .read_actions(|txn| {
            let mut expected = std::collections::BTreeSet::new();
            let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut records = 0u64;
            for entry in store.dbs.actions.iter(txn)? {
                let (_, bytes) = entry?;
                let record = codec::decode::<ActionRecord>("actions", bytes)?;
                records += 1;
                *by_status.entry(record.status.as_str()).or_default() += 1;
                expected.extend(index_keys(&record));
            }
            let mut found = std::collections::BTreeSet::new();
            for entry in store.dbs.action_index.iter(txn)? {
                let (key, _) = entry?;
                found.insert(key.to_vec());
            }
            let mut problems = Vec::new();
            if expected != found {
                problems.push(format!(
                    "{} index keys without their record, {} missing",
                    found.difference(&expected).count(),
                    expected.difference(&found).count()
                ));
            }
            if read_counter(store, txn, META_TOTAL)? != records {
                problems.push(format!(
                    "total counter {} for {records} records",
                    read_counter(store, txn, META_TOTAL)?
                ));
            }
            for state in ALL_STATES {
                let counted = read_counter(store, txn, &status_key(state))?;
                let actual = by_status.get(state.as_str()).copied().unwrap_or(0);
                if counted != actual {
                    problems.push(format!(
                        "{} counter {counted}, records {actual}",
                        state.as_str()
                    ));
                }
            }
            Ok((records, problems))
        })
        .map_err(e)
        .and_then(|(records, problems)| {
            if problems.is_empty() {
                Ok(records)
            } else {
                Err(problems.join("; "))
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::store::{MapSize, StoreWriter};

    fn open(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            MapSize {
                initial: 64 << 20,
                max: 4 << 30,
            },
        )
        .unwrap()
    }

    fn event(id: &str, state: ActionState, attempt: u32, at_ms: i64) -> ActionEvent {
        ActionEvent {
            id: id.into(),
            host: "web-01".into(),
            policy: Some("high-cpu".into()),
            target: "nginx.service".into(),
            action: "restart".into(),
            state,
            attempt,
            dry_run: false,
            detail: Some(format!("{} #{attempt}", state.as_str())),
            created_at_ms: 1_000,
            at_ms,
            max_attempts: 3,
            executor: Some("systemd".into()),
            step: Some(0),
            params: None,
        }
    }

    async fn write_all(writer: &StoreWriter, events: Vec<ActionEvent>) {
        for event in events {
            writer.send(Write::Action { event }).await.unwrap();
        }
        writer.flush().await.unwrap();
    }

    fn all(limit: usize) -> ActionQuery {
        ActionQuery {
            limit,
            ..ActionQuery::default()
        }
    }

    #[tokio::test]
    async fn redelivery_adds_no_record_and_no_transition() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let telemetry = Arc::new(Telemetry::new());
        let (writer, _thread) = StoreWriter::start(store.clone(), telemetry.clone());
        let running = event("A1", ActionState::Running, 1, 2_000);
        write_all(
            &writer,
            vec![
                event("A1", ActionState::Pending, 0, 1_000),
                running.clone(),
                running.clone(),
                running,
            ],
        )
        .await;
        let records = store.actions(&all(10)).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].transitions.len(), 2);
        assert_eq!(records[0].status, ActionState::Running);
        assert_eq!(records[0].started_at_ms, Some(2_000));
        assert_eq!(
            telemetry.actions.with_label_values(&["running"]).get(),
            1,
            "only the new transition is counted"
        );
        let counts = store.action_counts().unwrap();
        assert_eq!(counts.total, 1);
        assert_eq!(counts.by_status["running"], 1);
        assert_eq!(counts.by_status["pending"], 0);
    }

    #[tokio::test]
    async fn out_of_order_transitions_give_the_latest_status_and_move_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        // Arrives: resolved, running(1), pending, completed(2), failed(1), running(2),
        // pending(1) (the retry wait, same millisecond as the failure).
        write_all(
            &writer,
            vec![
                event("B", ActionState::Resolved, 2, 9_000),
                event("B", ActionState::Running, 1, 2_000),
                event("B", ActionState::Pending, 0, 1_000),
                event("B", ActionState::Completed, 2, 6_000),
                event("B", ActionState::Failed, 1, 3_000),
                event("B", ActionState::Running, 2, 5_000),
                event("B", ActionState::Pending, 1, 3_000),
            ],
        )
        .await;
        let record = store.action("B").unwrap().unwrap();
        let states: Vec<&str> = record
            .transitions
            .iter()
            .map(|t| t.state.as_str())
            .collect();
        assert_eq!(
            states,
            vec![
                "pending",
                "running",
                "failed",
                "pending",
                "running",
                "completed",
                "resolved"
            ]
        );
        assert_eq!(record.status, ActionState::Resolved);
        assert_eq!(record.outcome, Some(ActionState::Resolved));
        assert_eq!(record.attempts, 2);
        assert_eq!(record.started_at_ms, Some(2_000));
        assert_eq!(record.finished_at_ms, Some(6_000));
        assert_eq!(record.details(), Some("resolved #2"));
        // The status index holds the record under its current status only.
        let by = |status| {
            store
                .actions(&ActionQuery {
                    status: Some(status),
                    limit: 10,
                    ..ActionQuery::default()
                })
                .unwrap()
                .len()
        };
        assert_eq!(by(ActionState::Resolved), 1);
        assert_eq!(by(ActionState::Running), 0);
        assert_eq!(by(ActionState::Pending), 0);
        let counts = store.action_counts().unwrap();
        assert_eq!(counts.by_status["resolved"], 1);
        assert_eq!(counts.by_status.values().sum::<u64>(), 1);

        // A late, older transition does not change the status.
        write_all(&writer, vec![event("B", ActionState::Cancelled, 0, 500)]).await;
        assert_eq!(
            store.action("B").unwrap().unwrap().status,
            ActionState::Resolved
        );
        // Another host cannot add to this host's action.
        let mut spoof = event("B", ActionState::Failed, 7, 99_000);
        spoof.host = "intruder".into();
        write_all(&writer, vec![spoof]).await;
        assert_eq!(
            store.action("B").unwrap().unwrap().status,
            ActionState::Resolved
        );
        assert!(store.action("nope").unwrap().is_none());
    }

    #[tokio::test]
    async fn filters_combine_and_pages_run_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let mut events = Vec::new();
        for i in 0..40i64 {
            let mut e = event(&format!("C{i:02}"), ActionState::Pending, 0, i * 10);
            e.created_at_ms = i * 10;
            e.host = ["h1", "h2"][(i % 2) as usize].into();
            e.target = ["a", "b", "a\0b", "c"][(i % 4) as usize].into();
            e.policy = (i % 5 != 0).then(|| "p".to_string());
            if i % 3 == 0 {
                events.push(e.clone());
                e.state = ActionState::Completed;
                e.at_ms += 1;
            }
            events.push(e);
        }
        write_all(&writer, events).await;
        let ids = |query: ActionQuery| -> Vec<String> {
            store
                .actions(&query)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        let q = |host: Option<&str>, target: Option<&str>, status, since_ms, limit| ActionQuery {
            host: host.map(str::to_string),
            target: target.map(str::to_string),
            status,
            since_ms,
            limit,
            policy: None,
        };
        let everything = ids(q(None, None, None, None, 100));
        assert_eq!(everything.len(), 40);
        assert_eq!(everything[0], "C39");
        assert_eq!(everything[39], "C00");
        assert_eq!(ids(q(None, None, None, None, 3)), vec!["C39", "C38", "C37"]);
        // target `a` is i % 4 == 0; `a\0b` (i % 4 == 2) must not leak into it.
        let a = ids(q(None, Some("a"), None, None, 100));
        assert_eq!(a.len(), 10);
        assert!(a.iter().all(|id| id[1..].parse::<i64>().unwrap() % 4 == 0));
        // h2 (odd i) and completed (i % 3 == 0): 3, 9, 15, 21, 27, 33, 39.
        let h2_done = ids(q(Some("h2"), None, Some(ActionState::Completed), None, 100));
        assert_eq!(
            h2_done,
            vec!["C39", "C33", "C27", "C21", "C15", "C09", "C03"]
        );
        // …created at or after 150 ms, at most 2.
        let recent = ids(q(
            Some("h2"),
            None,
            Some(ActionState::Completed),
            Some(150),
            2,
        ));
        assert_eq!(recent, vec!["C39", "C33"]);
        let recent = ids(q(
            Some("h2"),
            None,
            Some(ActionState::Completed),
            Some(150),
            100,
        ));
        assert_eq!(recent.last().map(String::as_str), Some("C15"));
        // Three filters at once: h1 (even), target c (i % 4 == 3, odd) → nothing.
        assert!(ids(q(Some("h1"), Some("c"), None, None, 100)).is_empty());
        let policy = ids(ActionQuery {
            policy: Some("p".into()),
            host: Some("h1".into()),
            limit: 100,
            ..ActionQuery::default()
        });
        assert_eq!(policy.len(), 16, "{policy:?}");
        assert!(ids(q(Some("nobody"), None, None, None, 100)).is_empty());
    }

    #[tokio::test]
    async fn a_filtered_page_over_100k_actions_reads_only_its_index_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
        let started = Instant::now();
        const N: i64 = 100_000;
        for i in 0..N {
            let mut e = event(&format!("D{i:06}"), ActionState::Pending, 0, i);
            e.created_at_ms = i;
            e.host = format!("host-{:02}", i % 50);
            e.target = format!("unit-{}.service", i % 200);
            // One action in 100 ends up dead-lettered; the rest complete.
            e.state = if i % 100 == 7 {
                ActionState::DeadLetter
            } else {
                ActionState::Completed
            };
            writer.send(Write::Action { event: e }).await.unwrap();
        }
        writer.flush().await.unwrap();
        println!(
            "stored {N} actions in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let run = |label: &str, query: ActionQuery| {
            let started = Instant::now();
            let page = store.actions_page(&query).unwrap();
            let took = started.elapsed();
            println!(
                "{label}: {} actions, {} index seeks + records read, {:.3} ms",
                page.actions.len(),
                page.touched,
                took.as_secs_f64() * 1e3
            );
            page
        };
        let page = run(
            "status=dead_letter limit 50",
            ActionQuery {
                status: Some(ActionState::DeadLetter),
                limit: 50,
                ..ActionQuery::default()
            },
        );
        assert_eq!(page.actions.len(), 50);
        assert!(page
            .actions
            .iter()
            .all(|r| r.status == ActionState::DeadLetter));
        assert_eq!(page.touched, 100, "one seek and one record per match");
        // host-07 holds every i % 50 == 7, so all of its actions are dead letters: the
        // intersection agrees at once.
        let page = run(
            "host=host-07 status=dead_letter limit 50",
            ActionQuery {
                host: Some("host-07".into()),
                status: Some(ActionState::DeadLetter),
                limit: 50,
                ..ActionQuery::default()
            },
        );
        assert_eq!(page.actions.len(), 50);
        assert!(page.touched <= 4 * 50, "touched {}", page.touched);
        // host-08 has none: the leapfrog ends after jumping between sparse keys, far
        // fewer steps than the 2,000 actions of the host.
        let page = run(
            "host=host-08 status=dead_letter limit 50",
            ActionQuery {
                host: Some("host-08".into()),
                status: Some(ActionState::DeadLetter),
                limit: 50,
                ..ActionQuery::default()
            },
        );
        assert!(page.actions.is_empty());
        assert!(page.touched <= 2 * 1_000 + 2, "touched {}", page.touched);
        let page = run(
            "target=unit-3.service limit 50",
            ActionQuery {
                target: Some("unit-3.service".into()),
                limit: 50,
                ..ActionQuery::default()
            },
        );
        assert_eq!(page.actions.len(), 50);
        assert_eq!(page.touched, 100);
        let page = run("no filter limit 500", all(500));
        assert_eq!(page.actions.len(), 500);
        assert_eq!(page.actions[0].id, "D099999");
        let counts = store.action_counts().unwrap();
        assert_eq!(counts.total, N as u64);
        assert_eq!(counts.by_status["dead_letter"], 1_000);
    }
}
