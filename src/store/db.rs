//! The node's sled database (`<data_dir>/store`), its identity check, and the guard that
//! lets shutdown wait until Raft's tasks have let go of it (so the same data dir can be
//! reopened, e.g. by a restart inside one process).

use std::time::Duration;

use tokio::sync::mpsc;

use super::types::{StoreConfig, StoreError};

const NODE_ID: &[u8] = b"node_id";

/// Wraps any displayable failure as [`StoreError::Internal`].
pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// Held by everything that keeps a handle on the database; shutdown waits for all to drop.
#[derive(Clone)]
pub(crate) struct DbUser {
    _alive: mpsc::Sender<()>,
}

/// The open database and the means to wait for its users to go away.
pub(crate) struct Database {
    pub db: sled::Db,
    user: DbUser,
    released: mpsc::Receiver<()>,
}

impl Database {
    /// Opens (or creates) the database of `config`; a data dir belongs to one node id.
    pub async fn open(config: &StoreConfig) -> Result<Database, StoreError> {
        let path = config.data_dir.join("store");
        // No background flush: the log flushes at every append and vote, and everything
        // else (state machine, snapshots) is either rebuilt from the log after a crash or
        // flushed where it must be; a periodic flush would only compete with the log's.
        let db = tokio::task::spawn_blocking(move || {
            sled::Config::new().path(&path).flush_every_ms(None).open()
        })
        .await
        .map_err(internal)?
        .map_err(|e| {
            StoreError::Internal(format!(
                "cannot open the store under {}: {e} (is another mill using this data dir?)",
                config.data_dir.display()
            ))
        })?;
        match db.get(NODE_ID).map_err(internal)? {
            Some(stored) => {
                let stored = serde_json::from_slice::<u64>(&stored).map_err(internal)?;
                if stored != config.node_id {
                    return Err(StoreError::Internal(format!(
                        "the store under {} belongs to raft node {stored}, not {}; \
                         use that node's identity or a fresh data dir",
                        config.data_dir.display(),
                        config.node_id
                    )));
                }
            }
            None => {
                db.insert(
                    NODE_ID,
                    serde_json::to_vec(&config.node_id).map_err(internal)?,
                )
                .map_err(internal)?;
                db.flush_async().await.map_err(internal)?;
            }
        }
        let (tx, released) = mpsc::channel(1);
        Ok(Database {
            db,
            user: DbUser { _alive: tx },
            released,
        })
    }

    /// A guard for one more user of the database.
    pub fn user(&self) -> DbUser {
        self.user.clone()
    }

    /// Flushes, then waits (at most `deadline`) until every [`DbUser`] is dropped.
    pub async fn close(self, deadline: Duration) -> Result<(), StoreError> {
        let Database {
            db,
            user,
            mut released,
        } = self;
        db.flush_async().await.map_err(internal)?;
        drop((db, user));
        if tokio::time::timeout(deadline, released.recv())
            .await
            .is_err()
        {
            tracing::warn!("raft tasks still hold the store after shutdown");
        }
        Ok(())
    }
}

#[cfg(test)]
impl Database {
    /// A database in a fresh temp dir, for the storage unit tests.
    pub async fn open_temp() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            node_id: 0,
            api_addr: "127.0.0.1:0".into(),
            token: "t".into(),
            election_timeout_ms: 1000,
            snapshot_threshold: 5000,
            snapshot_log_keep: 1000,
            watch_window: 100,
        };
        let db = Database::open(&config).await.unwrap();
        (dir, db)
    }
}
