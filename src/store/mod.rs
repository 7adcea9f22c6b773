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
//! - Applying sets `metadata.resourceVersion` to the transaction's rv (as a string), sets
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
//! - Every event carries the rv of the txn that made it; events are delivered in rv order,
//!   never duplicated, never missed. DELETED events carry the last object state with its
//!   `resourceVersion` set to the deleting transaction's rv.
//! - Every transaction has its own rv: concurrent transactions share Raft entries (see
//!   `proposer`), and the one at position p of the entry at log index i has rv
//!   `i * 1000 + p`. Rvs only grow; a list, read barrier or applied rv "at the end of
//!   entry i" is `i * 1000 + 999`.
//!
//! Beyond the CONTRACT, what callers should know:
//! - A node that catches up by installing a Raft snapshot delivers the difference between
//!   its old and new contents as ADDED/MODIFIED/DELETED events whose [`Event::rv`] is the
//!   snapshot's last entry as an rv (the objects keep their own, possibly older, resourceVersion;
//!   use `Event::rv` for bookmarks). A watch from an rv inside such a jump is [`Expired`].
//! - [`Watch::next`] also returns `None` when the watcher fell a whole watch window behind;
//!   the client rewatches from the last rv it saw (replayed, or [`Expired`]).
//! - After a restart the hub can replay from the rv of the last change on disk onwards.
//! - [`StoreError::Unavailable`] from `propose` can mean "no leader" (nothing happened) or
//!   "the outcome is unknown" (the leader vanished mid-request); the store itself retries
//!   only the former.
//!
//! Where things are:
//! - [`types`]: the contract types above.
//! - `state`: the pure apply of a transaction (all of the CONTRACT's rules) and the
//!   snapshot diff; table-driven unit tests.
//! - `state_machine`: openraft's `RaftStateMachine` over sled, and this node's in-memory
//!   replica of the objects that `get`/`list` read.
//! - `log`: openraft's `RaftLogStorage` over sled (log, vote, committed, purged).
//! - `snapshot`: snapshot format; a built snapshot is a point in the tree `snapshot`, its
//!   data the state tree, serialized when a follower needs it (and once at start-up).
//! - `watch`: the watch hub (ring of recent events + live watchers).
//! - `network` / `rpc`: the node-to-node HTTP client and routes (`/internal/raft/*`).
//! - `consensus`: openraft's type configuration (an entry is a `Batch` of txns), the rv of
//!   a txn in an entry, and every timeout of the store.
//! - `proposer`: batches the txns proposed concurrently on the leader into shared entries,
//!   and a follower's forwards of them into shared requests.
//! - `rounds`: concurrent read barriers share one leadership round (and one request to
//!   the leader from a follower).
//! - `db`: the sled database, its node identity, and waiting for its release on shutdown.
//! - `facade`: [`Store`], which wires them and forwards from followers to the leader.

mod consensus;
mod db;
mod facade;
mod log;
mod network;
mod proposer;
mod rounds;
mod rpc;
mod snapshot;
mod state;
mod state_machine;
pub mod types;
mod watch;

pub use facade::Store;
pub use network::FROM_HEADER;
pub use types::{
    Applied, Event, EventType, Expired, Key, Op, Part, RaftInfo, Role, Rv, StoreConfig, StoreError,
    Txn,
};
pub use watch::Watch;
