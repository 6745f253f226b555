//! Snapshot files: what `Maintenance.Snapshot` streams and `raftkv snapshot restore` reads.
//!
//! A snapshot is what etcd 3.4 streams: its backend database, a bbolt file (layout in
//! [`bbolt`]), followed by the SHA-256 of that database:
//!
//! ```text
//! | bbolt database: pgid * 4096 bytes | sha256 of the database: 32 bytes |
//! ```
//!
//! `etcdctl snapshot save` accepts a stream only if its length is 32 past a multiple of 512,
//! which a page-aligned database plus its digest is. So etcd and raftkv snapshots are
//! interchangeable: `etcdctl snapshot status` and `restore` (and then etcd) read raftkv's, and
//! `raftkv snapshot restore` reads etcd's.
//!
//! The database holds etcd's buckets (names from etcd's `mvcc/backend` users):
//!
//! | bucket            | key → value                                                                |
//! |-------------------|----------------------------------------------------------------------------|
//! | `key`             | revision bytes ([`crate::mvcc::revision`]) → `mvccpb.KeyValue`: raftkv's `kv` rows unchanged |
//! | `lease`           | lease ID, u64 big-endian → `leasepb.Lease`                                 |
//! | `meta`            | `consistent_index` → u64 BE; `finishedCompactRev`, `scheduledCompactRev` → revision bytes |
//! | `alarm`           | `etcdserverpb.AlarmMember` protobuf → empty                                |
//! | `members`         | member ID in lowercase hex → member JSON (`id`, `peerURLs`, `name`, `clientURLs`) |
//! | `cluster`         | `clusterVersion` → `3.4.0`                                                 |
//! | `auth`            | `authRevision` → u64 BE; `authEnabled` → one byte (1 on, 0 off), once auth was ever enabled |
//! | `authUsers`       | user name → `authpb.User` (bcrypt hash in `password`)                      |
//! | `authRoles`       | role name → `authpb.Role`                                                  |
//! | `members_removed` | empty                                                                      |
//!
//! `members`, `cluster` and `members_removed` hold what any etcd 3.4 member holds, and a store
//! whose auth was never touched gets etcd's fresh `auth` bucket (`authRevision` 1) and empty
//! user and role buckets. etcd would create them on first start anyway; writing them makes
//! the file etcd's key for key, so `etcdctl snapshot status` counts the same keys for the
//! same history. raftkv's own identity rows
//! (`term`, `member_id`, `cluster_id`) are not written: a restored member gets a new identity,
//! as etcd's restore gives it.
//!
//! Restore takes `key`, `lease`, compaction marks from `meta`, `alarm` and the three auth
//! buckets (users, roles, the enabled flag and the auth revision); it sets
//! `consistent_index` to 1 as etcd's restore does (the restored member starts a new log), and
//! logs the buckets it leaves behind.

pub mod bbolt;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use proto::authpb::{Role as AuthRole, User as AuthUser};
use proto::etcdserverpb::AlarmMember;
use proto::leasepb::Lease as LeaseRecord;
use proto::mvccpb::KeyValue;
use serde::Serialize;
use sha2::{Digest, Sha256};

use self::bbolt::{BboltError, FileSource, PageSource, Reader, Writer};
use crate::http::ETCD_CLUSTER_VERSION;
use crate::mvcc::backend::{
    Export, META_AUTH_ENABLED, META_AUTH_REVISION, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT,
};
use crate::mvcc::{Backend, BackendError, Batch, Revision};

pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_META: &[u8] = b"meta";
pub const BUCKET_ALARM: &[u8] = b"alarm";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";

