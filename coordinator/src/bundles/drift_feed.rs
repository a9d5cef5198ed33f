//! Drift changes as feed events: every [`CHECK_EVERY`], compare each host's bundles with
//! the published ones ([`super::drift::host_drift`], the same rule as `GET /api/v1/drift`)
//! and append a [`FeedEvent::Drift`] for every (host, group) that went out of sync, came
//! back in sync, or changed versions while out of sync. A pair seen for the first time
//! (at start, a new host, a new group) is reported only if it is out of sync. Integrations see these on `GET /api/v1/events` (`kind=drift`) and
//! on `vigil/v1/json/drift/{host}/{group}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vigil_shared::time::now_ms;

use super::drift::{host_drift, GroupDrift};
use super::Bundles;
use crate::store::feed::FeedEvent;
use crate::store::{Store, StoreWriter, Write};

/// How often drift is recomputed.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The drift state last seen, per (host, group).
type Snapshot = BTreeMap<(String, String), GroupDrift>;

/// The drift of every known host right now.
fn snapshot(store: &Store, bundles: &Bundles) -> Result<Snapshot, crate::store::StoreError> {
    let published = bundles.published();
    let now = now_ms();
    let mut state = Snapshot::new();
    for host in store.hosts()? {
        for group in host_drift(&host, &published, &[], now).groups {
            state.insert((host.host.clone(), group.group.clone()), group);
        }
    }
    Ok(state)
}

/// The events that take `before` to `after` (`before` = `None`: the first look). A pair
/// not seen before counts as having been in sync.
fn changes(before: Option<&Snapshot>, after: &Snapshot) -> Vec<FeedEvent> {
    let event = |(host, _): &(String, String), g: &GroupDrift, in_sync: bool| FeedEvent::Drift {
        host: host.clone(),
        group: g.group.clone(),
        desired_version: g.desired_version,
        applied_version: g.applied_version,
        in_sync,
    };
    let mut events = Vec::new();
    for (key, now) in after {
        let was = before.and_then(|b| b.get(key));
        let was_in_sync = was.is_none_or(|w| w.in_sync);
        let changed = now.in_sync != was_in_sync || (!now.in_sync && was != Some(now));
        if changed {
            events.push(event(key, now, now.in_sync));
        }
    }
    // A (host, group) that disappeared: the group stopped selecting the host, or the
    // host's record is gone. Say it is no longer drifting if it was.
    if let Some(before) = before {
        for (key, was) in before {
            if !after.contains_key(key) && !was.in_sync {
                events.push(FeedEvent::Drift {
                    host: key.0.clone(),
                    group: was.group.clone(),
                    desired_version: None,
                    applied_version: None,
                    in_sync: true,
                });
            }
        }
    }
    events
}

/// Runs until `stop` changes.
pub async fn run(
    store: Store,
    bundles: Arc<Bundles>,
    writer: StoreWriter,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Snapshot> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (reader, published) = (store.clone(), bundles.clone());
        let state = match tokio::task::spawn_blocking(move || snapshot(&reader, &published)).await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                tracing::warn!("drift check cannot read the store: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("drift check task failed: {e}");
                continue;
            }
        };
        let at_ms = now_ms();
        for event in changes(last.as_ref(), &state) {
            if writer.send(Write::Feed { event, at_ms }).await.is_err() {
                return;
            }
        }
        last = Some(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(desired: Option<u64>, applied: Option<u64>) -> GroupDrift {
        GroupDrift {
            group: "web".into(),
            desired_version: desired,
            applied_version: applied,
            in_sync: desired.is_some() && desired == applied,
        }
    }

    fn key() -> (String, String) {
        ("web-01".into(), "web".into())
    }

    #[test]
    fn drift_changes_become_events_once() {
        let behind = Snapshot::from([(key(), group(Some(2), Some(1)))]);
        let caught_up = Snapshot::from([(key(), group(Some(2), Some(2)))]);
        // First look: only what drifts.
        assert_eq!(changes(None, &behind).len(), 1);
        assert!(changes(None, &caught_up).is_empty());
        // A new pair in sync says nothing; out of sync, it is reported.
        assert!(changes(Some(&Snapshot::new()), &caught_up).is_empty());
        assert_eq!(changes(Some(&Snapshot::new()), &behind).len(), 1);
        // No change, no event; a change, one event.
        assert!(changes(Some(&behind), &behind).is_empty());
        let further_behind = Snapshot::from([(key(), group(Some(3), Some(1)))]);
        assert_eq!(changes(Some(&behind), &further_behind).len(), 1);
        let events = changes(Some(&behind), &caught_up);
        assert!(matches!(
            events.as_slice(),
            [FeedEvent::Drift {
                in_sync: true,
                applied_version: Some(2),
                ..
            }]
        ));
        // A drifting pair that disappears is reported as no longer drifting.
        let events = changes(Some(&behind), &Snapshot::new());
        assert!(matches!(
            events.as_slice(),
            [FeedEvent::Drift { in_sync: true, .. }]
        ));
    }
}
