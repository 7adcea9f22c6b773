//! The watch hub: a ring of the last `watch_window` events and the live watchers.
//!
//! Appending to the ring and sending to the watchers happen under one lock, and so does
//! registering a watcher (replaying the ring into its backlog), so a watch from rv r sees
//! exactly the events after r, then follows live, with no gap and no duplicate. Each
//! watcher has a bounded channel; a watcher too slow to keep up is ended (its client
//! rewatches from its last rv) instead of blocking writers or losing events silently.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::state::Change;
use super::types::{Event, Expired, Rv};

/// The hub of one node.
pub(crate) struct Hub {
    state: Mutex<HubState>,
    /// How many events the ring keeps, and how many a watcher may have pending.
    window: usize,
}

struct HubState {
    ring: VecDeque<Event>,
    /// History at or below this rv is lost: watches from an rv below it are expired.
    floor: Rv,
    /// Snapshot installs jumped from `.0` to `.1`: a watch from inside is expired.
    gaps: Vec<(Rv, Rv)>,
    watchers: Vec<Watcher>,
    closed: bool,
}

struct Watcher {
    resource: String,
    namespace: Option<String>,
    from: Rv,
    tx: mpsc::Sender<Event>,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        event.rv > self.from
            && event.key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| event.key.namespace.as_ref() == Some(ns))
    }
}

impl Hub {
    /// A hub whose history starts at `applied` (nothing before it can be replayed).
    pub fn new(applied: Rv, window: usize) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                ring: VecDeque::new(),
                floor: applied,
                gaps: Vec::new(),
                watchers: Vec::new(),
                closed: false,
            }),
            window: window.max(1),
        }
    }

    /// Appends the changes of the entry at `rv` and sends them to the watchers.
    pub fn publish(&self, rv: Rv, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        for change in changes {
            let event = Event {
                rv,
                kind: change.kind,
                key: change.key.clone(),
                object: change.object.clone(),
            };
            state.watchers.retain(|w| {
                if !w.wants(&event) {
                    return !w.tx.is_closed();
                }
                match w.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(
                            resource = %w.resource,
                            "ending a watch that fell {} events behind",
                            self.window
                        );
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            state.ring.push_back(event);
        }
        while state.ring.len() > self.window {
            if let Some(lost) = state.ring.pop_front() {
                state.floor = state.floor.max(lost.rv);
            }
        }
        let floor = state.floor;
        state.gaps.retain(|&(_, to)| to > floor);
    }

    /// A snapshot moved the state machine from `from` to `to`; `changes` is the diff,
    /// delivered as events at `to`. Watchers that asked for history inside the jump end.
    pub fn install(&self, from: Rv, to: Rv, changes: &[Change]) {
        {
            let mut state = self.state.lock();
            state.watchers.retain(|w| w.from <= from);
            if to > from + 1 {
                state.gaps.push((from, to));
            }
        }
        self.publish(to, changes);
    }

    /// Watches `resource` (in `namespace`) from `from`: replays the ring, then follows live.
    pub fn watch(
        &self,
        resource: &str,
        namespace: Option<&str>,
        from: Rv,
    ) -> Result<Watch, Expired> {
        let mut state = self.state.lock();
        if from < state.floor {
            return Err(Expired {
                requested: from,
                oldest: state.floor,
            });
        }
        if let Some(&(_, to)) = state.gaps.iter().find(|(a, b)| from > *a && from < *b) {
            return Err(Expired {
                requested: from,
                oldest: to,
            });
        }
        let (tx, rx) = mpsc::channel(self.window);
        let watcher = Watcher {
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
            from,
            tx,
        };
        let start = state.ring.partition_point(|e| e.rv <= from);
        let backlog = state
            .ring
            .range(start..)
            .filter(|e| watcher.wants(e))
            .cloned()
            .collect();
        if !state.closed {
            state.watchers.push(watcher);
        }
        Ok(Watch { backlog, rx })
    }

    /// Ends every watch (the store shuts down).
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.watchers.clear();
    }
}

/// A stream of events for one resource (optionally one namespace), in rv order.
pub struct Watch {
    backlog: VecDeque<Event>,
    rx: mpsc::Receiver<Event>,
}

