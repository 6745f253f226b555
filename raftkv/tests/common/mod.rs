//! Server processes for the black-box integration tests: picking free loopback ports,
//! spawning real etcd or the `raftkv` binary with the same etcd-style flags, waiting until
//! they answer gRPC, pausing (SIGSTOP) and killing them, and cleaning up when the guard is
//! dropped. A [`Server`] is one member; a [`Cluster`] is N members of one flavor that found
//! each other through `--initial-cluster`, exactly as an etcd cluster is started.
//!
//! The tests only ever talk to binaries; nothing here links the `raftkv` library, so the
//! same harness works whether the subject is raftkv or (with `DIFF_TARGET=etcd`) etcd itself.

// Each test crate compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

/// The `--name` of every single-member server.
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

/// `n` distinct ports, free a moment ago (see [`free_port`]). All listeners are held until
/// every port is picked: the kernel may hand a just-released port out again, and two
/// members of one cluster on the same port would fail to start.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to pick a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A client for one endpoint. `timeout` bounds every unary request (`None` for clients
/// that hold watch or keep-alive streams, which the caller bounds itself). Connecting is
/// lazy, so this succeeds even while the server is down or paused.
pub async fn connect(endpoint: &str, timeout: Option<Duration>) -> Client {
    let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    if let Some(t) = timeout {
        opts = opts.with_timeout(t);
    }
    Client::connect([endpoint], Some(opts))
        .await
        .unwrap_or_else(|e| panic!("building a client for {endpoint}: {e}"))
}

/// The command line of one server, kept so a restart repeats it exactly.
#[derive(Clone, Debug)]
struct Launch {
    flavor: Flavor,
    name: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_url: String,
    peer_url: String,
    /// `--initial-cluster`.
    initial_cluster: String,
    /// Flags only cluster members get (token, state, Raft timing). A single member gets
    /// none unless a test asks for some, so its command line stays the minimal one the
    /// other suites were written for.
    cluster_args: Vec<String>,
}

impl Launch {
    fn spawn(&self) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the server log file");
        let log_err = log.try_clone().expect("duplicating the server log handle");
        // Both binaries get the identical etcd command line: raftkv promises to accept
        // etcd's flags, so a deployment script written for etcd works as is.
        Command::new(self.flavor.program())
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .args(&self.cluster_args)
            // The cheapest bcrypt both accept: auth tests hash and check many passwords.
            .args(["--bcrypt-cost", "4"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.flavor.program().display()))
    }
}

/// A running server process. Dropping it resumes (if paused), kills (SIGKILL) and reaps
/// it, so a failing or panicking test never leaves servers behind.
pub struct Server {
    pub flavor: Flavor,
    /// `http://127.0.0.1:<client port>`, as given to clients and etcdctl.
    pub endpoint: String,
    launch: Launch,
    child: Child,
    paused: bool,
}

impl Server {
    /// Spawns `flavor` serving clients on a fresh port, storing its data in `data_dir` and
    /// its combined stdout/stderr in `log_path`.
    pub fn spawn(flavor: Flavor, data_dir: &Path, log_path: &Path) -> Server {
        Self::spawn_with_args(flavor, data_dir, log_path, Vec::new())
    }

    /// [`Server::spawn`] with more flags (e.g. `--auth-token`).
    pub fn spawn_with_args(
        flavor: Flavor,
        data_dir: &Path,
        log_path: &Path,
        args: Vec<String>,
    ) -> Server {
        let ports = free_ports(2);
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let mut launch = Self::single(flavor, data_dir, log_path, url(ports[0]), url(ports[1]));
        launch.cluster_args = args;
        Self::start(launch)
    }

    /// [`Server::spawn`] with a given peer URL: a data dir made by `etcdctl snapshot restore`
    /// must be served with the member name ([`MEMBER_NAME`]) and peer URL the restore was told.
    pub fn spawn_with_peer_url(
        flavor: Flavor,
        data_dir: &Path,
        log_path: &Path,
        peer_url: String,
    ) -> Server {
        let client_url = format!("http://127.0.0.1:{}", free_port());
        Self::start_single(flavor, data_dir, log_path, client_url, peer_url)
    }

