//! Starting and stopping the cluster's processes. Spawning sits behind [`Spawner`] so the
//! launcher's sequencing can be tested without real programs. Children run in their own
//! process group: a Ctrl-C in the terminal reaches only the launcher, which then stops
//! them in order (node agents first, raftkv last) instead of all dying at once.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::state::Role;

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub role: Role,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr go here.
    pub log: PathBuf,
}

impl Spec {
    pub fn new(name: &str, role: Role, program: PathBuf, log: PathBuf) -> Spec {
        Spec {
            name: name.into(),
            role,
            program,
            args: Vec::new(),
            env: Vec::new(),
            log,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Spec {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

pub trait Spawner: Send + Sync {
    fn spawn(&self, spec: &Spec) -> std::io::Result<Child>;
}

/// Real processes.
pub struct OsSpawner;

impl Spawner for OsSpawner {
    fn spawn(&self, spec: &Spec) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?;
        Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
    }
}

/// Sends `signal` to `pid`; false if there is no such process.
pub fn signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

pub fn alive(pid: u32) -> bool {
    signal(pid, 0)
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// [`terminate`] for a process that is not our child (`down` after a crashed `up`).
pub fn terminate_pid(pid: u32, grace: Duration) {
    if !signal(pid, libc::SIGTERM) {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, libc::SIGKILL);
}
