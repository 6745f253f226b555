//! The Raft log on RocksDB, in an instance of its own (`<data-dir>/member/raft`). An append is
//! acknowledged to openraft only after the write batch holding it is fsynced, because a vote
//! or an entry that a member forgets after a crash can elect two leaders or lose a commit.
//!
//! Layout (values are bincode 2 "standard" encodings of openraft's serde types; an entry's
//! request payload inside is its protobuf bytes, see [`super::types::Request`]):
//!
//! | CF      | key                         | value                                  |
//! |---------|-----------------------------|----------------------------------------|
//! | `log`   | log index, u64 big-endian   | `openraft::Entry<TypeConfig>`          |
//! | `state` | `vote`                      | `openraft::Vote<u64>`                  |
//! | `state` | `committed`                 | `Option<openraft::LogId<u64>>`         |
//! | `state` | `last_purged`               | `openraft::LogId<u64>`                 |
//!
//! Big-endian indexes make RocksDB's key order the log order, so ranges are plain iterations.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, encode};
use super::types::TypeConfig;

const CF_LOG: &str = "log";
const CF_STATE: &str = "state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The Raft log. Cloning shares the database, which is how openraft gets its log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// `false` only under the test-only `--experimental-unsafe-no-fsync`.
    fsync: bool,
}

impl LogStore {
    /// Opens (or creates) the log. `fsync == false` acknowledges appends before they are
    /// on disk, which loses acknowledged entries on a power loss: it exists only so the
    /// fault-injection harness can show that it catches such a server.
    pub fn open(path: &Path, fsync: bool) -> Result<Self, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOG, CF_STATE].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(Self {
            db: Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?),
            fsync,
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn sync_opts(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.fsync);
        wo
    }

    fn get_state<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, String> {
        match self
            .db
            .get_cf(self.cf(CF_STATE), key)
            .map_err(|e| e.to_string())?
        {
            None => Ok(None),
            Some(v) => decode(&v)
                .map(Some)
                .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(key))),
        }
    }

    fn put_state<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), rocksdb::Error> {
        self.db
            .put_cf_opt(self.cf(CF_STATE), key, encode(v), &self.sync_opts())
    }

    /// Writes entries and fsyncs them; what [`RaftLogStorage::append`] acknowledges.
    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOG);
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry));
        }
        self.db.write_opt(batch, &self.sync_opts())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<u64>>, String> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(|e| e.to_string())?;
                let entry: Entry<TypeConfig> = decode(&v).map_err(|e| e.to_string())?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let key = index_key(start);
        for item in self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&key, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                StorageIOError::read_logs(&std::io::Error::other("log key is not 8 bytes"))
            })?);
            if !range.contains(&index) {
                break;
            }
            out.push(decode(&v).map_err(|e| StorageIOError::read_log_at_index(index, &e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self
            .get_state(KEY_LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
        let last = self
            .last_entry_log_id()
            .map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
        // Entries at or below the purge point can outlive a crash inside `purge`; they don't count.
        let last_log_id = match (last, last_purged) {
            (Some(l), Some(p)) if l <= p => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_state(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self
            .get_state(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&std::io::Error::other(e)))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.put_state(KEY_COMMITTED, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        let c: Option<Option<LogId<u64>>> = self
            .get_state(KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&std::io::Error::other(e)))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // fsync before openraft may count this member towards a quorum.
        let res = self.append_entries(entries).map_err(std::io::Error::other);
        let failed = res
            .as_ref()
            .err()
            .map(|e| StorageIOError::write_logs(&std::io::Error::other(e.to_string())));
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        // delete_range excludes its end; u64::MAX itself is never a real index.
        self.db
            .write_opt(batch, &self.sync_opts())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        // Record the purge point first: after a crash in between, entries at or below it are
        // ignored by the next purge rather than mistaken for live log.
        self.put_state(KEY_LAST_PURGED, &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.db
            .write_opt(batch, &self.sync_opts())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use proto::raftkvpb::InternalRequest;

    use crate::raft::types::Request;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Request(InternalRequest::default())),
        }
    }

    async fn indexes(
        s: &mut LogStore,
        range: impl RangeBounds<u64> + Clone + Debug + Send,
    ) -> Vec<u64> {
        s.try_get_log_entries(range)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[tokio::test]
    async fn append_read_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), true).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));

        s.append_entries((1..=10).map(|i| entry(1, i))).unwrap();
        // (range, expected indexes)
        let cases: Vec<(Bound<u64>, Bound<u64>, Vec<u64>)> = vec![
            (Bound::Unbounded, Bound::Unbounded, (1..=10).collect()),
            (Bound::Included(3), Bound::Excluded(6), vec![3, 4, 5]),
            (Bound::Excluded(8), Bound::Included(20), vec![9, 10]),
            (Bound::Included(11), Bound::Unbounded, vec![]),
        ];
        for (lo, hi, want) in cases {
            assert_eq!(indexes(&mut s, (lo, hi)).await, want, "{lo:?}..{hi:?}");
        }
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 10))
        );

        s.truncate(log_id(1, 8)).await.unwrap();
        assert_eq!(indexes(&mut s, ..).await, (1..=7).collect::<Vec<_>>());
        s.append_entries([entry(2, 8)]).unwrap();

        s.purge(log_id(1, 3)).await.unwrap();
        assert_eq!(indexes(&mut s, ..).await, vec![4, 5, 6, 7, 8]);

        let vote = Vote::new(2, 7);
        s.save_vote(&vote).await.unwrap();
        s.save_committed(Some(log_id(2, 8))).await.unwrap();
        drop(s);

        let mut s = LogStore::open(dir.path(), true).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 8)));
        assert_eq!(s.read_vote().await.unwrap(), Some(vote));
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(2, 8)));

        s.purge(log_id(2, 8)).await.unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(
            state.last_log_id,
            Some(log_id(2, 8)),
            "an empty log reports its purge point"
        );
        assert!(indexes(&mut s, ..).await.is_empty());
    }
}
