//! Snapshots move between raftkv and etcd 3.4 both ways. `etcdctl snapshot status` reads
//! raftkv's snapshots and reports what it reports for etcd's after the same history;
//! `etcdctl snapshot restore` of a raftkv snapshot gives a data dir real etcd serves; and
//! `raftkv snapshot restore` takes snapshots saved from etcd and from raftkv (and, with
//! `--skip-hash-check`, an etcd member's own database file).
//!
//! "Serves the same data" means: every key with its value, create/mod revision, version and
//! lease; the store revision; the compaction point; the lease with its TTL and keys; and
//! `HashKV`, a CRC over every stored revision row, so equal digests mean the MVCC history came
//! over byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{free_port, Flavor, Server, MEMBER_NAME};
use etcd_client::{
    Client, CompactionOptions, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, Permission, PutOptions,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
/// Chosen, not server-assigned, so both servers' histories are identical.
const LEASE_ID: i64 = 0x5eed;
/// The history's compaction revision (see [`write_history`]).
const COMPACT_AT: i64 = 160;
/// The revision after [`write_history`].
const FINAL_REV: i64 = 170;

/// (key, value, create_revision, mod_revision, version, lease) of a live key.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// What a client sees of a store.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    rows: Vec<Row>,
    hash_kv: u32,
    compact_revision: i64,
    lease_granted_ttl: i64,
    lease_keys: Vec<Vec<u8>>,
    /// A key's value at the compaction revision: history at the compaction point survives.
    at_compaction: Vec<u8>,
    /// Auth users, each with its roles, and the reader role's permissions (key, range end).
    users: Vec<(String, Vec<String>)>,
    reader_perms: Vec<(Vec<u8>, Vec<u8>)>,
}

async fn observe(c: &mut Client) -> Observed {
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all keys");
    let hash = c.hash_kv(0).await.expect("hashkv");
    let ttl = c
        .lease_time_to_live(LEASE_ID, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("lease time-to-live");
    let mut lease_keys = ttl.keys().to_vec();
    lease_keys.sort();
    let old = c
        .get(
            "key/0005",
            Some(GetOptions::new().with_revision(COMPACT_AT)),
        )
        .await
        .expect("read at the compaction revision");
    let mut users = Vec::new();
    for name in c.user_list().await.expect("user list").users().to_vec() {
        let roles = c.user_get(name.as_str()).await.expect("user get");
        users.push((name, roles.roles().to_vec()));
    }
    let reader = c.role_get("reader").await.expect("role get");
    let reader_perms = reader
        .permissions()
        .iter()
        .map(|p| (p.key().to_vec(), p.range_end().to_vec()))
        .collect();
    Observed {
        users,
        reader_perms,
        revision: all.header().expect("header").revision(),
        rows: all
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect(),
        hash_kv: hash.hash(),
        compact_revision: hash.compact_version(),
        lease_granted_ttl: ttl.granted_ttl(),
        lease_keys,
        at_compaction: old
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap_or_default(),
    }
}

/// Checks what [`Observed`] cannot hold: reads below the compaction point fail, and the
/// store goes on from where the history ended.
async fn check_serving(c: &mut Client, what: &str) {
    let err = c
        .get(
            "key/0005",
            Some(GetOptions::new().with_revision(COMPACT_AT - 1)),
        )
        .await
        .expect_err("reading below the compaction point");
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{what}: {err}"
    );
    let put = c.put("new", "n", None).await.expect("put after restore");
    assert_eq!(
        put.header().expect("header").revision(),
        FINAL_REV + 1,
        "{what}: revisions go on"
    );
    // The lease is live, with its keys attached: revoking it deletes them.
    c.lease_revoke(LEASE_ID).await.expect("revoke");
    let leased = c
        .get("leased/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get leased");
    assert!(leased.kvs().is_empty(), "{what}: revoke deleted the keys");
}

