//! Every tuning knob of the daemon, read once from `MILL_*` environment variables
//! (SPEC §9). Nothing else reads the environment for timings.

use std::time::Duration;

/// The daemon's tuning knobs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `MILL_ELECTION_TIMEOUT_MS` (1000).
    pub election_timeout: Duration,
    /// `MILL_SNAPSHOT_THRESHOLD` (5000 entries).
    pub snapshot_threshold: u64,
    /// `MILL_SNAPSHOT_LOG_KEEP` (1000 entries).
    pub snapshot_log_keep: u64,
    /// `MILL_WATCH_WINDOW` (100000 events): how much watch history a node keeps for replay.
    pub watch_window: usize,
    /// `MILL_JOIN_TIMEOUT_MS` (60000): how long `mill join` waits to become a voter.
    pub join_timeout: Duration,
}

impl Knobs {
    /// Reads the knobs; an unset variable takes its default, a malformed one is an error.
    pub fn from_env() -> anyhow::Result<Knobs> {
        Ok(Knobs {
            election_timeout: Duration::from_millis(var("MILL_ELECTION_TIMEOUT_MS", 1000)?),
            snapshot_threshold: var("MILL_SNAPSHOT_THRESHOLD", 5000)?,
            snapshot_log_keep: var("MILL_SNAPSHOT_LOG_KEEP", 1000)?,
            watch_window: var("MILL_WATCH_WINDOW", 100_000)?,
            join_timeout: Duration::from_millis(var("MILL_JOIN_TIMEOUT_MS", 60_000)?),
        })
    }
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{name}={text:?} is not a valid number; unset it or give a plain integer"
            )
        }),
        Err(_) => Ok(default),
    }
}
