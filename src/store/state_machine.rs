//! The state machine (`RaftStateMachine`): applies committed entries to this node's
//! [`Replica`] (objects in memory, persisted in sled) and feeds the watch hub.
//!
//! Objects are held in memory for synchronous `get`/`list` and persisted in the tree
//! `state` under `/{resource}/{namespace}/{name}` (values: JSON `[key, object]`), with the
//! last applied log id and membership under `#`-keys in the same tree, so one sled batch
//! per apply call keeps them consistent. Those batches only touch sled's page cache and
//! are cheap; the log (flushed) is what makes committed entries durable, and a restart
//! re-applies whatever the state tree had not recorded yet.
//!
//! An entry is a [`super::consensus::Batch`]: its txns apply one after the other, each at
//! its own rv ([`txn_rv`]), each with its own outcome; the applied rv then moves to the
//! entry's end ([`entry_rv`]), also for blank and membership entries.

// openraft's traits return its `StorageError` (large); helpers return it too, unboxed.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::watch;

use super::consensus::{entry_rv, txn_rv, Response, TypeConfig, TXNS_PER_ENTRY};
use super::db::{internal, DbUser};
use super::snapshot::{self, SnapshotBuilder};
use super::state::{self, Change, Objects};
use super::types::{EventType, Key, Rv, StoreError, Txn};
use super::watch::Hub;

type StorageResult<T> = Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, BasicNode>;

const APPLIED: &[u8] = b"#applied";
const MEMBERSHIP: &[u8] = b"#membership";
/// The index of the last entry that changed an object: watches from any rv at or after it
/// are servable after a restart (nothing happened since), older ones are expired.
const LAST_CHANGE: &[u8] = b"#last_change";

/// This node's copy of the objects, shared by the state machine (writer) and the facade
/// (readers, watchers).
pub(crate) struct Replica {
    local: RwLock<Local>,
    applied: watch::Sender<Rv>,
    hub: Hub,
}

struct Local {
    objects: Objects,
    applied: Rv,
}

impl Replica {
    /// One object.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.local.read().objects.get(key).cloned()
    }

    /// Objects of `resource` and the rv the list is consistent at.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> (Vec<Arc<Value>>, Rv) {
        let local = self.local.read();
        (local.objects.list(resource, namespace), local.applied)
    }

    /// The rv up to which everything is applied (see [`super::consensus::entry_rv`]).
    pub fn applied(&self) -> Rv {
        *self.applied.borrow()
    }

    /// The watch hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Waits until the transaction (or entry) at `rv` is applied here.
    pub async fn wait_applied(&self, rv: Rv, deadline: Duration) -> Result<Rv, StoreError> {
        let mut rx = self.applied.subscribe();
        let waited = tokio::time::timeout(deadline, rx.wait_for(|applied| *applied >= rv)).await;
        match waited {
            Ok(Ok(applied)) => Ok(*applied),
            Ok(Err(_)) => Err(StoreError::Unavailable("the store is shutting down".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "this node has not applied index {rv} after {deadline:?} (applied: {})",
                self.applied()
            ))),
        }
    }

    /// Applies the transaction at `rv`: installs its changes and publishes them, under one
    /// lock so that a list at rv r and a watch from r line up exactly.
    fn apply_txn(&self, txn: &Txn, rv: Rv) -> (Result<super::Applied, StoreError>, Vec<Change>) {
        let mut local = self.local.write();
        let outcome = state::apply(&local.objects, txn, rv);
        let (result, changes) = match outcome {
            Ok((applied, changes)) => (Ok(applied), changes),
            Err(e) => (Err(e), Vec::new()),
        };
        local.objects.apply_changes(&changes);
        local.applied = rv;
        self.hub.publish(rv, &changes);
        self.applied.send_replace(rv);
        (result, changes)
    }

    /// The entry ending at `rv` is applied (its transactions, if any, already are).
    fn advance(&self, rv: Rv) {
        let mut local = self.local.write();
        local.applied = rv;
        self.applied.send_replace(rv);
    }

    /// Replaces everything by a snapshot's objects at `rv`, publishing the difference.
    fn install(&self, objects: Objects, rv: Rv) {
        let mut local = self.local.write();
        let changes = state::diff(&local.objects, &objects, rv);
        tracing::info!(
            from = local.applied,
            to = rv,
            objects = objects.len(),
            changes = changes.len(),
            "installed a snapshot"
        );
        self.hub.install(local.applied, rv, &changes);
        local.objects = objects;
        local.applied = rv;
        self.applied.send_replace(rv);
    }

    /// Ends every watch.
    pub fn close(&self) {
        self.hub.close();
    }
}

