//! The replicated resource store: openraft 0.9 consensus over a sled log and state machine,
//! with Kubernetes resource semantics and a watch hub.
//!
//! The surface is tiny on purpose: [`Store::propose`] a [`Txn`], read with [`Store::get`] /
//! [`Store::list`] (after [`Store::read_barrier`] for linearizable reads), and
//! [`Store::watch`]. Only this module knows about Raft; only `api` knows about HTTP, except
//! for [`Store::router`], the node-to-node RPC that openraft needs.
//!
//! CONTRACT (shared by `store` and `api`; change only together):
//! - Objects are `serde_json::Value` of the whole Kubernetes-shaped object (apiVersion,
//!   kind, metadata, spec, status, data...). The proposer (the API layer) fills
//!   `metadata.uid`, `metadata.creationTimestamp`, `metadata.namespace`, `metadata.name`
//!   before proposing; the state machine is deterministic and never invents them.
//! - Applying sets `metadata.resourceVersion` to the entry's log index (as a string), sets
//!   `metadata.generation` to 1 on create and bumps it when `spec` (or, for kinds without
//!   spec, anything but metadata/status) changes; `Part::Main` updates keep the stored
//!   `status`, `Part::Status` updates change only `status`. `uid` and
//!   `creationTimestamp` of an existing object never change.
//! - Delete of an object with non-empty `metadata.finalizers` sets
//!   `metadata.deletionTimestamp = txn.now` (a MODIFIED event) instead of removing it; an
//!   update that empties the finalizers of an object being deleted removes it (DELETED).
//!   Removing an object cascades (background propagation) to every object whose
//!   `metadata.ownerReferences[].uid` names it, in the same apply.
//! - A `Txn` is all-or-nothing: the first failing op aborts it and nothing is applied.
//! - Every event carries the rv of the entry that made it; events are delivered in rv order,
//!   never duplicated, never missed. DELETED events carry the last object state with its
//!   `resourceVersion` set to the deleting entry's index.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// A resourceVersion: the Raft log index of the entry that last changed an object.
pub type Rv = u64;

/// Where an object lives: `resource` is `"<group>/<plural>"` with group `""` for core
/// (`"mill.dev/services"`, `"/secrets"`, `"/namespaces"`); `namespace` is `None` for
/// cluster-scoped kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub resource: String,
    pub namespace: Option<String>,
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
    Create { key: Key, object: Value },
    /// Replace an existing object; `expected_rv` is optimistic concurrency (`Conflict`).
    Update {
        key: Key,
        object: Value,
        expected_rv: Option<Rv>,
        part: Part,
    },
    /// Delete (or mark deleting, with finalizers); preconditions on rv and uid.
    Delete {
        key: Key,
        expected_rv: Option<Rv>,
        expected_uid: Option<String>,
    },
}

/// A list of ops applied atomically in one log entry. `now` (RFC 3339 UTC, from the
/// proposer) is the timestamp used for `deletionTimestamp`, so applying is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    pub ops: Vec<Op>,
    pub now: String,
}

/// The result of a committed transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The log index of the entry: the new resourceVersion of everything it touched.
    pub rv: Rv,
    /// Per op: the object as stored after the op, or `None` if it was removed.
    pub objects: Vec<Option<Value>>,
}

/// Why a proposal or read failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?} not found")]
    NotFound(Key),
    #[error("{0:?} already exists")]
    AlreadyExists(Key),
    /// Optimistic concurrency failed (rv or uid precondition).
    #[error("conflict on {key:?}: {message}")]
    Conflict { key: Key, message: String },
    /// No leader is known right now (election in progress); retry.
    #[error("no raft leader: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as delivered to watchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub rv: Rv,
    pub kind: EventType,
    pub key: Key,
    pub object: Arc<Value>,
}

/// A watch asked for history the hub no longer has: the client must relist.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
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

/// A stream of events for one resource (optionally one namespace), in rv order.
pub struct Watch {
    _private: (),
}

impl Watch {
    /// The next event; `None` when the store shuts down.
    pub async fn next(&mut self) -> Option<Event> {
        todo!("store helper")
    }
}

/// The Raft role of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
}

/// A snapshot of this node's Raft state, for status and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftInfo {
    pub node_id: u64,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<u64>,
    /// The leader's API address, when known.
    pub leader_addr: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Voters: (id, api address).
    pub voters: Vec<(u64, String)>,
}

/// A node's replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    _private: Arc<()>,
}

impl Store {
    /// Opens (or resumes from) the sled database under `config.data_dir`, starts Raft.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let _ = config;
        todo!("store helper")
    }

    /// Makes this node a one-member cluster, if it has never been initialised.
    pub async fn bootstrap(&self) -> Result<(), StoreError> {
        todo!("store helper")
    }

    /// Leader (forwarded if called on a follower): adds node `id` reachable at `api_addr`
    /// as a learner, waits until it has caught up, then makes it a voter.
    pub async fn add_voter(&self, id: u64, api_addr: String) -> Result<(), StoreError> {
        let _ = (id, api_addr);
        todo!("store helper")
    }

    /// Leader (forwarded): removes node `id` from the membership.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let _ = id;
        todo!("store helper")
    }

    /// Commits `txn` through Raft (forwarded to the leader from a follower) and returns once
    /// it is applied on this node, so a read here right after sees it.
    pub async fn propose(&self, txn: Txn) -> Result<Applied, StoreError> {
        let _ = txn;
        todo!("store helper")
    }

    /// Waits until this node has applied everything committed before the call
    /// (openraft `ensure_linearizable` on the leader; read index from the leader on a
    /// follower). Returns the local applied rv.
    pub async fn read_barrier(&self) -> Result<Rv, StoreError> {
        todo!("store helper")
    }

    /// One object from the local state machine.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        let _ = key;
        todo!("store helper")
    }

    /// All objects of `resource` (in `namespace`, or all namespaces when `None`) from the
    /// local state machine, sorted by key, and the rv the list is consistent at.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> (Vec<Arc<Value>>, Rv) {
        let _ = (resource, namespace);
        todo!("store helper")
    }

    /// Events of `resource` (in `namespace`, or all) with rv > `from`. Fails with
    /// [`Expired`] if `from` is older than the retained window.
    pub fn watch(
        &self,
        resource: &str,
        namespace: Option<&str>,
        from: Rv,
    ) -> Result<Watch, Expired> {
        let _ = (resource, namespace, from);
        todo!("store helper")
    }

    /// The rv of everything applied on this node.
    pub fn applied_rv(&self) -> Rv {
        todo!("store helper")
    }

    /// This node's Raft state.
    pub fn raft_info(&self) -> RaftInfo {
        todo!("store helper")
    }

    /// The node-to-node routes (`/internal/raft/*`: append, vote, snapshot, propose,
    /// read-index, membership), guarded by the cluster token. The API server merges them.
    pub fn router(&self) -> axum::Router {
        todo!("store helper")
    }

    /// Stops Raft and flushes sled.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        todo!("store helper")
    }
}
