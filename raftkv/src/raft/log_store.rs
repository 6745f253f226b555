//! The Raft log on RocksDB, in an instance of its own (`<data-dir>/member/raft`). An append is
//! acknowledged to openraft only after the write batch holding it is fsynced, because a vote
//! or an entry that a member forgets after a crash can elect two leaders or lose a commit.
//!
//! **Group commit.** openraft hands the log one append per client proposal. Syncing each on
//! its own would cap a leader at one proposal per fsync, so appends are queued to one writer
//! thread, which takes everything queued since its last sync, writes it as one RocksDB batch
//! and syncs once, then tells openraft (the `LogFlushed` callbacks) — etcd's raft does the
//! same with all entries of a `Ready`. Until then appended entries are served from memory
//! ([`Pending`]): openraft requires them readable as soon as `append` returns (0.9's core
//! itself waits for the sync before it replicates them; later versions need not). Truncation,
//! purge and votes go through the same queue, so the batch applies every change in the order
//! openraft made it, and they return only once synced. The committed index rides along with
//! the next group, unsynced (openraft treats it as a hint it can rebuild, and starts from the
//! state machine's applied index when that is newer): openraft reports it about as often as
//! it appends, so it neither wakes the writer nor gets a write of its own; the writer keeps
//! only the newest one ([`Committed`]) and writes what is left of it when it stops.
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

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use prometheus::IntCounter;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;

use super::codec::{decode, encode};
use super::types::TypeConfig;

const CF_LOG: &str = "log";
const CF_STATE: &str = "state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Most operations one sync covers, so a flood of appends still gets acknowledged in steps.
const MAX_GROUP: usize = 4096;

type StorageResult<T> = Result<T, StorageError<u64>>;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created at open")
}

/// Called once appended entries are synced (openraft's `LogFlushed`).
type Flushed = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// Entries appended but not yet in RocksDB, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>;

/// The newest committed index openraft reported that the writer has not written yet.
type Committed = Arc<Mutex<Option<Option<LogId<u64>>>>>;

/// What the writer thread is asked to do, in openraft's order.
enum Op {
    Append(Vec<Entry<TypeConfig>>, Flushed),
    /// The sender hears once the change is synced.
    Change(Change, tokio::sync::oneshot::Sender<Result<(), String>>),
}

enum Change {
    Vote(Vote<u64>),
    /// Deletes the entries from this index on.
    Truncate(u64),
    /// Records the purge point and deletes the entries up to it, in one batch: after a
    /// crash either both happened or neither.
    Purge(LogId<u64>),
}

