//! The timing and retention knobs the planners use (SPEC §9), as plain data. The daemon
//! fills them from `MILL_*` environment variables; [`Knobs::default`] is the SPEC.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Every number a planner decides with.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// `MILL_HEARTBEAT_TIMEOUT_MS` (15000): a node silent this long is down.
    pub heartbeat_timeout: Duration,
    /// `MILL_DEPLOY_TIMEOUT_MS` (600000): a deploy still running after this long fails.
    pub deploy_timeout: Duration,
    /// `MILL_DRAIN_GRACE_MS` (5000): the longest an alloc taken out of routing waits for
    /// its in-flight requests before it is stopped.
    pub drain_grace: Duration,
    /// `MILL_ALLOC_RETENTION_SECS` (86400): how long terminal task allocs are kept.
    pub alloc_retention: Duration,
    /// `--port-range` (20000–29999): host ports of nodes that do not name their own.
    pub port_range: RangeInclusive<u16>,
    /// The first gap between health probes after a start (50 ms); it doubles up to the
    /// check's `interval` ([`crate::health::next_probe_at`]).
    pub first_probe_gap: Duration,
    /// Revisions kept in a Service's history (10).
    pub revision_history: usize,
    /// Terminal runs kept per task (100).
    pub task_runs_kept: usize,
    /// Replaced (terminal) allocs kept per service for inspection (5).
    pub replaced_allocs_kept: usize,
    /// Finished deploys kept per namespace (50).
    pub deploys_kept: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            heartbeat_timeout: Duration::from_millis(15_000),
            deploy_timeout: Duration::from_millis(600_000),
            drain_grace: Duration::from_millis(5_000),
            alloc_retention: Duration::from_secs(86_400),
            port_range: 20_000..=29_999,
            first_probe_gap: Duration::from_millis(50),
            revision_history: 10,
            task_runs_kept: 100,
            replaced_allocs_kept: 5,
            deploys_kept: 50,
        }
    }
}
