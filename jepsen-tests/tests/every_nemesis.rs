//! Every nemesis, one short run each, against a 3-member raftkv: the register workload
//! must stay VALID while each kind of fault is injected at least twice. Plus the disk
//! self-test: raftkv with its hidden `--experimental-unsafe-no-fsync` acknowledges Raft
//! log appends before they are on disk, and a power loss on lazy disks must be caught.
//!
//! The runs go two at a time (the machine has 2 cores); about 90 s of wall time in all.
//! The lazy-disk runs need root and /dev/fuse, as CI has.

mod common;

use std::time::Duration;

use common::{config, raftkv_binary, run_bounded, run_expecting_valid, unsafe_raftkv};
use jepsen_tests::checker::Verdict;
use jepsen_tests::cluster::Target;
use jepsen_tests::nemesis::NemesisSpec;
use jepsen_tests::runner::RunConfig;

/// Every fault the harness has, by `--nemesis` name (the `partition` and `all`
/// shorthands pick among these).
const FAULTS: &[&str] = &[
    "kill",
    "kill-leader",
    "pause",
    "pause-leader",
    "partition-halves",
    "partition-leader",
    "partition-bridge",
    "member",
    "disk-loss",
    "lose-unsynced",
];

/// The lazy disk is a FUSE mount made by the harness: it needs /dev/fuse and root. CI has
/// both; elsewhere the lazy-disk runs say loudly that they did not run.
fn lazy_disk_available() -> bool {
    let ok = std::path::Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        println!("SKIPPED lose-unsynced runs: they need /dev/fuse and root");
    }
    ok
}

fn short_run(fault: &str, seed: u64, store: &std::path::Path) -> RunConfig {
    let mut cfg = config(
        Target::Raftkv,
        3,
        raftkv_binary(),
        store.to_path_buf(),
        seed,
    );
    cfg.nemesis = fault.parse::<NemesisSpec>().expect("nemesis spec");
    cfg.time_limit = Duration::from_secs(7);
    cfg.nemesis_interval = Duration::from_millis(1500);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nemesis_leaves_3_member_raftkv_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lane = |faults: Vec<(usize, &'static str)>| {
        let store = dir.path().to_path_buf();
        async move {
            for (i, fault) in faults {
                println!("== nemesis {fault}");
                run_expecting_valid(short_run(fault, 100 + i as u64, &store), fault, 40).await;
            }
        }
    };
    let lazy = lazy_disk_available();
    let (even, odd): (Vec<_>, Vec<_>) = FAULTS
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, f)| lazy || *f != "lose-unsynced")
        .partition(|(i, _)| i % 2 == 0);
    tokio::join!(lane(even), lane(odd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_no_fsync_is_caught_by_power_loss() {
    if !lazy_disk_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = unsafe_raftkv(dir.path(), "--experimental-unsafe-no-fsync");
    let mut cfg = short_run("lose-unsynced", 7, &dir.path().join("store"));
    cfg.binary = wrapper;
    cfg.time_limit = Duration::from_secs(10);
    let outcome = run_bounded(cfg).await;
    println!(
        "raftkv --experimental-unsafe-no-fsync x3: {:?}; faults {:?}; {:?}",
        outcome.report.verdict,
        outcome.faults(),
        outcome.report.notes
    );
    assert!(
        matches!(outcome.report.verdict, Verdict::Invalid { .. }),
        "acknowledged writes lost in a power loss went unnoticed: {:?}",
        outcome.report
    );
}
