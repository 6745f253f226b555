//! Cluster spawning: starts an N-member cluster of real etcd or of raftkv on loopback with the
//! identical etcd command line, waits until every member serves a linearizable read, and
//! kills every member when the [`Cluster`] is dropped (also on error, panic or Ctrl-C, since
//! those unwind through the owner).
//!
//! The benchmark treats raftkv as a black box: it only ever runs the binary, so the same code
//! starts both servers and neither gets settings the other does not.

use std::fmt;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;
use rand::Rng;
use serde::Serialize;

/// Ports the servers listen on: below the ephemeral range, see [`free_ports`].
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_768;

/// Attempts of [`Cluster::launch`] when a member finds its port taken.
const LAUNCH_ATTEMPTS: usize = 3;

/// Where a release build of raftkv lands when the workspace is built with the shared cache.
const RELEASE_RAFTKV: &str = "/var/cache/raftkv/target-main/release/raftkv";

/// Which server a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Etcd,
    Raftkv,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Etcd => "etcd",
            Flavor::Raftkv => "raftkv",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no raftkv binary found: pass --raftkv-bin, or build it (`cargo build --release -p raftkv`); looked at {0}"
    )]
    RaftkvNotFound(String),
    #[error("{0} is not an executable file")]
    NotExecutable(PathBuf),
    #[error("picking a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{flavor} member {member} exited ({status})\n{log_tail}")]
    Exited {
        flavor: Flavor,
        member: String,
        status: String,
        log_tail: String,
    },
    #[error("{flavor} member {member} not ready within {within:?} (last error: {last_error})\n{log_tail}")]
    NotReady {
        flavor: Flavor,
        member: String,
        within: Duration,
        last_error: String,
        log_tail: String,
    },
}

/// Finds the raftkv binary: `explicit` if given, else `raftkv` next to the running
/// executable (a workspace build puts both in the same target directory), else the shared
/// release build, else `raftkv` on `PATH`.
pub fn locate_raftkv(explicit: Option<&Path>) -> Result<PathBuf, ClusterError> {
    if let Some(path) = explicit {
        return check_executable(path);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("raftkv"));
    }
    candidates.push(PathBuf::from(RELEASE_RAFTKV));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("raftkv")));
    }
    candidates
        .iter()
        .find(|c| is_executable(c))
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            ClusterError::RaftkvNotFound(looked.join(", "))
        })
}

