//! The RocksDB backend: owns the on-disk layout of the state machine. Nothing above this
//! module names a column family or builds a storage key.
//!
//! Column families and their rows:
//!
//! | CF      | key                                   | value                                   |
//! |---------|---------------------------------------|-----------------------------------------|
//! | `kv`    | revision bytes (see [`super::revision`]) | `mvccpb.KeyValue` protobuf; a tombstone row carries only the key |
//! | `lease` | lease ID, 8 bytes big-endian (as `u64`)  | `leasepb.Lease` protobuf                |
//! | `meta`  | ASCII name (`consistent_index`, `finishedCompactRev`, `scheduledCompactRev`, `member_id`, `cluster_id`) or `alarm` + member ID BE + alarm type BE | `u64` big-endian, or revision bytes for the compaction marks, or empty for alarms |
//! | `meta`  | `raft_applied`, `raft_membership` | consensus state written with the entries it applied; its layout is `crate::raft::state_machine`'s |
//! | `meta`  | `member_attrs` + member ID BE | `raftkvpb.MemberAttributes` protobuf, as published by that member |
//! | `meta`  | `authEnabled` | one byte, 1 = on, 0 = off (etcd's `auth` bucket row of the same name) |
//! | `meta`  | `authRevision` | `u64` big-endian, the auth store revision |
//! | `meta`  | `authUsers/` + user name | `authpb.User` protobuf (bcrypt hash in `password`), as etcd's `authUsers` bucket |
//! | `meta`  | `authRoles/` + role name | `authpb.Role` protobuf, as etcd's `authRoles` bucket |
//!
//! Every applied log entry lands in one [`Batch`] together with `consistent_index`, so after a
//! crash the store is exactly the state after some whole entry, and the log resumes after it.
//!
//! Snapshots read the rows through [`Export`], a RocksDB snapshot of all of them, and restores
//! write them back with the `*_raw` batch operations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use proto::authpb::{Role as AuthRole, User as AuthUser};
use proto::leasepb::Lease as LeaseRecord;
use proto::mvccpb::KeyValue;
use proto::raftkvpb::MemberAttributes;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteOptions, DB};

use super::revision::{InvalidRevision, Revision};

const CF_KV: &str = "kv";
const CF_LEASE: &str = "lease";
const CF_META: &str = "meta";

pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const META_MEMBER_ID: &[u8] = b"member_id";
pub const META_CLUSTER_ID: &[u8] = b"cluster_id";
const META_ALARM_PREFIX: &[u8] = b"alarm";
const META_MEMBER_ATTRS_PREFIX: &[u8] = b"member_attrs";
pub const META_AUTH_ENABLED: &[u8] = b"authEnabled";
pub const META_AUTH_REVISION: &[u8] = b"authRevision";
const META_AUTH_USER_PREFIX: &[u8] = b"authUsers/";
const META_AUTH_ROLE_PREFIX: &[u8] = b"authRoles/";

/// The auth store's rows, as [`Backend::auth`] reads them.
#[derive(Debug, Default)]
pub struct AuthRows {
    pub enabled: bool,
    pub revision: u64,
    pub users: Vec<AuthUser>,
    pub roles: Vec<AuthRole>,
}

