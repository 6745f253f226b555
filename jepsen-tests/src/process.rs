//! Server processes behind a small trait, so the cluster and nemesis logic can be tested
//! without spawning anything. The real implementation runs a binary with its output in
//! a log file and signals it directly: SIGKILL for crashes, SIGSTOP/SIGCONT for pauses.
//! Dropping a handle always resumes and kills the process, so no run — not even one that
//! panics — leaves a server (or a stopped one) behind.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

/// Errors from spawning or signalling.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
}

/// A running (or exited) server process.
pub trait ProcessHandle: Send + Sync {
    fn pid(&self) -> u32;
    /// SIGKILL and reap; no-op if already gone.
    fn kill(&mut self);
    /// SIGSTOP.
    fn pause(&mut self) -> Result<(), ProcessError>;
    /// SIGCONT.
    fn resume(&mut self) -> Result<(), ProcessError>;
    /// `Some(description)` once the process has exited.
    fn exited(&mut self) -> Option<String>;
}

/// Starts processes.
pub trait Spawner: Send + Sync {
    fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn ProcessHandle>, ProcessError>;
}

/// Spawns real OS processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSpawner;

impl Spawner for OsSpawner {
    fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn ProcessHandle>, ProcessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|source| ProcessError::Log {
                path: spec.log.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| ProcessError::Log {
            path: spec.log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // If the harness itself is SIGKILLed (a CI timeout, say), Drop never runs; ask the
        // kernel to kill the server when its parent goes away instead. The signal fires
        // when the *thread* that spawned it exits; servers are spawned from tokio worker
        // threads, which live as long as the runtime, and by then Drop has killed them.
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which
        // is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        tracing::debug!(pid = child.id(), program = %spec.program.display(), "spawned");
        Ok(Box::new(OsProcess {
            child,
            paused: false,
        }))
    }
}

struct OsProcess {
    child: Child,
    paused: bool,
}

impl OsProcess {
    fn signal(&self, sig: libc::c_int) -> Result<(), ProcessError> {
        let pid = self.child.id();
        let raw = libc::pid_t::try_from(pid).map_err(|_| ProcessError::Signal {
            pid,
            source: std::io::Error::other("pid out of range"),
        })?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // which we have not reaped (reaping happens only in `kill`/`exited`), so it
        // cannot have been recycled for an unrelated process.
        let rc = unsafe { libc::kill(raw, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(ProcessError::Signal {
                pid,
                source: std::io::Error::last_os_error(),
            })
        }
    }
}

impl ProcessHandle for OsProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        if self.paused {
            // A stopped process dies from SIGKILL too, but resuming first keeps the
            // "SIGCONT before kill" rule simple to audit.
            let _ = self.signal(libc::SIGCONT);
            self.paused = false;
        }
        // Errors mean it is already gone, which is the goal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn pause(&mut self) -> Result<(), ProcessError> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), ProcessError> {
        self.signal(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }
}

impl Drop for OsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_resume_kill_a_real_process() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: "sleep".into(),
            args: vec!["30".into()],
            log: dir.path().join("log"),
        };
        let mut p = OsSpawner.spawn(&spec).unwrap();
        assert!(p.exited().is_none());
        p.pause().unwrap();
        p.resume().unwrap();
        p.pause().unwrap();
        // Killing a paused process must not hang.
        p.kill();
        assert!(p.exited().is_some());
    }

    #[test]
    fn missing_binary_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: "/nonexistent/raftkv".into(),
            args: vec![],
            log: dir.path().join("log"),
        };
        assert!(matches!(
            OsSpawner.spawn(&spec),
            Err(ProcessError::Spawn { .. })
        ));
    }
}
