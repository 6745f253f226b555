//! The per-container shim (`nodeagent shim ...`, spawned by the runc runtime): the
//! long-lived parent of one container, so the container outlives agent restarts and its
//! exit status is not lost.
//!
//! It starts a new session, becomes a child subreaper (the container's init is reparented
//! to it once `runc create` exits), runs `runc create` with pipes as the container's
//! stdout/stderr, reports `ok` or `error: <message>` as one line on its own stdout (which
//! the agent reads, then closes), copies the pipes into the CRI log file ([`crate::logs`])
//! and, when the container's init exits, writes the exit file.
//!
//! Exit file (`<bundle>/exit.json`, written atomically via rename), the one record of how
//! a container ended:
//!
//! ```json
//! {"exitCode": 137, "signal": 9, "oomKilled": true, "finishedAt": "2024-01-01T00:00:00Z"}
//! ```
//!
//! `exitCode` is the process's exit status, or 128 + signal when it was killed; `oomKilled`
//! is read from the container cgroup's `oom_kill` counter (cgroup v2 `memory.events`,
//! v1 `memory.oom_control`).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

/// What the shim needs to run one container.
#[derive(Clone, Debug)]
pub struct ShimArgs {
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    /// The container's cgroupsPath (relative to the cgroup mount), for the OOM counter.
    pub cgroups_path: String,
}

/// How a container ended (the exit file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    pub finished_at: String,
}

pub const EXIT_FILE: &str = "exit.json";
pub const PID_FILE: &str = "init.pid";

/// Reads a bundle's exit file, if the container has ended.
pub fn read_exit(bundle: &Path) -> Option<ExitRecord> {
    let bytes = std::fs::read(bundle.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors we take ownership of.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs the shim; returns the process exit code.
pub fn run(args: &ShimArgs) -> i32 {
    // SAFETY: plain syscalls on the calling process.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let mut ready = std::io::stdout();
    let (out_r, out_w) = match pipe() {
        Ok(p) => p,
        Err(e) => return report(&mut ready, Err(format!("pipe: {e}"))),
    };
    let (err_r, err_w) = match pipe() {
        Ok(p) => p,
        Err(e) => return report(&mut ready, Err(format!("pipe: {e}"))),
    };
    let runc_log = args.bundle.join("runc.log");
    let created = Command::new(&args.runc)
        .arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(&runc_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(args.bundle.join(PID_FILE))
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status();
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
    {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            return report(
                &mut ready,
                Err(format!("opening {}: {e}", args.log.display())),
            )
        }
    };
    // The pipes' write ends now live only in the container (the Command is gone).
    let copiers: Vec<_> = [(out_r, "stdout"), (err_r, "stderr")]
        .into_iter()
        .map(|(fd, stream)| {
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = crate::logs::copy_stream(std::fs::File::from(fd), stream, &log);
            })
        })
        .collect();
    match created {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let why = runc_error(&runc_log).unwrap_or_else(|| format!("runc create: {s}"));
            return report(&mut ready, Err(why));
        }
        Err(e) => return report(&mut ready, Err(format!("running runc: {e}"))),
    }
    let pid: i32 = match std::fs::read_to_string(args.bundle.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => return report(&mut ready, Err("runc create wrote no pid file".into())),
    };
    report(&mut ready, Ok(()));
    let status = wait_for(pid);
    // The log copiers end when the last holder of the pipes (the container's processes,
    // all gone with its pid namespace) exits; bounded so a leaked descriptor cannot hang
    // the exit record.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in copiers {
            let _ = c.join();
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (255, None)
    };
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed: oom_kills(&args.cgroups_path) > 0,
        finished_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let tmp = args.bundle.join("exit.json.tmp");
    let body = serde_json::to_vec(&record).unwrap_or_default();
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, args.bundle.join(EXIT_FILE));
    }
    0
}

/// Reaps children until `pid` exits; returns its wait status.
fn wait_for(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child of this process (a subreaper also reaps orphans).
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            return status;
        }
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children left: the init was never ours to reap (it died before we
            // became its reaper); report it as unknown.
            return 255 << 8;
        }
    }
}

fn report(out: &mut std::io::Stdout, result: Result<(), String>) -> i32 {
    let (line, code) = match result {
        Ok(()) => ("ok".to_string(), 0),
        Err(e) => (format!("error: {}", e.replace('\n', " ")), 1),
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    // Close stdout so the agent's read of the ready line ends.
    // SAFETY: replaces fd 1 with /dev/null; nothing else writes to it afterwards.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    code
}

/// The last error runc logged (its `--log` file holds JSON lines `{"level","msg"}`).
pub fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        matches!(v["level"].as_str(), Some("error" | "fatal")).then(|| {
            let msg = v["msg"].as_str().unwrap_or(l);
            msg.strip_prefix("runc create failed: ")
                .unwrap_or(msg)
                .to_string()
        })
    })
}

/// The container cgroup's OOM kill count (cgroup v2 or v1); 0 if unreadable.
pub fn oom_kills(cgroups_path: &str) -> u64 {
    let rel = cgroups_path.trim_start_matches('/');
    let candidates = [
        format!("/sys/fs/cgroup/{rel}/memory.events"),
        format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"),
    ];
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_error_is_the_last_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}\n",
        )
        .unwrap();
        assert_eq!(
            runc_error(&log).unwrap(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(runc_error(&dir.path().join("missing")), None);
    }

    #[test]
    fn exit_record_layout() {
        let r = ExitRecord {
            exit_code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: "2024-01-01T00:00:00Z".into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"exitCode": 137, "signal": 9, "oomKilled": true, "finishedAt": "2024-01-01T00:00:00Z"})
        );
    }
}