fn prefixed(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(name);
    k
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt row in {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
}

impl From<InvalidRevision> for BackendError {
    fn from(e: InvalidRevision) -> Self {
        BackendError::Corrupt {
            cf: CF_KV,
            detail: e.to_string(),
        }
    }
}

/// One row of the `kv` column family.
#[derive(Debug, Clone, PartialEq)]
pub struct KvRow {
    pub rev: Revision,
    pub tombstone: bool,
    pub kv: KeyValue,
}

pub struct Backend {
    db: DB,
    path: PathBuf,
    /// [`Backend::size`] as of the last write: the quota check reads this on every
    /// proposal, where six RocksDB property reads per write request would show in a profile
    /// (etcd's check likewise reads a size its backend updates as it commits).
    size_at_last_write: AtomicU64,
}

#[derive(Debug)]
enum BatchOp {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
}

/// Writes of one group of applied entries. It also remembers the `kv` rows it holds, so reads
/// made while applying later entries of the group see them before the batch reaches RocksDB.
#[derive(Default, Debug)]
pub struct Batch {
    ops: Vec<BatchOp>,
    pending: HashMap<Revision, KeyValue>,
}

impl Batch {
    pub fn put_kv(&mut self, rev: Revision, tombstone: bool, kv: &KeyValue) {
        self.ops.push(BatchOp::Put(
            CF_KV,
            rev.to_bytes(tombstone),
            kv.encode_to_vec(),
        ));
        if !tombstone {
            self.pending.insert(rev, kv.clone());
        }
    }

    /// Deletes a `kv` row by its raw key (compaction).
    pub fn delete_kv_raw(&mut self, raw: Vec<u8>) {
        self.ops.push(BatchOp::Delete(CF_KV, raw));
    }

    pub fn put_lease(&mut self, lease: &LeaseRecord) {
        self.ops.push(BatchOp::Put(
            CF_LEASE,
            (lease.id as u64).to_be_bytes().to_vec(),
            lease.encode_to_vec(),
        ));
    }

    pub fn delete_lease(&mut self, id: i64) {
        self.ops.push(BatchOp::Delete(
            CF_LEASE,
            (id as u64).to_be_bytes().to_vec(),
        ));
    }

    pub fn put_meta_u64(&mut self, key: &[u8], v: u64) {
        self.ops.push(BatchOp::Put(
            CF_META,
            key.to_vec(),
            v.to_be_bytes().to_vec(),
        ));
    }

    pub fn put_meta_rev(&mut self, key: &[u8], rev: Revision) {
        self.ops
            .push(BatchOp::Put(CF_META, key.to_vec(), rev.to_bytes(false)));
    }

    /// A meta row owned by another layer (consensus state), stored as given.
    pub fn put_meta_raw(&mut self, key: &[u8], value: Vec<u8>) {
        self.ops.push(BatchOp::Put(CF_META, key.to_vec(), value));
    }

    pub fn put_member_attrs(&mut self, attrs: &MemberAttributes) {
        let mut k = META_MEMBER_ATTRS_PREFIX.to_vec();
        k.extend_from_slice(&attrs.id.to_be_bytes());
        self.ops
            .push(BatchOp::Put(CF_META, k, attrs.encode_to_vec()));
    }

    pub fn put_auth_enabled(&mut self, enabled: bool) {
        self.ops.push(BatchOp::Put(
            CF_META,
            META_AUTH_ENABLED.to_vec(),
            vec![u8::from(enabled)],
        ));
    }

    pub fn put_auth_revision(&mut self, revision: u64) {
        self.put_meta_u64(META_AUTH_REVISION, revision);
    }

    pub fn put_auth_user(&mut self, user: &AuthUser) {
        self.ops.push(BatchOp::Put(
            CF_META,
            prefixed(META_AUTH_USER_PREFIX, &user.name),
            user.encode_to_vec(),
        ));
    }

    /// Puts a user row as given (restore: `authpb.User` bytes from an etcd snapshot).
    pub fn put_auth_user_raw(&mut self, name: &[u8], value: Vec<u8>) {
        self.ops.push(BatchOp::Put(
            CF_META,
            prefixed(META_AUTH_USER_PREFIX, name),
            value,
        ));
    }

    /// Puts a role row as given (restore: `authpb.Role` bytes from an etcd snapshot).
    pub fn put_auth_role_raw(&mut self, name: &[u8], value: Vec<u8>) {
        self.ops.push(BatchOp::Put(
            CF_META,
            prefixed(META_AUTH_ROLE_PREFIX, name),
            value,
        ));
    }

    pub fn delete_auth_user(&mut self, name: &[u8]) {
        self.ops.push(BatchOp::Delete(
            CF_META,
            prefixed(META_AUTH_USER_PREFIX, name),
        ));
    }

    pub fn put_auth_role(&mut self, role: &AuthRole) {
        self.ops.push(BatchOp::Put(
            CF_META,
            prefixed(META_AUTH_ROLE_PREFIX, &role.name),
            role.encode_to_vec(),
        ));
    }

    pub fn delete_auth_role(&mut self, name: &[u8]) {
        self.ops.push(BatchOp::Delete(
            CF_META,
            prefixed(META_AUTH_ROLE_PREFIX, name),
        ));
    }

    pub fn put_alarm(&mut self, member: u64, alarm: i32) {
        self.ops
            .push(BatchOp::Put(CF_META, alarm_key(member, alarm), Vec::new()));
    }

    pub fn delete_alarm(&mut self, member: u64, alarm: i32) {
        self.ops
            .push(BatchOp::Delete(CF_META, alarm_key(member, alarm)));
    }

    /// Puts a `kv` row as given (restore: the bytes are already etcd's row format, and keeping
    /// them exact keeps `HashKV` equal to the source's). Not visible to [`Batch::pending_kv`].
    pub fn put_kv_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put(CF_KV, key, value));
    }

    /// Puts a `lease` row as given (restore).
    pub fn put_lease_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put(CF_LEASE, key, value));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn pending_kv(&self, rev: Revision) -> Option<&KeyValue> {
        self.pending.get(&rev)
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = META_ALARM_PREFIX.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// One length-prefixed field of a dump: (field, what follows).
fn dump_field(b: &[u8]) -> Result<(&[u8], &[u8]), BackendError> {
    let truncated = || corrupt(CF_META, "truncated snapshot dump");
    let (len, rest) = b.split_at_checked(4).ok_or_else(truncated)?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    rest.split_at_checked(len).ok_or_else(truncated)
}

fn corrupt(cf: &'static str, detail: impl ToString) -> BackendError {
    BackendError::Corrupt {
        cf,
        detail: detail.to_string(),
    }
}

impl Backend {
    /// Opens (or creates) the store under `path`.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let cfs = [CF_KV, CF_LEASE, CF_META]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let backend = Self {
            db,
            path: path.to_path_buf(),
            size_at_last_write: AtomicU64::new(0),
        };
        backend.note_size();
        Ok(backend)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    /// Writes a batch atomically; with `sync` the call returns only once it is on disk.
    pub fn write(&self, batch: Batch, sync: bool) -> Result<(), BackendError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(cf, k, v) => wb.put_cf(self.cf(cf), k, v),
                BatchOp::Delete(cf, k) => wb.delete_cf(self.cf(cf), k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo)?;
        self.note_size();
        Ok(())
    }

    fn note_size(&self) {
        self.size_at_last_write
            .store(self.size(), Ordering::Relaxed);
    }

    /// [`Backend::size`] as it was after the last write (or open); cheap enough for every
    /// request. Background flushes and compactions show from the next write on.
    pub fn size_at_last_write(&self) -> u64 {
        self.size_at_last_write.load(Ordering::Relaxed)
    }

    /// Reads live (non-tombstone) rows by revision, in the order asked.
    pub fn get_kvs(&self, revs: &[Revision]) -> Result<Vec<KeyValue>, BackendError> {
        let cf = self.cf(CF_KV);
        let keys: Vec<_> = revs.iter().map(|r| (cf, r.to_bytes(false))).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .zip(revs)
            .map(|(res, rev)| {
                let bytes = res?
                    .ok_or_else(|| corrupt(CF_KV, format!("indexed revision {rev} has no row")))?;
                KeyValue::decode(bytes.as_slice()).map_err(|e| corrupt(CF_KV, e))
            })
            .collect()
    }

    /// Rows with `from <= revision < to` (tombstones included), in revision order.
    pub fn scan_kv(&self, from: Revision, to: Revision) -> Result<Vec<KvRow>, BackendError> {
        let mut out = Vec::new();
        self.for_each_kv_raw(from, to, |raw, value| {
            let (rev, tombstone) = Revision::from_bytes(raw)?;
            let kv = KeyValue::decode(value).map_err(|e| corrupt(CF_KV, e))?;
            out.push(KvRow { rev, tombstone, kv });
            Ok(())
        })?;
        Ok(out)
    }

    /// Visits raw rows with `from <= revision < to` in revision order.
    pub fn for_each_kv_raw(
        &self,
        from: Revision,
        to: Revision,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let start = from.to_bytes(false);
        let end = to.to_bytes(false);
        let it = self.db.iterator_cf(
            self.cf(CF_KV),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    pub fn leases(&self) -> Result<Vec<LeaseRecord>, BackendError> {
        self.db
            .iterator_cf(self.cf(CF_LEASE), IteratorMode::Start)
            .map(|item| {
                let (_, v) = item?;
                LeaseRecord::decode(v.as_ref()).map_err(|e| corrupt(CF_LEASE, e))
            })
            .collect()
    }

    /// Active alarms as (member, alarm type).
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>, BackendError> {
        self.export().alarms()
    }

    /// Every member's published attributes.
    pub fn member_attrs(&self) -> Result<Vec<MemberAttributes>, BackendError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(META_MEMBER_ATTRS_PREFIX, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(META_MEMBER_ATTRS_PREFIX) {
                break;
            }
            out.push(MemberAttributes::decode(v.as_ref()).map_err(|e| corrupt(CF_META, e))?);
        }
        Ok(out)
    }

    /// Values of the `meta` rows under `prefix`, in key order.
    fn meta_values(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, BackendError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// The auth store: flag, revision, users and roles (each list in name order).
    pub fn auth(&self) -> Result<AuthRows, BackendError> {
        let enabled = self.get_meta_raw(META_AUTH_ENABLED)?.as_deref() == Some(&[1u8][..]);
        let revision = self.get_meta_u64(META_AUTH_REVISION)?.unwrap_or(0);
        let users = self
            .meta_values(META_AUTH_USER_PREFIX)?
            .into_iter()
            .map(|v| AuthUser::decode(v.as_slice()).map_err(|e| corrupt(CF_META, e)))
            .collect::<Result<_, _>>()?;
        let roles = self
            .meta_values(META_AUTH_ROLE_PREFIX)?
            .into_iter()
            .map(|v| AuthRole::decode(v.as_slice()).map_err(|e| corrupt(CF_META, e)))
            .collect::<Result<_, _>>()?;
        Ok(AuthRows {
            enabled,
            revision,
            users,
            roles,
        })
    }

    pub fn get_meta_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    pub fn get_meta_u64(&self, key: &[u8]) -> Result<Option<u64>, BackendError> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(CF_META, "u64 value"))?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    pub fn get_meta_rev(&self, key: &[u8]) -> Result<Option<Revision>, BackendError> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => Ok(Some(Revision::from_bytes(&v)?.0)),
        }
    }

    /// Writes one meta value outside the apply path (identity, term), durably.
    pub fn put_meta_u64_now(&self, key: &[u8], v: u64) -> Result<(), BackendError> {
        let mut b = Batch::default();
        b.put_meta_u64(key, v);
        self.write(b, true)
    }

    /// A RocksDB integer property summed over the column families (0 where unavailable:
    /// sizes are estimates for Status and the quota, never a reason to fail a request).
    fn property_sum(&self, name: &str) -> u64 {
        [CF_KV, CF_LEASE, CF_META]
            .iter()
            .map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Bytes the database occupies on disk plus what is buffered in memtables.
    pub fn size(&self) -> u64 {
        self.property_sum("rocksdb.total-sst-files-size")
            + self.property_sum("rocksdb.cur-size-all-mem-tables")
    }

    /// Bytes of live data, the counterpart of etcd's `dbSizeInUse`: RocksDB's estimate of live
    /// SST data plus what memtables hold (the estimate alone ignores unflushed writes).
    pub fn size_in_use(&self) -> u64 {
        (self.property_sum("rocksdb.estimate-live-data-size")
            + self.property_sum("rocksdb.cur-size-all-mem-tables"))
        .min(self.size())
    }

    /// Rewrites every column family so deleted rows give their space back (etcd's defrag).
    pub fn defragment(&self) -> Result<(), BackendError> {
        self.db.flush()?;
        for cf in [CF_KV, CF_LEASE, CF_META] {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
        self.note_size();
        Ok(())
    }

    /// Replaces every row but this member's identity with the rows of a [`Export::dump`],
    /// atomically and durably (a Raft snapshot being installed).
    pub fn replace_all(&self, dump: &[u8]) -> Result<(), BackendError> {
        let mut wb = rocksdb::WriteBatch::default();
        let identity: Vec<(&[u8], Option<Vec<u8>>)> = IDENTITY_KEYS
            .iter()
            .map(|k| Ok((*k, self.db.get_cf(self.cf(CF_META), k)?)))
            .collect::<Result<_, BackendError>>()?;
        for (_, cf) in DUMP_CFS {
            // delete_range_cf's end is exclusive: no real key is 64 bytes of 0xff.
            wb.delete_range_cf(self.cf(cf), &[][..], &[0xffu8; 64][..]);
        }
        let mut rest = dump;
        while let Some((&tag, after)) = rest.split_first() {
            let cf = DUMP_CFS
                .iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, cf)| *cf)
                .ok_or_else(|| corrupt(CF_META, format!("unknown column family tag {tag}")))?;
            let (key, after) = dump_field(after)?;
            let (value, after) = dump_field(after)?;
            wb.put_cf(self.cf(cf), key, value);
            rest = after;
        }
        for (k, v) in identity {
            if let Some(v) = v {
                wb.put_cf(self.cf(CF_META), k, v);
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        self.note_size();
        Ok(())
    }

    /// Fsyncs the RocksDB WAL: every write so far, including those made with
    /// `sync == false`, is durable when this returns.
    pub fn sync(&self) -> Result<(), BackendError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// A consistent point-in-time view of every row, for snapshots.
    pub fn export(&self) -> Export<'_> {
        Export {
            backend: self,
            snap: self.db.snapshot(),
        }
    }
}

