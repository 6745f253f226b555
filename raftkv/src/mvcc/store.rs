//! The MVCC key-value store: the key index plus the backend rows it points at. Reads go through
//! [`MvccState::range`]; every mutation goes through a [`WriteTxn`], which gives all changes of
//! one request the same main revision (etcd's `storeTxnWrite`). Leases, watches and requests
//! are not known here: callers get back the rows they wrote and act on them.

use std::collections::HashMap;

use proto::mvccpb::{event::EventType, Event, KeyValue};

use super::backend::{Backend, BackendError, Batch, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT};
use super::key_index::{KeyRange, TreeIndex};
use super::revision::Revision;

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RangeOptions {
    /// At most this many rows (0 = no limit).
    pub limit: i64,
    /// Read at this revision (<= 0 = current).
    pub rev: i64,
    /// Count rows without reading them.
    pub count_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in range at the read revision, before `limit`.
    pub count: i64,
    /// The store's revision when the read was served (not the read revision).
    pub rev: i64,
}

/// A watch event for a written row. A deletion carries only the key (etcd stores nothing
/// else in a tombstone), stamped with the revision that deleted it so watchers can order it.
fn event(mut kv: KeyValue, deleted_at: Option<i64>) -> Event {
    let r#type = match deleted_at {
        Some(rev) => {
            kv.mod_revision = rev;
            EventType::Delete
        }
        None => EventType::Put,
    };
    Event {
        r#type: r#type as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

/// The in-memory half of the store; lives behind the state machine's lock.
#[derive(Debug, Default)]
pub struct MvccState {
    index: TreeIndex,
    current_rev: i64,
    compact_rev: i64,
}

/// What a restore found besides the index itself.
pub struct Restored {
    pub state: MvccState,
    /// The lease of every live key that has one.
    pub key_leases: HashMap<Vec<u8>, i64>,
}

impl MvccState {
    /// Rebuilds the index from the backend (etcd's `store.restore`).
    pub fn restore(backend: &Backend) -> Result<Restored, MvccError> {
        let compact_rev = backend
            .get_meta_rev(META_FINISHED_COMPACT)?
            .map_or(0, |r| r.main);
        let scheduled = backend
            .get_meta_rev(META_SCHEDULED_COMPACT)?
            .map_or(0, |r| r.main);
        let mut state = MvccState {
            index: TreeIndex::default(),
            current_rev: 1,
            compact_rev,
        };
        let mut key_leases = HashMap::new();
        for row in backend.scan_kv(Revision::new(1, 0), Revision::new(i64::MAX, 0))? {
            state.current_rev = row.rev.main;
            let kv = &row.kv;
            state.index.restore_row(
                &kv.key,
                row.rev,
                row.tombstone,
                kv.create_revision,
                kv.version,
            );
            if row.tombstone || kv.lease == 0 {
                key_leases.remove(&kv.key);
            } else {
                key_leases.insert(kv.key.clone(), kv.lease);
            }
        }
        // Rows up to the compaction point may all be gone; the revision never goes back.
        state.current_rev = state.current_rev.max(state.compact_rev);
        if scheduled > state.compact_rev {
            // A compaction is written in one batch with its marks, so this only happens with a
            // store written by something else; finishing it is still the right thing.
            let mut batch = Batch::default();
            state.compact(backend, &mut batch, scheduled)?;
            backend.write(batch, true)?;
        }
        Ok(Restored { state, key_leases })
    }

    pub fn current_rev(&self) -> i64 {
        self.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// A read outside any write (etcd's `storeTxnRead.Range`).
    pub fn range(
        &self,
        backend: &Backend,
        range: &KeyRange,
        opts: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.range_at(backend, None, range, self.current_rev, opts)
    }

    fn range_at(
        &self,
        backend: &Backend,
        pending: Option<&Batch>,
        range: &KeyRange,
        cur_rev: i64,
        opts: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        if opts.rev > cur_rev {
            return Err(MvccError::FutureRev);
        }
        let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let found = self.index.range(range, rev);
        let count = found.len() as i64;
        if found.is_empty() || opts.count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                rev: cur_rev,
            });
        }
        let limit = if opts.limit <= 0 || opts.limit as usize > found.len() {
            found.len()
        } else {
            opts.limit as usize
        };
        let revs: Vec<Revision> = found[..limit].iter().map(|(_, at)| at.modified).collect();
        let kvs = match pending {
            Some(batch) if revs.iter().any(|r| batch.pending_kv(*r).is_some()) => revs
                .iter()
                .map(|r| match batch.pending_kv(*r) {
                    Some(kv) => Ok(kv.clone()),
                    None => Ok(backend.get_kvs(&[*r])?.remove(0)),
                })
                .collect::<Result<Vec<_>, MvccError>>()?,
            _ => backend.get_kvs(&revs)?,
        };
        Ok(RangeResult {
            kvs,
            count,
            rev: cur_rev,
        })
    }

    /// Events of revisions `[from, to]` read back from storage, for watchers catching up.
    pub fn events_between(
        &self,
        backend: &Backend,
        from: i64,
        to: i64,
    ) -> Result<Vec<Event>, MvccError> {
        let rows = backend.scan_kv(
            Revision::new(from, 0),
            Revision::new(to.saturating_add(1), 0),
        )?;
        Ok(rows
            .into_iter()
            .map(|row| event(row.kv, row.tombstone.then_some(row.rev.main)))
            .collect())
    }

    /// Physically drops history before `rev` in `batch` (etcd's `store.compact`, done in one
    /// batch so a crash can never leave it half done). Validation is the caller's.
    pub fn compact(
        &mut self,
        backend: &Backend,
        batch: &mut Batch,
        rev: i64,
    ) -> Result<(), MvccError> {
        batch.put_meta_rev(META_SCHEDULED_COMPACT, Revision::new(rev, 0));
        let keep = self.index.compact(rev);
        backend.for_each_kv_raw(Revision::new(0, 0), Revision::new(rev + 1, 0), |raw, _| {
            let (r, _) = Revision::from_bytes(raw)?;
            if !keep.contains(&r) {
                batch.delete_kv_raw(raw.to_vec());
            }
            Ok(())
        })?;
        batch.put_meta_rev(META_FINISHED_COMPACT, Revision::new(rev, 0));
        self.compact_rev = rev;
        Ok(())
    }

    /// etcd's `HashKV`: CRC-32C over the `kv` rows a read at `rev` can reach. Because the row
    /// layout equals etcd's, the digest equals etcd's for the same history.
    pub fn hash_kv(&self, backend: &Backend, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        if rev > 0 && rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev == 0 { self.current_rev } else { rev };
        let keep = self.index.keep(rev);
        let lower = Revision::new(self.compact_rev + 1, 0);
        let mut digest = crc32c::crc32c(b"key");
        backend.for_each_kv_raw(
            Revision::new(0, 0),
            Revision::new(rev + 1, 0),
            |raw, value| {
                let (r, _) = Revision::from_bytes(raw)?;
                if r < lower && !keep.is_empty() && !keep.contains(&r) {
                    return Ok(());
                }
                digest = crc32c::crc32c_append(digest, raw);
                digest = crc32c::crc32c_append(digest, value);
                Ok(())
            },
        )?;
        Ok((digest, self.current_rev, self.compact_rev))
    }
}