/// Returns `path` if it is an executable file.
pub fn check_executable(path: &Path) -> Result<PathBuf, ClusterError> {
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else {
        Err(ClusterError::NotExecutable(path.to_path_buf()))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// One server process of a cluster.
struct Member {
    name: String,
    log_path: PathBuf,
    child: Child,
}

/// A running cluster. Dropping it SIGKILLs and reaps every member.
pub struct Cluster {
    pub flavor: Flavor,
    /// `http://127.0.0.1:<port>` of each member, in member order.
    pub endpoints: Vec<String>,
    members: Vec<Member>,
}

impl Cluster {
    /// Starts a cluster in `root` and waits until it is ready. If a member lost its port to
    /// another process in the meantime, starts over with fresh ports and data dirs.
    pub async fn launch(
        flavor: Flavor,
        program: &Path,
        members: usize,
        root: &Path,
        within: Duration,
    ) -> Result<Cluster, ClusterError> {
        let mut attempt = 1;
        loop {
            let dir = if attempt == 1 {
                root.to_path_buf()
            } else {
                root.join(format!("attempt-{attempt}"))
            };
            std::fs::create_dir_all(&dir).map_err(|source| ClusterError::Io {
                path: dir.clone(),
                source,
            })?;
            let mut cluster = Cluster::start(flavor, program, members, &dir)?;
            match cluster.wait_ready(within).await {
                Ok(()) => return Ok(cluster),
                Err(ClusterError::Exited { log_tail, .. })
                    if attempt < LAUNCH_ATTEMPTS
                        && log_tail.to_lowercase().contains("address already in use") =>
                {
                    eprintln!("{flavor}: a port was taken meanwhile; starting over");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts `members` processes of `program` with data dirs and logs under `root` (which
    /// must exist). Returns once they are spawned; call [`Cluster::wait_ready`] next.
    pub fn start(
        flavor: Flavor,
        program: &Path,
        members: usize,
        root: &Path,
    ) -> Result<Cluster, ClusterError> {
        // Picked in one go so that no port is handed out twice.
        let mut client_ports = free_ports(2 * members)?;
        let peer_ports = client_ports.split_off(members);
        let names: Vec<String> = (1..=members).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_ports)
            .map(|(name, port)| format!("{name}=http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            flavor,
            endpoints: Vec::new(),
            members: Vec::new(),
        };
        for ((name, client_port), peer_port) in names.iter().zip(client_ports).zip(peer_ports) {
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let data_dir = root.join(format!("{name}.etcd"));
            let log_path = root.join(format!("{name}.log"));
            let log = File::create(&log_path).map_err(|source| ClusterError::Io {
                path: log_path.clone(),
                source,
            })?;
            let log_err = log.try_clone().map_err(|source| ClusterError::Io {
                path: log_path.clone(),
                source,
            })?;
            // Default settings otherwise: the comparison is of each server as shipped.
            let child = Command::new(program)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("bench-{flavor}")])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|source| ClusterError::Spawn {
                    program: program.to_path_buf(),
                    source,
                })?;
            // Pushed right away so that an error for a later member still kills this one.
            cluster.members.push(Member {
                name: name.clone(),
                log_path,
                child,
            });
            cluster.endpoints.push(client_url);
        }
        Ok(cluster)
    }

    /// Waits until every member answers a linearizable Range, which needs an elected
    /// leader and a member that has caught up with it.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + within;
        for index in 0..self.members.len() {
            let endpoint = self.endpoints[index].clone();
            loop {
                self.check_alive()?;
                let attempt = async {
                    let mut client = Client::connect([endpoint.as_str()], None).await?;
                    client.get("bench/readiness-probe", None).await?;
                    Ok::<_, etcd_client::Error>(())
                };
                let last_error = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "range probe timed out".to_string(),
                };
                if Instant::now() >= deadline {
                    let member = &self.members[index];
                    return Err(ClusterError::NotReady {
                        flavor: self.flavor,
                        member: member.name.clone(),
                        within,
                        last_error,
                        log_tail: log_tail(&member.log_path),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Fails if any member has exited: a step that ran while a member was down did not
    /// measure the cluster it claims to.
    pub fn check_alive(&mut self) -> Result<(), ClusterError> {
        for member in &mut self.members {
            if let Ok(Some(status)) = member.child.try_wait() {
                return Err(ClusterError::Exited {
                    flavor: self.flavor,
                    member: member.name.clone(),
                    status: status.to_string(),
                    log_tail: log_tail(&member.log_path),
                });
            }
        }
        Ok(())
    }

    /// Kills and reaps every member. Idempotent.
    pub fn stop(&mut self) {
        for member in &mut self.members {
            // An error only means the process is already gone, which is what we want.
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Returns `n` distinct loopback ports that were free a moment ago, picked at random below
/// Linux's ephemeral range (32768 and up): a port from `bind(:0)` could be reused for an
/// outgoing connection (of any process) before the server binds it, one out of that range
/// cannot. All listeners are held until every port is picked, so the ports are distinct.
/// Another process could still take one in between; [`Cluster::launch`] retries then.
fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let mut rng = rand::rng();
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n * 100 {
        if listeners.len() == n {
            break;
        }
        let port = rng.random_range(PORT_RANGE);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push((port, listener));
        }
    }
    if listeners.len() < n {
        return Err(ClusterError::Port(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no {n} free ports in {PORT_RANGE:?}"),
        )));
    }
    Ok(listeners.into_iter().map(|(port, _)| port).collect())
}

/// The last lines of a member's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!(
        "--- last lines of {} ---\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}
