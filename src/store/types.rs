//! The contract types shared by `store` and `api` (see the CONTRACT in the module doc).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// A resourceVersion: `index * 1000 + position` of the transaction that last changed an
/// object (its Raft log entry's index, its position in that entry); see the module doc.
pub type Rv = u64;

/// Where an object lives: `resource` is `"<group>/<plural>"` with group `""` for core
/// (`"mill.dev/services"`, `"/secrets"`, `"/namespaces"`); `namespace` is `None` for
/// cluster-scoped kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// `"<group>/<plural>"`, e.g. `"mill.dev/allocs"` or `"/secrets"`.
    pub resource: String,
    /// The namespace, `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

/// Which part of an object an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// Everything but `status` (`status` in the given object is ignored).
    Main,
    /// Only `status` (the `/status` subresource).
    Status,
}

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Store a new object; fails with `AlreadyExists` if the key is taken.
    Create {
        /// Where to store it.
        key: Key,
        /// The whole object, with uid, name, namespace and creationTimestamp filled in.
        object: Value,
    },
    /// Replace an existing object; `expected_rv` is optimistic concurrency (`Conflict`).
    Update {
        /// The object to replace.
        key: Key,
        /// The new object; only the fields of `part` are taken from it.
        object: Value,
        /// Fail with `Conflict` unless the stored rv is this.
        expected_rv: Option<Rv>,
        /// Main object or `/status`.
        part: Part,
    },
    /// Delete (or mark deleting, with finalizers); preconditions on rv and uid.
    Delete {
        /// The object to delete.
        key: Key,
        /// Fail with `Conflict` unless the stored rv is this.
        expected_rv: Option<Rv>,
        /// Fail with `Conflict` unless the stored uid is this.
        expected_uid: Option<String>,
    },
}

/// A list of ops applied atomically in one log entry. `now` (RFC 3339 UTC, from the
/// proposer) is the timestamp used for `deletionTimestamp`, so applying is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// Applied in order; later ops see the effects of earlier ones.
    pub ops: Vec<Op>,
    /// The proposer's clock, RFC 3339 UTC.
    pub now: String,
}

/// The result of a committed transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The transaction's rv: the new resourceVersion of everything it touched.
    pub rv: Rv,
    /// Per op: the object as stored after the op, or `None` if it was removed.
    pub objects: Vec<Option<Value>>,
}

/// Why a proposal or read failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0:?} not found")]
    NotFound(Key),
    /// An object with this key exists already.
    #[error("{0:?} already exists")]
    AlreadyExists(Key),
    /// Optimistic concurrency failed (rv or uid precondition).
    #[error("conflict on {key:?}: {message}")]
    Conflict {
        /// The object whose precondition failed.
        key: Key,
        /// What differed.
        message: String,
    },
    /// No leader is known right now (election in progress); retry.
    #[error("no raft leader: {0}")]
    Unavailable(String),
    /// Storage or transport failure; the message says which.
    #[error("store error: {0}")]
    Internal(String),
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// The object was created (or appeared with a snapshot).
    Added,
    /// The object changed.
    Modified,
    /// The object was removed; the event carries its last state.
    Deleted,
}

/// One change, as delivered to watchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The rv of the transaction (or installed snapshot) that made the change.
    pub rv: Rv,
    /// What happened.
    pub kind: EventType,
    /// Which object.
    pub key: Key,
    /// The object after the change (for `Deleted`: its last state).
    pub object: Arc<Value>,
}

/// A watch asked for history the hub no longer has: the client must relist.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    /// The rv the watch asked to start from.
    pub requested: Rv,
    /// The oldest rv the hub can still replay from.
    pub oldest: Rv,
}

/// How a node's store is set up (from daemon flags and `MILL_*` env knobs).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The node's data dir; the sled database lives in `<data_dir>/store`.
    pub data_dir: std::path::PathBuf,
    /// This node's Raft id (1 for the node that ran `init`).
    pub node_id: u64,
    /// This node's API address as other nodes reach it (`IP:PORT`); Raft RPC goes there.
    pub api_addr: String,
    /// The cluster token; node-to-node RPC carries it as a bearer token.
    pub token: String,
    /// `MILL_ELECTION_TIMEOUT_MS` (1000).
    pub election_timeout_ms: u64,
    /// `MILL_SNAPSHOT_THRESHOLD` (5000 entries).
    pub snapshot_threshold: u64,
    /// `MILL_SNAPSHOT_LOG_KEEP` (1000 entries).
    pub snapshot_log_keep: u64,
    /// How many events the watch hub retains for replay.
    pub watch_window: usize,
}

/// The Raft role of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Accepts writes and replicates them.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter asking for votes (election in progress).
    Candidate,
    /// Replicates but does not vote (joining, or removed from the voters).
    Learner,
}

/// A snapshot of this node's Raft state, for status and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftInfo {
    /// This node's Raft id.
    pub node_id: u64,
    /// This node's role right now.
    pub role: Role,
    /// The current Raft term.
    pub term: u64,
    /// The leader's Raft id, when known.
    pub leader_id: Option<u64>,
    /// The leader's API address, when known.
    pub leader_addr: Option<String>,
    /// The highest log index known to be committed.
    pub commit_index: u64,
    /// The highest log index applied to this node's state machine.
    pub applied_index: u64,
    /// Voters: (id, api address).
    pub voters: Vec<(u64, String)>,
}