impl Watch {
    /// The next event; `None` when the store shuts down, or when this watcher fell more
    /// than the watch window behind (rewatch from the last rv seen: that replays or is
    /// [`Expired`]).
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{EventType, Key};
    use std::sync::Arc;

    fn change(resource: &str, ns: &str, name: &str) -> Change {
        Change {
            key: Key {
                resource: resource.into(),
                namespace: Some(ns.into()),
                name: name.into(),
            },
            kind: EventType::Added,
            object: Arc::new(serde_json::json!({ "metadata": { "name": name } })),
        }
    }

    async fn drain(watch: &mut Watch, n: usize) -> Vec<(Rv, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let event = watch.next().await.expect("an event");
            out.push((event.rv, event.key.name));
        }
        out
    }

    fn pending(watch: &mut Watch) -> bool {
        !watch.backlog.is_empty() || !watch.rx.is_empty()
    }

    #[tokio::test]
    async fn watch_replays_after_rv_then_follows_live_without_gap_or_duplicate() {
        let hub = Hub::new(0, 100);
        hub.publish(1, &[change("r", "a", "one")]);
        hub.publish(2, &[change("r", "a", "two")]);
        let mut watch = hub.watch("r", None, 1).unwrap();
        hub.publish(3, &[change("r", "a", "three")]);
        assert_eq!(
            drain(&mut watch, 2).await,
            vec![(2, "two".into()), (3, "three".into())]
        );
        assert!(!pending(&mut watch));
    }

    #[tokio::test]
    async fn watch_filters_by_resource_and_namespace() {
        let hub = Hub::new(0, 100);
        let mut watch = hub.watch("r", Some("a"), 0).unwrap();
        hub.publish(
            1,
            &[
                change("r", "b", "other-ns"),
                change("q", "a", "other-resource"),
                change("r", "a", "mine"),
            ],
        );
        assert_eq!(drain(&mut watch, 1).await, vec![(1, "mine".into())]);
        assert!(!pending(&mut watch));
    }

    #[tokio::test]
    async fn watch_from_before_the_window_is_expired_but_from_its_start_works() {
        let hub = Hub::new(5, 2);
        assert!(hub.watch("r", None, 5).is_ok(), "no events since the start");
        assert_eq!(
            hub.watch("r", None, 4).err(),
            Some(Expired {
                requested: 4,
                oldest: 5
            })
        );
        for rv in 6..=9 {
            hub.publish(rv, &[change("r", "a", &format!("e{rv}"))]);
        }
        // The ring keeps 8 and 9; 7 was the last one dropped.
        assert!(hub.watch("r", None, 6).is_err());
        let mut watch = hub.watch("r", None, 7).unwrap();
        assert_eq!(
            drain(&mut watch, 2).await,
            vec![(8, "e8".into()), (9, "e9".into())]
        );
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_ended_not_silently_skipped() {
        let hub = Hub::new(0, 2);
        let mut watch = hub.watch("r", None, 0).unwrap();
        for rv in 1..=3 {
            hub.publish(rv, &[change("r", "a", &format!("e{rv}"))]);
        }
        assert_eq!(
            drain(&mut watch, 2).await,
            vec![(1, "e1".into()), (2, "e2".into())]
        );
        assert!(
            watch.next().await.is_none(),
            "the watch ends instead of skipping e3"
        );
    }

    #[tokio::test]
    async fn snapshot_install_delivers_the_diff_and_expires_rvs_inside_the_jump() {
        let hub = Hub::new(0, 100);
        hub.publish(1, &[change("r", "a", "one")]);
        let mut live = hub.watch("r", None, 1).unwrap();
        hub.install(1, 20, &[change("r", "a", "from-snapshot")]);
        assert_eq!(
            drain(&mut live, 1).await,
            vec![(20, "from-snapshot".into())]
        );
        assert!(hub.watch("r", None, 10).is_err());
        let mut replay = hub.watch("r", None, 0).unwrap();
        assert_eq!(
            drain(&mut replay, 2).await,
            vec![(1, "one".into()), (20, "from-snapshot".into())]
        );
        assert!(hub.watch("r", None, 20).is_ok());
    }

    #[tokio::test]
    async fn close_ends_every_watch() {
        let hub = Hub::new(0, 10);
        let mut watch = hub.watch("r", None, 0).unwrap();
        hub.close();
        assert!(watch.next().await.is_none());
    }
}
