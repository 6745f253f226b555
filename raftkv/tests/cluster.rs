//! Multi-process cluster tests: three members started with etcd's flags, driven through
//! their client ports only. They cover what a single member cannot show: forwarding of
//! writes from followers, linearizable reads on followers, leader failover under load,
//! minority partitions (SIGSTOP), a whole-cluster crash, leases across a leader change and
//! watches served by a follower.
//!
//! Every test starts its own cluster and runs alone (a file-wide lock): two clusters at once
//! on a 2-core machine would distort the failover timings being measured. Each test is
//! bounded by [`TEST_LIMIT`], every client call by a timeout, and the harness kills (and
//! first resumes) every member when a test ends or panics.
//!
//! Random choices (when to kill, which follower to use) come from one seed per test,
//! printed at its start; `CLUSTER_SEED=<n>` replays it. `DIFF_TARGET=etcd` runs the same
//! tests against a real etcd 3.4 cluster, which validates the tests themselves.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

use common::{connect, Cluster, Timing};

/// Members per cluster.
const MEMBERS: usize = 3;
/// Start-up of three debug-built members on a loaded 2-core machine.
const STARTUP: Duration = Duration::from_secs(30);
/// Electing a leader, from start-up or after one died.
const ELECTION_WITHIN: Duration = Duration::from_secs(10);
/// Bound on every test, start-up included.
const TEST_LIMIT: Duration = Duration::from_secs(45);
/// Per-request timeout of the ordinary clients. Longer than an election (so a request
/// made during a failover can still complete) but shorter than a test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit on write unavailability after the leader is killed. The target with default
/// timeouts is < 2 s (measured 1.1-1.8 s); the limit leaves room for a loaded CI machine,
/// and the measured value is always printed.
const MAX_UNAVAILABILITY: Duration = Duration::from_secs(3);

/// One cluster at a time (see the module doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The seed for this test's random choices: `CLUSTER_SEED` or the clock.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    println!("{test}: seed {seed} (rerun with CLUSTER_SEED={seed})");
    seed
}

