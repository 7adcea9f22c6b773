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
