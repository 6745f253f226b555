//! `controlplane`: the control plane's processes, one subcommand each: `apiserver`,
//! `scheduler` and `controller-manager`; and `up` / `down` / `status`, which run a whole
//! local HA cluster (raftkv, API servers, schedulers, controller managers, node agents).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use controlplane::apiserver::SecureListen;

#[derive(Parser)]
#[command(
    name = "controlplane",
    about = "Kubernetes-style control plane on raftkv"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The API server: Kubernetes REST + watch, state in the etcd v3 API.
    Apiserver(ApiserverArgs),
    /// The scheduler: binds pending pods to nodes, optionally one active replica of many.
    Scheduler(SchedulerArgs),
    /// The controllers (ReplicaSet, Deployment, node lifecycle, endpoints, garbage
    /// collector), optionally one active replica of many.
    ControllerManager(ControllerManagerArgs),
    /// Start a local HA cluster as child processes; Ctrl-C stops it.
    Up(UpArgs),
    /// Stop the cluster of a folder (also after the launcher crashed) and clean up.
    Down(DirArgs),
    /// Print the state of a running cluster.
    Status(DirArgs),
}

#[derive(clap::Args)]
struct DirArgs {
    /// The cluster folder (data, logs, kubeconfig).
    #[arg(long, default_value = "hakube")]
    dir: PathBuf,
    /// `down` only: also delete the folder (data and logs).
    #[arg(long)]
    purge: bool,
}

#[derive(clap::Args)]
struct UpArgs {
    /// The cluster folder (data, logs, kubeconfig); reused by the next `up`.
    #[arg(long, default_value = "hakube")]
    dir: PathBuf,
    /// raftkv members.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// API server replicas.
    #[arg(long, default_value_t = 3)]
    apiservers: usize,
    #[arg(long, default_value_t = 2)]
    schedulers: usize,
    #[arg(long, default_value_t = 2)]
    controller_managers: usize,
    /// Node agents (nodes).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// First of the ports the processes listen on: raftkv member i (from 0) on base+2i
    /// (clients) and base+2i+1 (peers), API server i on base+50+i, node agent i on
    /// base+70+i.
    #[arg(long, default_value_t = 2379)]
    port_base: u16,
    /// The load-balanced HTTPS endpoint of the API servers.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Lease duration of the schedulers' and controller managers' leader election.
    #[arg(long, value_parser = humantime_secs, default_value = "6s")]
    lease_duration: std::time::Duration,
    /// How long a node may miss heartbeats before it is marked unreachable.
    #[arg(long, value_parser = humantime_secs, default_value = "20s")]
    node_grace_period: std::time::Duration,
    /// The node agents' network: `auto` (as root with the CNI plugins, each node in a
    /// network namespace of its own on 10.100.0.0/24, else the host's), `host`, or the
    /// CIDR of the nodes' own network.
    #[arg(long, default_value = "auto")]
    node_network: controlplane::launcher::nodenet::Mode,
}

/// Leader election flags (kube-scheduler's and kube-controller-manager's names).
#[derive(clap::Args)]
struct ElectionArgs {
    /// Run only while holding the Lease; exit when it is lost.
    #[arg(long)]
    leader_elect: bool,
    /// The Lease's name (in --lease-namespace); defaults to the component's name.
    #[arg(long, alias = "leader-elect-resource-name")]
    lease_name: Option<String>,
    #[arg(
        long,
        alias = "leader-elect-resource-namespace",
        default_value = "kube-system"
    )]
    lease_namespace: String,
    /// This replica's holder identity (default: hostname_<random>).
    #[arg(long)]
    identity: Option<String>,
    /// How long a Lease is valid after its last renewal.
    #[arg(long, value_parser = humantime_secs, default_value = "15s")]
    leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps trying to renew before it stops acting.
    #[arg(long, value_parser = humantime_secs, default_value = "10s")]
    leader_elect_renew_deadline: std::time::Duration,
    /// Interval between acquire/renew attempts.
    #[arg(long, value_parser = humantime_secs, default_value = "2s")]
    leader_elect_retry_period: std::time::Duration,
}

#[derive(clap::Args)]
struct SchedulerArgs {
    /// kubeconfig of the API server (as `apiserver --kubeconfig-out` writes it).
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    election: ElectionArgs,
    /// The schedulerName of the pods this scheduler handles.
    #[arg(long, default_value = controlplane::scheduler::DEFAULT_SCHEDULER_NAME)]
    scheduler_name: String,
    /// Score plugin weights, e.g. `NodeResourcesLeastAllocated=2,SelectorSpread=0`.
    #[arg(long, default_value = "")]
    score_weights: String,
    /// Serve Prometheus `/metrics` here (e.g. 127.0.0.1:10251); off unless given.
    #[arg(long)]
    metrics_address: Option<SocketAddr>,
}

/// `1.5s`, `500ms` or plain seconds.
fn humantime_secs(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    std::time::Duration::try_from_secs_f64(v * unit).map_err(|e| e.to_string())
}