/// Runs `body` alone and within [`TEST_LIMIT`]. On timeout the body (and with it the
/// cluster it owns) is dropped, which kills every member.
async fn run_alone(test: &str, body: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("{test}: exceeded {TEST_LIMIT:?}");
    }
    println!("{test}: passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// A ready 3-member cluster of the subject flavor, its directory, and the leader's index.
async fn start_cluster() -> (TempDir, Cluster, usize) {
    let mut dir = tempfile::tempdir().expect("creating the cluster dir");
    if std::env::var_os("CLUSTER_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("  cluster dir (kept): {}", dir.path().display());
    }
    let flavor = common::subject_flavor();
    let mut cluster = Cluster::spawn(flavor, MEMBERS, dir.path(), Timing::default());
    let t = Instant::now();
    cluster
        .wait_ready(STARTUP)
        .await
        .unwrap_or_else(|e| panic!("the {} cluster did not start: {e}", flavor.name()));
    let leader = cluster.leader(ELECTION_WITHIN).await.expect("a leader");
    println!(
        "  {} cluster ready in {:.1} s, leader {}",
        flavor.name(),
        t.elapsed().as_secs_f64(),
        cluster.members[leader].name()
    );
    (dir, cluster, leader)
}

/// A client with the ordinary request timeout for member `i`.
async fn client(cluster: &Cluster, i: usize) -> Client {
    connect(&cluster.members[i].endpoint, Some(REQUEST_TIMEOUT)).await
}

/// A prefix watch on `endpoint` from the revision after the current one (so it sees
/// exactly the writes that follow); returns that start revision and the watch.
async fn watch_from_next_revision(
    c: &mut Client,
    endpoint: &str,
    prefix: &str,
) -> (i64, etcd_client::WatchStream) {
    let start = c
        .get(prefix, None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision()
        + 1;
    let watch = connect(endpoint, None)
        .await
        .watch(
            prefix,
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .expect("watch on a follower");
    (start, watch)
}

/// Keys under `prefix` as key -> (value, mod revision), with the header revision.
type Rows = BTreeMap<String, (String, i64)>;

async fn read_prefix(
    c: &mut Client,
    prefix: &str,
    serializable: bool,
) -> Result<(i64, Rows), String> {
    let mut opts = GetOptions::new().with_prefix();
    if serializable {
        opts = opts.with_serializable();
    }
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, c.get(prefix, Some(opts)))
        .await
        .map_err(|_| format!("range {prefix} not answered within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("range {prefix}: {e}"))?;
    let rows = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect();
    Ok((resp.header().map_or(0, |h| h.revision()), rows))
}

// ---------------------------------------------------------------------------------------
// Writers: client tasks that put distinct keys and remember what was acknowledged.

/// One acknowledged put.
struct Ack {
    key: String,
    value: String,
    revision: i64,
    /// When the put was sent and when its answer came, for availability measurements.
    sent: Instant,
    answered: Instant,
}

#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    /// Every key this writer tried to put (acknowledged or not).
    attempted: HashSet<String>,
    errors: usize,
    /// The first few failures, with when they happened.
    first_errors: Vec<(Instant, String)>,
    /// Distinct failures that are neither an etcd server error nor the client's own
    /// timeout (e.g. a transport error a server passed on).
    foreign_errors: BTreeSet<String>,
}

/// Whether a failed put ended the way a client of etcd expects: an `etcdserver: ...` error
/// from the server, or the client's own deadline.
fn is_etcd_failure<T>(
    r: &Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>,
) -> bool {
    match r {
        Err(_) => true,
        Ok(Ok(_)) => false,
        Ok(Err(etcd_client::Error::GRpcStatus(s))) => {
            s.message().starts_with("etcdserver:")
                || (s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired")
        }
        Ok(Err(_)) => false,
    }
}

/// Puts `{prefix}{i}` for i = 0, 1, ... through `endpoint` until `stop` is set. A failed or
/// timed-out put is not retried (its key may or may not exist); the next put uses a new key.
async fn write_loop(
    endpoint: String,
    prefix: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> WriterLog {
    let mut c = connect(&endpoint, Some(REQUEST_TIMEOUT)).await;
    let mut log = WriterLog::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{prefix}{i:06}");
        // Seed-specific values: a stale data dir could never satisfy the checks.
        let value = format!("{seed}-{i}");
        i += 1;
        log.attempted.insert(key.clone());
        let sent = Instant::now();
        let put = c.put(key.clone(), value.clone(), None);
        match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), put).await {
            Ok(Ok(r)) => {
                log.acks.push(Ack {
                    key,
                    value,
                    revision: r.header().map_or(0, |h| h.revision()),
                    sent,
                    answered: Instant::now(),
                });
                acked.fetch_add(1, Ordering::Relaxed);
            }
            failed => {
                log.errors += 1;
                let text = match &failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_string(),
                };
                if !is_etcd_failure(&failed) {
                    log.foreign_errors.insert(text.clone());
                }
                if log.first_errors.len() < 3 {
                    log.first_errors.push((Instant::now(), text));
                }
                // A dead member refuses at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    log
}

/// Writers started by [`Writers::start`], one per listed member endpoint.
struct Writers {
    stop: Arc<AtomicBool>,
    /// Acknowledged puts so far, all writers together.
    acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<WriterLog>>,
}

impl Writers {
    fn start(endpoints: &[String], prefix: &str, seed: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let tasks = endpoints
            .iter()
            .enumerate()
            .map(|(w, ep)| {
                tokio::spawn(write_loop(
                    ep.clone(),
                    format!("{prefix}w{w}/"),
                    seed,
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    /// Waits (at most `within`) until `n` more puts than now are acknowledged.
    async fn wait_for_more(&self, n: usize, within: Duration) {
        let target = self.acked.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + within;
        while self.acked.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers and collects their logs (each finishes its put in flight, which
    /// is bounded by its timeout).
    async fn finish(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for t in self.tasks {
            logs.push(t.await.expect("a writer task panicked"));
        }
        logs
    }
}

/// Checks, on each of `members`, with linearizable reads: every acknowledged put is present
/// with its value at its revision, no key exists that nobody tried to write, all members
/// are at the same revision, and `HashKV` at that revision is the same everywhere (the
/// whole MVCC history agrees, not just the latest values). Returns the common revision.
async fn verify_everywhere(
    cluster: &Cluster,
    members: &[usize],
    prefix: &str,
    logs: &[WriterLog],
) -> i64 {
    let acked: BTreeMap<&str, (&str, i64)> = logs
        .iter()
        .flat_map(|l| &l.acks)
        .map(|a| (a.key.as_str(), (a.value.as_str(), a.revision)))
        .collect();
    let attempted: HashSet<&str> = logs
        .iter()
        .flat_map(|l| &l.attempted)
        .map(String::as_str)
        .collect();
    let max_acked = acked.values().map(|&(_, r)| r).max().unwrap_or(0);
    let mut revisions = Vec::new();
    for &m in members {
        let name = cluster.members[m].name();
        let mut c = client(cluster, m).await;
        let (revision, rows) = read_prefix(&mut c, prefix, false)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut problems = Vec::new();
        for (key, &(value, rev)) in &acked {
            match rows.get(*key) {
                Some((v, r)) if v == value && *r == rev => {}
                Some((v, r)) => problems.push(format!(
                    "{key}: acknowledged {value:?} at revision {rev}, found {v:?} at {r}"
                )),
                None => problems.push(format!("{key}: acknowledged at revision {rev}, missing")),
            }
        }
        for key in rows.keys() {
            if !attempted.contains(key.as_str()) {
                problems.push(format!("{key}: present but never written"));
            }
        }
        if revision < max_acked {
            problems.push(format!(
                "revision {revision} is below the highest acknowledged one ({max_acked})"
            ));
        }
        assert!(
            problems.is_empty(),
            "{name}: {} problem(s) (first 20):\n{}",
            problems.len(),
            problems[..problems.len().min(20)].join("\n")
        );
        // The same rows must be visible locally too: a serializable read serves them from
        // this member's own state, which the linearizable read just caught up.
        let (_, local) = read_prefix(&mut c, prefix, true)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            local, rows,
            "{name}: serializable and linearizable reads differ"
        );
        revisions.push((name.to_string(), revision));
    }
    let revision = revisions[0].1;
    assert!(
        revisions.iter().all(|(_, r)| *r == revision),
        "members disagree on the revision after all writes: {revisions:?}"
    );
    let mut hashes = Vec::new();
    for &m in members {
        let mut c = client(cluster, m).await;
        let h = tokio::time::timeout(REQUEST_TIMEOUT, c.hash_kv(revision))
            .await
            .expect("hashkv answered in time")
            .unwrap_or_else(|e| panic!("hashkv on {}: {e}", cluster.members[m].name()));
        hashes.push((
            cluster.members[m].name().to_string(),
            h.hash(),
            h.compact_version(),
        ));
    }
    assert!(
        hashes
            .iter()
            .all(|(_, h, c)| (*h, *c) == (hashes[0].1, hashes[0].2)),
        "HashKV at revision {revision} differs between members: {hashes:x?}"
    );
    println!(
        "  {} acknowledged puts present on {} members; revision {revision}, HashKV {:08x} everywhere",
        acked.len(),
        members.len(),
        hashes[0].1
    );
    revision
}

// ---------------------------------------------------------------------------------------
// Tests

/// Put-then-local-read pairs through one follower.
const READ_YOUR_WRITES_ROUNDS: usize = 50;

/// A member list entry: (member index, name, peer URLs, client URLs, is learner).
type MemberRow = (usize, String, Vec<String>, Vec<String>, bool);

/// Writes through each member (two of them forward to the leader) are immediately visible
/// to linearizable reads on every member, and the member list shows three started members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_member_are_read_everywhere() {
    run_alone("writes_through_any_member_are_read_everywhere", async {
        let (_dir, cluster, leader) = start_cluster().await;
        let mut clients = Vec::new();
        for i in 0..MEMBERS {
            clients.push(client(&cluster, i).await);
        }
        for writer in 0..MEMBERS {
            let role = if writer == leader {
                "leader"
            } else {
                "follower"
            };
            let key = format!("/rw/via-{}", cluster.members[writer].name());
            let put = clients[writer]
                .put(key.clone(), format!("v{writer}"), None)
                .await
                .unwrap_or_else(|e| panic!("put through the {role}: {e}"));
            let put_rev = put.header().expect("header").revision();
            // Read right away on every member: a follower that serves a linearizable read
            // before applying the write would miss it.
            for (reader, c) in clients.iter_mut().enumerate() {
                let (rev, rows) = read_prefix(c, &key, false).await.unwrap();
                assert_eq!(
                    rows.get(&key),
                    Some(&(format!("v{writer}"), put_rev)),
                    "{key} (written through the {role}) read on {}",
                    cluster.members[reader].name()
                );
                assert!(
                    rev >= put_rev,
                    "header revision {rev} < write revision {put_rev}"
                );
            }
        }

        // A txn and a delete through a follower are forwarded too, with their results.
        let f = cluster.others(leader)[0];
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::value(
                "/rw/via-n1",
                etcd_client::CompareOp::Equal,
                "v0",
            )])
            .and_then([etcd_client::TxnOp::put("/rw/txn", "yes", None)])
            .or_else([etcd_client::TxnOp::put("/rw/txn", "no", None)]);
        let t = clients[f].txn(txn).await.expect("txn through a follower");
        assert!(t.succeeded(), "the compare sees n1's write");
        let d = clients[f]
            .delete("/rw/via-n2", None)
            .await
            .expect("delete through a follower");
        assert_eq!(d.deleted(), 1);
        for (reader, c) in clients.iter_mut().enumerate() {
            let (_, rows) = read_prefix(c, "/rw/", false).await.unwrap();
            let keys: Vec<&str> = rows.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["/rw/txn", "/rw/via-n1", "/rw/via-n3"],
                "on {}",
                cluster.members[reader].name()
            );
        }

        // Read-your-writes on one member: a write answered by a follower has been applied
        // there (etcd waits for its own apply before answering), so a serializable read on
        // that follower right after it sees the write.
        let mut stale = Vec::new();
        let t = Instant::now();
        for i in 0..READ_YOUR_WRITES_ROUNDS {
            let key = format!("/ryw/{i}");
            let rev = clients[f]
                .put(key.clone(), "x", None)
                .await
                .expect("put through a follower")
                .header()
                .expect("header")
                .revision();
            let (_, rows) = read_prefix(&mut clients[f], &key, true).await.unwrap();
            if rows.get(&key).map(|(_, r)| *r) != Some(rev) {
                stale.push(format!("{key} (revision {rev}): local read saw {rows:?}"));
            }
        }
        println!(
            "  {READ_YOUR_WRITES_ROUNDS} put + serializable get pairs through follower {}: {:.1} ms each",
            cluster.members[f].name(),
            t.elapsed().as_secs_f64() * 1000.0 / READ_YOUR_WRITES_ROUNDS as f64
        );
        assert!(
            stale.is_empty(),
            "{} of {READ_YOUR_WRITES_ROUNDS} serializable reads on follower {} missed the write \
             that follower had just acknowledged; first: {:?}",
            stale.len(),
            cluster.members[f].name(),
            stale.first()
        );

        // Member IDs as each member reports its own.
        let mut ids = HashMap::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let s = c.status().await.expect("status");
            assert!(!s.is_learner());
            ids.insert(s.header().expect("header").member_id(), i);
        }
        assert_eq!(ids.len(), MEMBERS, "distinct member IDs");
        // Client URLs are published through the log after start-up: allow a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        for (i, c) in clients.iter_mut().enumerate() {
            loop {
                let list = c.member_list().await.expect("member list");
                let mut seen: Vec<MemberRow> = list
                    .members()
                    .iter()
                    .map(|m| {
                        (
                            *ids.get(&m.id()).unwrap_or(&usize::MAX),
                            m.name().to_string(),
                            m.peer_urls().to_vec(),
                            m.client_urls().to_vec(),
                            m.is_learner(),
                        )
                    })
                    .collect();
                seen.sort();
                let want: Vec<MemberRow> = cluster
                    .members
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        (
                            j,
                            m.name().to_string(),
                            vec![m.peer_url().to_string()],
                            vec![m.endpoint.clone()],
                            false,
                        )
                    })
                    .collect();
                if seen == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member list on {}: got {seen:?}, want {want:?} (etcdctl shows a member \
                     as started once it has a name)",
                    cluster.members[i].name()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;
}

/// kill -9 of the leader while six clients (two per member) write: a new leader takes over
/// quickly, and once the old leader is back every acknowledged write is on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_during_writes() {
    let seed = seed("leader_kill_during_writes");
    run_alone("leader_kill_during_writes", async {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_dir, mut cluster, leader) = start_cluster().await;
        let term_before = term_of(&cluster, leader).await;
        let endpoints: Vec<String> = (0..2 * MEMBERS)
            .map(|w| cluster.members[w % MEMBERS].endpoint.clone())
            .collect();
        let writers = Writers::start(&endpoints, "/kill/", seed);
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..1600))).await;

        cluster.members[leader].kill();
        let killed_at = Instant::now();
        let survivor = cluster.others(leader)[rng.random_range(0..MEMBERS - 1)];
        let (unavailable, probe_failures) = first_write_after(&cluster, survivor, killed_at).await;
        let new_leader = cluster.leader(ELECTION_WITHIN).await.expect("a new leader");
        let term_after = term_of(&cluster, new_leader).await;
        println!(
            "  killed leader {} (term {term_before}); first write through {} after {} ms \
             ({probe_failures:?} before); new leader {} (term {term_after})",
            cluster.members[leader].name(),
            cluster.members[survivor].name(),
            unavailable.as_millis(),
            cluster.members[new_leader].name()
        );
        assert_ne!(new_leader, leader);
        assert!(term_after > term_before, "a new term after the election");
        // Let the writers make progress on the new leader before stopping them. Their puts in
        // flight at the kill may hang until their timeout (etcd loses proposals forwarded to
        // a dead leader), hence the bound.
        writers
            .wait_for_more(20, REQUEST_TIMEOUT + Duration::from_secs(2))
            .await;
        let logs = writers.finish().await;
        let acked_after_kill = logs
            .iter()
            .flat_map(|l| &l.acks)
            .filter(|a| a.sent > killed_at)
            .count();
        for (w, l) in logs.iter().enumerate() {
            let errors: Vec<String> = l
                .first_errors
                .iter()
                .map(|(at, e)| format!("{:+} ms: {e}", signed_ms(*at, killed_at)))
                .collect();
            println!(
                "  writer {w} via {}: {} acknowledged, {} failed {errors:?}",
                cluster.members[w % MEMBERS].name(),
                l.acks.len(),
                l.errors
            );
        }
        assert!(
            acked_after_kill > 0,
            "writers through survivors went on after the kill"
        );
        // Clients of the killed member see their connection die; clients of the survivors
        // must only see what etcd's would (a write forwarded to the dying leader fails with
        // "request timed out, possibly due to previous leader failure").
        for (w, l) in logs.iter().enumerate() {
            if w % MEMBERS != leader {
                assert!(
                    l.foreign_errors.is_empty(),
                    "writer {w} through survivor {} got non-etcd errors: {:?}",
                    cluster.members[w % MEMBERS].name(),
                    l.foreign_errors
                );
            }
        }
        // For comparison with the probe (printed only: a writer's put in flight at the kill
        // may hang until its timeout, so the writers measure availability less precisely).
        let first_writer_ack = logs
            .iter()
            .flat_map(|l| &l.acks)
            .filter(|a| a.answered > killed_at + Duration::from_millis(50))
            .map(|a| a.answered - killed_at)
            .min();
        println!("  first writer acknowledgement after the kill: {first_writer_ack:?}");

        cluster.members[leader].restart();
        cluster
            .wait_ready_members(&[leader], STARTUP)
            .await
            .expect("the killed leader restarts");
        verify_everywhere(&cluster, &[0, 1, 2], "/kill/w", &logs).await;
        assert!(
            unavailable < MAX_UNAVAILABILITY,
            "writes were unavailable for {unavailable:?} after the leader was killed \
             (limit {MAX_UNAVAILABILITY:?}, target 2 s)"
        );
    })
    .await;
}

/// Bound on one probe put while measuring unavailability. A put proposed while there is no
/// leader may be lost (etcd drops it and the client waits for its full timeout), so the probe
/// gives up on an attempt and sends a new one, measuring to within about this much.
const PROBE_ATTEMPT: Duration = Duration::from_millis(250);

/// Puts through member `via` until one succeeds; returns the time from `since` to the first
/// success and the failures (error text, or `None` for an abandoned attempt) before it.
async fn first_write_after(
    cluster: &Cluster,
    via: usize,
    since: Instant,
) -> (Duration, Vec<Option<String>>) {
    let mut c = client(cluster, via).await;
    let mut failures = Vec::new();
    loop {
        match tokio::time::timeout(PROBE_ATTEMPT, c.put("/probe", "p", None)).await {
            Ok(Ok(_)) => return (since.elapsed(), failures),
            Ok(Err(e)) => {
                failures.push(Some(e.to_string()));
                // An immediate refusal: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => failures.push(None),
        }
        assert!(
            since.elapsed() < MAX_UNAVAILABILITY * 3,
            "no write through {} within {:?}; failures: {failures:?}",
            cluster.members[via].name(),
            since.elapsed()
        );
    }
}

/// Milliseconds from `origin` to `at` (negative when before).
fn signed_ms(at: Instant, origin: Instant) -> i128 {
    if at >= origin {
        (at - origin).as_millis() as i128
    } else {
        -((origin - at).as_millis() as i128)
    }
}

/// The Raft term member `i` reports.
async fn term_of(cluster: &Cluster, i: usize) -> u64 {
    let mut c = client(cluster, i).await;
    c.status()
        .await
        .unwrap_or_else(|e| panic!("status of {}: {e}", cluster.members[i].name()))
        .raft_term()
}

/// How a request on an isolated member ended.
#[derive(Debug)]
enum Outcome {
    Succeeded,
    /// The server answered an error: (gRPC code, message).
    Failed(tonic::Code, String),
    /// No answer within the client's own deadline.
    ClientTimeout,
}

/// Whether the isolated member itself refused the request the way etcd does: gRPC
/// Unavailable with an `etcdserver:` message (`request timed out`, `no leader`, ...). A
/// client-side timeout does not count: etcd answers within its request timeout (5 s + two
/// election timeouts), and a server that never answers holds its clients forever.
fn refused_by_server(o: &Outcome) -> bool {
    matches!(o, Outcome::Failed(tonic::Code::Unavailable, msg) if msg.starts_with("etcdserver:"))
}

fn outcome<T>(r: Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(_)) => Outcome::Succeeded,
        Ok(Err(etcd_client::Error::GRpcStatus(s))) => {
            Outcome::Failed(s.code(), s.message().to_string())
        }
        Ok(Err(e)) => Outcome::Failed(tonic::Code::Unknown, e.to_string()),
        Err(_) => Outcome::ClientTimeout,
    }
}