const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
const AUTH_REVISION_KEY: &[u8] = b"authRevision";
const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
/// What a fresh etcd's auth store commits at start: revision 1, auth never enabled.
const AUTH_REVISION: u64 = 1;
/// etcd's restore writes the member count of the new cluster (one) as the consistent index.
const RESTORED_CONSISTENT_INDEX: u64 = 1;
const SHA256_LEN: u64 = 32;
/// `etcdctl` takes a file as digest-terminated when its length is this much past a multiple of
/// 512 (`hasChecksum` in etcd's `v3_snapshot.go`).
const SECTOR: u64 = 512;
/// Rows per RocksDB write while restoring, to bound memory on big snapshots.
const RESTORE_BATCH_ROWS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Bbolt(#[from] BboltError),
    #[error("storage: {0}")]
    Backend(#[from] BackendError),
    #[error(
        "snapshot of {0} bytes has no sha256 trailer (etcd's restore wants --skip-hash-check for \
         a bare database file)"
    )]
    MissingHash(u64),
    #[error("snapshot sha256 mismatch: the file is damaged or truncated")]
    HashMismatch,
    #[error("not an etcd backend: bucket {bucket}: {detail}")]
    Invalid { bucket: String, detail: String },
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
}

fn invalid(bucket: &[u8], detail: impl ToString) -> SnapshotError {
    SnapshotError::Invalid {
        bucket: bucket.escape_ascii().to_string(),
        detail: detail.to_string(),
    }
}

/// The member a snapshot is taken on, for the `members` bucket.
pub struct Member<'a> {
    pub id: u64,
    pub name: &'a str,
    pub peer_urls: &'a [String],
    pub client_urls: &'a [String],
}

/// etcd's `membership.Member` JSON, fields in Go's order.
#[derive(Serialize)]
struct MemberJson<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

/// A snapshot written to an unnamed temporary file (gone once dropped).
pub struct Saved {
    /// The database, positioned at its start.
    pub file: File,
    /// Bytes of the database (the digest is not in `file`).
    pub db_len: u64,
    pub sha256: [u8; 32],
}

impl Saved {
    /// Copies the whole snapshot, database then digest, to `out`.
    pub fn write_to(mut self, out: &mut impl Write) -> Result<(), SnapshotError> {
        let copied = io::copy(&mut (&mut self.file).take(self.db_len), out)?;
        if copied != self.db_len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        out.write_all(&self.sha256)?;
        Ok(())
    }
}

/// Writes a snapshot of the backend as it is now into a temporary file in `tmp_dir`.
pub fn save(
    backend: &Backend,
    member: &Member<'_>,
    tmp_dir: &Path,
) -> Result<Saved, SnapshotError> {
    let export = backend.export();
    let mut w = Writer::new(BufWriter::new(tempfile::tempfile_in(tmp_dir)?))?;
    write_buckets(&mut w, &export, member)?;
    let mut file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
    let db_len = file.stream_position()?;
    file.seek(SeekFrom::Start(0))?;
    let sha256 = sha256_of(&mut file, db_len)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(Saved {
        file,
        db_len,
        sha256,
    })
}

fn sha256_of(r: &mut impl Read, len: u64) -> Result<[u8; 32], SnapshotError> {
    let mut h = Sha256::new();
    let copied = io::copy(&mut r.take(len), &mut h)?;
    if copied != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(h.finalize().into())
}

