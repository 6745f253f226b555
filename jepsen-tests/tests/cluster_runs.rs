//! End-to-end runs against real servers: a short register workload with the kill
//! nemesis against etcd (3 members) and raftkv (1 member), list-append under partitions
//! through the peer proxy against etcd, and register under partitions against a 3-member
//! raftkv, each expected VALID; plus the self-test: the same partitions against raftkv in
//! its unsafe stale-read mode must be found INVALID, so we know the checker can fail. The tests
//! run concurrently (about 15 s of wall time in all) and everything they start is killed
//! when the run ends, or when a test fails (the cluster's Drop).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use jepsen_tests::checker::Verdict;
use jepsen_tests::cli::on_path;
use jepsen_tests::cluster::Target;
use jepsen_tests::nemesis::NemesisSpec;
use jepsen_tests::runner::{self, RunConfig};
use jepsen_tests::workload::WorkloadKind;

/// The raftkv binary cargo built for this workspace: test executables live in
/// `<target>/<profile>/deps/`, the binary in `<target>/<profile>/`. Falls back to the
/// shared build in /var/cache/raftkv/bin. Absent both, the test fails: a missing server
/// must not turn into a silently skipped test.
fn raftkv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let candidates: Vec<PathBuf> = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("raftkv"))
        .into_iter()
        .chain([PathBuf::from("/var/cache/raftkv/bin/raftkv")])
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "no raftkv binary found (looked at {candidates:?}); build it with `cargo build -p raftkv` first"
        )
    })
}

fn etcd_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcd");
    if p.is_file() {
        return p;
    }
    on_path("etcd").expect("etcd not found at /usr/bin/etcd or on PATH; run scripts/setup.sh")
}

fn config(target: Target, members: usize, binary: PathBuf, store: PathBuf, seed: u64) -> RunConfig {
    RunConfig {
        workload: WorkloadKind::Register,
        nemesis: "kill".parse::<NemesisSpec>().expect("nemesis spec"),
        time_limit: Duration::from_secs(12),
        rate: 40.0,
        concurrency: 4,
        seed,
        target,
        members,
        binary,
        store,
        nemesis_interval: Duration::from_secs(2),
        op_timeout: Duration::from_secs(2),
        recovery_time: Duration::from_secs(20),
        heartbeat_ms: 100,
        election_ms: 1000,
        progress: false,
        keep_data: false,
        watch_progress_requests: true,
    }
}

async fn run_bounded(cfg: RunConfig) -> runner::RunOutcome {
    let name = format!("{} x{}", cfg.target.name(), cfg.members);
    println!("{name}: testing {}", cfg.binary.display());
    // A hard bound on the whole run, so a hang fails the test instead of CI.
    tokio::time::timeout(Duration::from_secs(90), runner::run(cfg))
        .await
        .unwrap_or_else(|_| panic!("{name}: run did not finish within 90 s"))
        .unwrap_or_else(|e| panic!("{name}: run failed: {e}"))
}

async fn run_expecting_valid(cfg: RunConfig, fault: &str) {
    let name = format!("{} x{}", cfg.target.name(), cfg.members);
    let outcome = run_bounded(cfg).await;
    println!(
        "{name}: {:?} in {:.1}s; {} ok / {} fail / {} info; faults {:?}; {:?}",
        outcome.report.verdict,
        outcome.elapsed.as_secs_f64(),
        outcome.stats.ok,
        outcome.stats.fail,
        outcome.stats.info,
        outcome.faults(),
        outcome.report.notes
    );
    assert_eq!(
        outcome.report.verdict,
        Verdict::Valid,
        "{name}: {:?}",
        outcome.report
    );
    assert!(
        outcome.stats.ok >= 100,
        "{name}: too few operations succeeded: {:?}",
        outcome.stats
    );
    assert!(
        outcome.faults().get(fault).copied().unwrap_or(0) >= 2,
        "{name}: the nemesis should have injected {fault} at least twice: {:?}",
        outcome.nemesis
    );
    assert!(outcome.history.is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_kills_on_etcd_3_members_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_expecting_valid(
        config(Target::Etcd, 3, etcd_binary(), dir.path().to_path_buf(), 11),
        "kill",
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
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_partitions_on_etcd_3_members_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(Target::Etcd, 3, etcd_binary(), dir.path().to_path_buf(), 13);
    cfg.workload = WorkloadKind::Append;
    cfg.nemesis = "partition".parse::<NemesisSpec>().expect("nemesis spec");
    run_expecting_valid(cfg, "partition").await;
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
    run_expecting_valid(cfg, "partition").await;
}

/// raftkv's hidden `--experimental-unsafe-stale-reads` serves linearizable reads from local
/// state; under partitions an isolated member answers stale data, which must be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_stale_reads_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("raftkv-unsafe");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' --experimental-unsafe-stale-reads \"$@\"\n",
            raftkv_binary().display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod wrapper");
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