/// Puts (values bigger than a 4 KiB bbolt page; enough keys for branch pages), overwrites,
/// deletes, a lease with keys, a compaction, and writes after it. Ends at [`FINAL_REV`].
async fn write_history(c: &mut Client) {
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(LEASE_ID)))
        .await
        .expect("grant");
    for i in 0..150 {
        let value = format!("value {i} {}", "x".repeat(100));
        c.put(format!("key/{i:04}"), value, None)
            .await
            .expect("put"); // revisions 2..=151
    }
    c.put("big/1", vec![b'a'; 10_000], None).await.expect("put"); // 152
    c.put("big/2", vec![b'b'; 5_000], None).await.expect("put"); // 153
    for key in ["leased/1", "leased/2"] {
        let opts = PutOptions::new().with_lease(LEASE_ID);
        c.put(key, "l", Some(opts)).await.expect("put with lease"); // 154, 155
    }
    for i in 0..10 {
        c.put(format!("key/{i:04}"), format!("second {i}"), None)
            .await
            .expect("overwrite"); // 156..=165
    }
    c.delete("key/0100", None).await.expect("delete"); // 166
    c.delete("key/012", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete range"); // 167
    c.compact(COMPACT_AT, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    c.put("big/1", vec![b'c'; 12_000], None).await.expect("put"); // 168
    c.delete("big/2", None).await.expect("delete"); // 169
    c.put("after", "compaction", None).await.expect("put"); // 170
                                                            // Auth rows (auth itself stays off): they travel in etcd's authUsers/authRoles buckets.
    for user in ["root", "alice"] {
        c.user_add(user, "pw", None).await.expect("user add");
    }
    c.role_add("reader").await.expect("role add");
    c.role_grant_permission("reader", Permission::read("key/").with_prefix())
        .await
        .expect("grant permission");
    c.user_grant_role("alice", "reader")
        .await
        .expect("grant role");
    c.user_grant_role("root", "root").await.expect("grant root");
}

/// A snapshot saved from a server of `flavor` after [`write_history`], with what the server
/// showed when it was taken. The server is stopped.
struct Source {
    snapshot: PathBuf,
    data_dir: PathBuf,
    observed: Observed,
}

async fn snapshot_of(flavor: Flavor, dir: &Path) -> Source {
    let name = flavor.name();
    let data_dir = dir.join(format!("{name}-source"));
    let mut server = Server::spawn(flavor, &data_dir, &dir.join(format!("{name}-source.log")));
    let mut c = server
        .wait_ready(READY)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    write_history(&mut c).await;
    let observed = observe(&mut c).await;
    assert_eq!(
        observed.revision, FINAL_REV,
        "{name}: the history as planned"
    );
    let snapshot = dir.join(format!("{name}.snapshot.db"));
    etcdctl(&[
        "--endpoints",
        &server.endpoint,
        "snapshot",
        "save",
        path_str(&snapshot),
    ])
    .await;
    Source {
        snapshot,
        data_dir,
        observed,
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Runs etcdctl (API v3) and returns its stdout; panics with its output if it fails.
async fn etcdctl(args: &[&str]) -> String {
    // The etcdctl of the etcd 3.4.23 the image installs, not whatever PATH finds.
    let run = tokio::process::Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} timed out"))
        .expect("running etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn snapshot_status(snapshot: &Path) -> Value {
    let out = etcdctl(&["snapshot", "status", path_str(snapshot), "-w", "json"]).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
}

fn raftkv_restore(snapshot: &Path, data_dir: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(Flavor::Raftkv.program())
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("running raftkv snapshot restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_raftkv_snapshot_matches_etcds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raftkv = snapshot_of(Flavor::Raftkv, dir.path()).await;
    let etcd = snapshot_of(Flavor::Etcd, dir.path()).await;
    assert_eq!(raftkv.observed, etcd.observed, "same history, same store");

    let ours = snapshot_status(&raftkv.snapshot).await;
    let theirs = snapshot_status(&etcd.snapshot).await;
    // `revision` is the last row of the `key` bucket, `totalKey` counts the keys of every
    // bucket: equal because raftkv writes etcd's bucket set and the same MVCC rows.
    assert_eq!(ours["revision"], theirs["revision"], "{ours} vs {theirs}");
    assert_eq!(ours["revision"], FINAL_REV);
    assert_eq!(ours["totalKey"], theirs["totalKey"], "{ours} vs {theirs}");
    // Not comparable: `hash` covers every bucket, and `meta/consistent_index` (each server's
    // own log index) and `members` (member IDs and URLs) differ between any two servers;
    // `totalSize` is the page count, which depends on how each writer filled its pages.
    let size = ours["totalSize"].as_u64().expect("totalSize");
    assert!(size > 0 && size % 4096 == 0, "{ours}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_serves_a_raftkv_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = snapshot_of(Flavor::Raftkv, dir.path()).await;
    let data = dir.path().join("etcd-restored");
    let peer = format!("http://127.0.0.1:{}", free_port());
    etcdctl(&[
        "snapshot",
        "restore",
        path_str(&source.snapshot),
        "--name",
        MEMBER_NAME,
        "--data-dir",
        path_str(&data),
        "--initial-cluster",
        &format!("{MEMBER_NAME}={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ])
    .await;
    let mut etcd = Server::spawn_with_peer_url(
        Flavor::Etcd,
        &data,
        &dir.path().join("etcd-restored.log"),
        peer,
    );
    let mut c = etcd
        .wait_ready(READY)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(observe(&mut c).await, source.observed);
    check_serving(&mut c, "etcd from a raftkv snapshot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftkv_restores_etcd_and_raftkv_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = snapshot_of(Flavor::Etcd, dir.path()).await;
    let raftkv = snapshot_of(Flavor::Raftkv, dir.path()).await;
    // etcd's own database file, as a member left it: no digest, its freelist not stored,
    // freed pages in it. etcd's backend commits every 100 ms; the source is long stopped.
    let etcd_db = etcd.data_dir.join("member/snap/db");
    let cases: Vec<(&str, &Path, &Observed, &[&str])> = vec![
        ("etcd snapshot", &etcd.snapshot, &etcd.observed, &[]),
        ("raftkv snapshot", &raftkv.snapshot, &raftkv.observed, &[]),
        (
            "etcd member database",
            &etcd_db,
            &etcd.observed,
            &["--skip-hash-check"],
        ),
    ];
    for (i, (what, snapshot, expected, flags)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("restored-{i}"));
        let out = raftkv_restore(snapshot, &data, flags);
        assert!(out.status.success(), "{what}: {}", show(&out));
        let mut server = Server::spawn(
            Flavor::Raftkv,
            &data,
            &dir.path().join(format!("restored-{i}.log")),
        );
        let mut c = server
            .wait_ready(READY)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(&observe(&mut c).await, expected, "{what}");
        check_serving(&mut c, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftkv_restore_rejects_what_etcdctl_rejects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::spawn(
        Flavor::Raftkv,
        &dir.path().join("data"),
        &dir.path().join("server.log"),
    );
    let mut c = server
        .wait_ready(READY)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.put("k", vec![1; 6000], None).await.expect("put");
    let good_path = dir.path().join("good.db");
    etcdctl(&[
        "--endpoints",
        &server.endpoint,
        "snapshot",
        "save",
        path_str(&good_path),
    ])
    .await;
    let good = std::fs::read(&good_path).expect("read snapshot");
    let db_len = good.len() - 32;
    let mut flipped = good.clone();
    flipped[db_len / 2] ^= 0x40;

    struct Case {
        what: &'static str,
        bytes: Vec<u8>,
        flags: &'static [&'static str],
        restores: bool,
        stderr_mentions: &'static str,
    }
    let case = |what, bytes, flags, restores, stderr_mentions| Case {
        what,
        bytes,
        flags,
        restores,
        stderr_mentions,
    };
    let cases = [
        case("intact", good.clone(), &[], true, ""),
        case("one byte flipped", flipped, &[], false, "sha256"),
        case(
            "last byte cut",
            good[..good.len() - 1].to_vec(),
            &[],
            false,
            "sha256",
        ),
        case("digest cut", good[..db_len].to_vec(), &[], false, "sha256"),
        case(
            "digest cut, --skip-hash-check",
            good[..db_len].to_vec(),
            &["--skip-hash-check"],
            true,
            "",
        ),
        case(
            "not a database",
            vec![0x5a; 4096 * 3 + 32],
            &["--skip-hash-check"],
            false,
            "bbolt",
        ),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.db"));
        std::fs::write(&file, &c.bytes).expect("write case");
        let data = dir.path().join(format!("case-{i}"));
        let out = raftkv_restore(&file, &data, c.flags);
        let what = c.what;
        assert_eq!(out.status.success(), c.restores, "{what}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(c.stderr_mentions),
            "{what}: {}",
            show(&out)
        );
        assert_eq!(
            data.join("member/kv").exists(),
            c.restores,
            "{what}: a store only when the restore succeeded"
        );
    }
    let again = raftkv_restore(&good_path, &dir.path().join("case-0"), &[]);
    assert!(!again.status.success(), "restore over an existing store");
}