fn write_buckets<W: Write + Seek>(
    w: &mut Writer<W>,
    export: &Export<'_>,
    member: &Member<'_>,
) -> Result<(), SnapshotError> {
    w.bucket(BUCKET_KEY, |b| {
        export.for_each_kv(|k, v| Ok::<_, SnapshotError>(b.put(k, v)?))
    })?;
    w.bucket(BUCKET_LEASE, |b| {
        export.for_each_lease(|k, v| Ok::<_, SnapshotError>(b.put(k, v)?))
    })?;

    // etcd always has a consistent index; a store nothing was applied to yet has none.
    let index = export
        .meta(META_CONSISTENT_INDEX)?
        .unwrap_or_else(|| 0u64.to_be_bytes().to_vec());
    let finished = export.meta(META_FINISHED_COMPACT)?;
    let scheduled = export.meta(META_SCHEDULED_COMPACT)?;
    w.bucket::<SnapshotError>(BUCKET_META, |b| {
        b.put(META_CONSISTENT_INDEX, &index)?;
        if let Some(v) = &finished {
            b.put(META_FINISHED_COMPACT, v)?;
        }
        if let Some(v) = &scheduled {
            b.put(META_SCHEDULED_COMPACT, v)?;
        }
        Ok(())
    })?;

    let mut alarms: Vec<Vec<u8>> = export
        .alarms()?
        .into_iter()
        .map(|(member_id, alarm)| AlarmMember { member_id, alarm }.encode_to_vec())
        .collect();
    alarms.sort();
    alarms.dedup();
    w.bucket::<SnapshotError>(BUCKET_ALARM, |b| {
        alarms.iter().try_for_each(|k| Ok(b.put(k, &[])?))
    })?;

    let json = serde_json::to_vec(&MemberJson {
        id: member.id,
        peer_urls: member.peer_urls,
        name: member.name,
        client_urls: member.client_urls,
    })
    .map_err(io::Error::other)?;
    w.bucket::<SnapshotError>(BUCKET_MEMBERS, |b| {
        Ok(b.put(format!("{:x}", member.id).as_bytes(), &json)?)
    })?;
    w.bucket::<SnapshotError>(BUCKET_CLUSTER, |b| {
        Ok(b.put(CLUSTER_VERSION_KEY, ETCD_CLUSTER_VERSION.as_bytes())?)
    })?;
    let auth_enabled = export.meta(META_AUTH_ENABLED)?;
    let auth_revision = export
        .meta(META_AUTH_REVISION)?
        .unwrap_or_else(|| AUTH_REVISION.to_be_bytes().to_vec());
    w.bucket::<SnapshotError>(BUCKET_AUTH, |b| {
        // Key order: "authEnabled" < "authRevision".
        if let Some(v) = &auth_enabled {
            b.put(AUTH_ENABLED_KEY, v)?;
        }
        Ok(b.put(AUTH_REVISION_KEY, &auth_revision)?)
    })?;
    w.bucket(BUCKET_AUTH_ROLES, |b| {
        export.for_each_auth_role(|k, v| Ok::<_, SnapshotError>(b.put(k, v)?))
    })?;
    w.bucket(BUCKET_AUTH_USERS, |b| {
        export.for_each_auth_user(|k, v| Ok::<_, SnapshotError>(b.put(k, v)?))
    })?;
    w.bucket::<SnapshotError>(BUCKET_MEMBERS_REMOVED, |_| Ok(()))?;
    Ok(())
}

/// What a restore brought over.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Main revision of the last `key` row (what `etcdctl snapshot status` calls the revision).
    pub revision: i64,
    pub kv_rows: u64,
    pub leases: u64,
    pub alarms: u64,
    /// Auth users and roles.
    pub users: u64,
    pub roles: u64,
    /// Buckets raftkv does not serve, with their key counts.
    pub ignored: Vec<(String, u64)>,
}

