//! The command-line contract: `check` re-checks a saved history and ends with a
//! machine-checkable `verdict:` line and a matching exit code; `run` refuses nonsense
//! (partitions of a single member) before starting anything.

use std::process::Command;

use jepsen_tests::history::{Event, Kind};
use jepsen_tests::workload::register::RegisterCall;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jepsen-tests"))
}

fn write_history(path: &std::path::Path, final_read: i64) {
    let rows = [
        (
            1,
            Kind::Invoke,
            RegisterCall::Write {
                key: "k".into(),
                value: 1,
            },
        ),
        (
            1,
            Kind::Ok,
            RegisterCall::Write {
                key: "k".into(),
                value: 1,
            },
        ),
        (
            2,
            Kind::Invoke,
            RegisterCall::Read {
                key: "k".into(),
                value: None,
            },
        ),
        (
            2,
            Kind::Ok,
            RegisterCall::Read {
                key: "k".into(),
                value: Some(final_read),
            },
        ),
    ];
    let text: String = rows
        .into_iter()
        .enumerate()
        .map(|(i, (process, kind, op))| {
            let ev = Event {
                index: i as u64,
                time_ns: i as u64,
                process,
                kind,
                op,
                error: None,
            };
            serde_json::to_string(&ev).expect("serialize") + "\n"
        })
        .collect();
    std::fs::write(path, text).expect("write history");
}

fn last_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn check_prints_the_verdict_last_and_exits_accordingly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.jsonl");
    let bad = dir.path().join("bad.jsonl");
    write_history(&good, 1);
    write_history(&bad, 3);

    let out = bin()
        .args(["check", "--workload", "register", "--history"])
        .arg(&good)
        .output()
        .expect("run");
    assert_eq!(last_line(&out), "verdict: VALID", "{out:?}");
    assert_eq!(out.status.code(), Some(0));

    let out = bin()
        .args(["check", "--workload", "register", "--history"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(last_line(&out), "verdict: INVALID", "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("anomaly:"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unreadable_history_is_an_error_not_a_verdict_of_valid() {
    let out = bin()
        .args([
            "check",
            "--workload",
            "register",
            "--history",
            "/nonexistent/history.jsonl",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(last_line(&out), "verdict: UNKNOWN");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/history.jsonl"));
}

#[test]
fn partitions_of_one_member_are_refused_up_front() {
    let out = bin()
        .args([
            "run",
            "--target",
            "etcd",
            "--etcd-bin",
            "/bin/true",
            "--members",
            "1",
            "--nemesis",
            "partition",
            "--time-limit",
            "1s",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --members 3"), "{err}");
}
