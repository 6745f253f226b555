//! `controlplane up | down | status`: a whole HA cluster on one machine, as child
//! processes of one launcher, for a newcomer and for the end-to-end tests.
//!
//! `up` starts, in order, and waits for each layer to be healthy before the next:
//! raftkv members → API server replicas (one shared serving certificate and token file)
//! behind the launcher's TCP [`balancer`] → schedulers and controller managers (leader
//! elected) → node agents, as root each in a network namespace of its own on the cluster's
//! node network ([`nodenet`]). It writes `kubeconfig` and `etcdctl.env` into the cluster
//! folder, records every process in the [`state`] file, restarts a process that exits
//! (after 1 s, doubling to 30 s, as systemd's `Restart=always` or a kubelet's static pods
//! would: a scheduler that loses its Lease exits by design), and on Ctrl-C / SIGTERM stops
//! them in reverse order and removes what node agents leave behind ([`cleanup`]). `down`
//! does the same for a launcher that died; `status` prints the [`status`] tables.
//!
//! Ports are fixed offsets from `--port-base` (so a restarted cluster finds its members
//! where its Raft membership says they are): raftkv member i (0-based) serves clients on
//! base+2i and peers on base+2i+1; API server i listens on base+50+i; node agent i on
//! base+70+i; the load-balanced API endpoint is `--api-port`.

pub mod balancer;
pub mod cleanup;
pub mod nodenet;
pub mod pki;
pub mod process;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use tokio_util::sync::CancellationToken;

use crate::client::http::HttpClient;
use crate::client::{Api, ListParams};
use process::{Spawner, Spec};
use state::{is_ours, ClusterState, ProcessRecord, Role};

/// How many of each process.
#[derive(Clone, Debug)]
pub struct Topology {
    pub members: usize,
    pub apiservers: usize,
    pub schedulers: usize,
    pub controller_managers: usize,
    pub nodes: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            members: 3,
            apiservers: 3,
            schedulers: 2,
            controller_managers: 2,
            nodes: 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub dir: PathBuf,
    pub topology: Topology,
    /// Where `raftkv`, `nodeagent` and `controlplane` are (the launcher's own folder).
    pub bin_dir: PathBuf,
    pub port_base: u16,
    pub api_port: u16,
    /// Leader election of schedulers and controller managers: lease duration; the renew
    /// deadline is 2/3 of it and the retry period 1/6.
    pub lease_duration: Duration,
    /// Node heartbeat grace period of the controller managers.
    pub node_grace_period: Duration,
    /// How long each layer may take to become healthy.
    pub timeout: Duration,
    /// Where the node agents' network is: own namespaces or the host's.
    pub node_network: nodenet::Mode,
}

