//! Server processes for the black-box integration tests: picking free loopback ports,
//! spawning real etcd or the `raftkv` binary with the same etcd-style flags, waiting until
//! they answer gRPC, and killing them when the guard is dropped.
//!
//! The tests only ever talk to binaries; nothing here links the `raftkv` library, so the
//! same harness works whether the subject is raftkv or (with `DIFF_TARGET=etcd`) etcd itself.

// Each test crate compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

/// The `--name` of every spawned server.
pub const MEMBER_NAME: &str = "diff";

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Etcd,
    Raftkv,
}

impl Flavor {
    pub fn program(self) -> PathBuf {
        match self {
            // The image installs etcd 3.4.23 there; the reference must not silently be some
            // other etcd found on PATH.
            Flavor::Etcd => PathBuf::from("/usr/bin/etcd"),
            Flavor::Raftkv => PathBuf::from(env!("CARGO_BIN_EXE_raftkv")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Etcd => "etcd",
            Flavor::Raftkv => "raftkv",
        }
    }
}

/// Returns a port on 127.0.0.1 that was free a moment ago. The listener is dropped before
/// the server binds, so another process could in theory grab it in between; on a test
/// machine that only runs these suites that window has not mattered.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to pick a free port")
}

/// A running server process. Dropping it kills the process (SIGKILL) and reaps it, so a
/// failing or panicking test never leaves servers behind.
pub struct Server {
    pub flavor: Flavor,
    /// `http://127.0.0.1:<client port>`, as given to clients and etcdctl.
    pub endpoint: String,
    peer_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Child,
}

impl Server {
    /// Spawns `flavor` serving clients on a fresh port, storing its data in `data_dir` and
    /// its combined stdout/stderr in `log_path`.
    pub fn spawn(flavor: Flavor, data_dir: &Path, log_path: &Path) -> Server {
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        Self::spawn_with_peer_url(flavor, data_dir, log_path, peer_url)
    }

    /// [`Server::spawn`] with a given peer URL: a data dir made by `etcdctl snapshot restore`
    /// must be served with the member name ([`MEMBER_NAME`]) and peer URL the restore was told.
    pub fn spawn_with_peer_url(
        flavor: Flavor,
        data_dir: &Path,
        log_path: &Path,
        peer_url: String,
    ) -> Server {
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let child = spawn_child(flavor, data_dir, &endpoint, &peer_url, log_path);
        Server {
            flavor,
            endpoint,
            peer_url,
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            child,
        }
    }

    /// Kills the process (if still running) and starts it again on the same data dir and
    /// ports, appending to the same log. Callers must `wait_ready` again.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_child(
            self.flavor,
            &self.data_dir,
            &self.endpoint,
            &self.peer_url,
            &self.log_path,
        );
    }

    /// Polls a gRPC Range until the server answers, and returns a connected client.
    /// Range rather than Status: it is the first RPC any server implements, so readiness
    /// does not depend on the Maintenance service. Fails if the process exits first or
    /// `within` elapses, with the tail of the server log in the error.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<Client, String> {
        let deadline = Instant::now() + within;
        let mut last_err = String::from("no attempt made");
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited before becoming ready ({status})\n{}",
                    self.flavor.name(),
                    self.log_tail()
                ));
            }
            let attempt = async {
                let mut client = Client::connect([self.endpoint.as_str()], None).await?;
                client.get("/readiness-probe", None).await?;
                Ok::<_, etcd_client::Error>(client)
            };
            match tokio::time::timeout(Duration::from_secs(1), attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "range probe timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{} at {} not ready within {within:?} (last error: {last_err})\n{}",
            self.flavor.name(),
            self.endpoint,
            self.log_tail()
        ))
    }

    /// The exit status if the process has already terminated.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the process (no chance to flush anything) and reaps it.
    pub fn kill(&mut self) {
        // An error only means the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server under test: `raftkv` unless `DIFF_TARGET=etcd`, which points the same suites at
/// real etcd to validate the harness itself (every case must then pass).
pub fn subject_flavor() -> Flavor {
    match std::env::var("DIFF_TARGET").as_deref() {
        Err(_) | Ok("") | Ok("raftkv") => Flavor::Raftkv,
        Ok("etcd") => Flavor::Etcd,
        Ok(other) => panic!("DIFF_TARGET={other:?}: expected \"etcd\" or \"raftkv\""),
    }
}

fn spawn_child(
    flavor: Flavor,
    data_dir: &Path,
    client_url: &str,
    peer_url: &str,
    log_path: &Path,
) -> Child {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("opening the server log file");
    let log_err = log.try_clone().expect("duplicating the server log handle");
    // Both binaries get the identical etcd command line: raftkv promises to accept the
    // peer flags (and ignore them), so a deployment script written for etcd works as is.
    Command::new(flavor.program())
        .arg("--name")
        .arg(MEMBER_NAME)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen-client-urls")
        .arg(client_url)
        .arg("--advertise-client-urls")
        .arg(client_url)
        .arg("--listen-peer-urls")
        .arg(peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(peer_url)
        .arg("--initial-cluster")
        .arg(format!("{MEMBER_NAME}={peer_url}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", flavor.program().display()))
}