    fn start_single(
        flavor: Flavor,
        data_dir: &Path,
        log_path: &Path,
        client_url: String,
        peer_url: String,
    ) -> Server {
        Self::start(Self::single(
            flavor, data_dir, log_path, client_url, peer_url,
        ))
    }

    fn single(
        flavor: Flavor,
        data_dir: &Path,
        log_path: &Path,
        client_url: String,
        peer_url: String,
    ) -> Launch {
        Launch {
            flavor,
            name: MEMBER_NAME.to_string(),
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            client_url,
            initial_cluster: format!("{MEMBER_NAME}={peer_url}"),
            peer_url,
            cluster_args: Vec::new(),
        }
    }

    fn start(launch: Launch) -> Server {
        Server {
            flavor: launch.flavor,
            endpoint: launch.client_url.clone(),
            child: launch.spawn(),
            launch,
            paused: false,
        }
    }

    /// The member's `--name`.
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The member's peer URL, as given in `--initial-advertise-peer-urls`.
    pub fn peer_url(&self) -> &str {
        &self.launch.peer_url
    }

    /// Kills the process (if still running) and starts it again on the same data dir and
    /// ports, appending to the same log. Callers must `wait_ready` again.
    pub fn restart(&mut self) {
        self.kill();
        self.child = self.launch.spawn();
    }

    /// Polls a gRPC Range until the server answers, and returns a connected client.
    /// Range rather than Status: it is the first RPC any server implements, so readiness
    /// does not depend on the Maintenance service. The Range is linearizable, so a cluster
    /// member is ready only once it has a leader. Fails if the process exits first or
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
            "{} {} at {} not ready within {within:?} (last error: {last_err})\n{}",
            self.flavor.name(),
            self.launch.name,
            self.endpoint,
            self.log_tail()
        ))
    }

    /// A client for this server; see [`connect`].
    pub async fn client(&self, timeout: Option<Duration>) -> Client {
        connect(&self.endpoint, timeout).await
    }

    /// The exit status if the process has already terminated.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the process runs and is not paused: it can answer.
    pub fn is_up(&mut self) -> bool {
        !self.paused && self.exited().is_none()
    }

    /// SIGKILLs the process (no chance to flush anything) and reaps it.
    pub fn kill(&mut self) {
        // An error only means the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.paused = false;
    }

    /// SIGSTOPs the process: it keeps its sockets open but answers nothing, like a member
    /// behind a network partition (connections hang instead of being refused).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONTs a paused process.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    fn signal(&mut self, sig: libc::c_int) {
        assert!(
            self.exited().is_none(),
            "signalling {} {}, which already exited",
            self.flavor.name(),
            self.launch.name
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory effects; the child is not reaped yet (checked
        // above), so the pid is still ours.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.launch.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- last lines of {} ---\n{}",
            self.launch.log_path.display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.paused && self.exited().is_none() {
            // SIGKILL ends a stopped process too; resuming first just keeps the process
            // table tidy if the kill is refused for any reason.
            self.resume();
        }
        self.kill();
    }
}

/// Raft timing flags, in milliseconds (etcd's `--heartbeat-interval`, `--election-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

impl Default for Timing {
    /// etcd's defaults, which raftkv shares.
    fn default() -> Self {
        Timing {
            heartbeat_ms: 100,
            election_ms: 1000,
        }
    }
}

/// N members of one flavor forming one cluster, named `n1..nN`, each with its own data dir
/// and log under one parent directory. Members are addressed by index (0-based).
pub struct Cluster {
    pub flavor: Flavor,
    pub members: Vec<Server>,
    /// Member ID -> index, learned from Status headers.
    ids: HashMap<u64, usize>,
}

/// Bound on one Status probe while looking for the leader.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

impl Cluster {
    /// Starts `size` members; they elect a leader on their own. Call [`Cluster::wait_ready`].
    pub fn spawn(flavor: Flavor, size: usize, dir: &Path, timing: Timing) -> Cluster {
        Self::spawn_with_args(flavor, size, dir, timing, |_| Vec::new())
    }