/// Longer than the servers' own request timeout (5 s + 2 election timeouts, etcd's
/// formula), so the test sees what the isolated member answers rather than its own deadline.
const PARTITION_CLIENT_TIMEOUT: Duration = Duration::from_secs(9);

/// A member cut off from the other two (which are SIGSTOPped) must refuse linearizable reads
/// and writes — with a timeout, never a stale or unreplicated success — while serializable
/// reads still answer from its own state. Once the others resume, the cluster writes again
/// and the isolated member catches up. Run twice: isolating the leader (the followers stop)
/// and isolating a follower (the leader and the other follower stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_refuses_linearizable_requests() {
    let seed = seed("minority_refuses_linearizable_requests");
    run_alone("minority_refuses_linearizable_requests", async {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_dir, mut cluster, _) = start_cluster().await;
        for isolate_leader in [true, false] {
            let leader = cluster.leader(ELECTION_WITHIN).await.expect("a leader");
            let followers = cluster.others(leader);
            let (isolated, stopped) = if isolate_leader {
                (leader, followers)
            } else {
                let f = followers[rng.random_range(0..followers.len())];
                (f, cluster.others(f))
            };
            let what = if isolate_leader { "leader" } else { "follower" };
            let name = cluster.members[isolated].name().to_string();
            let key = format!("/part/{what}");
            let mut c = connect(
                &cluster.members[isolated].endpoint,
                Some(PARTITION_CLIENT_TIMEOUT),
            )
            .await;
            let put = c
                .put(key.clone(), "before", None)
                .await
                .expect("put before the partition");
            let before_rev = put.header().expect("header").revision();
            // Linearizable: the isolated member has applied the put before the others stop.
            read_prefix(&mut c, &key, false)
                .await
                .expect("read before the partition");

            for &s in &stopped {
                cluster.members[s].pause();
            }
            let t = Instant::now();
            let mut c2 = c.clone();
            let mut c3 = c.clone();
            let bound = PARTITION_CLIENT_TIMEOUT + Duration::from_secs(1);
            let (write, read, local) = tokio::join!(
                async {
                    let r = tokio::time::timeout(bound, c.put(key.clone(), "during", None)).await;
                    (outcome(r), t.elapsed())
                },
                async {
                    let r = tokio::time::timeout(bound, c2.get(key.clone(), None)).await;
                    (outcome(r), t.elapsed())
                },
                async {
                    let opts = GetOptions::new().with_serializable();
                    let r = tokio::time::timeout(bound, c3.get(key.clone(), Some(opts))).await;
                    (r, t.elapsed())
                },
            );
            println!(
                "  isolated {what} {name}: write -> {:?} after {} ms; linearizable read -> {:?} \
                 after {} ms",
                write.0,
                write.1.as_millis(),
                read.0,
                read.1.as_millis()
            );
            assert!(
                refused_by_server(&write.0),
                "a write on the isolated {what} {name} must fail with etcd's timeout: {:?}",
                write.0
            );
            assert!(
                refused_by_server(&read.0),
                "a linearizable read on the isolated {what} {name} must fail with etcd's \
                 timeout: {:?}",
                read.0
            );
            let (local, local_took) = local;
            let local = local
                .expect("the serializable read answers in time")
                .expect("the serializable read answers");
            let kv = &local.kvs()[0];
            assert_eq!(
                (kv.value(), kv.mod_revision()),
                (&b"before"[..], before_rev),
                "the serializable read serves the isolated member's own state"
            );
            assert!(
                local_took < Duration::from_secs(1),
                "serializable reads do not wait for a quorum (took {local_took:?})"
            );

            for &s in &stopped {
                cluster.members[s].resume();
            }
            // The cluster writes again, through the member that was cut off...
            let healed = Instant::now();
            let after = loop {
                match c.put(key.clone(), "after", None).await {
                    Ok(r) => break r.header().expect("header").revision(),
                    Err(e) if healed.elapsed() < ELECTION_WITHIN => {
                        println!("  put after resuming: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("no write within {ELECTION_WITHIN:?} of resuming: {e}"),
                }
            };
            // ...and a write through another member reaches it, for local reads too.
            let mut other = client(&cluster, stopped[0]).await;
            let last = other
                .put(key.clone(), "from-other", None)
                .await
                .expect("put through a resumed member")
                .header()
                .expect("header")
                .revision();
            assert!(last > after);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_, rows) = read_prefix(&mut c, &key, true)
                    .await
                    .expect("serializable read");
                if rows.get(&key) == Some(&("from-other".to_string(), last)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not catch up within 5 s: {rows:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!(
                "  resumed: first write after {} ms, {name} caught up",
                healed.elapsed().as_millis()
            );
        }
    })
    .await;
}

/// kill -9 of all three members at once while clients write through each of them; after
/// restarting all, every acknowledged write is there on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_killed_and_restarted() {
    let seed = seed("all_members_killed_and_restarted");
    run_alone("all_members_killed_and_restarted", async {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_dir, mut cluster, _) = start_cluster().await;
        let writers = Writers::start(&cluster.endpoints(), "/all/", seed);
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        for m in &mut cluster.members {
            m.kill();
        }
        let logs = writers.finish().await;
        let acked: usize = logs.iter().map(|l| l.acks.len()).sum();
        println!("  killed all members; {acked} puts acknowledged before");
        assert!(
            acked >= 10,
            "too few writes before the kill to test anything: {acked}"
        );
        for m in &mut cluster.members {
            m.restart();
        }
        cluster
            .wait_ready(STARTUP)
            .await
            .expect("the cluster restarts");
        verify_everywhere(&cluster, &[0, 1, 2], "/all/", &logs).await;
    })
    .await;
}