/// Restores the snapshot file `snapshot` into a new store at `dir` (which must not exist), as
/// `etcdctl snapshot restore` does: the digest must match unless `skip_hash_check`, in which
/// case a bare database file (e.g. an etcd member's `member/snap/db`) is accepted too.
pub fn restore(
    snapshot: &Path,
    dir: &Path,
    skip_hash_check: bool,
) -> Result<Restored, SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Exists(dir.to_path_buf()));
    }
    let mut file = File::open(snapshot)?;
    let len = file.metadata()?.len();
    let has_hash = len % SECTOR == SHA256_LEN;
    let db_len = if has_hash { len - SHA256_LEN } else { len };
    if !skip_hash_check {
        if !has_hash {
            return Err(SnapshotError::MissingHash(len));
        }
        let actual = sha256_of(&mut file, db_len)?;
        let mut expected = [0u8; 32];
        file.read_exact(&mut expected)?;
        if actual != expected {
            return Err(SnapshotError::HashMismatch);
        }
    }
    let reader = Reader::open(FileSource::new(file, db_len))?;
    reader.check()?;

    // Built beside its final place and renamed, so a failed restore leaves no half store.
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".restoring");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    match import(&reader, &partial) {
        Ok(restored) => {
            fs::rename(&partial, dir)?;
            // The rename is durable once the directory holding it is synced.
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
            Ok(restored)
        }
        Err(e) => {
            // The import error is the one worth reporting; a leftover is removed next time.
            let _ = fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

fn import<S: PageSource>(reader: &Reader<S>, dir: &Path) -> Result<Restored, SnapshotError> {
    let backend = Backend::open(dir)?;
    let mut out = Restored::default();
    let mut batch = Batch::default();
    let spill = |batch: &mut Batch| -> Result<(), SnapshotError> {
        if batch.len() >= RESTORE_BATCH_ROWS {
            backend.write(std::mem::take(batch), false)?;
        }
        Ok(())
    };

    let found = reader.for_each(BUCKET_KEY, |k, v| {
        let (rev, _) = Revision::from_bytes(k).map_err(|e| invalid(BUCKET_KEY, e))?;
        KeyValue::decode(v).map_err(|e| invalid(BUCKET_KEY, e))?;
        out.revision = rev.main;
        out.kv_rows += 1;
        batch.put_kv_raw(k.to_vec(), v.to_vec());
        spill(&mut batch)
    })?;
    if !found {
        return Err(invalid(BUCKET_KEY, "missing"));
    }

    reader.for_each(BUCKET_LEASE, |k, v| {
        let id: [u8; 8] = k
            .try_into()
            .map_err(|_| invalid(BUCKET_LEASE, format!("key of {} bytes", k.len())))?;
        let lease = LeaseRecord::decode(v).map_err(|e| invalid(BUCKET_LEASE, e))?;
        if lease.id as u64 != u64::from_be_bytes(id) {
            return Err(invalid(
                BUCKET_LEASE,
                format!("row of lease {:x}", lease.id),
            ));
        }
        out.leases += 1;
        batch.put_lease_raw(k.to_vec(), v.to_vec());
        spill(&mut batch)
    })?;

    reader.for_each(BUCKET_META, |k, v| {
        if k == META_FINISHED_COMPACT || k == META_SCHEDULED_COMPACT {
            match Revision::from_bytes(v) {
                Ok((rev, false)) => batch.put_meta_rev(k, rev),
                _ => return Err(invalid(BUCKET_META, k.escape_ascii())),
            }
        } else if k != META_CONSISTENT_INDEX {
            tracing::info!(key = %k.escape_ascii(), "restore: ignoring meta key");
        }
        Ok(())
    })?;
    batch.put_meta_u64(META_CONSISTENT_INDEX, RESTORED_CONSISTENT_INDEX);

    reader.for_each(BUCKET_ALARM, |k, _| {
        let m = AlarmMember::decode(k).map_err(|e| invalid(BUCKET_ALARM, e))?;
        out.alarms += 1;
        batch.put_alarm(m.member_id, m.alarm);
        Ok::<_, SnapshotError>(())
    })?;

    let names = reader.bucket_names()?;
    if names.iter().any(|n| n == BUCKET_AUTH) {
        reader.for_each(BUCKET_AUTH, |k, v| {
            if k == AUTH_ENABLED_KEY {
                batch.put_auth_enabled(v == [1]);
            } else if k == AUTH_REVISION_KEY {
                let rev: [u8; 8] = v
                    .try_into()
                    .map_err(|_| invalid(BUCKET_AUTH, "authRevision"))?;
                batch.put_auth_revision(u64::from_be_bytes(rev));
            }
            Ok::<_, SnapshotError>(())
        })?;
    }
    for (bucket, is_user) in [(BUCKET_AUTH_USERS, true), (BUCKET_AUTH_ROLES, false)] {
        if !names.iter().any(|n| n == bucket) {
            continue;
        }
        reader.for_each(bucket, |k, v| {
            // Checked here, so a bad row fails the restore, not the restored member's start.
            let named = if is_user {
                AuthUser::decode(v).map(|u| u.name)
            } else {
                AuthRole::decode(v).map(|r| r.name)
            };
            match named {
                Ok(name) if name == k => {}
                _ => return Err(invalid(bucket, k.escape_ascii())),
            }
            if is_user {
                out.users += 1;
                batch.put_auth_user_raw(k, v.to_vec());
            } else {
                out.roles += 1;
                batch.put_auth_role_raw(k, v.to_vec());
            }
            spill(&mut batch)
        })?;
    }

    let served = [
        BUCKET_KEY,
        BUCKET_LEASE,
        BUCKET_META,
        BUCKET_ALARM,
        BUCKET_AUTH,
        BUCKET_AUTH_USERS,
        BUCKET_AUTH_ROLES,
    ];
    for name in names {
        if served.contains(&name.as_slice()) {
            continue;
        }
        let mut keys = 0u64;
        reader.for_each::<SnapshotError>(&name, |_, _| {
            keys += 1;
            Ok(())
        })?;
        out.ignored.push((name.escape_ascii().to_string(), keys));
    }
    if !out.ignored.is_empty() {
        let list: Vec<_> = out
            .ignored
            .iter()
            .map(|(n, k)| format!("{n} ({k} keys)"))
            .collect();
        tracing::info!(
            buckets = %list.join(", "),
            "restore: leaving out buckets raftkv does not serve"
        );
    }

    backend.write(batch, true)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::backend::KvRow;

    fn kv(key: &str, value: Vec<u8>, rev: i64, version: i64, lease: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value,
            create_revision: rev - version + 1,
            mod_revision: rev,
            version,
            lease,
        }
    }

    /// A store with puts (one bigger than a page), a tombstone, a lease, compaction marks and
    /// an alarm, plus raftkv's identity rows.
    fn sample_backend(dir: &Path) -> Backend {
        let b = Backend::open(dir).unwrap();
        let mut batch = Batch::default();
        batch.put_kv(Revision::new(2, 0), false, &kv("a", b"1".to_vec(), 2, 1, 0));
        batch.put_kv(
            Revision::new(3, 0),
            false,
            &kv("big", vec![7; 9000], 3, 1, 0),
        );
        batch.put_kv(
            Revision::new(4, 0),
            false,
            &kv("l", b"x".to_vec(), 4, 1, 0x55),
        );
        batch.put_kv(
            Revision::new(5, 0),
            true,
            &KeyValue {
                key: b"a".to_vec(),
                ..Default::default()
            },
        );
        batch.put_lease(&LeaseRecord {
            id: 0x55,
            ttl: 100,
            remaining_ttl: 0,
        });
        batch.put_meta_rev(META_FINISHED_COMPACT, Revision::new(3, 0));
        batch.put_meta_rev(META_SCHEDULED_COMPACT, Revision::new(3, 0));
        batch.put_meta_u64(META_CONSISTENT_INDEX, 42);
        batch.put_alarm(9, 1);
        b.write(batch, true).unwrap();
        b.put_meta_u64_now(crate::mvcc::backend::META_MEMBER_ID, 7)
            .unwrap();
        b
    }

    fn member() -> (Vec<String>, Vec<String>) {
        (
            vec!["http://127.0.0.1:2380".into()],
            vec!["http://127.0.0.1:2379".into()],
        )
    }

    fn save_to(backend: &Backend, dir: &Path) -> PathBuf {
        let (peers, clients) = member();
        let saved = save(
            backend,
            &Member {
                id: 0x8e9e05c52164694d,
                name: "default",
                peer_urls: &peers,
                client_urls: &clients,
            },
            dir,
        )
        .unwrap();
        let path = dir.join("snap.db");
        saved.write_to(&mut File::create(&path).unwrap()).unwrap();
        path
    }

    fn rows(b: &Backend) -> Vec<KvRow> {
        b.scan_kv(Revision::new(0, 0), Revision::new(i64::MAX, 0))
            .unwrap()
    }

    #[test]
    fn snapshot_is_an_etcd_backend() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = sample_backend(&tmp.path().join("kv"));
        let path = save_to(&backend, tmp.path());
        let bytes = fs::read(&path).unwrap();
        assert_eq!(
            bytes.len() as u64 % SECTOR,
            SHA256_LEN,
            "etcdctl checks this"
        );
        let (db, digest) = bytes.split_at(bytes.len() - 32);
        assert_eq!(Sha256::digest(db).as_slice(), digest);
        let buckets = bbolt::read_all(db).unwrap();
        let names: Vec<_> = buckets
            .keys()
            .map(|k| k.escape_ascii().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "alarm",
                "auth",
                "authRoles",
                "authUsers",
                "cluster",
                "key",
                "lease",
                "members",
                "members_removed",
                "meta"
            ]
        );
        let get = |b: &[u8]| buckets.get(b).unwrap().clone();
        assert_eq!(get(BUCKET_KEY).len(), 4);
        assert_eq!(get(BUCKET_KEY)[3].0, Revision::new(5, 0).to_bytes(true));
        let meta_keys: Vec<_> = get(BUCKET_META).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            meta_keys,
            [
                META_CONSISTENT_INDEX,
                META_FINISHED_COMPACT,
                META_SCHEDULED_COMPACT
            ],
            "only etcd's meta keys, not raftkv's identity"
        );
        assert_eq!(
            get(BUCKET_ALARM),
            [(b"\x08\x09\x10\x01".to_vec(), vec![])],
            "AlarmMember{{memberID: 9, alarm: NOSPACE}}"
        );
        assert_eq!(
            get(BUCKET_MEMBERS),
            [(
                b"8e9e05c52164694d".to_vec(),
                br#"{"id":10276657743932975437,"peerURLs":["http://127.0.0.1:2380"],"name":"default","clientURLs":["http://127.0.0.1:2379"]}"#
                    .to_vec()
            )]
        );
        assert_eq!(
            get(BUCKET_AUTH),
            [(b"authRevision".to_vec(), 1u64.to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn auth_travels_in_etcds_buckets() {
        use proto::authpb::{Permission, Role, User};
        let tmp = tempfile::tempdir().unwrap();
        let backend = sample_backend(&tmp.path().join("kv"));
        let mut batch = Batch::default();
        batch.put_auth_enabled(true);
        batch.put_auth_revision(7);
        for name in ["root", "alice"] {
            batch.put_auth_user(&User {
                name: name.into(),
                password: b"$2a$04$hash".to_vec(),
                roles: vec!["root".into()],
                options: None,
            });
        }
        batch.put_auth_role(&Role {
            name: b"reader".to_vec(),
            key_permission: vec![Permission {
                perm_type: 0,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            }],
        });
        backend.write(batch, true).unwrap();
        let path = save_to(&backend, tmp.path());

        let bytes = fs::read(&path).unwrap();
        let db = bbolt::read_all(&bytes[..bytes.len() - 32]).unwrap();
        let keys = |b: &[u8]| -> Vec<Vec<u8>> {
            db.get(b).unwrap().iter().map(|(k, _)| k.clone()).collect()
        };
        assert_eq!(
            keys(BUCKET_AUTH),
            [b"authEnabled".to_vec(), b"authRevision".to_vec()]
        );
        assert_eq!(
            keys(BUCKET_AUTH_USERS),
            [b"alice".to_vec(), b"root".to_vec()]
        );
        assert_eq!(keys(BUCKET_AUTH_ROLES), [b"reader".to_vec()]);

        let dir = tmp.path().join("restored");
        let restored = restore(&path, &dir, false).unwrap();
        assert_eq!((restored.users, restored.roles), (2, 1));
        let (want, got) = (
            backend.auth().unwrap(),
            Backend::open(&dir).unwrap().auth().unwrap(),
        );
        assert_eq!(
            (got.enabled, got.revision, got.users, got.roles),
            (want.enabled, want.revision, want.users, want.roles)
        );
    }

    #[test]
    fn restore_round_trips_served_state() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = sample_backend(&tmp.path().join("kv"));
        let path = save_to(&backend, tmp.path());
        let dir = tmp.path().join("restored");
        let restored = restore(&path, &dir, false).unwrap();
        assert_eq!(
            (
                restored.revision,
                restored.kv_rows,
                restored.leases,
                restored.alarms
            ),
            (5, 4, 1, 1)
        );
        let ignored: Vec<_> = restored
            .ignored
            .iter()
            .map(|(n, k)| (n.as_str(), *k))
            .collect();
        assert_eq!(
            ignored,
            [("cluster", 1), ("members", 1), ("members_removed", 0)]
        );
        let back = Backend::open(&dir).unwrap();
        assert_eq!(rows(&back), rows(&backend));
        assert_eq!(back.leases().unwrap(), backend.leases().unwrap());
        assert_eq!(back.alarms().unwrap(), vec![(9, 1)]);
        assert_eq!(
            back.get_meta_rev(META_FINISHED_COMPACT).unwrap(),
            Some(Revision::new(3, 0))
        );
        assert_eq!(
            back.get_meta_u64(META_CONSISTENT_INDEX).unwrap(),
            Some(RESTORED_CONSISTENT_INDEX)
        );
        assert_eq!(
            back.get_meta_u64(crate::mvcc::backend::META_MEMBER_ID)
                .unwrap(),
            None,
            "a restored store gets a new identity"
        );
        assert!(
            !tmp.path().join("restored.restoring").exists(),
            "no partial store left"
        );
        assert!(matches!(
            restore(&path, &dir, false),
            Err(SnapshotError::Exists(_))
        ));
    }

    #[test]
    fn restore_checks_the_digest_like_etcdctl() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = sample_backend(&tmp.path().join("kv"));
        let path = save_to(&backend, tmp.path());
        let good = fs::read(&path).unwrap();
        let db_len = good.len() - 32;
        let mut flipped = good.clone();
        flipped[db_len - 100] ^= 1;
        let bare = good[..db_len].to_vec();
        let mut broken_bare = bare.clone();
        broken_bare[20] ^= 0xff; // meta 0 ...
        broken_bare[4096 + 20] ^= 0xff; // ... and meta 1
        let cases: Vec<(&str, Vec<u8>, bool, bool)> = vec![
            ("intact", good.clone(), false, true),
            ("flipped byte", flipped.clone(), false, false),
            ("truncated", good[..good.len() - 1].to_vec(), false, false),
            (
                "truncated by a page",
                good[..good.len() - 4096].to_vec(),
                false,
                false,
            ),
            ("bare database", bare.clone(), false, false),
            ("bare database, --skip-hash-check", bare, true, true),
            ("intact, --skip-hash-check", good, true, true),
            ("broken metas, --skip-hash-check", broken_bare, true, false),
        ];
        for (i, (name, bytes, skip, ok)) in cases.into_iter().enumerate() {
            let file = tmp.path().join(format!("case{i}.db"));
            fs::write(&file, bytes).unwrap();
            let dir = tmp.path().join(format!("out{i}"));
            let res = restore(&file, &dir, skip);
            assert_eq!(res.is_ok(), ok, "{name}: {res:?}");
            assert_eq!(dir.exists(), ok, "{name}: store only on success");
        }
    }
}