/// Column families in a [`Export::dump`], by their tag byte.
const DUMP_CFS: [(u8, &str); 3] = [(0, CF_KV), (1, CF_LEASE), (2, CF_META)];
/// Rows that say who this member is; they never travel to another member.
const IDENTITY_KEYS: [&[u8]; 2] = [META_MEMBER_ID, META_CLUSTER_ID];

/// Rows as of one moment (a RocksDB snapshot), whatever is applied meanwhile.
pub struct Export<'a> {
    backend: &'a Backend,
    snap: rocksdb::Snapshot<'a>,
}

impl Export<'_> {
    fn for_each_raw<E: From<BackendError>>(
        &self,
        cf: &'static str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for item in self
            .snap
            .iterator_cf(self.backend.cf(cf), IteratorMode::Start)
        {
            let (k, v) = item.map_err(BackendError::from)?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Every `kv` row in revision order, as stored: revision bytes, `mvccpb.KeyValue` bytes.
    pub fn for_each_kv<E: From<BackendError>>(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_each_raw(CF_KV, f)
    }

    /// Every `lease` row in ID order, as stored: ID bytes, `leasepb.Lease` bytes.
    pub fn for_each_lease<E: From<BackendError>>(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_each_raw(CF_LEASE, f)
    }

    /// Every row of every column family but this member's identity, for a Raft snapshot:
    ///
    /// ```text
    /// repeat: | cf tag: u8 (0 kv, 1 lease, 2 meta) | key len: u32 BE | key | value len: u32 BE | value |
    /// ```
    pub fn dump(&self) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::new();
        for (tag, cf) in DUMP_CFS {
            self.for_each_raw(cf, |k: &[u8], v: &[u8]| -> Result<(), BackendError> {
                if cf == CF_META && IDENTITY_KEYS.contains(&k) {
                    return Ok(());
                }
                out.push(tag);
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn for_each_meta_prefixed<E: From<BackendError>>(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let it = self.snap.iterator_cf(
            self.backend.cf(CF_META),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(BackendError::from)?;
            let Some(name) = k.strip_prefix(prefix) else {
                break;
            };
            f(name, &v)?;
        }
        Ok(())
    }

    /// Every user in name order, as stored: name, `authpb.User` bytes.
    pub fn for_each_auth_user<E: From<BackendError>>(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_each_meta_prefixed(META_AUTH_USER_PREFIX, f)
    }

    /// Every role in name order, as stored: name, `authpb.Role` bytes.
    pub fn for_each_auth_role<E: From<BackendError>>(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_each_meta_prefixed(META_AUTH_ROLE_PREFIX, f)
    }

    /// A `meta` value as stored (one of the `META_*` names).
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.snap.get_cf(self.backend.cf(CF_META), key)?)
    }

    /// Active alarms as (member, alarm type).
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>, BackendError> {
        let mut out = Vec::new();
        let it = self.snap.iterator_cf(
            self.backend.cf(CF_META),
            IteratorMode::From(META_ALARM_PREFIX, Direction::Forward),
        );
        for item in it {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(META_ALARM_PREFIX) else {
                break;
            };
            out.push(decode_alarm(rest)?);
        }
        Ok(out)
    }
}

fn decode_alarm(rest: &[u8]) -> Result<(u64, i32), BackendError> {
    let key: [u8; 12] = rest.try_into().map_err(|_| corrupt(CF_META, "alarm key"))?;
    let mut member = [0u8; 8];
    member.copy_from_slice(&key[..8]);
    let mut alarm = [0u8; 4];
    alarm.copy_from_slice(&key[8..]);
    Ok((u64::from_be_bytes(member), i32::from_be_bytes(alarm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_the_quota_reads_follows_writes_and_defrag() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        assert_eq!(b.size_at_last_write(), b.size(), "after open");
        let mut last = b.size_at_last_write();
        for i in 0..3 {
            let mut batch = Batch::default();
            let kv = KeyValue {
                key: format!("k{i}").into_bytes(),
                value: vec![7; 3 << 20],
                ..Default::default()
            };
            batch.put_kv(Revision::new(i + 2, 0), false, &kv);
            b.write(batch, false).unwrap();
            assert_eq!(b.size_at_last_write(), b.size(), "after write {i}");
            assert!(b.size_at_last_write() > last, "write {i} grows it");
            last = b.size_at_last_write();
        }
        b.defragment().unwrap();
        assert_eq!(b.size_at_last_write(), b.size(), "after defrag");
    }

    #[test]
    fn batch_rows_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Backend::open(dir.path()).unwrap();
            let mut batch = Batch::default();
            let kv = KeyValue {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                lease: 0,
            };
            batch.put_kv(Revision::new(2, 0), false, &kv);
            batch.put_kv(
                Revision::new(3, 0),
                true,
                &KeyValue {
                    key: b"k".to_vec(),
                    ..Default::default()
                },
            );
            batch.put_meta_u64(META_CONSISTENT_INDEX, 7);
            batch.put_lease(&LeaseRecord {
                id: 5,
                ttl: 10,
                remaining_ttl: 0,
            });
            batch.put_alarm(1, 1);
            assert_eq!(batch.pending_kv(Revision::new(2, 0)), Some(&kv));
            b.write(batch, true).unwrap();
        }
        let b = Backend::open(dir.path()).unwrap();
        let rows = b
            .scan_kv(Revision::new(1, 0), Revision::new(10, 0))
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(!rows[0].tombstone && rows[1].tombstone);
        assert_eq!(b.get_kvs(&[Revision::new(2, 0)]).unwrap()[0].value, b"v");
        assert_eq!(b.get_meta_u64(META_CONSISTENT_INDEX).unwrap(), Some(7));
        assert_eq!(b.leases().unwrap()[0].ttl, 10);
        assert_eq!(b.alarms().unwrap(), vec![(1, 1)]);
        assert!(
            b.get_kvs(&[Revision::new(9, 0)]).is_err(),
            "a missing indexed row is corruption"
        );
    }

    #[test]
    fn dump_replaces_everything_but_identity() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, dst) = (
            Backend::open(d1.path()).unwrap(),
            Backend::open(d2.path()).unwrap(),
        );
        let kv = |v: &str| KeyValue {
            key: b"k".to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut b = Batch::default();
        b.put_kv(Revision::new(2, 0), false, &kv("new"));
        b.put_lease(&LeaseRecord {
            id: 1,
            ttl: 5,
            remaining_ttl: 0,
        });
        b.put_meta_u64(META_CONSISTENT_INDEX, 9);
        src.write(b, true).unwrap();
        src.put_meta_u64_now(META_MEMBER_ID, 111).unwrap();
        let mut b = Batch::default();
        b.put_kv(Revision::new(7, 0), false, &kv("stale"));
        b.put_lease(&LeaseRecord {
            id: 2,
            ttl: 5,
            remaining_ttl: 0,
        });
        dst.write(b, true).unwrap();
        dst.put_meta_u64_now(META_MEMBER_ID, 222).unwrap();

        let dump = src.export().dump().unwrap();
        dst.replace_all(&dump).unwrap();
        let rows = dst
            .scan_kv(Revision::new(0, 0), Revision::new(100, 0))
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.rev.main).collect::<Vec<_>>(),
            vec![2],
            "stale rows are gone"
        );
        assert_eq!(
            dst.leases()
                .unwrap()
                .iter()
                .map(|l| l.id)
                .collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(dst.get_meta_u64(META_CONSISTENT_INDEX).unwrap(), Some(9));
        assert_eq!(
            dst.get_meta_u64(META_MEMBER_ID).unwrap(),
            Some(222),
            "identity stays"
        );
        assert!(
            dst.replace_all(&dump[..dump.len() - 1]).is_err(),
            "a truncated dump is refused"
        );
        assert_eq!(
            dst.get_meta_u64(META_CONSISTENT_INDEX).unwrap(),
            Some(9),
            "and changes nothing"
        );
    }
}
