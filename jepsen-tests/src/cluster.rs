//! Clusters of server processes on loopback: allocating ports, building the etcd-style
//! command line (identical for etcd and raftkv), starting members behind the peer
//! proxy, waiting for readiness, and the primitive operations faults are made of —
//! kill, restart, pause, resume, wipe a data dir, find the leader, and remove / re-add a
//! member through the Cluster API, and a power loss (kill everything, drop un-fsynced
//! data) when the members' data dirs are [`lazyfs`] mounts. The cluster owns its
//! processes and mounts; dropping it kills the processes, then unmounts.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::lazyfs::{LazyFsError, Lost, Mount};
use crate::process::{ProcessError, ProcessHandle, ProcessSpec, Spawner};
use crate::proxy::{Network, Partition, PidMap, ProcResolver, ProxyError, ProxyNet};

/// Which server implementation to test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Raftkv,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Raftkv => "raftkv",
            Target::Etcd => "etcd",
        }
    }
}

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub target: Target,
    pub binary: PathBuf,
    pub members: usize,
    /// Data dirs and logs go below this.
    pub dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// Put each member's data dir on a [`lazyfs`](crate::lazyfs) mount, so un-fsynced
    /// writes can be lost (the `lose-unsynced` fault). Needs root and /dev/fuse.
    pub lazy_disk: bool,
}

/// Errors from cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Disk(#[from] LazyFsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cluster not ready within {within:?}: {detail}")]
    NotReady { within: Duration, detail: String },
    #[error("{target} does not support {what}: {detail}")]
    Unsupported {
        target: &'static str,
        what: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Rpc(String),
    #[error("no member {0}")]
    NoMember(usize),
}

/// One member's fixed identity and its current process.
pub struct Member {
    pub name: String,
    pub client_url: String,
    listen_peer: SocketAddr,
    /// What the others dial: the proxy front when there is a proxy.
    advertised_peer: SocketAddr,
    data_dir: PathBuf,
    /// The lazy mount at `data_dir`, if the cluster has lazy disks.
    disk: Option<Mount>,
    log: PathBuf,
    process: Option<Box<dyn ProcessHandle>>,
    paused: bool,
    /// Removed from the cluster's membership by the member nemesis.
    pub removed: bool,
}

impl Member {
    fn peer_url(&self) -> String {
        format!("http://{}", self.advertised_peer)
    }

    fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

/// A running cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    spawner: Arc<dyn Spawner>,
    members: Vec<Member>,
    pids: PidMap,
    net: Option<ProxyNet>,
    token: String,
}

/// Reserves `n` distinct free loopback ports as open listeners, so the kernel cannot hand
/// out the same port twice. The proxy keeps its fronts' listeners; the servers' ports are
/// released just before the servers bind them, leaving only a small window for another
/// process (or another cluster in the same test binary) to take one, which `start`
/// retries.
/// What goes on one member's command line.
pub struct ServerFlags<'a> {
    pub target: Target,
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub client_url: &'a str,
    pub listen_peer: SocketAddr,
    pub advertised_peer: SocketAddr,
    pub initial_cluster: &'a str,
    /// `new` or `existing`.
    pub state: &'a str,
    pub token: &'a str,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

