//! Snapshots: every object plus the last applied log id and the membership, as JSON.
//!
//! The state tree already holds every applied object, so a snapshot is not copied out of
//! it when openraft builds one: building records the snapshot's point (its meta) in the
//! tree `snapshot`, and openraft purges the log behind it. The data is serialized only
//! when a snapshot is read ([`Served`]), which happens when the leader sends one to a
//! follower that is behind the purged log, and once at start-up: it is the state as of
//! the last applied entry, a point at or after the last one built, which every node that
//! applied that far agrees on. Before, every node serialized all its objects and wrote
//! them into sled at each snapshot, and the next log flush had to write those bytes too.
//!
//! openraft 0.9 keeps only the meta of a snapshot it asked to be built
//! (`core/sm/worker.rs`: the built snapshot is mapped to its meta), so the builder
//! returns no data.

// openraft's traits return its `StorageError` (large); helpers return it too, unboxed.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::{
    BasicNode, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::consensus::TypeConfig;
use super::db::DbUser;
use super::state::Objects;
use super::types::Key;

type StorageResult<T> = Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, BasicNode>;
type Meta = SnapshotMeta<u64, BasicNode>;

const META: &[u8] = b"meta";
/// Where snapshot data was kept before it was served from the state; removed on the next
/// save.
const OLD_DATA: &[u8] = b"data";

#[derive(Serialize)]
struct SnapshotOut<'a> {
    last_applied: &'a Option<LogId<u64>>,
    membership: &'a Membership,
    objects: Vec<(&'a Key, &'a Value)>,
}

/// A decoded snapshot.
#[derive(Deserialize)]
pub(crate) struct SnapshotIn {
    pub objects: Vec<(Key, Value)>,
}

/// Decodes the data of a snapshot.
pub(crate) fn decode(bytes: &[u8]) -> Result<SnapshotIn, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The meta of a snapshot of the state at `last_applied`.
pub(crate) fn meta_at(last_applied: Option<LogId<u64>>, membership: &Membership) -> Meta {
    SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership.clone(),
        snapshot_id: match last_applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_string(),
        },
    }
}

/// Records `meta` as the point of the current snapshot.
pub(crate) fn save_point(tree: &sled::Tree, meta: &Meta) -> StorageResult<()> {
    let signature = Some(meta.signature());
    let bytes = serde_json::to_vec(meta)
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
    let mut batch = sled::Batch::default();
    batch.insert(META, bytes);
    batch.remove(OLD_DATA);
    tree.apply_batch(batch)
        .map_err(|e| StorageError::from(StorageIOError::write_snapshot(signature, &e)))
}

/// The point of the current snapshot, if one was built or installed.
pub(crate) fn load_point(tree: &sled::Tree) -> StorageResult<Option<Meta>> {
    let Some(bytes) = tree
        .get(META)
        .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?
    else {
        return Ok(None);
    };
    let meta =
        serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(Some(meta))
}

/// The data of the last snapshot served or installed, kept until the snapshot point passes
/// it, so a follower that needs a snapshot again gets the same bytes without a new
/// serialization.
#[derive(Default)]
pub(crate) struct Served {
    last: Option<(Meta, Arc<Vec<u8>>)>,
}

impl Served {
    /// The snapshot to send for `point`: the one served last if it is at or after `point`,
    /// else `objects()` (the state as of `meta`, which is at or after `point`) serialized.
    pub async fn get(
        &mut self,
        point: &Meta,
        meta: Meta,
        objects: impl FnOnce() -> Objects,
    ) -> StorageResult<Snapshot<TypeConfig>> {
        let fresh = match &self.last {
            Some((last, data)) if last.last_log_id >= point.last_log_id => {
                (last.clone(), data.clone())
            }
            _ => {
                let (task_meta, objects) = (meta.clone(), objects());
                let data = tokio::task::spawn_blocking(move || serialize(&task_meta, &objects))
                    .await
                    .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))??;
                tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "serialized a snapshot");
                let data = Arc::new(data);
                self.last = Some((meta.clone(), data.clone()));
                (meta, data)
            }
        };
        let (meta, data) = fresh;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        })
    }

    /// Keeps an installed snapshot's data: it is the state as of `meta`.
    pub fn keep(&mut self, meta: Meta, data: Vec<u8>) {
        self.last = Some((meta, Arc::new(data)));
    }
}

fn serialize(meta: &Meta, objects: &Objects) -> StorageResult<Vec<u8>> {
    let out = SnapshotOut {
        last_applied: &meta.last_log_id,
        membership: &meta.last_membership,
        objects: objects.iter().map(|(k, v)| (k, v.as_ref())).collect(),
    };
    serde_json::to_vec(&out)
        .map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))
}

/// Records a snapshot point at the state captured when openraft asked for a builder.
pub(crate) struct SnapshotBuilder {
    pub last_applied: Option<LogId<u64>>,
    pub membership: Membership,
    pub tree: sled::Tree,
    pub _user: DbUser,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let meta = meta_at(self.last_applied, &self.membership);
        save_point(&self.tree, &meta)?;
        tracing::info!(snapshot = %meta.snapshot_id, "took a snapshot point");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}