/// Lease TTL (seconds) in the lease test: the minimum with default timeouts is 2 s, and the
/// test must outlive a couple of TTLs after the failover.
const LEASE_TTL: i64 = 3;

/// Leases live on the leader (keep-alives and TimeToLive are forwarded to it). After the
/// leader is killed: a lease kept alive through a follower survives, is never reported
/// gone, and keeps its key; a lease nobody renews expires about a TTL after the new leader
/// took over, its keys are deleted on every member, and a watch on a follower sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_across_leader_change() {
    let seed = seed("leases_across_leader_change");
    run_alone("leases_across_leader_change", async {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_dir, mut cluster, leader) = start_cluster().await;
        let followers = cluster.others(leader);
        let pick = rng.random_range(0..2);
        // Keep-alives go through one follower; grants, puts, TimeToLive and the watch
        // through the other.
        let (keeper_at, other) = (followers[pick], followers[1 - pick]);
        let mut c = client(&cluster, other).await;

        let kept = c.lease_grant(LEASE_TTL, None).await.expect("grant").id();
        c.put("/lease/kept", "k", Some(PutOptions::new().with_lease(kept)))
            .await
            .expect("put with the kept lease");
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_alive_loop(
            cluster.members[keeper_at].endpoint.clone(),
            kept,
            stop.clone(),
        ));
        // Past one TTL: every member's local deadline for the kept lease is stale now; only
        // the leader's has been renewed.
        tokio::time::sleep(Duration::from_millis(1000 * LEASE_TTL as u64 + 500)).await;

        let doomed = c.lease_grant(LEASE_TTL, None).await.expect("grant").id();
        let granted = Instant::now();
        for k in ["/lease/doomed/a", "/lease/doomed/b"] {
            c.put(k, "d", Some(PutOptions::new().with_lease(doomed)))
                .await
                .expect("put with the doomed lease");
        }
        let (_, mut watch) =
            watch_from_next_revision(&mut c, &cluster.members[other].endpoint, "/lease/").await;

        cluster.members[leader].kill();
        let killed_at = Instant::now();
        let new_leader = cluster.leader(ELECTION_WITHIN).await.expect("a new leader");
        println!(
            "  killed leader {}; new leader {} after {} ms",
            cluster.members[leader].name(),
            cluster.members[new_leader].name(),
            killed_at.elapsed().as_millis()
        );

        // The doomed lease's keys are deleted (one revision: the revoke) and the watch on
        // the follower says so.
        let deletes = recv_events(&mut watch, 2, Duration::from_secs(3 * LEASE_TTL as u64))
            .await
            .expect("the doomed lease's deletes reach the follower's watch");
        let expired_after = granted.elapsed();
        println!(
            "  doomed lease expired {} ms after its grant ({} ms after the kill)",
            expired_after.as_millis(),
            killed_at.elapsed().as_millis()
        );
        let keys: Vec<(EventType, &str)> =
            deletes.iter().map(|(t, k, _)| (*t, k.as_str())).collect();
        assert_eq!(
            keys,
            [
                (EventType::Delete, "/lease/doomed/a"),
                (EventType::Delete, "/lease/doomed/b")
            ]
        );
        assert_eq!(
            deletes[0].2, deletes[1].2,
            "one revocation deletes both keys at once"
        );
        assert!(
            killed_at.elapsed() >= Duration::from_secs(LEASE_TTL as u64),
            "the doomed lease expired {:?} after the kill, less than a TTL: the new leader \
             must give every lease a full TTL when it takes over",
            killed_at.elapsed()
        );

        // Well past two TTLs after the failover, the kept lease is alive on every member.
        let until = killed_at + Duration::from_secs(2 * LEASE_TTL as u64 + 2);
        tokio::time::sleep_until(until.into()).await;
        cluster.members[leader].restart();
        cluster
            .wait_ready_members(&[leader], STARTUP)
            .await
            .expect("the killed leader restarts");
        stop.store(true, Ordering::Relaxed);
        let log = keeper.await.expect("keep-alive task");
        println!(
            "  keep-alives through {}: {} answered, {} stream errors {:?}, {} answers TTL<=0",
            cluster.members[keeper_at].name(),
            log.answers,
            log.stream_errors.len(),
            log.stream_errors.iter().take(3).collect::<Vec<_>>(),
            log.gone.len()
        );
        // etcd's follower waits for the new leader instead of failing the stream; raftkv
        // must not break it either (clientv3 would recover, but only after a pause).
        assert!(
            log.stream_errors.is_empty(),
            "the keep-alive stream through a follower failed during the failover: {:?}",
            log.stream_errors
        );
        assert!(
            log.gone.is_empty(),
            "a keep-alive answered that the kept lease was gone (a client then stops renewing \
             it): {:?}",
            log.gone
        );
        for m in 0..MEMBERS {
            let name = cluster.members[m].name();
            let mut c = client(&cluster, m).await;
            let ttl = c
                .lease_time_to_live(kept, None)
                .await
                .unwrap_or_else(|e| panic!("TimeToLive through {name}: {e}"));
            assert!(ttl.ttl() > 0, "kept lease on {name}: TTL {}", ttl.ttl());
            let (_, rows) = read_prefix(&mut c, "/lease/", false).await.unwrap();
            let keys: Vec<&str> = rows.keys().map(String::as_str).collect();
            assert_eq!(keys, ["/lease/kept"], "keys left on {name}");
            let doomed_ttl = c.lease_time_to_live(doomed, None).await.expect("ttl").ttl();
            assert_eq!(doomed_ttl, -1, "the doomed lease is gone on {name}");
        }
        // Nothing else happened under the prefix: in particular the kept key was not deleted.
        let extra = recv_events(&mut watch, 1, Duration::from_millis(300)).await;
        assert!(extra.is_err(), "unexpected events: {extra:?}");
    })
    .await;
}

