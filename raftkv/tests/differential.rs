//! Differential test: runs the same table of cases against real etcd 3.4 (the reference)
//! and the server under test (the subject), and requires every normalized response to be
//! equal.
//!
//! Both servers start once, with fresh data directories, and see every case in the same
//! order, so global revisions stay comparable. Each case writes under its own key prefix.
//!
//! Two comparisons run: `differential` (one member each side; `DIFF_MEMBERS=<n>` makes it
//! n members) and `differential_cluster` (3 members each side). With several members, both
//! sides are clusters — a real 3-member etcd as the reference — and each client talks to a
//! follower, so every write is forwarded, every linearizable read waits for the leader's
//! read index, keep-alives and TimeToLive are forwarded and watches are served by a member
//! that learns of writes through replication. No case needs masking in cluster mode: the
//! Status rendering (`leader_is_self`) is false on both sides. The two comparisons run one
//! after the other (lease-expiry and watch cases are timing-sensitive).
//! The subject is the `raftkv` binary, or etcd itself with `DIFF_TARGET=etcd` (which checks
//! that every case is deterministic and every mask is right). `DIFF_CASES=<substring>` runs
//! only the matching cases and `DIFF_VERBOSE=1` prints every rendering, for debugging.
//!
//! Layout: `differential/model.rs` (the case language), `exec.rs` (running a case on one
//! server), `ctl.rs` (etcdctl), `render.rs` (normalization and masks), `cases*.rs` (tables;
//! `cases_elect.rs`: v3election, v3lock, the JSON gateway and gRPC health).
//! Every mask is documented where it is applied: `render.rs` and `ctl.rs` (module docs) and
//! `exec.rs` (watch item order, Status invariants, Go-map-ordered lease listings).
//!
//! Requests go through etcd-client, so they are what a real client sends; two consequences:
//! a (KEY, ASCEND) sort goes on the wire as (KEY, NONE), exactly as etcd's own clientv3
//! does it, and LeaseKeepAlive's first answer is consumed by the client (a second renewal is
//! rendered instead, and a TTL <= 0 answer surfaces as etcd-client's "lease not found").

mod common;

#[path = "differential/cases.rs"]
mod cases;
#[path = "differential/cases_auth.rs"]
mod cases_auth;
#[path = "differential/cases_auth_elect.rs"]
mod cases_auth_elect;
#[path = "differential/cases_ctl.rs"]
mod cases_ctl;
#[path = "differential/cases_elect.rs"]
mod cases_elect;
#[path = "differential/cases_kv.rs"]
mod cases_kv;
#[path = "differential/cases_lease.rs"]
mod cases_lease;
#[path = "differential/cases_txn.rs"]
mod cases_txn;
#[path = "differential/cases_watch.rs"]
mod cases_watch;
#[path = "differential/ctl.rs"]
mod ctl;
#[path = "differential/exec.rs"]
mod exec;
#[path = "differential/model.rs"]
mod model;
#[path = "differential/render.rs"]
mod render;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, Flavor, Server, Timing};
use etcd_client::Client;
use exec::Session;
use render::{describe, equivalent};

/// Generous for a debug-built subject on a loaded 2-core machine; etcd needs about a second.
const STARTUP: Duration = Duration::from_secs(30);

/// One operation whose renderings differ.
struct Mismatch {
    case: String,
    op: String,
    reference: String,
    subject: String,
}

/// One comparison at a time (see the module doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential() {
    let members = match std::env::var("DIFF_MEMBERS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("DIFF_MEMBERS={n:?}: expected a member count")),
        Err(_) => 1,
    };
    compare(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_cluster() {
    compare(3).await;
}

/// One side of the comparison: a single server, or a cluster whose client talks to a
/// follower.
enum Side {
    Single(Server),
    Cluster(Cluster, usize),
}

impl Side {
    async fn start(flavor: Flavor, members: usize, dir: &Path) -> Result<(Side, Client), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if members == 1 {
            let mut server = Server::spawn(flavor, &dir.join("data"), &dir.join("server.log"));
            let client = server.wait_ready(STARTUP).await?;
            return Ok((Side::Single(server), client));
        }
        let mut cluster = Cluster::spawn(flavor, members, dir, Timing::default());
        cluster.wait_ready(STARTUP).await?;
        let leader = cluster.leader(STARTUP).await?;
        let follower = cluster.others(leader)[0];
        let client = cluster.members[follower].wait_ready(STARTUP).await?;
        Ok((Side::Cluster(cluster, follower), client))
    }

    /// The endpoint the session's client (and etcdctl) talks to.
    fn endpoint(&self) -> String {
        match self {
            Side::Single(s) => s.endpoint.clone(),
            Side::Cluster(c, follower) => c.members[*follower].endpoint.clone(),
        }
    }

    /// What went wrong with the processes, if anything did, with their log tails.
    fn exited(&mut self) -> Option<String> {
        let servers: Vec<&mut Server> = match self {
            Side::Single(s) => vec![s],
            Side::Cluster(c, _) => c.members.iter_mut().collect(),
        };
        let report: Vec<String> = servers
            .into_iter()
            .filter_map(|s| {
                let status = s.exited()?;
                Some(format!("{} exited ({status})\n{}", s.name(), s.log_tail()))
            })
            .collect();
        (!report.is_empty()).then(|| report.join("\n"))
    }
}

