//! Shared by the end-to-end test files: locating the servers, a short run
//! configuration, and running a workload with a hard time bound.
#![allow(dead_code)] // each test file uses a different subset

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
pub fn raftkv_binary() -> PathBuf {
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

pub fn etcd_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcd");
    if p.is_file() {
        return p;
    }
    on_path("etcd").expect("etcd not found at /usr/bin/etcd or on PATH; run scripts/setup.sh")
}

pub fn config(
    target: Target,
    members: usize,
    binary: PathBuf,
    store: PathBuf,
    seed: u64,
) -> RunConfig {
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

pub async fn run_bounded(cfg: RunConfig) -> runner::RunOutcome {
    let name = format!("{} x{}", cfg.target.name(), cfg.members);
    println!("{name}: testing {}", cfg.binary.display());
    // A hard bound on the whole run, so a hang fails the test instead of CI.
    tokio::time::timeout(Duration::from_secs(90), runner::run(cfg))
        .await
        .unwrap_or_else(|_| panic!("{name}: run did not finish within 90 s"))
        .unwrap_or_else(|e| panic!("{name}: run failed: {e}"))
}

/// Copies a failed run's directory (history, member logs) out of the test's temporary store,
/// which is deleted when the test unwinds, to `$CARGO_TARGET_DIR/jepsen-failures/` (the
/// system's temporary directory without it), so that the failing history can be read.
pub fn keep(run_dir: &Path) -> PathBuf {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("jepsen-failures");
    let to = root.join(run_dir.file_name().unwrap_or_default());
    let copied = std::fs::create_dir_all(&root).and_then(|()| {
        std::process::Command::new("cp")
            .arg("-a")
            .arg(run_dir)
            .arg(&to)
            .status()
    });
    match copied {
        Ok(s) if s.success() => to,
        other => {
            println!("could not keep {}: {other:?}", run_dir.display());
            run_dir.to_path_buf()
        }
    }
}

pub async fn run_expecting_valid(cfg: RunConfig, fault: &str, min_ok: usize) {
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
    if outcome.report.verdict != Verdict::Valid {
        println!(
            "{name}: history and logs kept in {}",
            keep(&outcome.dir).display()
        );
    }
    assert_eq!(
        outcome.report.verdict,
        Verdict::Valid,
        "{name}: {:?}",
        outcome.report
    );
    assert!(
        outcome.stats.ok >= min_ok,
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

/// A script in `dir` that runs raftkv with `flag` added: how the self-tests start raftkv
/// in one of its hidden unsafe modes through the unchanged harness.
pub fn unsafe_raftkv(dir: &Path, flag: &str) -> PathBuf {
    let wrapper = dir.join("raftkv-unsafe");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' {flag} \"$@\"\n",
            raftkv_binary().display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod wrapper");
    wrapper
}