/// The writer thread: it ends, and is joined, when the last [`LogStore`] clone is dropped.
struct Writer {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the writer has done so far; the server registers these on `/metrics`.
#[derive(Clone)]
pub struct LogCounters {
    /// Groups written.
    pub writes: IntCounter,
    /// Groups written with a sync.
    pub syncs: IntCounter,
}

impl Default for LogCounters {
    /// Counters of their own, registered nowhere.
    fn default() -> Self {
        let counter = |name, help| IntCounter::new(name, help).expect("valid metric");
        Self {
            writes: counter(
                "raftkv_log_writes_total",
                "Write batches of the Raft log (one per group of appends and changes).",
            ),
            syncs: counter(
                "raftkv_log_syncs_total",
                "Write batches of the Raft log that were fsynced.",
            ),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The newest committed index not yet written, taken so that it is written once.
fn take_committed(committed: &Committed) -> Option<Option<LogId<u64>>> {
    committed.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Writes queued operations in groups, one sync per group, each with the newest committed
/// index reported meanwhile; when the queue closes, writes (unsynced) a committed index
/// still left.
fn write_loop(
    db: Arc<DB>,
    pending: Pending,
    committed: Committed,
    fsync: bool,
    rx: mpsc::Receiver<Op>,
    counters: &LogCounters,
) {
    let mut opts = WriteOptions::default();
    opts.set_sync(fsync);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        // One batch, in queue order: RocksDB applies a batch's records in order.
        let mut batch = WriteBatch::default();
        let (log, state) = (cf(&db, CF_LOG), cf(&db, CF_STATE));
        for op in &group {
            match op {
                Op::Append(entries, _) => {
                    for e in entries {
                        batch.put_cf(log, index_key(e.log_id.index), encode(e));
                    }
                }
                Op::Change(Change::Vote(v), _) => batch.put_cf(state, KEY_VOTE, encode(v)),
                // delete_range excludes its end; u64::MAX itself is never a real index.
                Op::Change(Change::Truncate(from), _) => {
                    batch.delete_range_cf(log, index_key(*from), index_key(u64::MAX))
                }
                Op::Change(Change::Purge(upto), _) => {
                    batch.put_cf(state, KEY_LAST_PURGED, encode(upto));
                    batch.delete_range_cf(log, index_key(0), index_key(upto.index + 1));
                }
            }
        }
        if let Some(c) = take_committed(&committed) {
            batch.put_cf(state, KEY_COMMITTED, encode(&c));
        }
        let result = db.write_opt(batch, &opts).map_err(|e| e.to_string());
        counters.writes.inc();
        if fsync {
            counters.syncs.inc();
        }
        // Written (or failed): from now on readers find the entries in RocksDB. An entry
        // replaced meanwhile (truncated, appended again) stays pending.
        {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            for op in &group {
                if let Op::Append(entries, _) = op {
                    for e in entries {
                        if result.is_ok()
                            && p.get(&e.log_id.index).is_some_and(|x| x.log_id == e.log_id)
                        {
                            p.remove(&e.log_id.index);
                        }
                    }
                }
            }
        }
        for op in group {
            match op {
                Op::Append(_, flushed) => flushed(result.clone().map_err(std::io::Error::other)),
                Op::Change(_, done) => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
    if let Some(c) = take_committed(&committed) {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&db, CF_STATE), KEY_COMMITTED, encode(&c));
        if db.write(batch).is_ok() {
            counters.writes.inc();
        }
    }
}

/// The Raft log. Cloning shares the database, the pending entries and the writer, which
/// is how openraft gets its log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    pending: Pending,
    committed: Committed,
    writer: Arc<Writer>,
}

impl LogStore {
    /// Opens (or creates) the log. `fsync == false` acknowledges appends before they are
    /// on disk, which loses acknowledged entries on a power loss: it exists only so the
    /// fault-injection harness can show that it catches such a server. The writer counts
    /// what it does in `counters`.
    pub fn open(path: &Path, fsync: bool, counters: LogCounters) -> Result<Self, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOG, CF_STATE].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
        let (pending, committed) = (Pending::default(), Committed::default());
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (db, pending, committed) = (db.clone(), pending.clone(), committed.clone());
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || write_loop(db, pending, committed, fsync, rx, &counters))
                .expect("spawning the log writer")
        };
        Ok(Self {
            db,
            pending,
            committed,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        cf(&self.db, name)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry<TypeConfig>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op) -> Result<(), String> {
        self.writer
            .tx
            .as_ref()
            .and_then(|tx| tx.send(op).ok())
            .ok_or_else(|| "the log writer stopped".to_string())
    }

    /// Queues `change` and waits until it is synced.
    async fn write_synced(&self, change: Change) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Op::Change(change, done))?;
        wait.await
            .unwrap_or_else(|_| Err("the log writer stopped".into()))
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