/// What the keep-alive client saw.
#[derive(Default)]
struct KeepAliveLog {
    answers: usize,
    /// Stream failures (the client reopens the stream, as etcd's clientv3 does).
    stream_errors: Vec<String>,
    /// Answers saying the lease does not exist (TTL <= 0), with when they came.
    gone: Vec<String>,
}

/// Renews `id` through `endpoint` every 250 ms until `stop`, reopening the stream after a
/// failure like clientv3. Renewing more often than clientv3 (TTL/3) makes it likelier to
/// hit short windows during the failover.
async fn keep_alive_loop(endpoint: String, id: i64, stop: Arc<AtomicBool>) -> KeepAliveLog {
    let mut log = KeepAliveLog::default();
    let started = Instant::now();
    let mut client = connect(&endpoint, None).await;
    while !stop.load(Ordering::Relaxed) {
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(id)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                let e = e.to_string();
                if e.contains("lease not found") {
                    // etcd-client's reading of a first answer with TTL <= 0.
                    log.gone
                        .push(format!("{} ms: {e}", started.elapsed().as_millis()));
                } else {
                    log.stream_errors.push(e);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                log.stream_errors.push("opening timed out".into());
                continue;
            }
        };
        log.answers += 1;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Err(e) = keeper.keep_alive().await {
                log.stream_errors.push(e.to_string());
                break;
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => log.answers += 1,
                Ok(Ok(Some(r))) => log.gone.push(format!(
                    "{} ms: TTL {}",
                    started.elapsed().as_millis(),
                    r.ttl()
                )),
                Ok(Ok(None)) => {
                    log.stream_errors.push("stream closed".into());
                    break;
                }
                Ok(Err(e)) => {
                    log.stream_errors.push(e.to_string());
                    break;
                }
                Err(_) => {
                    log.stream_errors.push("no answer in time".into());
                    break;
                }
            }
        }
    }
    log
}

