//! The container runtime behind a trait, so the pod reconciler can be tested with a fake:
//! [`Runc`] runs each container under a shim ([`crate::shim`]) and drives it with
//! `runc start/state/kill/delete/exec`, all with this agent's own `--root` so several
//! agents on one machine never see each other's containers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::shim::{read_exit, ExitRecord};

#[cfg(test)]
pub mod fake;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Creating the container failed (bad command, bad spec): CreateContainerError.
    #[error("{0}")]
    Create(String),
    #[error("runc {op} {id}: {message}")]
    Runc {
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What one container needs; its bundle (config.json + rootfs) is written already.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub cgroups_path: String,
}

/// A container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Unknown to the runtime (never created, or deleted).
    Missing,
    Created,
    Running,
    /// Its init has exited; the record says how.
    Exited(ExitRecord),
}

pub trait Runtime: Send + Sync + 'static {
    /// Creates the container (not yet started) and starts capturing its output.
    fn create(&self, req: &CreateRequest) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// `Exited` whenever the bundle holds an exit record, even after `delete`.
    fn state(
        &self,
        id: &str,
        bundle: &Path,
    ) -> impl Future<Output = Result<State, RuntimeError>> + Send;
    /// Signals the container's init (and, with SIGKILL, every process in it).
    fn kill(&self, id: &str, signal: i32) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes the container (forcibly; a no-op if it is missing).
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Ids of every container of this agent.
    fn list(&self) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;
    /// Runs a command in the container; its exit code (exec probes).
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<i32, RuntimeError>> + Send;
}

/// runc with a private state root.
#[derive(Clone, Debug)]
pub struct Runc {
    pub runc: PathBuf,
    pub root: PathBuf,
    /// The `nodeagent` executable, run as `nodeagent shim`.
    pub shim_exe: PathBuf,
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    async fn run(
        &self,
        op: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, RuntimeError> {
        let out = self.command().args(args).output().await?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(RuntimeError::Runc {
            op,
            id: id.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Runtime for Runc {
    async fn create(&self, req: &CreateRequest) -> Result<(), RuntimeError> {
        let shim_log = std::fs::File::create(req.bundle.join("shim.log"))?;
        let mut child = Command::new(&self.shim_exe)
            .arg("shim")
            .arg("--runc")
            .arg(&self.runc)
            .arg("--runc-root")
            .arg(&self.root)
            .arg("--id")
            .arg(&req.id)
            .arg("--bundle")
            .arg(&req.bundle)
            .arg("--log")
            .arg(&req.log)
            .arg("--cgroups-path")
            .arg(&req.cgroups_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_log))
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        // The shim outlives this call on purpose (it supervises the container); tokio reaps
        // it in the background once it exits.
        drop(child);
        match read {
            Ok(Ok(_)) if line.trim() == "ok" => Ok(()),
            Ok(Ok(_)) => Err(RuntimeError::Create(
                line.trim()
                    .strip_prefix("error: ")
                    .unwrap_or("the shim exited without reporting")
                    .to_string(),
            )),
            Ok(Err(e)) => Err(RuntimeError::Io(e)),
            Err(_) => Err(RuntimeError::Create(
                "runc create timed out after 60s".into(),
            )),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("start", id, &["start", id]).await.map(drop)
    }

    async fn state(&self, id: &str, bundle: &Path) -> Result<State, RuntimeError> {
        if let Some(exit) = read_exit(bundle) {
            return Ok(State::Exited(exit));
        }
        // Cheap path for the common case, without spawning runc on every sync: the init
        // is alive and has exec'd the container's program (a created container's init is
        // still runc's, waiting to be started). Its death is seen through the shim's
        // exit record, written as soon as the init is reaped.
        if let Some(pid) = std::fs::read_to_string(bundle.join(crate::shim::PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z'));
                if !comm.starts_with("runc:") && !zombie {
                    return Ok(State::Running);
                }
            }
        }
        let out = self.command().args(["state", id]).output().await?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            if msg.contains("does not exist") || msg.contains("not exist") {
                return Ok(State::Missing);
            }
            return Err(RuntimeError::Runc {
                op: "state",
                id: id.into(),
                message: msg.trim().to_string(),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Ok(match v["status"].as_str() {
            Some("created") => State::Created,
            Some("running") | Some("paused") => State::Running,
            // Stopped but the shim has not written the record yet: look again shortly.
            _ => match read_exit(bundle) {
                Some(e) => State::Exited(e),
                None => State::Running,
            },
        })
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if signal == libc::SIGKILL {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        match self.run("kill", id, &args).await {
            Ok(_) => Ok(()),
            // Already stopped or gone: nothing to signal.
            Err(RuntimeError::Runc { message, .. })
                if message.contains("not running")
                    || message.contains("does not exist")
                    || message.contains("process already finished") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run("delete", id, &["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let out = self.run("list", "", &["list", "--format", "json"]).await?;
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<i32, RuntimeError> {
        let mut cmd = self.command();
        cmd.args(["exec", id]).args(argv);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?.code().unwrap_or(-1)),
            Err(_) => {
                let _ = child.kill().await;
                Err(RuntimeError::Runc {
                    op: "exec",
                    id: id.into(),
                    message: format!("timed out after {timeout:?}"),
                })
            }
        }
    }
}