    /// Queues entries; `flushed` hears when they are synced.
    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        flushed: Flushed,
    ) -> Result<(), String> {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        {
            let mut p = self.pending();
            for e in &entries {
                p.insert(e.log_id.index, e.clone());
            }
        }
        self.send(Op::Append(entries, flushed))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<u64>>, String> {
        if let Some((_, e)) = self.pending().last_key_value() {
            return Ok(Some(e.log_id));
        }
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
        // Pending first: the writer removes an entry from it only after it is in RocksDB,
        // so every entry is seen in one place or the other.
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = self
            .pending()
            .range(range.clone())
            .map(|(i, e)| (*i, e.clone()))
            .collect();
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
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(index) {
                slot.insert(decode(&v).map_err(|e| StorageIOError::read_log_at_index(index, &e))?);
            }
        }
        Ok(out.into_values().collect())
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
        self.write_synced(Change::Vote(*vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&std::io::Error::other(e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self
            .get_state(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&std::io::Error::other(e)))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        if let Some(c) = *self.committed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(c);
        }
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
        // Acknowledged (the callback) only once synced: openraft may count this member
        // towards a quorum only then.
        self.append_entries(entries, Box::new(move |r| callback.log_io_completed(r)))
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        // Readers stop seeing the entries now; the deletion is ordered after every append
        // queued before it.
        self.pending().retain(|i, _| *i < log_id.index);
        self.write_synced(Change::Truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.write_synced(Change::Purge(log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e)))?;
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

    /// Appends and waits until synced.
    async fn append(s: &LogStore, entries: impl IntoIterator<Item = Entry<TypeConfig>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.append_entries(entries, Box::new(move |r| drop(tx.send(r))))
            .unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn appends_are_readable_before_they_are_synced_and_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), true, LogCounters::default()).unwrap();
        // Many appends queued at once (as concurrent proposals are) all become durable,
        // in order, and each is readable as soon as it is queued.
        let mut waits = Vec::new();
        for i in 1..=200 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.append_entries([entry(1, i)], Box::new(move |r| drop(tx.send(r))))
                .unwrap();
            assert_eq!(
                s.get_log_state().await.unwrap().last_log_id,
                Some(log_id(1, i))
            );
            assert_eq!(indexes(&mut s, i..=i).await, vec![i]);
            waits.push(rx);
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        assert!(s.pending().is_empty(), "synced entries leave memory");
        // A truncation queued behind appends: the appends land first, then the deletion.
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.append_entries([entry(1, 201)], Box::new(move |r| drop(tx.send(r))))
            .unwrap();
        s.truncate(log_id(1, 150)).await.unwrap();
        rx.await.unwrap().unwrap();
        append(&s, [entry(2, 150)]).await;
        drop(s);
        let mut s = LogStore::open(dir.path(), true, LogCounters::default()).unwrap();
        let mut want: Vec<u64> = (1..150).collect();
        want.push(150);
        assert_eq!(indexes(&mut s, ..).await, want);
        let last = s.try_get_log_entries(150..).await.unwrap();
        assert_eq!(last[0].log_id, log_id(2, 150));
    }

    #[tokio::test]
    async fn the_committed_index_rides_with_the_next_group_and_is_written_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let counts = LogCounters::default();
        let mut s = LogStore::open(dir.path(), true, counts.clone()).unwrap();
        let stored = |s: &LogStore| -> Option<LogId<u64>> {
            s.get_state::<Option<LogId<u64>>>(KEY_COMMITTED)
                .unwrap()
                .flatten()
        };
        // (step, committed index reported before it, groups written and synced after it)
        for (step, index, writes) in [("nothing", 1, 0), ("append", 2, 1), ("vote", 3, 2)] {
            s.save_committed(Some(log_id(1, index))).await.unwrap();
            match step {
                "append" => append(&s, [entry(1, 1)]).await,
                "vote" => s.save_vote(&Vote::new(1, 1)).await.unwrap(),
                _ => {}
            }
            assert_eq!(
                (counts.writes.get(), counts.syncs.get()),
                (writes, writes),
                "{step}: a committed index alone is no write"
            );
            assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, index)));
            let want = (writes > 0).then(|| log_id(1, index));
            assert_eq!(stored(&s), want, "{step}: written with the group");
        }
        s.save_committed(Some(log_id(1, 4))).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path(), true, LogCounters::default()).unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 4)));
    }

    #[tokio::test]
    async fn append_read_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), true, LogCounters::default()).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));

        append(&s, (1..=10).map(|i| entry(1, i))).await;
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
        append(&s, [entry(2, 8)]).await;

        s.purge(log_id(1, 3)).await.unwrap();
        assert_eq!(indexes(&mut s, ..).await, vec![4, 5, 6, 7, 8]);

        let vote = Vote::new(2, 7);
        s.save_vote(&vote).await.unwrap();
        s.save_committed(Some(log_id(2, 8))).await.unwrap();
        drop(s);

        let mut s = LogStore::open(dir.path(), true, LogCounters::default()).unwrap();
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