impl UpOptions {
    pub fn new(dir: PathBuf, bin_dir: PathBuf) -> UpOptions {
        UpOptions {
            dir,
            topology: Topology::default(),
            bin_dir,
            port_base: 2379,
            api_port: 6443,
            lease_duration: Duration::from_secs(6),
            node_grace_period: Duration::from_secs(20),
            timeout: Duration::from_secs(90),
            node_network: nodenet::Mode::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0} is missing: build it first (cargo build --release -p raftkv -p nodeagent -p controlplane)")]
    MissingBinary(PathBuf),
    #[error("a cluster is already running from {dir} (launcher pid {pid}); `controlplane down --dir {dir}` stops it")]
    AlreadyRunning { dir: String, pid: u32 },
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{what} not healthy within {timeout:?}; see the logs in {logs}")]
    Timeout {
        what: String,
        timeout: Duration,
        logs: String,
    },
    #[error("node agents run containers with runc and need root: run as root, or pass --nodes 0")]
    NotRoot,
    #[error("the node network of {node}: {message}")]
    NodeNetwork { node: String, message: String },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API client: {0}")]
    Client(#[from] crate::client::ClientError),
}

/// A running cluster: the children and the load balancer.
pub struct Cluster {
    dir: PathBuf,
    state: ClusterState,
    /// Parallel to `state.processes`.
    children: Vec<Supervised>,
    balancer: CancellationToken,
}

/// One child and how to start it again.
struct Supervised {
    child: Child,
    spec: Spec,
    /// When it was seen exited, and so when it may be restarted.
    exited_at: Option<Instant>,
}

/// Restart delay after `restarts` restarts: 1 s doubling to 30 s.
fn restart_delay(restarts: u32) -> Duration {
    Duration::from_secs(1 << restarts.min(5)).min(Duration::from_secs(30))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Polls `check` until it is true, printing progress; fails after `timeout`.
async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    logs: &Path,
    progress: &dyn Fn(&str),
    mut check: F,
) -> Result<(), LaunchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (usize, usize)>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        let (ok, of) = check().await;
        if last != Some(ok) {
            progress(&format!(
                "  {what}: {ok}/{of} ready ({:.1}s)",
                start.elapsed().as_secs_f64()
            ));
            last = Some(ok);
        }
        if ok >= of {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LaunchError::Timeout {
                what: what.into(),
                timeout,
                logs: logs.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Cluster {
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn start(
        &mut self,
        spawner: &dyn Spawner,
        spec: Spec,
        endpoint: Option<String>,
        state_dir: Option<PathBuf>,
        netns: Option<PathBuf>,
    ) -> Result<(), LaunchError> {
        let child = spawner.spawn(&spec).map_err(|source| LaunchError::Spawn {
            name: spec.name.clone(),
            source,
        })?;
        self.state.processes.push(ProcessRecord {
            name: spec.name.clone(),
            role: spec.role,
            pid: child.id(),
            program: spec.program.clone(),
            endpoint,
            state_dir,
            netns,
            restarts: 0,
        });
        self.children.push(Supervised {
            child,
            spec,
            exited_at: None,
        });
        self.state.save(&self.dir)?;
        Ok(())
    }

    /// Restarts processes that exited, each after its backoff; call it periodically.
    /// Returns the names restarted.
    pub fn supervise(&mut self, spawner: &dyn Spawner, progress: &dyn Fn(&str)) -> Vec<String> {
        let mut restarted = Vec::new();
        for (rec, s) in self
            .state
            .processes
            .iter_mut()
            .zip(self.children.iter_mut())
        {
            let Ok(Some(status)) = s.child.try_wait() else {
                continue;
            };
            let exited_at = *s.exited_at.get_or_insert_with(|| {
                progress(&format!("{} exited ({status}); restarting it", rec.name));
                Instant::now()
            });
            if exited_at.elapsed() < restart_delay(rec.restarts) {
                continue;
            }
            match spawner.spawn(&s.spec) {
                Ok(child) => {
                    rec.pid = child.id();
                    rec.restarts += 1;
                    s.child = child;
                    s.exited_at = None;
                    restarted.push(rec.name.clone());
                }
                Err(e) => progress(&format!("restarting {}: {e}", rec.name)),
            }
        }
        if !restarted.is_empty() {
            if let Err(e) = self.state.save(&self.dir) {
                progress(&format!("saving the state file: {e}"));
            }
        }
        restarted
    }

    /// Starts the whole cluster and waits until it is healthy. On failure everything
    /// started so far is stopped again.
    pub async fn up(
        opts: &UpOptions,
        spawner: &dyn Spawner,
        progress: &dyn Fn(&str),
    ) -> Result<Cluster, LaunchError> {
        let dir = &opts.dir;
        if let Ok(old) = ClusterState::load(dir) {
            let me = std::env::current_exe().unwrap_or_default();
            if old.launcher_pid != std::process::id() && is_ours(old.launcher_pid, &me) {
                return Err(LaunchError::AlreadyRunning {
                    dir: dir.display().to_string(),
                    pid: old.launcher_pid,
                });
            }
            // A crashed run: clear what it left before reusing its data.
            down(dir, progress)?;
        }
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        let bin = |name: &str| -> Result<PathBuf, LaunchError> {
            let p = opts.bin_dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(LaunchError::MissingBinary(p))
            }
        };
        let (raftkv, controlplane) = (bin("raftkv")?, bin("controlplane")?);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if opts.topology.nodes > 0 && !root {
            return Err(LaunchError::NotRoot);
        }
        let nodeagent = if opts.topology.nodes > 0 {
            Some(bin("nodeagent")?)
        } else {
            None
        };
        let node_network = match opts
            .node_network
            .resolve(root, Path::new(nodenet::CNI_BIN_DIR))
        {
            nodenet::Mode::Namespaces { network, prefix } if opts.topology.nodes > 0 => {
                Some(nodenet::NodeNetwork::new(dir, network, prefix))
            }
            _ => None,
        };
        let extra_names: Vec<String> = node_network
            .iter()
            .map(|n| n.gateway().to_string())
            .collect();
        pki::ensure(dir, &extra_names)?;
        let mut cluster = Cluster {
            dir: dir.clone(),
            state: ClusterState {
                launcher_pid: std::process::id(),
                api_endpoint: format!("https://127.0.0.1:{}", opts.api_port),
                node_network,
                processes: Vec::new(),
            },
            children: Vec::new(),
            balancer: CancellationToken::new(),
        };
        match cluster
            .start_all(opts, spawner, progress, raftkv, controlplane, nodeagent)
            .await
        {
            Ok(()) => Ok(cluster),
            Err(e) => {
                progress(&format!("start failed: {e}; stopping what was started"));
                cluster.stop(progress);
                Err(e)
            }
        }
    }

    async fn start_all(
        &mut self,
        opts: &UpOptions,
        spawner: &dyn Spawner,
        progress: &dyn Fn(&str),
        raftkv: PathBuf,
        controlplane: PathBuf,
        nodeagent: Option<PathBuf>,
    ) -> Result<(), LaunchError> {
        let dir = opts.dir.clone();
        let logs = dir.join("logs");
        let log = |name: &str| logs.join(format!("{name}.log"));
        let t = &opts.topology;
        let base = opts.port_base;

        // The nodes' namespaces first: the load balancer listens on their gateway too.
        let mut node_nets = Vec::new();
        if let (Some(net), Some(nodeagent)) = (&self.state.node_network, &nodeagent) {
            // Recorded before anything is made, so `down` finds it after a crash.
            self.state.save(&dir)?;
            for i in 1..=t.nodes {
                let name = format!("node-{i}");
                let made =
                    net.add(nodeagent, &name, i)
                        .map_err(|message| LaunchError::NodeNetwork {
                            node: name.clone(),
                            message,
                        })?;
                node_nets.push(made);
            }
            let addrs: Vec<String> = node_nets
                .iter()
                .zip(1..)
                .map(|((_, ip), i)| format!("node-{i} {ip}"))
                .collect();
            progress(&format!(
                "node network {} on bridge {} (gateway {}): {}",
                net.cidr,
                net.bridge,
                net.gateway(),
                addrs.join(", ")
            ));
        }

        // raftkv members.
        let member_ports: Vec<(u16, u16)> = (0..t.members as u16)
            .map(|i| (base + 2 * i, base + 2 * i + 1))
            .collect();
        let initial_cluster = member_ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}={}", i + 1, url(*peer)))
            .collect::<Vec<_>>()
            .join(",");
        progress(&format!("starting {} raftkv members", t.members));
        for (i, (client, peer)) in member_ports.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let spec = Spec::new(&name, Role::Raftkv, raftkv.clone(), log(&name))
                .args(["--name", &name, "--data-dir"])
                .arg(dir.join(&name))
                .args([
                    "--listen-client-urls",
                    &url(*client),
                    "--advertise-client-urls",
                    &url(*client),
                ])
                .args([
                    "--listen-peer-urls",
                    &url(*peer),
                    "--initial-advertise-peer-urls",
                    &url(*peer),
                ])
                .args([
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                ]);
            self.start(spawner, spec, Some(url(*client)), None, None)?;
        }
        let endpoints: Vec<String> = member_ports.iter().map(|(c, _)| url(*c)).collect();
        wait_until(
            "raftkv members with a leader",
            opts.timeout,
            &logs,
            progress,
            || {
                let endpoints = endpoints.clone();
                async move {
                    let mut ok = 0;
                    for ep in &endpoints {
                        if status::member_status(ep)
                            .await
                            .is_some_and(|s| s.leader != 0)
                        {
                            ok += 1;
                        }
                    }
                    (ok, endpoints.len())
                }
            },
        )
        .await?;
        let env = dir.join("etcdctl.env");
        let hosts: Vec<String> = member_ports
            .iter()
            .map(|(c, _)| format!("127.0.0.1:{c}"))
            .collect();
        std::fs::write(
            &env,
            format!(
                "export ETCDCTL_API=3 ETCDCTL_ENDPOINTS={}\n",
                hosts.join(",")
            ),
        )
        .map_err(io_err(&env))?;

        // API servers behind the load balancer.
        progress(&format!("starting {} API servers", t.apiservers));
        let mut backends = Vec::new();
        for i in 0..t.apiservers as u16 {
            let name = format!("apiserver-{}", i + 1);
            let port = base + 50 + i;
            let spec = Spec::new(&name, Role::Apiserver, controlplane.clone(), log(&name))
                .args([
                    "apiserver",
                    "--etcd-servers",
                    &endpoints.join(","),
                    "--secure-port",
                    &port.to_string(),
                ])
                .arg("--tls-cert-file")
                .arg(pki::cert_path(&dir))
                .arg("--tls-private-key-file")
                .arg(pki::key_path(&dir))
                .arg("--token-auth-file")
                .arg(pki::tokens_path(&dir))
                .arg("--cert-dir")
                .arg(dir.join(&name));
            self.start(
                spawner,
                spec,
                Some(format!("https://127.0.0.1:{port}")),
                None,
                None,
            )?;
            backends.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let lb_addr = SocketAddr::from(([127, 0, 0, 1], opts.api_port));
        let mut lb_addrs = vec![lb_addr];
        if let Some(net) = &self.state.node_network {
            lb_addrs.push(SocketAddr::from((net.gateway(), opts.api_port)));
        }
        for addr in lb_addrs {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| LaunchError::Spawn {
                    name: format!("the load balancer on {addr}"),
                    source,
                })?;
            tokio::spawn(balancer::serve(
                listener,
                backends.clone(),
                self.balancer.clone(),
            ));
        }
        let kubeconfig = write_kubeconfig(&dir, "kubeconfig", &self.state.api_endpoint)?;
        // Node agents in their own namespaces reach the API at the gateway.
        let node_kubeconfig = match &self.state.node_network {
            Some(net) => write_kubeconfig(
                &dir,
                "node-kubeconfig",
                &format!("https://{}:{}", net.gateway(), opts.api_port),
            )?,
            None => kubeconfig.clone(),
        };
        let http = status::https_client(&dir);
        let api_endpoints: Vec<String> = self
            .state
            .of_role(Role::Apiserver)
            .filter_map(|p| p.endpoint.clone())
            .collect();
        wait_until("API servers", opts.timeout, &logs, progress, || {
            let (http, eps) = (http.clone(), api_endpoints.clone());
            async move {
                let mut ok = 0;
                for ep in &eps {
                    if http
                        .get(format!("{ep}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                    {
                        ok += 1;
                    }
                }
                (ok, eps.len())
            }
        })
        .await?;
        let api = HttpClient::from_kubeconfig(&kubeconfig)?;

        // Schedulers and controller managers.
        let lease = opts.lease_duration;
        let election = |spec: Spec, id: &str| {
            spec.args(["--kubeconfig"])
                .arg(&kubeconfig)
                .args(["--leader-elect", "--identity", id])
                .arg("--leader-elect-lease-duration")
                .arg(format!("{}ms", lease.as_millis()))
                .arg("--leader-elect-renew-deadline")
                .arg(format!("{}ms", (lease * 2 / 3).as_millis()))
                .arg("--leader-elect-retry-period")
                .arg(format!("{}ms", (lease / 6).as_millis()))
        };
        progress(&format!(
            "starting {} schedulers and {} controller managers",
            t.schedulers, t.controller_managers
        ));
        for i in 0..t.schedulers {
            let name = format!("scheduler-{}", i + 1);
            let spec = election(
                Spec::new(&name, Role::Scheduler, controlplane.clone(), log(&name))
                    .arg("scheduler"),
                &name,
            );
            self.start(spawner, spec, None, None, None)?;
        }
        for i in 0..t.controller_managers {
            let name = format!("controller-manager-{}", i + 1);
            let spec = election(
                Spec::new(
                    &name,
                    Role::ControllerManager,
                    controlplane.clone(),
                    log(&name),
                )
                .arg("controller-manager"),
                &name,
            )
            .arg("--node-monitor-grace-period")
            .arg(format!("{}ms", opts.node_grace_period.as_millis()));
            self.start(spawner, spec, None, None, None)?;
        }
        wait_until(
            "leaders (scheduler, controller manager)",
            opts.timeout,
            &logs,
            progress,
            || {
                let api = api.clone();
                let want = usize::from(t.schedulers > 0) + usize::from(t.controller_managers > 0);
                async move {
                    let mut ok = 0;
                    for lease in ["kube-scheduler", "kube-controller-manager"] {
                        ok += usize::from(status::lease_holder(&api, lease).await.is_some());
                    }
                    (ok.min(want), want)
                }
            },
        )
        .await?;

        // Node agents.
        if let Some(nodeagent) = nodeagent {
            progress(&format!("starting {} node agents", t.nodes));
            for i in 0..t.nodes as u16 {
                let name = format!("node-{}", i + 1);
                let state_dir = dir.join(&name);
                let mut spec = node_agent_spec(
                    &name,
                    nodeagent.clone(),
                    log(&name),
                    &node_kubeconfig,
                    &state_dir,
                    base + 70 + i,
                );
                let own = node_nets.get(usize::from(i));
                if let Some((netns, ip)) = own {
                    spec = spec
                        .arg("--netns")
                        .arg(netns)
                        .args(["--node-ip", &ip.to_string()]);
                }
                let netns = own.map(|(netns, _)| netns.clone());
                self.start(spawner, spec, None, Some(state_dir), netns)?;
            }
            if let Some(net) = &self.state.node_network {
                let spec = Spec::new(
                    "host-routes",
                    Role::HostRoutes,
                    nodeagent.clone(),
                    log("host-routes"),
                )
                .args(["host-routes", "--kubeconfig"])
                .arg(&kubeconfig)
                .args(["--node-network", &net.cidr]);
                self.start(spawner, spec, None, None, None)?;
            }
            wait_until("nodes Ready", opts.timeout, &logs, progress, || {
                let api = api.clone();
                async move {
                    let ready = api
                        .list::<Node>(None, &ListParams::default())
                        .await
                        .map(|l| {
                            l.items
                                .iter()
                                .filter(|n| {
                                    n.status
                                        .as_ref()
                                        .and_then(|s| s.conditions.as_ref())
                                        .is_some_and(|c| {
                                            c.iter()
                                                .any(|c| c.type_ == "Ready" && c.status == "True")
                                        })
                                })
                                .count()
                        })
                        .unwrap_or(0);
                    (ready, t.nodes)
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Stops every process, node agents first and raftkv last, then removes what the node
    /// agents made on the host (containers, pod networks, proxy rules, mounts).
    pub fn stop(&mut self, progress: &dyn Fn(&str)) {
        self.balancer.cancel();
        for role in STOP_ORDER {
            for (rec, s) in self.state.processes.iter().zip(self.children.iter_mut()) {
                if rec.role == role {
                    process::terminate(&mut s.child, Duration::from_secs(10));
                }
            }
            if role == Role::Nodeagent {
                clean_node_leftovers(&self.dir, &self.state, progress);
            }
        }
        self.state.processes.clear();
        self.children.clear();
        let _ = std::fs::remove_file(state::state_path(&self.dir));
        progress("stopped");
    }
}

/// Writes `<dir>/<name>`, an admin kubeconfig for `server` that trusts the cluster's
/// serving certificate.
fn write_kubeconfig(dir: &Path, name: &str, server: &str) -> Result<PathBuf, LaunchError> {
    let path = dir.join(name);
    crate::apiserver::write_kubeconfig(
        &path,
        server,
        Some(&pki::cert_path(dir)),
        Some(&pki::tokens_path(dir)),
    )
    .map_err(|e| LaunchError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(path)
}

/// Stop order: what depends on the API goes first, the store last.
const STOP_ORDER: [Role; 6] = [
    Role::HostRoutes,
    Role::Nodeagent,
    Role::ControllerManager,
    Role::Scheduler,
    Role::Apiserver,
    Role::Raftkv,
];

/// The node agent's command line: pod networking per node (CNI, addresses from the
/// podCIDR the controller manager's node IPAM assigns) and the service proxy, which
/// makes ClusterIPs and NodePorts reachable from the host.
fn node_agent_spec(
    name: &str,
    program: PathBuf,
    log: PathBuf,
    kubeconfig: &Path,
    state_dir: &Path,
    port: u16,
) -> Spec {
    Spec::new(name, Role::Nodeagent, program, log)
        .args(["--kubeconfig"])
        .arg(kubeconfig)
        .args(["--node-name", name, "--root-dir"])
        .arg(state_dir)
        .args(["--port", &port.to_string(), "--proxy"])
}

/// After the node agents stopped: `nodeagent teardown` of each node (its runc containers,
/// pod networks, proxy table, cgroups), then whatever is still mounted below the folder
/// and any container a missing agent binary could not remove.
fn clean_node_leftovers(dir: &Path, state: &ClusterState, progress: &dyn Fn(&str)) {
    for node in state.of_role(Role::Nodeagent) {
        let Some(state_dir) = &node.state_dir else {
            continue;
        };
        let mut teardown = std::process::Command::new(&node.program);
        teardown
            .args(["teardown", "--node-name", &node.name, "--root-dir"])
            .arg(state_dir);
        if let Some(netns) = &node.netns {
            teardown.arg("--netns").arg(netns);
        }
        let out = teardown.output();
        match out {
            Ok(o) if o.status.success() => {
                progress(String::from_utf8_lossy(&o.stdout).trim());
            }
            Ok(o) => progress(&format!(
                "teardown of {} failed: {}",
                node.name,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => progress(&format!("teardown of {}: {e}", node.name)),
        }
    }
    // The nodes' namespaces (whatever the agents made in them goes too) and the bridge.
    let agent = state
        .of_role(Role::Nodeagent)
        .next()
        .map(|n| n.program.clone());
    if let (Some(net), Some(agent)) = (&state.node_network, agent) {
        match net.remove(&agent) {
            Ok(()) => progress(&format!("node network removed (bridge {})", net.bridge)),
            Err(e) => progress(&format!("removing the node network: {e}")),
        }
    }
    let containers = cleanup::remove_containers(dir);
    let mounts = cleanup::unmount_below(dir);
    if containers + mounts > 0 {
        progress(&format!("removed {containers} containers, {mounts} mounts"));
    }
}

/// Stops what a cluster folder's state file lists (a crashed or still running launcher
/// included) and removes the node agents' leftovers.
pub fn down(dir: &Path, progress: &dyn Fn(&str)) -> Result<(), LaunchError> {
    let state = match ClusterState::load(dir) {
        Ok(s) => s,
        Err(state::StateError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            clean_node_leftovers(dir, &ClusterState::default(), progress);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let me = std::env::current_exe().unwrap_or_default();
    if state.launcher_pid != std::process::id() && is_ours(state.launcher_pid, &me) {
        progress(&format!(
            "stopping the launcher (pid {})",
            state.launcher_pid
        ));
        process::terminate_pid(state.launcher_pid, Duration::from_secs(30));
    }
    for role in STOP_ORDER {
        for p in state.of_role(role) {
            if is_ours(p.pid, &p.program) {
                progress(&format!("stopping {} (pid {})", p.name, p.pid));
                process::terminate_pid(p.pid, Duration::from_secs(10));
            }
        }
        if role == Role::Nodeagent {
            clean_node_leftovers(dir, &state, progress);
        }
    }
    let _ = std::fs::remove_file(state::state_path(dir));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spec runs the same shell snippet.
    struct Sh(&'static str);

    impl Spawner for Sh {
        fn spawn(&self, _: &Spec) -> std::io::Result<Child> {
            std::process::Command::new("sh")
                .args(["-c", self.0])
                .spawn()
        }
    }

    #[test]
    fn restart_backoff_doubles_to_30s() {
        let cases = [(0, 1), (1, 2), (2, 4), (4, 16), (5, 30), (40, 30)];
        for (restarts, secs) in cases {
            assert_eq!(
                restart_delay(restarts),
                Duration::from_secs(secs),
                "{restarts}"
            );
        }
    }

    #[test]
    fn an_exited_process_is_restarted_after_its_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            dir: dir.path().to_path_buf(),
            state: ClusterState::default(),
            children: Vec::new(),
            balancer: CancellationToken::new(),
        };
        let crashing = Sh("exit 3");
        let spec = Spec::new(
            "s1",
            Role::Scheduler,
            "/bin/sh".into(),
            dir.path().join("s1.log"),
        );
        c.start(&crashing, spec, None, None, None).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let quiet = |_: &str| {};
        // Seen exited, but the first restart waits 1 s.
        assert!(c.supervise(&crashing, &quiet).is_empty());
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.supervise(&crashing, &quiet), ["s1"]);
        let saved = ClusterState::load(dir.path()).unwrap();
        assert_eq!(saved.processes[0].restarts, 1);
        assert_eq!(saved.processes[0].pid, c.children[0].child.id());
        // The second restart waits 2 s.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(c.supervise(&crashing, &quiet).is_empty());
        c.stop(&quiet);
        assert!(!state::state_path(dir.path()).exists());
    }
}
