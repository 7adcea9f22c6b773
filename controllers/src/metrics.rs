//! What the controllers' loop counts for the node's `/metrics`: plans made, writes that
//! failed, and how many writes the last plan queued. A cheap clonable handle of atomics;
//! the daemon reads it when scraped (the crate knows nothing of Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The controllers' counters; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    reconciles: AtomicU64,
    errors: AtomicU64,
    queue_depth: AtomicU64,
}

impl Metrics {
    /// One pass of every planner produced `queued` actions.
    pub fn reconciled(&self, queued: usize) {
        self.inner.reconciles.fetch_add(1, Ordering::Relaxed);
        self.inner
            .queue_depth
            .store(queued as u64, Ordering::Relaxed);
    }

    /// One action's API write failed (not counting 409s, which re-plan by design).
    pub fn write_failed(&self) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Planner passes since the process started.
    pub fn reconciles(&self) -> u64 {
        self.inner.reconciles.load(Ordering::Relaxed)
    }

    /// Failed writes since the process started.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Actions the newest plan queued.
    pub fn queue_depth(&self) -> u64 {
        self.inner.queue_depth.load(Ordering::Relaxed)
    }
}