#[derive(clap::Args)]
struct ControllerManagerArgs {
    /// kubeconfig of the API server (as `apiserver --kubeconfig-out` writes it).
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    election: ElectionArgs,
    /// Controllers to run: `*` or a comma-separated list of
    /// replicaset, deployment, nodelifecycle, endpoint, garbagecollector, namespace, nodeipam.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Workers per controller.
    #[arg(long, default_value_t = 2)]
    concurrent_syncs: usize,
    /// How often every object is reconciled even without events.
    #[arg(long, value_parser = humantime_secs, default_value = "30s")]
    min_resync_period: std::time::Duration,
    /// A node whose heartbeat is older than this is marked unreachable.
    #[arg(long, value_parser = humantime_secs, default_value = "40s")]
    node_monitor_grace_period: std::time::Duration,
    /// How often node heartbeats are checked.
    #[arg(long, value_parser = humantime_secs, default_value = "5s")]
    node_monitor_period: std::time::Duration,
    /// Pod IPs of all nodes come from this CIDR; each node gets a subnet of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Serve Prometheus `/metrics` here (e.g. 127.0.0.1:10252); off unless given.
    #[arg(long)]
    metrics_address: Option<SocketAddr>,
}

/// Cancelled on Ctrl-C / SIGTERM.
fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        s.cancel();
    });
    shutdown
}

fn serve_metrics<F>(addr: Option<SocketAddr>, serve: impl FnOnce(SocketAddr) -> F)
where
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    if let Some(addr) = addr {
        let fut = serve(addr);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(%addr, error = %e, "metrics server failed");
            }
        });
    }
}

/// Runs `work` directly, or only while holding the Lease `default_lease` when
/// `--leader-elect` is given (returning an error when leadership is lost).
async fn run_elected<F, Fut>(
    api: controlplane::client::http::HttpClient,
    e: ElectionArgs,
    default_lease: &str,
    leader_gauge: prometheus::IntGauge,
    work: F,
) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use controlplane::clock::SystemClock;
    use controlplane::leaderelection::{Config, LeaderElector};
    use std::sync::Arc;

    let shutdown = shutdown_token();
    if !e.leader_elect {
        work(shutdown).await;
        return Ok(());
    }
    let identity = e.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}_{}", host.trim(), uuid::Uuid::new_v4())
    });
    let lease = e.lease_name.unwrap_or_else(|| default_lease.to_string());
    let mut config = Config::new(&e.lease_namespace, &lease, &identity);
    config.lease_duration = e.leader_elect_lease_duration;
    config.renew_deadline = e.leader_elect_renew_deadline;
    config.retry_period = e.leader_elect_retry_period;
    let mut elector = LeaderElector::new(api, Arc::new(SystemClock), config)?;
    elector
        .run(shutdown, move |leading| {
            leader_gauge.set(1);
            work(leading)
        })
        .await
        .context(lease)
}

async fn scheduler(a: SchedulerArgs) -> anyhow::Result<()> {
    use controlplane::client::http::HttpClient;
    use controlplane::clock::SystemClock;
    use controlplane::scheduler::{run, Options};
    use std::sync::Arc;

    let api = HttpClient::from_kubeconfig(&a.kubeconfig)?;
    let opts = Options {
        scheduler_name: a.scheduler_name,
        weights: a.score_weights.parse()?,
        metrics: Arc::default(),
    };
    serve_metrics(a.metrics_address, |addr| opts.metrics.clone().serve(addr));
    let gauge = opts.metrics.leader.clone();
    let worker_api = api.clone();
    run_elected(api, a.election, "kube-scheduler", gauge, move |token| {
        run(worker_api, Arc::new(SystemClock), opts, token)
    })
    .await
}

