//! Differential test: runs the same table of cases against real etcd 3.4 (the reference)
//! and the server under test (the subject), and requires every normalized response to be
//! equal.
//!
//! Both servers start once, with fresh data directories, and see every case in the same
//! order, so global revisions stay comparable. Each case writes under its own key prefix.
//! The subject is the `raftkv` binary, or etcd itself with `DIFF_TARGET=etcd` (which checks
//! that every case is deterministic and every mask is right). `DIFF_CASES=<substring>` runs
//! only the matching cases and `DIFF_VERBOSE=1` prints every rendering, for debugging.
//!
//! Layout: `differential/model.rs` (the case language), `exec.rs` (running a case on one
//! server), `ctl.rs` (etcdctl), `render.rs` (normalization and masks), `cases*.rs` (tables).
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
#[path = "differential/cases_ctl.rs"]
mod cases_ctl;
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
use std::time::{Duration, Instant};

use common::{Flavor, Server};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential() {
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
    let mut reference = Server::spawn(
        Flavor::Etcd,
        &dirs.path().join("reference"),
        &dirs.path().join("reference.log"),
    );
    let mut subject = Server::spawn(
        subject_flavor,
        &dirs.path().join("subject"),
        &dirs.path().join("subject.log"),
    );
    let (reference_client, subject_client) =
        tokio::join!(reference.wait_ready(STARTUP), subject.wait_ready(STARTUP));
    let reference_client =
        reference_client.unwrap_or_else(|e| panic!("the reference etcd did not start: {e}"));
    let subject_client = subject_client.unwrap_or_else(|e| {
        // Every case fails when the subject cannot even start; say so in the usual form.
        println!("differential: 0 passed, {} failed", cases.len());
        panic!("the subject ({}) did not start: {e}", subject_flavor.name())
    });
    let mut ref_session = Session::new(reference_client, reference.endpoint.clone());
    let mut sub_session = Session::new(subject_client, subject.endpoint.clone());

    println!(
        "differential: {} cases, reference etcd vs subject {}",
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

    if let Some(status) = subject.exited() {
        println!(
            "\nthe subject exited during the run ({status})\n{}",
            subject.log_tail()
        );
    }
    for m in &mismatches {
        println!(
            "\nMISMATCH in {}\n  op:        {}\n  reference: {}\n  subject:   {}",
            m.case, m.op, m.reference, m.subject
        );
    }
    println!("\nran in {:.1} s", started.elapsed().as_secs_f64());
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
