//! Smoke runs of `bench compare` against real etcd and the raftkv binary: a handful of
//! operations per step, checking that the table and the JSON come out with nonzero
//! throughput and zero errors for both servers. Bounded in time: a run that hangs is
//! stopped (SIGTERM, so bench kills its servers; then SIGKILL) and fails the test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Upper bound of one smoke run; the runs take ~10 s on a quiet 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Fallback when the workspace's own debug build of raftkv is not there (e.g. when only
/// this package's tests were built).
const PREBUILT_RAFTKV: &str = "/var/cache/raftkv/bin/raftkv-debug-cluster";

const ETCD: &str = "/usr/bin/etcd";

/// `<target dir>/debug/raftkv`, which `cargo test --workspace` builds next to this test's
/// directory (`<target dir>/debug/deps/`), else the prebuilt fallback.
fn raftkv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let built = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join("raftkv"));
    let candidates: Vec<PathBuf> = built
        .into_iter()
        .chain([PathBuf::from(PREBUILT_RAFTKV)])
        .collect();
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no raftkv binary for the smoke test: build it with `cargo build -p raftkv` \
                 (looked at {candidates:?})"
            )
        })
}

/// Kills the bench process if the test panics before it exits.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            stop(child);
        }
    }
}

/// SIGTERM first, so that bench stops the servers it started, then SIGKILL.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `bench compare` with `args` (whitespace-separated) plus the binaries and `--out <dir>/results.json`, and
/// returns its stdout (the table) and the parsed JSON.
fn run_compare(dir: &Path, args: &str) -> (String, serde_json::Value) {
    let args: Vec<&str> = args.split_whitespace().collect();
    assert!(Path::new(ETCD).is_file(), "etcd 3.4 is expected at {ETCD}");
    let json_path = dir.join("results.json");
    // Files rather than pipes: nothing to drain while waiting with a deadline.
    let (stdout_path, stderr_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let stdout = File::create(&stdout_path).expect("creating stdout.txt");
    let stderr = File::create(&stderr_path).expect("creating stderr.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("compare")
        .args(&args)
        .arg("--raftkv-bin")
        .arg(raftkv_binary())
        .args(["--etcd-bin", ETCD])
        .arg("--out")
        .arg(&json_path)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("starting bench");
    let mut guard = Guard(Some(child));
    let start = Instant::now();
    let status = loop {
        let child = guard.0.as_mut().expect("child present until taken");
        if let Some(status) = child.try_wait().expect("polling bench") {
            guard.0 = None;
            break status;
        }
        if start.elapsed() >= RUN_LIMIT {
            drop(guard);
            panic!(
                "bench compare did not finish within {RUN_LIMIT:?}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let table = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    eprintln!("bench compare {args:?} took {:?}\n{table}", start.elapsed());
    assert!(status.success(), "bench failed: {status}\n{stderr}");
    let json = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{stderr}", json_path.display()));
    let json: serde_json::Value = serde_json::from_str(&json).expect("results.json is JSON");
    (table, json)
}

/// Every (workload, clients) ran on both servers, acknowledged operations, made no errors,
/// and shows up in the table with a ratio row.
fn assert_sound(table: &str, json: &serde_json::Value, workloads: &[&str], clients: &[u64]) {
    assert!(table.starts_with("workload"), "no table header:\n{table}");
    let steps = json["steps"].as_array().expect("steps array");
    assert_eq!(steps.len(), workloads.len() * clients.len() * 2, "{table}");
    for step in steps {
        let what = format!(
            "{} {} clients={}",
            step["server"], step["workload"], step["clients"]
        );
        assert_eq!(
            step["errors"], 0,
            "{what}: {}\n{table}",
            step["first_error"]
        );
        assert!(step["acked"].as_u64().unwrap() > 0, "{what}\n{table}");
        assert!(
            step["throughput"].as_f64().unwrap() > 0.0,
            "{what}\n{table}"
        );
        assert!(step["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{what}");
    }
    for workload in workloads {
        assert!(table.contains(workload), "{workload} missing:\n{table}");
    }
    let comparisons = json["comparisons"].as_array().expect("comparisons array");
    assert_eq!(comparisons.len(), workloads.len() * clients.len());
    assert!(comparisons
        .iter()
        .all(|c| c["throughput"].as_f64().unwrap() > 0.0));
    assert_eq!(
        table.matches("raftkv/etcd").count(),
        comparisons.len(),
        "one ratio row per step:\n{table}"
    );
}

#[test]
fn every_workload_against_single_member_clusters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let workloads = [
        "put-rand",
        "put-seq",
        "range-lin",
        "range-ser",
        "txn-put",
        "mixed",
        "lease-keepalive",
        "watch",
    ];
    let list = workloads.join(",");
    let args = format!(
        "--members 1 --clients 1,4 --ops 40 --workload {list} --watch-puts 10 \
         --watch-put-rate 200 --range-keys 50 --verify-sample 20"
    );
    let (table, json) = run_compare(dir.path(), &args);
    assert_sound(&table, &json, &workloads, &[1, 4]);
    // Writes were read back and matched.
    let put = &json["steps"][0];
    assert_eq!(put["workload"], "put-rand");
    assert_eq!(put["verified"], 20);
}

#[test]
fn writes_and_reads_against_three_member_clusters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let workloads = ["put-rand", "range-lin"];
    let (table, json) = run_compare(
        dir.path(),
        "--members 3 --clients 1,4 --ops 40 --workload put-rand,range-lin --range-keys 20 \
         --verify-sample 20",
    );
    assert_sound(&table, &json, &workloads, &[1, 4]);
    assert_eq!(json["run"]["members"], 3);
}
