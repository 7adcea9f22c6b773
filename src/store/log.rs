//! Raft's log, vote and committed/purged ids in sled (`RaftLogStorage`).
//!
//! Entries live in the tree `raft_log` keyed by big-endian index (so sled's order is log
//! order), as JSON. The most recently appended entries are also kept decoded in memory
//! ([`Recent`]): the replication to each follower and the apply read back exactly what was
//! just appended, and serve it from there instead of decoding it from sled again.
//!
//! Votes are flushed before `save_vote` returns. `append` inserts the entries one by one,
//! in index order, awaits sled's flush and then completes openraft's callback. Not as a
//! `sled::Batch`: sled writes out its IO buffer before and after a batch's manifest, so a
//! batch costs two more device writes, which this flush (and every node's, on the path of
//! every write) would wait for. A batch's atomicity is not needed here: sled recovers a
//! prefix of its writes, and a crash before the flush may lose any suffix of an append,
//! as Raft allows for entries not yet acknowledged. openraft 0.9's core awaits each
//! append's callback before it takes the next request, so there is never a second append
//! to group with: what spreads one flush over many writes is the `proposer` putting the
//! concurrent txns in one entry, and [`Appends`] tells it when an append is over, so that
//! the txns proposed during one flush wait for it and share the next entry. The flush runs
//! on sled's own threads, so a slow disk holds up Raft but never a runtime worker. Single
//! inserts, batches and range reads touch sled's in-memory page cache and are cheap enough
//! to run on the runtime; the only potentially long operation, purging thousands of entries
//! after a snapshot, runs on a blocking thread.

// openraft's traits return its `StorageError` (large); helpers return it too, unboxed.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::consensus::TypeConfig;
use super::db::{internal, DbUser};
use super::types::StoreError;

type StorageResult<T> = Result<T, StorageError<u64>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The log store; clones share the same trees.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last committed index, for [`super::RaftInfo::commit_index`].
    committed: Arc<AtomicU64>,
    /// The newest entries, decoded (see the module doc).
    recent: Arc<Mutex<Recent>>,
    /// How many appends have begun and finished (for the proposer).
    appends: Arc<Appends>,
    _user: DbUser,
}

/// The count of this node's log appends that have begun, and of those finished (flushed or
/// failed), in order: openraft runs one at a time.
#[derive(Debug)]
pub(crate) struct Appends {
    begun: AtomicU64,
    finished: tokio::sync::watch::Sender<u64>,
}

impl Default for Appends {
    fn default() -> Self {
        Appends {
            begun: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Appends {
    /// How many appends have begun.
    pub fn begun(&self) -> u64 {
        self.begun.load(Ordering::SeqCst)
    }

    /// Follows how many appends have finished.
    pub fn finished(&self) -> tokio::sync::watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Counts an append as begun; it is finished when the guard drops.
    fn begin(&self) -> AppendGuard<'_> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        AppendGuard(self)
    }
}

/// An append in progress; dropping it (after the flush, or on an early error) finishes it.
struct AppendGuard<'a>(&'a Appends);

impl Drop for AppendGuard<'_> {
    fn drop(&mut self) {
        self.0.finished.send_modify(|n| *n += 1);
    }
}

/// How many of the newest entries [`Recent`] keeps at most, and how many bytes of their
/// JSON: enough for replication and apply to find what they read right after the append,
/// also while a follower is a few hundred entries behind.
const RECENT_ENTRIES: usize = 1024;
const RECENT_BYTES: usize = 32 * 1024 * 1024;

/// A contiguous run of the newest log entries, `first` being the index of the front one.
/// It mirrors the tail of the sled tree: appends extend it (or restart it when they do not
/// follow on), truncation and purging cut it like the tree.
#[derive(Default)]
struct Recent {
    first: u64,
    /// Each entry with the length of its JSON in sled.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, entry: Entry<TypeConfig>, bytes: usize) {
        let index = entry.log_id.index;
        if self.entries.is_empty() || index != self.first + self.entries.len() as u64 {
            self.entries.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.entries.push_back((entry, bytes));
        self.bytes += bytes;
        while self.entries.len() > RECENT_ENTRIES
            || (self.bytes > RECENT_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes -= bytes;
            self.first += 1;
        }
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self.entries.len() as u64 > index.saturating_sub(self.first) {
            if let Some((_, bytes)) = self.entries.pop_back() {
                self.bytes -= bytes;
            }
        }
    }

    /// Drops the entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            self.pop_front();
        }
    }

    /// The entries `start..end` if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        if start < self.first || end > self.first + self.entries.len() as u64 {
            return None;
        }
        let from = (start - self.first) as usize;
        let to = (end.max(start) - self.first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

impl LogStore {
    /// Opens the log trees of `db`; `user` keeps shutdown waiting until this store is gone.
    pub fn open(db: &sled::Db, user: DbUser) -> Result<Self, StoreError> {
        let store = LogStore {
            db: db.clone(),
            log: db.open_tree("raft_log").map_err(internal)?,
            meta: db.open_tree("raft_meta").map_err(internal)?,
            committed: Arc::new(AtomicU64::new(0)),
            recent: Arc::default(),
            appends: Arc::default(),
            _user: user,
        };
        let committed: Option<LogId<u64>> = read_json(&store.meta, COMMITTED).map_err(internal)?;
        store
            .committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(store)
    }

    /// The committed index as last reported by Raft (shared with the facade).
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The progress of this node's appends (shared with the proposer).
    pub fn appends(&self) -> Arc<Appends> {
        self.appends.clone()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_json<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> StorageResult<Option<T>> {
    let Some(bytes) = tree.get(key).map_err(|e| StorageIOError::read(&e))? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read(&e))?;
    Ok(Some(value))
}

fn to_json<T: Serialize>(value: &T) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StorageError::from(StorageIOError::write(&e)))
}