/// The openraft state machine over the tree `state`.
pub(crate) struct StateMachine {
    replica: Arc<Replica>,
    state: sled::Tree,
    snapshots: sled::Tree,
    last_applied: Option<LogId<u64>>,
    last_change: Rv,
    membership: Membership,
    /// The data of the last snapshot sent or installed (see [`snapshot::Served`]).
    served: snapshot::Served,
    user: DbUser,
}

fn object_key(key: &Key) -> Vec<u8> {
    format!(
        "/{}/{}/{}",
        key.resource,
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    )
    .into_bytes()
}

impl StateMachine {
    /// Loads the state tree of `db` into memory; `watch_window` sizes the watch hub.
    pub fn open(
        db: &sled::Db,
        user: DbUser,
        watch_window: usize,
    ) -> Result<(StateMachine, Arc<Replica>), StoreError> {
        let state = db.open_tree("state").map_err(internal)?;
        let snapshots = db.open_tree("snapshot").map_err(internal)?;
        let read = |key: &[u8]| state.get(key).map_err(internal);
        let last_applied: Option<LogId<u64>> = match read(APPLIED)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(internal)?,
            None => None,
        };
        let membership: Membership = match read(MEMBERSHIP)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(internal)?,
            None => Membership::default(),
        };
        let last_change: Rv = match read(LAST_CHANGE)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(internal)?,
            None => 0,
        };
        let mut objects = Objects::default();
        for item in state.scan_prefix(b"/") {
            let (_, bytes) = item.map_err(internal)?;
            let (key, object): (Key, Value) = serde_json::from_slice(&bytes).map_err(internal)?;
            objects.insert(key, Arc::new(object));
        }
        let applied = last_applied.map_or(0, |id| entry_rv(id.index));
        tracing::info!(applied, objects = objects.len(), "opened the state machine");
        let replica = Arc::new(Replica {
            local: RwLock::new(Local { objects, applied }),
            applied: watch::Sender::new(applied),
            hub: Hub::new(last_change, watch_window),
        });
        let machine = StateMachine {
            replica: replica.clone(),
            state,
            snapshots,
            last_applied,
            last_change,
            membership,
            served: snapshot::Served::default(),
            user,
        };
        Ok((machine, replica))
    }

    fn persist_changes(batch: &mut sled::Batch, changes: &[Change]) -> StorageResult<()> {
        for change in changes {
            let key = object_key(&change.key);
            match change.kind {
                EventType::Added | EventType::Modified => {
                    let value = serde_json::to_vec(&(&change.key, change.object.as_ref()))
                        .map_err(|e| StorageIOError::write_state_machine(&e))?;
                    batch.insert(key, value);
                }
                EventType::Deleted => batch.remove(key),
            }
        }
        Ok(())
    }

    fn persist_position(&self, batch: &mut sled::Batch) -> StorageResult<()> {
        let applied = serde_json::to_vec(&self.last_applied)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let membership = serde_json::to_vec(&self.membership)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let last_change = serde_json::to_vec(&self.last_change)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        batch.insert(APPLIED, applied);
        batch.insert(MEMBERSHIP, membership);
        batch.insert(LAST_CHANGE, last_change);
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut responses = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            self.last_applied = Some(entry.log_id);
            let mut results = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
                EntryPayload::Normal(txns) => {
                    for (position, txn) in txns.txns.iter().enumerate() {
                        if position >= TXNS_PER_ENTRY {
                            // The proposer never builds such an entry; rejecting the excess
                            // keeps rvs unique and every node applying alike.
                            results.push(Err(StoreError::Internal(format!(
                                "log entry {index} holds more than {TXNS_PER_ENTRY} transactions"
                            ))));
                            continue;
                        }
                        let rv = txn_rv(index, position);
                        let (result, changes) = self.replica.apply_txn(txn, rv);
                        if let Err(e) = &result {
                            tracing::debug!(rv, error = %e, "transaction rejected");
                        }
                        if !changes.is_empty() {
                            self.last_change = rv;
                        }
                        Self::persist_changes(&mut batch, &changes)?;
                        results.push(result);
                    }
                }
            }
            self.replica.advance(entry_rv(index));
            responses.push(Response(results));
        }
        self.persist_position(&mut batch)?;
        self.state
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            tree: self.snapshots.clone(),
            _user: self.user.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let signature = Some(meta.signature());
        self.last_applied = meta.last_log_id;
        let rv = meta.last_log_id.map_or(0, |id| entry_rv(id.index));
        self.last_change = rv;
        self.membership = meta.last_membership.clone();
        // Objects and position go in one batch, so a crash never mixes old and new.
        let mut batch = sled::Batch::default();
        self.persist_position(&mut batch)?;
        let state = self.state.clone();
        let objects = tokio::task::spawn_blocking(move || -> StorageResult<(Objects, Vec<u8>)> {
            let decoded = snapshot::decode(&data)
                .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
            for key in state.scan_prefix(b"/").keys() {
                batch.remove(key.map_err(|e| StorageIOError::write_state_machine(&e))?);
            }
            let mut objects = Objects::default();
            for (key, object) in decoded.objects {
                let value = serde_json::to_vec(&(&key, &object))
                    .map_err(|e| StorageIOError::write_state_machine(&e))?;
                batch.insert(object_key(&key), value);
                objects.insert(key, Arc::new(object));
            }
            state
                .apply_batch(batch)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            Ok((objects, data))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))??;
        let (objects, data) = objects;
        snapshot::save_point(&self.snapshots, meta)?;
        self.served.keep(meta.clone(), data);
        // The leader counts this node as holding everything up to the snapshot from now
        // on (and may purge its own log): that must survive a crash here.
        self.state
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.replica.install(objects, rv);
        Ok(())
    }

    /// The state as of the last applied entry, once a snapshot point exists (see
    /// [`snapshot`]): nothing applies while openraft's state machine worker is here, so
    /// the objects, the position and the membership are of one moment.
    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(point) = snapshot::load_point(&self.snapshots)? else {
            return Ok(None);
        };
        let meta = snapshot::meta_at(self.last_applied, &self.membership);
        let replica = &self.replica;
        let objects = || replica.local.read().objects.clone();
        self.served.get(&point, meta, objects).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use serde_json::json;

    use super::StateMachine;
    use crate::store::consensus::{Batch, TypeConfig};
    use crate::store::db::Database;
    use crate::store::types::{Key, Op, Txn};

    async fn machine() -> (tempfile::TempDir, Database, StateMachine) {
        let (dir, db) = Database::open_temp().await;
        let (machine, _) = StateMachine::open(&db.db, db.user(), 100).unwrap();
        (dir, db, machine)
    }

    fn key(name: &str) -> Key {
        Key {
            resource: "mill.dev/services".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    /// An entry at `index` creating the service `name`.
    fn create(index: u64, name: &str) -> Entry<TypeConfig> {
        let object = json!({
            "apiVersion": "mill.dev/v1",
            "kind": "Service",
            "metadata": { "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                          "creationTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "image": "busybox" },
        });
        let txn = Txn {
            ops: vec![Op::Create {
                key: key(name),
                object,
            }],
            now: "2026-01-01T00:00:00Z".into(),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Batch {
                txns: Arc::new(vec![txn]),
            }),
        }
    }

    #[tokio::test]
    async fn a_snapshot_is_read_as_the_state_at_or_after_its_point_and_installs_as_that_state() {
        let (_dir, _db, mut leader) = machine().await;
        assert!(leader.get_current_snapshot().await.unwrap().is_none());
        leader
            .apply([create(1, "a"), create(2, "b")])
            .await
            .unwrap();
        let built = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(2));

        // Read right after the build: the built point.
        let read = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(read.meta, built.meta);

        // Applied further, the bytes read before are still a valid snapshot (at or after the
        // point) and are served again.
        leader.apply([create(3, "c")]).await.unwrap();
        let again = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(again.meta, built.meta);
        assert_eq!(again.snapshot.get_ref(), read.snapshot.get_ref());

        // A newer point: the state as of the last applied entry, with the later object.
        let point = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let newer = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(newer.meta, point.meta);
        assert_eq!(newer.meta.last_log_id.map(|id| id.index), Some(3));

        // It installs on another node as exactly that state, and that node serves it too.
        let (_dir2, _db2, mut follower) = machine().await;
        follower.apply([create(1, "stale")]).await.unwrap();
        let meta = newer.meta.clone();
        follower
            .install_snapshot(&meta, newer.snapshot)
            .await
            .unwrap();
        let names: Vec<String> = ["a", "b", "c", "stale"]
            .into_iter()
            .filter(|name| follower.replica.get(&key(name)).is_some())
            .map(str::to_string)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let served = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(served.meta, meta);
    }
}