async fn controller_manager(a: ControllerManagerArgs) -> anyhow::Result<()> {
    use controlplane::client::http::HttpClient;
    use controlplane::clock::SystemClock;
    use controlplane::controllers::{nodeipam, nodelifecycle, run, Options, ALL};
    use std::sync::Arc;

    for c in &a.controllers {
        anyhow::ensure!(
            c == "*" || ALL.contains(&c.as_str()),
            "--controllers: unknown controller {c:?} (known: {})",
            ALL.join(", ")
        );
    }
    let api = HttpClient::from_kubeconfig(&a.kubeconfig)?;
    let opts = Options {
        controllers: a.controllers,
        workers: a.concurrent_syncs,
        resync_period: a.min_resync_period,
        node: nodelifecycle::Options {
            grace_period: a.node_monitor_grace_period,
            monitor_period: a.node_monitor_period,
        },
        ipam: nodeipam::Options::parse(&a.cluster_cidr, a.node_cidr_mask_size)?,
        metrics: Arc::default(),
    };
    serve_metrics(a.metrics_address, |addr| opts.metrics.clone().serve(addr));
    let gauge = opts.metrics.leader.clone();
    let worker_api = api.clone();
    run_elected(
        api,
        a.election,
        "kube-controller-manager",
        gauge,
        move |token| run(worker_api, Arc::new(SystemClock), opts, token),
    )
    .await
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    use controlplane::launcher::{process::OsSpawner, Cluster, Topology, UpOptions};

    let exe = std::env::current_exe().context("locating the controlplane binary")?;
    let bin_dir = exe.parent().context("binary folder")?.to_path_buf();
    // Absolute: the folder's paths are handed to other processes (runc resolves a relative
    // rootfs against the bundle, not our working directory).
    let dir = std::path::absolute(&a.dir).context("the cluster folder")?;
    let mut opts = UpOptions::new(dir, bin_dir);
    opts.topology = Topology {
        members: a.members,
        apiservers: a.apiservers,
        schedulers: a.schedulers,
        controller_managers: a.controller_managers,
        nodes: a.nodes,
    };
    opts.port_base = a.port_base;
    opts.api_port = a.api_port;
    opts.lease_duration = a.lease_duration;
    opts.node_grace_period = a.node_grace_period;
    opts.node_network = a.node_network;
    let progress = |m: &str| eprintln!("{m}");
    let started = std::time::Instant::now();
    let mut cluster = Cluster::up(&opts, &OsSpawner, &progress).await?;
    let dir = std::fs::canonicalize(&a.dir).unwrap_or(a.dir.clone());
    eprintln!(
        "\ncluster up in {:.1}s. Logs: {}/logs\n  export KUBECONFIG={}/kubeconfig\n  source {}/etcdctl.env\n  controlplane status --dir {}\n",
        started.elapsed().as_secs_f64(),
        dir.display(),
        dir.display(),
        dir.display(),
        dir.display()
    );
    eprintln!("Ctrl-C stops the cluster.");
    let shutdown = shutdown_token();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        cluster.supervise(&OsSpawner, &progress);
    }
    eprintln!("stopping the cluster...");
    cluster.stop(&progress);
    Ok(())
}

#[derive(clap::Args)]
struct ApiserverArgs {
    /// etcd v3 endpoints (raftkv or etcd), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_servers: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// HTTPS port (0 picks a free one).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Serve no HTTPS (only the insecure port).
    #[arg(long)]
    no_secure_port: bool,
    /// PEM certificate for HTTPS; without it a self-signed one is generated in --cert-dir.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// CA bundle (PEM) whose client certificates authenticate users: CN = user, O = groups.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Where the self-signed certificate is kept.
    #[arg(long, default_value = "apiserver.local.config/certificates")]
    cert_dir: PathBuf,
    /// Plain-HTTP port (0 picks a free one); off unless given.
    #[arg(long)]
    insecure_port: Option<u16>,
    /// Static bearer tokens, kube-apiserver's CSV format: token,user,uid,"group1,group2".
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// ABAC policy, one JSON Policy object a line (kube-apiserver's format).
    #[arg(long)]
    authorization_policy_file: Option<PathBuf>,
    /// Write a kubeconfig for this server (and the token file's first user) here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Services' ClusterIPs are allocated from this CIDR.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// NodePorts are allocated from this range.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Apiserver(a) => {
            let config = controlplane::apiserver::Config {
                etcd_servers: a.etcd_servers,
                secure: (!a.no_secure_port).then(|| SecureListen {
                    addr: SocketAddr::new(a.bind_address, a.secure_port),
                    cert_file: a.tls_cert_file,
                    key_file: a.tls_private_key_file,
                    cert_dir: a.cert_dir,
                    client_ca_file: a.client_ca_file,
                }),
                insecure: a.insecure_port.map(|p| SocketAddr::new(a.bind_address, p)),
                token_auth_file: a.token_auth_file,
                authorization_policy_file: a.authorization_policy_file,
                kubeconfig_out: a.kubeconfig_out,
                service_cluster_ip_range: a.service_cluster_ip_range,
                service_node_port_range: a.service_node_port_range,
            };
            controlplane::apiserver::serve(config)
                .await
                .context("apiserver")
        }
        Command::Scheduler(a) => scheduler(a).await,
        Command::ControllerManager(a) => controller_manager(a).await,
        Command::Up(a) => up(a).await,
        Command::Down(a) => {
            let progress = |m: &str| eprintln!("{m}");
            controlplane::launcher::down(&a.dir, &progress)?;
            if a.purge {
                std::fs::remove_dir_all(&a.dir)
                    .with_context(|| format!("removing {}", a.dir.display()))?;
            }
            eprintln!("down: nothing of {} is running", a.dir.display());
            Ok(())
        }
        Command::Status(a) => {
            let state = controlplane::launcher::state::ClusterState::load(&a.dir)
                .context("no running cluster there (start one with `controlplane up`)")?;
            print!(
                "{}",
                controlplane::launcher::status::render(&a.dir, &state).await
            );
            Ok(())
        }
    }
}