async fn compare(members: usize) {
    let _serial = SERIAL.lock().await;
    let subject_flavor = common::subject_flavor();
    let filter = std::env::var("DIFF_CASES").unwrap_or_default();
    let verbose = std::env::var_os("DIFF_VERBOSE").is_some();
    let cases: Vec<model::Case> = cases::all()
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .collect();
    let mut names = HashSet::new();
    for c in &cases {
        // Names are key prefixes: a duplicate would make two cases share keys.
        assert!(names.insert(&c.name), "duplicate case name {}", c.name);
    }

    let dirs = tempfile::tempdir().expect("creating the data-dir parent");
    let (ref_dir, sub_dir) = (dirs.path().join("reference"), dirs.path().join("subject"));
    let (reference, subject) = tokio::join!(
        Side::start(Flavor::Etcd, members, &ref_dir),
        Side::start(subject_flavor, members, &sub_dir),
    );
    let (mut reference, reference_client) =
        reference.unwrap_or_else(|e| panic!("the reference etcd did not start: {e}"));
    let (mut subject, subject_client) = subject.unwrap_or_else(|e| {
        // Every case fails when the subject cannot even start; say so in the usual form.
        println!("differential: 0 passed, {} failed", cases.len());
        panic!("the subject ({}) did not start: {e}", subject_flavor.name())
    });
    let mut ref_session = Session::new(reference_client, reference.endpoint());
    let mut sub_session = Session::new(subject_client, subject.endpoint());

    let shape = if members == 1 {
        "single members".to_string()
    } else {
        format!("{members}-member clusters, clients on a follower")
    };
    println!(
        "differential: {} cases, reference etcd vs subject {} ({shape})",
        cases.len(),
        subject_flavor.name()
    );
    let started = Instant::now();
    let mut mismatches = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        let t = Instant::now();
        // Both sides run concurrently: cases that wait (lease expiry) wait once.
        let (r, s) = tokio::join!(ref_session.run_case(case), sub_session.run_case(case));
        let mut case_mismatches: Vec<Mismatch> = case
            .ops
            .iter()
            .zip(r.lines.iter().zip(&s.lines))
            .filter(|(_, (a, b))| !equivalent(a, b))
            .map(|(op, (a, b))| Mismatch {
                case: case.name.clone(),
                op: describe(op),
                reference: a.clone(),
                subject: b.clone(),
            })
            .collect();
        if r.end != s.end {
            case_mismatches.push(Mismatch {
                case: case.name.clone(),
                op: "(revision after the case)".to_string(),
                reference: r.end.clone(),
                subject: s.end.clone(),
            });
        }
        let verdict = if case_mismatches.is_empty() {
            passed += 1;
            "ok  "
        } else {
            failed += 1;
            "FAIL"
        };
        println!(
            "  {verdict} {:<55} {:>3} ops {:>6} ms",
            case.name,
            case.ops.len(),
            t.elapsed().as_millis()
        );
        if verbose {
            for (op, (a, b)) in case.ops.iter().zip(r.lines.iter().zip(&s.lines)) {
                println!("      {}\n        ref: {a}\n        sub: {b}", describe(op));
            }
            println!("      {}", r.end);
        }
        mismatches.extend(case_mismatches);
    }

    if let Some(report) = subject.exited() {
        println!("\nthe subject exited during the run:\n{report}");
    }
    // Exits only: the reference's clients never fail, so this only explains odd renderings.
    if let Some(report) = reference.exited() {
        println!("\nthe reference exited during the run:\n{report}");
    }
    for m in &mismatches {
        println!(
            "\nMISMATCH in {}\n  op:        {}\n  reference: {}\n  subject:   {}",
            m.case, m.op, m.reference, m.subject
        );
    }
    println!(
        "\nran in {:.1} s ({shape})",
        started.elapsed().as_secs_f64()
    );
    println!("differential: {passed} passed, {failed} failed");
    assert!(
        failed == 0,
        "{failed} of {} cases differ from etcd (details above)",
        cases.len()
    );
    assert!(
        passed > 0,
        "no case ran (DIFF_CASES={filter:?} matched nothing)"
    );
}
