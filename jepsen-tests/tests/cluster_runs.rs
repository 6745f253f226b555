//! End-to-end runs against real servers: a short register workload with the kill
//! nemesis against etcd (3 members) and raftkv (1 member), list-append under partitions
//! through the peer proxy against etcd, and register under partitions against a 3-member
//! raftkv, each expected VALID; plus the self-test: the same partitions against raftkv in
//! its unsafe stale-read mode must be found INVALID, so we know the checker can fail. The tests
//! run concurrently (about 15 s of wall time in all) and everything they start is killed
//! when the run ends, or when a test fails (the cluster's Drop).

mod common;

use std::time::Duration;

use common::{config, etcd_binary, raftkv_binary, run_bounded, run_expecting_valid};
use jepsen_tests::checker::Verdict;
use jepsen_tests::cluster::Target;
use jepsen_tests::nemesis::NemesisSpec;
use jepsen_tests::workload::WorkloadKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_kills_on_etcd_3_members_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_expecting_valid(
        config(Target::Etcd, 3, etcd_binary(), dir.path().to_path_buf(), 11),
        "kill",
        100,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_kills_on_raftkv_1_member_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_expecting_valid(
        config(
            Target::Raftkv,
            1,
            raftkv_binary(),
            dir.path().to_path_buf(),
            12,
        ),
        "kill",
        100,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_partitions_on_etcd_3_members_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(Target::Etcd, 3, etcd_binary(), dir.path().to_path_buf(), 13);
    cfg.workload = WorkloadKind::Append;
    cfg.nemesis = "partition".parse::<NemesisSpec>().expect("nemesis spec");
    run_expecting_valid(cfg, "partition", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_partitions_on_raftkv_3_members_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(
        Target::Raftkv,
        3,
        raftkv_binary(),
        dir.path().to_path_buf(),
        1,
    );
    cfg.nemesis = "partition".parse::<NemesisSpec>().expect("nemesis spec");
    cfg.time_limit = Duration::from_secs(15);
    run_expecting_valid(cfg, "partition", 100).await;
}

/// raftkv's hidden `--experimental-unsafe-stale-reads` serves linearizable reads from local
/// state; under partitions an isolated member answers stale data, which must be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_stale_reads_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = common::unsafe_raftkv(dir.path(), "--experimental-unsafe-stale-reads");
    let store = dir.path().join("store");
    let mut cfg = config(Target::Raftkv, 3, wrapper, store, 1);
    cfg.nemesis = "partition".parse::<NemesisSpec>().expect("nemesis spec");
    cfg.time_limit = Duration::from_secs(15);
    let outcome = run_bounded(cfg).await;
    println!(
        "unsafe raftkv x3: {:?}; {:?}",
        outcome.report.verdict, outcome.report.notes
    );
    assert!(
        matches!(outcome.report.verdict, Verdict::Invalid { .. }),
        "stale reads during partitions went unnoticed: {:?}",
        outcome.report
    );
}