fn decode_entry(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::from(StorageIOError::read_logs(&e)))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let first = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end {
            if let Some(entries) = self.recent.lock().get(first, end) {
                return Ok(entries);
            }
        }
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(decode_entry(&bytes)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = read_json(&self.meta, LAST_PURGED)?;
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(decode_entry(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.meta
            .insert(VOTE, to_json(vote)?)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        read_json(&self.meta, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        // Not flushed: openraft does not need it durable, it only speeds up a restart.
        self.meta
            .insert(COMMITTED, to_json(&committed)?)
            .map_err(|e| StorageIOError::write(&e))?;
        self.committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        read_json(&self.meta, COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let appends = self.appends.clone();
        let _append = appends.begin();
        let mut appended = Vec::new();
        for entry in entries {
            let json = to_json(&entry)?;
            self.log
                .insert(index_key(entry.log_id.index), json.as_slice())
                .map_err(|e| StorageIOError::write_logs(&e))?;
            appended.push((entry, json.len()));
        }
        {
            let mut recent = self.recent.lock();
            for (entry, bytes) in appended {
                recent.push(entry, bytes);
            }
        }
        let flushed = self.db.flush_async().await.map(|_| ());
        callback.log_io_completed(flushed.map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncating the raft log");
        self.recent.lock().truncate(log_id.index);
        remove_range(&self.log, (Bound::Included(log_id.index), Bound::Unbounded))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging the raft log");
        self.recent.lock().purge(log_id.index);
        self.meta
            .insert(LAST_PURGED, to_json(&log_id)?)
            .map_err(|e| StorageIOError::write(&e))?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            remove_range(&log, (Bound::Unbounded, Bound::Included(log_id.index)))
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?
    }
}

fn remove_range(log: &sled::Tree, range: (Bound<u64>, Bound<u64>)) -> StorageResult<()> {
    let start = range.0.map(index_key);
    let end = range.1.map(index_key);
    let mut batch = sled::Batch::default();
    for key in log.range::<[u8; 8], _>((start, end)).keys() {
        batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
    }
    log.apply_batch(batch)
        .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{Entry, LogId, StorageError};

    use super::{LogStore, Recent, RECENT_ENTRIES};
    use crate::store::consensus::TypeConfig;
    use crate::store::db::Database;
    use crate::store::state_machine::StateMachine;

    struct SledStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, (tempfile::TempDir, Database)>
        for SledStores
    {
        async fn build(
            &self,
        ) -> Result<((tempfile::TempDir, Database), LogStore, StateMachine), StorageError<u64>>
        {
            let (dir, db) = Database::open_temp().await;
            let log = LogStore::open(&db.db, db.user()).unwrap();
            let (machine, _) = StateMachine::open(&db.db, db.user(), 100).unwrap();
            Ok(((dir, db), log, machine))
        }
    }

    #[test]
    fn sled_log_and_state_machine_pass_the_openraft_storage_suite() {
        Suite::test_all(SledStores).unwrap();
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry::new_blank(LogId::new(openraft::CommittedLeaderId::new(1, 0), index))
    }

    fn indexes(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_mirror_the_tail_of_the_log() {
        let mut recent = Recent::default();
        for i in 5..10 {
            recent.push(entry(i), 10);
        }
        assert_eq!(indexes(recent.get(6, 9)), Some(vec![6, 7, 8]));
        assert_eq!(indexes(recent.get(9, 9)), Some(vec![]));
        assert_eq!(recent.get(4, 7).map(|e| e.len()), None, "5 and on only");
        assert_eq!(recent.get(8, 11).map(|e| e.len()), None, "up to 9 only");
        recent.truncate(8);
        assert_eq!(indexes(recent.get(5, 8)), Some(vec![5, 6, 7]));
        assert!(recent.get(5, 9).is_none(), "8 is gone");
        recent.push(entry(8), 10);
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));
        recent.purge(6);
        assert!(recent.get(6, 8).is_none());
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(recent.bytes, 20);
        // An append that does not follow on (a snapshot moved the log) starts over.
        recent.push(entry(20), 10);
        assert!(recent.get(8, 9).is_none());
        assert_eq!(indexes(recent.get(20, 21)), Some(vec![20]));
        assert_eq!(recent.bytes, 10);
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut recent = Recent::default();
        for i in 1..=(RECENT_ENTRIES as u64 + 10) {
            recent.push(entry(i), 1);
        }
        assert_eq!(recent.entries.len(), RECENT_ENTRIES);
        assert_eq!(recent.first, 11);
        recent.push(entry(RECENT_ENTRIES as u64 + 11), super::RECENT_BYTES);
        assert_eq!(
            recent.entries.len(),
            1,
            "one huge entry pushes the others out"
        );
    }
}