/// Reads events until `n` arrived, as (type, key, mod revision); `Err` with what arrived if
/// the stream ends or `within` passes first.
async fn recv_events(
    watch: &mut WatchStream,
    n: usize,
    within: Duration,
) -> Result<Vec<(EventType, String, i64)>, Vec<(EventType, String, i64)>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout_at(deadline, watch.message()).await {
            Ok(Ok(Some(msg))) => {
                assert!(!msg.canceled(), "watch canceled: {:?}", msg.cancel_reason());
                got.extend(msg.events().iter().filter_map(|ev| {
                    let kv = ev.kv()?;
                    Some((
                        ev.event_type(),
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.mod_revision(),
                    ))
                }));
            }
            _ => return Err(got),
        }
    }
    Ok(got)
}

/// A watch on a follower sees the writes made through the other two members (two writers
/// at once), each exactly once, in revision order, with no gaps; and a second watch that
/// starts in the past on the other follower replays the same history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watch_sees_every_write_in_order() {
    let seed = seed("follower_watch_sees_every_write_in_order");
    run_alone("follower_watch_sees_every_write_in_order", async {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_dir, cluster, leader) = start_cluster().await;
        let followers = cluster.others(leader);
        let watcher = followers[rng.random_range(0..2)];
        let writers_at: Vec<usize> = cluster.others(watcher);
        let mut c = client(&cluster, watcher).await;
        let (start, mut watch) =
            watch_from_next_revision(&mut c, &cluster.members[watcher].endpoint, "/w/").await;

        // Two writers at once, through the leader and the other follower; every third
        // operation deletes the key written before it.
        const OPS: usize = 40;
        let tasks: Vec<_> = writers_at
            .iter()
            .map(|&m| {
                let endpoint = cluster.members[m].endpoint.clone();
                let name = cluster.members[m].name().to_string();
                tokio::spawn(async move {
                    let mut c = connect(&endpoint, Some(REQUEST_TIMEOUT)).await;
                    let mut done = Vec::new();
                    for i in 0..OPS {
                        if i % 3 == 2 {
                            let key = format!("/w/{name}/{}", i - 1);
                            let r = c.delete(key.clone(), None).await.expect("delete");
                            assert_eq!(r.deleted(), 1);
                            done.push((EventType::Delete, key, r.header().unwrap().revision()));
                        } else {
                            let key = format!("/w/{name}/{i}");
                            let r = c.put(key.clone(), "x", None).await.expect("put");
                            done.push((EventType::Put, key, r.header().unwrap().revision()));
                        }
                    }
                    done
                })
            })
            .collect();
        let mut want = Vec::new();
        for t in tasks {
            want.extend(t.await.expect("writer task"));
        }
        want.sort_by_key(|(_, _, rev)| *rev);
        let revs: Vec<i64> = want.iter().map(|(_, _, r)| *r).collect();
        assert_eq!(
            revs,
            (start..start + revs.len() as i64).collect::<Vec<_>>(),
            "each operation took one revision, and nothing else wrote"
        );

        let got = recv_events(&mut watch, want.len(), Duration::from_secs(10)).await;
        let got = got.unwrap_or_else(|got| {
            panic!(
                "the follower's watch delivered {} of {} events",
                got.len(),
                want.len()
            )
        });
        assert_eq!(
            got,
            want,
            "events on {} (the watching follower)",
            cluster.members[watcher].name()
        );
        let extra = recv_events(&mut watch, 1, Duration::from_millis(300)).await;
        assert!(extra.is_err(), "events beyond the writes: {extra:?}");

        // Replay from the past on the other follower.
        let replayer = cluster
            .others(leader)
            .into_iter()
            .find(|&f| f != watcher)
            .unwrap();
        let mut replay = connect(&cluster.members[replayer].endpoint, None)
            .await
            .watch(
                "/w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await
            .expect("replaying watch");
        let replayed = recv_events(&mut replay, want.len(), Duration::from_secs(10))
            .await
            .unwrap_or_else(|got| panic!("replay delivered {} of {}", got.len(), want.len()));
        assert_eq!(
            replayed,
            want,
            "replayed history on {}",
            cluster.members[replayer].name()
        );
        println!(
            "  {} events in order on {} (live) and {} (replay)",
            want.len(),
            cluster.members[watcher].name(),
            cluster.members[replayer].name()
        );
    })
    .await;
}