    /// [`Cluster::spawn`] with more flags for member `i` (0-based): `extra(i)`.
    pub fn spawn_with_args(
        flavor: Flavor,
        size: usize,
        dir: &Path,
        timing: Timing,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let names: Vec<String> = (1..=size).map(|i| format!("n{i}")).collect();
        // Peer ports, then client ports, then one for the token.
        let ports = free_ports(2 * size + 1);
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let peer_urls: Vec<String> = ports[..size].iter().map(|&p| url(p)).collect();
        let client_urls: Vec<String> = ports[size..2 * size].iter().map(|&p| url(p)).collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_urls)
            .map(|(n, u)| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        // A token unique to this cluster: member IDs derive from it, so two clusters of one
        // test run can never mistake each other's members for their own.
        let token = format!("cluster-{}", ports[2 * size]);
        let cluster_args: Vec<String> = [
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &token,
            "--heartbeat-interval",
            &timing.heartbeat_ms.to_string(),
            "--election-timeout",
            &timing.election_ms.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let members = names
            .iter()
            .zip(peer_urls)
            .zip(client_urls)
            .enumerate()
            .map(|(i, ((name, peer_url), client_url))| {
                Server::start(Launch {
                    flavor,
                    name: name.clone(),
                    data_dir: dir.join(name),
                    log_path: dir.join(format!("{name}.log")),
                    client_url,
                    peer_url,
                    initial_cluster: initial_cluster.clone(),
                    cluster_args: [cluster_args.clone(), extra(i)].concat(),
                })
            })
            .collect();
        Cluster {
            flavor,
            members,
            ids: HashMap::new(),
        }
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Waits until each of `which` answers a linearizable Range (so it has a leader);
    /// all at once, since none can be ready before a quorum runs.
    pub async fn wait_ready_members(
        &mut self,
        which: &[usize],
        within: Duration,
    ) -> Result<(), String> {
        let waits = self
            .members
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| which.contains(i))
            .map(|(_, m)| m.wait_ready(within));
        let errors: Vec<String> = futures::future::join_all(waits)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Waits until every member is ready.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let all: Vec<usize> = (0..self.size()).collect();
        self.wait_ready_members(&all, within).await
    }

    /// `(own member ID, leader ID it reports)` from member `i`'s Status, bounded.
    async fn probe(&self, i: usize) -> Option<(u64, u64)> {
        let mut c = self.members[i].client(Some(PROBE_TIMEOUT)).await;
        let s = tokio::time::timeout(PROBE_TIMEOUT, c.status())
            .await
            .ok()?
            .ok()?;
        Some((s.header()?.member_id(), s.leader()))
    }

    /// The member ID of member `i`, once any probe has seen it.
    pub fn member_id(&self, i: usize) -> Option<u64> {
        self.ids.iter().find(|(_, &j)| j == i).map(|(&id, _)| id)
    }

    /// The index of the leader: the running member that reports itself as leader and that
    /// a majority of the cluster reports as leader. Polls until `within` elapses.
    pub async fn leader(&mut self, within: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + within;
        loop {
            let up: Vec<usize> = (0..self.size())
                .filter(|&i| self.members[i].is_up())
                .collect();
            let probes = futures::future::join_all(up.iter().map(|&i| self.probe(i))).await;
            let mut votes: HashMap<u64, usize> = HashMap::new();
            let mut self_leader = None;
            for (&i, p) in up.iter().zip(&probes) {
                let Some((me, leader)) = *p else { continue };
                self.ids.insert(me, i);
                if leader != 0 {
                    *votes.entry(leader).or_default() += 1;
                }
                if leader == me {
                    self_leader = Some(me);
                }
            }
            if let Some(id) = self_leader {
                if votes.get(&id).copied().unwrap_or(0) > self.size() / 2 {
                    return Ok(self.ids[&id]);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no leader agreed on by a majority within {within:?}; member answers \
                     (own id, leader id): {probes:x?}\n{}",
                    self.log_tails()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every member index except `leader`.
    pub fn others(&self, leader: usize) -> Vec<usize> {
        (0..self.size()).filter(|&i| i != leader).collect()
    }

    /// The log tails of every member, for failure messages.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(Server::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
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

/// A gRPC request carrying an auth token in the `token` metadata, as etcd clients send it.
pub fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("token", t.parse().expect("ASCII token"));
    }
    req
}

/// A reply as one comparable line: `ok <what ok renders>`, or the status code and message.
pub fn render<T>(r: Result<tonic::Response<T>, tonic::Status>, ok: impl Fn(T) -> String) -> String {
    match r {
        Ok(resp) => format!("ok {}", ok(resp.into_inner())),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}