/// All changes of one request: they share main revision `begin_rev + 1`, and reads inside the
/// txn see the txn's own earlier writes (etcd's `storeTxnWrite`).
pub struct WriteTxn<'a> {
    state: &'a mut MvccState,
    backend: &'a Backend,
    batch: &'a mut Batch,
    begin_rev: i64,
    changes: Vec<KeyValue>,
}

impl<'a> WriteTxn<'a> {
    pub fn begin(state: &'a mut MvccState, backend: &'a Backend, batch: &'a mut Batch) -> Self {
        let begin_rev = state.current_rev;
        Self {
            state,
            backend,
            batch,
            begin_rev,
            changes: Vec::new(),
        }
    }

    /// The store revision before this txn.
    pub fn begin_rev(&self) -> i64 {
        self.begin_rev
    }

    /// The revision reads inside the txn see.
    pub fn read_rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        let rev = self.read_rev();
        self.state
            .range_at(self.backend, Some(self.batch), range, rev, opts)
    }

    /// Writes `key`; returns the new row.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> KeyValue {
        let rev = self.begin_rev + 1;
        let idx_rev = Revision::new(rev, self.changes.len() as i64);
        let (created, ver) = match self.state.index.put(key, idx_rev) {
            Some(at) => (at.created.main, at.version),
            None => (rev, 0),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: created,
            mod_revision: rev,
            version: ver + 1,
            lease,
        };
        self.batch.put_kv(idx_rev, false, &kv);
        self.changes.push(kv.clone());
        kv
    }

    /// Deletes the live keys in `range`; returns the deleted keys.
    pub fn delete_range(&mut self, range: &KeyRange) -> Vec<Vec<u8>> {
        let keys: Vec<Vec<u8>> = self
            .state
            .index
            .range(range, self.read_rev())
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        for key in &keys {
            let idx_rev = Revision::new(self.begin_rev + 1, self.changes.len() as i64);
            let kv = KeyValue {
                key: key.clone(),
                ..Default::default()
            };
            self.batch.put_kv(idx_rev, true, &kv);
            let alive = self.state.index.tombstone(key, idx_rev);
            debug_assert!(alive, "range returned a dead key");
            self.changes.push(kv);
        }
        keys
    }

    /// Ends the txn: publishes the new revision and returns the watch events it produced.
    pub fn end(self) -> Vec<Event> {
        if self.changes.is_empty() {
            return Vec::new();
        }
        let rev = self.begin_rev + 1;
        self.state.current_rev = rev;
        self.changes
            .into_iter()
            .map(|kv| {
                // A deletion's row has no create revision: it carries only the key.
                let deleted_at = (kv.create_revision == 0).then_some(rev);
                event(kv, deleted_at)
            })
            .collect()
    }
}
