//! The openraft type configuration and every store timeout, derived from [`StoreConfig`].

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use super::types::{Applied, Rv, StoreConfig, StoreError, Txn};

openraft::declare_raft_types!(
    /// mill's Raft: log entries are [`Batch`]es of [`Txn`]s, nodes are known by their API
    /// address.
    pub(crate) TypeConfig:
        D = Batch,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The payload of one log entry: transactions proposed concurrently, applied in order,
/// each on its own (one failing does not affect the others) with its own resourceVersion
/// ([`txn_rv`]). Shared, so the copies openraft makes of an entry (the log's recent
/// entries, replication, apply) cost no deep clone; the JSON is that of a plain list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub txns: Arc<Vec<Txn>>,
}

/// What applying one log entry returns: one outcome per transaction of its [`Batch`]
/// (none for the entries Raft itself writes: blank leader entries, membership changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Response(pub Vec<Result<Applied, StoreError>>);

/// How many transactions one entry holds at most, and so the spacing of resourceVersions
/// between consecutive log indexes: the txn at `position` of the entry at `index` has rv
/// `index * TXNS_PER_ENTRY + position`. Decimal, so an rv reads as index and position.
pub(crate) const TXNS_PER_ENTRY: usize = 1000;

/// The resourceVersion of the transaction at `position` (< [`TXNS_PER_ENTRY`]) of the
/// entry at log `index`.
pub(crate) fn txn_rv(index: u64, position: usize) -> Rv {
    index * TXNS_PER_ENTRY as u64 + position as u64
}

/// The rv that "everything up to and including the entry at `index`" is: above every rv
/// of that entry and below every rv of the next. An applied or read index as an rv.
pub(crate) fn entry_rv(index: u64) -> Rv {
    txn_rv(index, TXNS_PER_ENTRY - 1)
}

/// The Raft handle of this crate's type configuration.
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// How many election timeouts a proposal or read barrier keeps retrying (leader unknown,
/// leader changing) before it fails with `Unavailable`.
const FORWARD_DEADLINE_ELECTIONS: u32 = 5;
/// How many retry pauses fit in one election timeout.
const RETRY_PAUSES_PER_ELECTION: u32 = 10;
/// How many election timeouts one snapshot chunk may take to be sent and installed.
const SNAPSHOT_CHUNK_ELECTIONS: u32 = 10;
/// How many election timeouts `add_voter` may take (catching up can mean a snapshot).
const ADD_VOTER_ELECTIONS: u32 = 60;
/// Snapshot chunk size for the chunked `install_snapshot` RPC. JSON encodes bytes as
/// numbers (about 3.5 bytes per byte), so chunks are kept small.
const SNAPSHOT_CHUNK_BYTES: u64 = 512 * 1024;

/// Every timeout of the store, in one place, derived from `MILL_ELECTION_TIMEOUT_MS`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    election: Duration,
}

impl Timing {
    pub fn new(config: &StoreConfig) -> Self {
        Timing {
            election: Duration::from_millis(config.election_timeout_ms.max(1)),
        }
    }

    /// How long a proposal, read barrier or membership call keeps retrying.
    pub fn forward_deadline(&self) -> Duration {
        self.election * FORWARD_DEADLINE_ELECTIONS
    }

    /// The pause between two retries while no leader is known.
    pub fn retry_pause(&self) -> Duration {
        self.election / RETRY_PAUSES_PER_ELECTION
    }

    /// How long adding a voter (catch-up included) may take.
    pub fn add_voter_deadline(&self) -> Duration {
        self.election * ADD_VOTER_ELECTIONS
    }

    /// How long shutdown waits for Raft's tasks to release the database.
    pub fn shutdown_deadline(&self) -> Duration {
        self.forward_deadline()
    }

    /// The openraft configuration: election timeout between t and 2t, heartbeat t/4,
    /// snapshots per `MILL_SNAPSHOT_THRESHOLD` keeping `MILL_SNAPSHOT_LOG_KEEP` entries.
    pub fn raft_config(&self, config: &StoreConfig) -> Result<Arc<openraft::Config>, StoreError> {
        let t = self.election.as_millis() as u64;
        let raft = openraft::Config {
            cluster_name: "mill".into(),
            election_timeout_min: t.max(2),
            election_timeout_max: (2 * t).max(3),
            heartbeat_interval: (t / 4).max(1),
            install_snapshot_timeout: t * u64::from(SNAPSHOT_CHUNK_ELECTIONS),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold.max(1)),
            max_in_snapshot_log_to_keep: config.snapshot_log_keep,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        };
        let raft = raft
            .validate()
            .map_err(|e| StoreError::Internal(format!("invalid raft configuration: {e}")))?;
        Ok(Arc::new(raft))
    }
}