/// etcd's MoveLeader: leadership goes to the chosen voter quickly, the cluster keeps taking
/// writes, and a transferee that is not a member is refused with etcd's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_transfers_leadership() {
    run_alone("move_leader_transfers_leadership", async {
        let (_dir, mut cluster, leader) = start_cluster().await;
        assert!(leader < MEMBERS);
        for round in 0..2 {
            let current = cluster
                .leader(Duration::from_secs(10))
                .await
                .expect("a leader");
            let target = cluster.others(current)[round % 2];
            let target_id = cluster.member_id(target).expect("member id");
            let mut on_leader = client(&cluster, current).await;
            let started = Instant::now();
            on_leader.move_leader(target_id).await.unwrap_or_else(|e| {
                panic!("move leader to {}: {e}", cluster.members[target].name())
            });
            println!("round {round}: moved leadership in {:?}", started.elapsed());
            let now = cluster
                .leader(Duration::from_secs(10))
                .await
                .expect("a leader");
            assert_eq!(now, target, "the transferee leads");
            let mut c = client(&cluster, current).await;
            c.put(format!("/move/{round}"), "v", None)
                .await
                .expect("writes go on through the old leader");
        }
        // Table: (ask the leader?, expected error) — etcd answers a follower "not leader"
        // and the leader "bad leader transferee" for an ID that is not a voter.
        let current = cluster
            .leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        let follower = cluster.others(current)[0];
        for (member, want) in [
            (current, "etcdserver: bad leader transferee"),
            (follower, "etcdserver: not leader"),
        ] {
            let mut c = client(&cluster, member).await;
            let err = c.move_leader(0x1234).await.expect_err("refused");
            assert!(
                err.to_string().contains(want),
                "asked {}: {err}",
                cluster.members[member].name()
            );
        }
    })
    .await;
}