/// The etcd-style command line, identical for etcd and raftkv (raftkv takes etcd's
/// cluster flags), except for etcd's logger choice.
pub fn server_args(f: &ServerFlags<'_>) -> Vec<String> {
    let mut args: Vec<String> = [
        ("--name", f.name.to_string()),
        ("--data-dir", f.data_dir.display().to_string()),
        ("--listen-client-urls", f.client_url.to_string()),
        ("--advertise-client-urls", f.client_url.to_string()),
        ("--listen-peer-urls", format!("http://{}", f.listen_peer)),
        (
            "--initial-advertise-peer-urls",
            format!("http://{}", f.advertised_peer),
        ),
        ("--initial-cluster", f.initial_cluster.to_string()),
        ("--initial-cluster-state", f.state.to_string()),
        ("--initial-cluster-token", f.token.to_string()),
        ("--heartbeat-interval", f.heartbeat_ms.to_string()),
        ("--election-timeout", f.election_ms.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    if f.target == Target::Etcd {
        // Quieter logs; etcd 3.4 otherwise warns about the deprecated default logger.
        args.extend(["--logger".into(), "zap".into()]);
    }
    args
}

fn free_listeners(n: usize) -> Result<Vec<TcpListener>, ClusterError> {
    (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ClusterError::Io {
            what: "picking free loopback ports".into(),
            source,
        })
}

fn addr_of(l: &TcpListener) -> Result<SocketAddr, ClusterError> {
    l.local_addr().map_err(|source| ClusterError::Io {
        what: "reading a listener's address".into(),
        source,
    })
}

/// How often cluster start is retried when a port was taken between picking and binding.
const START_ATTEMPTS: usize = 3;

impl Cluster {
    /// Starts every member (behind the peer proxy when there is more than one) and waits
    /// until all of them serve linearizable reads.
    pub async fn start(
        cfg: ClusterConfig,
        spawner: Arc<dyn Spawner>,
        ready_within: Duration,
    ) -> Result<Cluster, ClusterError> {
        let mut attempt = 1;
        loop {
            match Cluster::start_once(cfg.clone(), spawner.clone(), ready_within).await {
                Err(ClusterError::NotReady { detail, .. })
                    if attempt < START_ATTEMPTS
                        && detail.to_lowercase().contains("address already in use") =>
                {
                    tracing::warn!("a port was taken before the server bound it; retrying");
                    attempt += 1;
                    let _ = std::fs::remove_dir_all(&cfg.dir);
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        cfg: ClusterConfig,
        spawner: Arc<dyn Spawner>,
        ready_within: Duration,
    ) -> Result<Cluster, ClusterError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| ClusterError::Io {
            what: format!("creating {}", cfg.dir.display()),
            source,
        })?;
        let use_proxy = cfg.members > 1;
        let mut listeners = free_listeners(cfg.members * 3)?.into_iter();
        let mut members = Vec::new();
        // Held until just before the servers start.
        let mut reserved = Vec::new();
        let mut fronts = Vec::new();
        for i in 0..cfg.members {
            let (Some(client), Some(peer), Some(front)) =
                (listeners.next(), listeners.next(), listeners.next())
            else {
                return Err(ClusterError::Rpc("port allocation came up short".into()));
            };
            let listen_peer = addr_of(&peer)?;
            let advertised_peer = if use_proxy {
                addr_of(&front)?
            } else {
                listen_peer
            };
            let data_dir = cfg.dir.join(format!("m{i}.data"));
            let disk = if cfg.lazy_disk {
                Some(Mount::new(&cfg.dir.join(format!("m{i}.disk")), &data_dir)?)
            } else {
                None
            };
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("http://{}", addr_of(&client)?),
                listen_peer,
                advertised_peer,
                data_dir,
                disk,
                log: cfg.dir.join(format!("m{i}.log")),
                process: None,
                paused: false,
                removed: false,
            });
            reserved.extend([client, peer]);
            fronts.push((front, listen_peer));
        }
        let pids: PidMap = Arc::new(RwLock::new(HashMap::new()));
        let net = if use_proxy {
            let resolver = Arc::new(ProcResolver { pids: pids.clone() });
            Some(ProxyNet::start(fronts, resolver)?)
        } else {
            None
        };
        drop(reserved);
        let token = format!("jepsen-{}", std::process::id());
        let mut cluster = Cluster {
            cfg,
            spawner,
            members,
            pids,
            net,
            token,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new")?;
        }
        cluster.wait_ready(ready_within).await?;
        Ok(cluster)
    }

    /// Number of members (including any currently removed by the member nemesis).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Client URLs of all members, by index.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The network, if members talk through the proxy.
    pub fn network(&self) -> Option<&dyn Network> {
        self.net.as_ref().map(|n| n as &dyn Network)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The etcd command line for member `i`; raftkv accepts the same flags.
    fn args(&self, i: usize, state: &str) -> Vec<String> {
        let m = &self.members[i];
        server_args(&ServerFlags {
            target: self.cfg.target,
            name: &m.name,
            data_dir: &m.data_dir,
            client_url: &m.client_url,
            listen_peer: m.listen_peer,
            advertised_peer: m.advertised_peer,
            initial_cluster: &self.initial_cluster(),
            state,
            token: &self.token,
            heartbeat_ms: self.cfg.heartbeat_ms,
            election_ms: self.cfg.election_ms,
        })
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), ClusterError> {
        let spec = ProcessSpec {
            program: self.cfg.binary.clone(),
            args: self.args(i, state),
            log: self.members[i].log.clone(),
        };
        let handle = self.spawner.spawn(&spec)?;
        if let Ok(mut pids) = self.pids.write() {
            pids.insert(handle.pid(), i);
        }
        let m = &mut self.members[i];
        m.process = Some(handle);
        m.paused = false;
        Ok(())
    }

    fn forget_pid(&mut self, i: usize) {
        if let (Some(p), Ok(mut pids)) = (&self.members[i].process, self.pids.write()) {
            pids.remove(&p.pid());
        }
    }

    fn get_mut(&mut self, i: usize) -> Result<&mut Member, ClusterError> {
        self.members.get_mut(i).ok_or(ClusterError::NoMember(i))
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) -> Result<(), ClusterError> {
        self.get_mut(i)?;
        self.forget_pid(i);
        let m = self.get_mut(i)?;
        if let Some(mut p) = m.process.take() {
            p.kill();
        }
        m.paused = false;
        Ok(())
    }

    /// Starts member `i` again on its existing data dir (no-op if running).
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.get_mut(i)?.process.is_some() {
            return Ok(());
        }
        self.spawn(i, "new")
    }

    pub fn pause(&mut self, i: usize) -> Result<(), ClusterError> {
        let m = self.get_mut(i)?;
        if let Some(p) = m.process.as_mut() {
            p.pause()?;
            m.paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<(), ClusterError> {
        let m = self.get_mut(i)?;
        if let Some(p) = m.process.as_mut() {
            if m.paused {
                p.resume()?;
            }
            m.paused = false;
        }
        Ok(())
    }

    /// Deletes member `i`'s data dir; the member must be stopped.
    pub fn wipe(&mut self, i: usize) -> Result<(), ClusterError> {
        let m = self.get_mut(i)?;
        if m.process.is_some() {
            return Err(ClusterError::Rpc(format!(
                "refusing to wipe running member {}",
                m.name
            )));
        }
        let wiped = if m.disk.is_some() {
            // The mount point itself stays: empty it through the mount.
            std::fs::read_dir(&m.data_dir).and_then(|entries| {
                entries.into_iter().try_for_each(|e| {
                    let e = e?;
                    if e.file_type()?.is_dir() {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        std::fs::remove_file(e.path())
                    }
                })
            })
        } else {
            std::fs::remove_dir_all(&m.data_dir)
        };
        match wiped {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ClusterError::Io {
                what: format!("wiping {}", m.data_dir.display()),
                source,
            }),
        }
    }

    /// A power loss of the whole cluster: SIGKILLs every running member at once, then
    /// drops every write they had not fsynced. Returns the members hit and what each
    /// lost; [`Cluster::restart`] brings them back on what survived.
    pub fn power_loss(&mut self) -> Result<Vec<(usize, Lost)>, ClusterError> {
        if self.members.iter().any(|m| m.disk.is_none()) {
            return Err(ClusterError::Unsupported {
                target: self.cfg.target.name(),
                what: "lose-unsynced",
                detail: "the cluster was started without lazy disks".into(),
            });
        }
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect();
        for &i in &running {
            self.kill(i)?;
        }
        Ok(running
            .into_iter()
            .map(|i| {
                let lost = self.members[i]
                    .disk
                    .as_ref()
                    .map(Mount::lose_unsynced)
                    .unwrap_or_default();
                (i, lost)
            })
            .collect())
    }

    /// A client for some running, unpaused member other than `except`.
    async fn client_except(&self, except: Option<usize>) -> Result<Client, ClusterError> {
        for (i, m) in self.members.iter().enumerate() {
            if Some(i) == except || !m.is_running() || m.paused || m.removed {
                continue;
            }
            if let Ok(c) = connect(&m.client_url).await {
                return Ok(c);
            }
        }
        Err(ClusterError::Rpc("no live member to talk to".into()))
    }

    /// The current leader, asking each running member for its Status.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids: HashMap<u64, usize> = HashMap::new();
        let mut leader_id = None;
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() || m.paused {
                continue;
            }
            let Ok(mut c) = connect(&m.client_url).await else {
                continue;
            };
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                if let Some(h) = s.header() {
                    ids.insert(h.member_id(), i);
                }
                if s.leader() != 0 {
                    leader_id = Some(s.leader());
                }
            }
        }
        leader_id.and_then(|l| ids.get(&l).copied())
    }

    /// Removes member `i` from the membership (through another member) and stops it.
    pub async fn remove_member(&mut self, i: usize) -> Result<(), ClusterError> {
        let name = self.get_mut(i)?.name.clone();
        let mut c = self.client_except(Some(i)).await?;
        let list = rpc(c.member_list()).await?;
        let id = list
            .members()
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.id())
            .ok_or_else(|| ClusterError::Rpc(format!("{name} not in the member list")))?;
        match tokio::time::timeout(Duration::from_secs(5), c.member_remove(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::Unimplemented =>
            {
                return Err(ClusterError::Unsupported {
                    target: self.cfg.target.name(),
                    what: "membership changes",
                    detail: s.message().to_string(),
                })
            }
            Ok(Err(e)) => return Err(ClusterError::Rpc(format!("removing {name}: {e}"))),
            Err(_) => return Err(ClusterError::Rpc(format!("removing {name}: timed out"))),
        }
        self.kill(i)?;
        self.members[i].removed = true;
        Ok(())
    }

    /// Adds a removed member back with an empty data dir and starts it to join.
    pub async fn add_member(&mut self, i: usize) -> Result<(), ClusterError> {
        let url = self.get_mut(i)?.peer_url();
        let mut c = self.client_except(Some(i)).await?;
        rpc(c.member_add([url.as_str()], None)).await?;
        self.members[i].removed = false;
        self.kill(i)?;
        self.wipe(i)?;
        self.spawn(i, "existing")
    }

    /// Undoes every fault: resumes paused members, restarts killed ones, heals the
    /// network. Re-adding removed members is the member nemesis's own job.
    pub fn heal_all(&mut self) -> Vec<ClusterError> {
        let mut errs = vec![];
        if let Some(n) = &self.net {
            n.apply(Partition::healed());
        }
        for i in 0..self.members.len() {
            if self.members[i].removed {
                continue;
            }
            if let Err(e) = self.resume(i).and_then(|()| self.restart(i)) {
                errs.push(e);
            }
        }
        errs
    }

    /// Waits until every member that should be up answers a linearizable read.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut pending = Vec::new();
            for i in 0..self.members.len() {
                let m = &mut self.members[i];
                if m.removed {
                    continue;
                }
                if let Some(status) = m.process.as_mut().and_then(|p| p.exited()) {
                    return Err(ClusterError::NotReady {
                        within,
                        detail: format!("{} exited ({status})\n{}", m.name, log_tail(&m.log, 20)),
                    });
                }
                let ok = match connect(&m.client_url).await {
                    Ok(mut c) => matches!(
                        tokio::time::timeout(Duration::from_secs(1), c.get("jepsen/probe", None))
                            .await,
                        Ok(Ok(_))
                    ),
                    Err(_) => false,
                };
                if !ok {
                    pending.push(i);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let detail = pending
                    .iter()
                    .map(|&i| {
                        format!(
                            "{} not answering\n{}",
                            self.members[i].name,
                            log_tail(&self.members[i].log, 10)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(ClusterError::NotReady { within, detail });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes every member's data dir (etcd preallocates 64 MiB WAL files, so kept
    /// runs add up). Stops the members first.
    pub fn remove_data(&mut self) {
        self.shutdown();
        for m in &mut self.members {
            let backing = m.disk.take().map(|d| d.backing().to_path_buf());
            for dir in backing.iter().chain([&m.data_dir]) {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("cannot remove {}: {e}", dir.display());
                    }
                }
            }
        }
    }

    /// Kills every member.
    pub fn shutdown(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn connect(url: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    Client::connect([url], Some(opts)).await
}

async fn rpc<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClusterError::Rpc(e.to_string())),
        Err(_) => Err(ClusterError::Rpc("timed out".into())),
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!("--- {} ---\n{}", path.display(), lines[start..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_etcds() {
        let flags = ServerFlags {
            target: Target::Raftkv,
            name: "m1",
            data_dir: Path::new("/d/m1.data"),
            client_url: "http://127.0.0.1:2379",
            listen_peer: "127.0.0.1:2380".parse().unwrap(),
            advertised_peer: "127.0.0.1:3380".parse().unwrap(),
            initial_cluster: "m0=http://127.0.0.1:3379,m1=http://127.0.0.1:3380",
            state: "new",
            token: "t",
            heartbeat_ms: 100,
            election_ms: 1000,
        };
        let args = server_args(&flags).join(" ");
        assert_eq!(
            args,
            "--name m1 --data-dir /d/m1.data --listen-client-urls http://127.0.0.1:2379 \
             --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
             --initial-advertise-peer-urls http://127.0.0.1:3380 \
             --initial-cluster m0=http://127.0.0.1:3379,m1=http://127.0.0.1:3380 \
             --initial-cluster-state new --initial-cluster-token t --heartbeat-interval 100 \
             --election-timeout 1000"
        );
        let etcd = server_args(&ServerFlags {
            target: Target::Etcd,
            ..flags
        });
        assert_eq!(etcd[etcd.len() - 2..], ["--logger", "zap"]);
    }

    #[test]
    fn free_ports_are_distinct() {
        let listeners = free_listeners(30).unwrap();
        let unique: std::collections::BTreeSet<_> =
            listeners.iter().map(|l| addr_of(l).unwrap()).collect();
        assert_eq!(unique.len(), 30);
    }
}
