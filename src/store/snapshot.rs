//! Snapshots: every object plus the last applied log id and the membership, as JSON.
//!
//! The builder works on a copy of the objects taken between two applies (the copy shares
//! the objects themselves, so it is one map clone); serializing and writing it to sled
//! happen on a blocking thread. The current snapshot is kept in the tree `snapshot`.

// openraft's traits return its `StorageError` (large); helpers return it too, unboxed.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

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

const META: &[u8] = b"meta";
const DATA: &[u8] = b"data";

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

/// Stores `data` as the current snapshot.
pub(crate) fn save(
    tree: &sled::Tree,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
) -> StorageResult<()> {
    let signature = Some(meta.signature());
    let meta = serde_json::to_vec(meta)
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
    let mut batch = sled::Batch::default();
    batch.insert(META, meta);
    batch.insert(DATA, data);
    tree.apply_batch(batch)
        .map_err(|e| StorageError::from(StorageIOError::write_snapshot(signature, &e)))
}

/// The current snapshot, if one was built or installed.
pub(crate) fn load(tree: &sled::Tree) -> StorageResult<Option<Snapshot<TypeConfig>>> {
    let read = |key: &[u8]| {
        tree.get(key)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))
    };
    let (Some(meta), Some(data)) = (read(META)?, read(DATA)?) else {
        return Ok(None);
    };
    let meta: SnapshotMeta<u64, BasicNode> =
        serde_json::from_slice(&meta).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data.to_vec())),
    }))
}

/// Builds a snapshot of the state captured when openraft asked for a builder.
pub(crate) struct SnapshotBuilder {
    pub objects: Objects,
    pub last_applied: Option<LogId<u64>>,
    pub membership: Membership,
    pub tree: sled::Tree,
    pub _user: DbUser,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: match self.last_applied {
                Some(id) => format!("{}-{}", id.leader_id, id.index),
                None => "empty".to_string(),
            },
        };
        let objects = std::mem::take(&mut self.objects);
        let tree = self.tree.clone();
        let task_meta = meta.clone();
        let data = tokio::task::spawn_blocking(move || -> StorageResult<Vec<u8>> {
            let out = SnapshotOut {
                last_applied: &task_meta.last_log_id,
                membership: &task_meta.last_membership,
                objects: objects.iter().map(|(k, v)| (k, v.as_ref())).collect(),
            };
            let signature = Some(task_meta.signature());
            let data = serde_json::to_vec(&out)
                .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
            save(&tree, &task_meta, &data)?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))??;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