/// Polls `grpc.health.v1.Health/Check` ("") on `endpoint` until it reports `want`; the
/// statuses seen on the way, or the last error, explain a failure.
async fn wait_for_health(
    endpoint: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
    within: Duration,
) -> Result<Duration, String> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let started = Instant::now();
    let mut last = String::from("no answer");
    while started.elapsed() < within {
        let check = client.check(HealthCheckRequest::default());
        match tokio::time::timeout(Duration::from_secs(1), check).await {
            Ok(Ok(r)) if r.get_ref().status() == want => return Ok(started.elapsed()),
            Ok(Ok(r)) => last = format!("{:?}", r.get_ref().status()),
            Ok(Err(s)) => last = format!("{s}"),
            Err(_) => last = "timed out".to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not {want:?} within {within:?}; last: {last}"))
}

/// The gRPC health service says NOT_SERVING on a member cut off from the others (it knows
/// no leader) and SERVING again once they are back, as etcd's `/health` rule has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_the_leader() {
    use tonic_health::pb::health_check_response::ServingStatus;
    run_alone("grpc_health_follows_the_leader", async {
        let (_dir, mut cluster, leader) = start_cluster().await;
        let follower = cluster.others(leader)[0];
        let endpoint = cluster.members[follower].endpoint.clone();
        wait_for_health(&endpoint, ServingStatus::Serving, ELECTION_WITHIN)
            .await
            .expect("a member of a healthy cluster serves");
        let others = cluster.others(follower);
        for &o in &others {
            cluster.members[o].pause();
        }
        let took = wait_for_health(&endpoint, ServingStatus::NotServing, 2 * ELECTION_WITHIN)
            .await
            .expect("a member without a leader does not serve");
        println!(
            "  isolated follower NOT_SERVING after {} ms",
            took.as_millis()
        );
        for &o in &others {
            cluster.members[o].resume();
        }
        let took = wait_for_health(&endpoint, ServingStatus::Serving, ELECTION_WITHIN)
            .await
            .expect("the member serves again once a leader is back");
        println!("  SERVING again {} ms after resuming", took.as_millis());
    })
    .await;
}
