//! The `nodeagent` binary: the node's kubelet (`nodeagent run`, the default), the image
//! tool (`nodeagent image import|build-busybox|list`) and the per-container shim
//! (`nodeagent shim`, started by the agent itself).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use controlplane::client::http::HttpClient;
use controlplane::clock::SystemClock;
use controlplane::scheduler::resources::parse_quantity;
use nodeagent::agent::{self, Intervals};
use nodeagent::cni::{CniNetwork, PluginExec, PodCidr};
use nodeagent::images::{build_busybox, ImageStore};
use nodeagent::metrics::Metrics;
use nodeagent::network::{HostNetwork, PodNetwork};
use nodeagent::node::{host_capacity, parse_taint, NodeConfig};
use nodeagent::nodenet::{parse_cidr, KernelRoutes, NodeNetwork, NodeRoutes};
use nodeagent::pods::{Config, Shared};
use nodeagent::proxy::{self, NftBinary, ProxyConfig};
use nodeagent::runtime::Runc;
use nodeagent::server::{router, ServerState};
use nodeagent::shim::{self, ShimArgs};
use nodeagent::store::Store;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "nodeagent",
    about = "The node agent (kubelet): runs the pods bound to this node with runc"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run(Box<RunArgs>),
    /// Manage the local image store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Remove what the agent made on the host (runc containers, pod networks, the proxy's
    /// nftables table, its cgroups), for a node that is gone for good. Takes the agent's
    /// flags (--root-dir, --node-name, --runc, --cni-bin-dir, --netns-dir, --nft).
    Teardown(Box<RunArgs>),
    /// A node's own network namespace on a host bridge (as `controlplane up` gives each
    /// node agent when run as root).
    #[command(subcommand)]
    NodeNetwork(NodeNetworkCommand),
    /// Keep the host's routes to every node's podCIDR (and the service range) pointing at
    /// the nodes' addresses on the node network, until SIGTERM, then remove them.
    HostRoutes(HostRoutesArgs),
    /// Supervise one container (started by the agent).
    #[command(hide = true)]
    Shim(ShimCli),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout or `docker save` tarball (gzip or plain).
    Import {
        file: PathBuf,
        #[arg(long, default_value = "/var/lib/nodeagent")]
        root_dir: PathBuf,
    },
    /// Write busybox:latest as an OCI layout tarball from a static busybox binary.
    BuildBusybox {
        out: PathBuf,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// List the images in the store.
    List {
        #[arg(long, default_value = "/var/lib/nodeagent")]
        root_dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct NodeNetworkArgs {
    /// The host bridge (at most 15 bytes), also the namespaces' name prefix.
    #[arg(long)]
    bridge: String,
    /// The node network: the bridge takes its first address, node i the 10+i-th.
    #[arg(long, default_value = "10.100.0.0/24")]
    cidr: String,
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
}

#[derive(Subcommand)]
enum NodeNetworkCommand {
    /// Make node INDEX's namespace (replacing a leftover one); prints its path and address.
    Add {
        #[command(flatten)]
        net: NodeNetworkArgs,
        #[arg(long)]
        node_name: String,
        /// The node's number (from 1): its address is the network's 10+INDEX-th.
        #[arg(long)]
        index: u32,
    },
    /// Remove nodes' namespaces (all of the bridge's without `--node-names`), then the
    /// bridge if `--bridge-too`.
    Del {
        #[command(flatten)]
        net: NodeNetworkArgs,
        #[arg(long, value_delimiter = ',')]
        node_names: Vec<String>,
        #[arg(long)]
        bridge_too: bool,
    },
}

#[derive(Args)]
struct HostRoutesArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Only nodes whose InternalIP is in this network get routes.
    #[arg(long, default_value = "10.100.0.0/24")]
    node_network: String,
    /// Routed to a Ready node, whose service proxy answers ClusterIPs.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    #[arg(long, default_value = "2s", value_parser = duration)]
    interval: Duration,
}

#[derive(Args)]
struct ShimCli {
    #[arg(long)]
    runc: PathBuf,
    #[arg(long)]
    runc_root: PathBuf,
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    cgroups_path: String,
}

/// `10s`, `500ms`, `2m` or plain seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Args, Clone)]
struct RunArgs {
    /// kubeconfig of the API server (as `controlplane apiserver --kubeconfig-out` writes).
    #[arg(long, default_value = "/etc/nodeagent/kubeconfig")]
    kubeconfig: PathBuf,
    /// The Node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP (pods share it while they use the host network).
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: IpAddr,
    /// The HTTPS port of the log server (the Node's kubeletEndpoint).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// State directory: runc root, image store, pods' bundles and logs.
    #[arg(long, default_value = "/var/lib/nodeagent")]
    root_dir: PathBuf,
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// CPU capacity to advertise (default: the host's CPUs), e.g. `2` or `1500m`.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory capacity to advertise (default: the host's MemTotal), e.g. `4Gi`.
    #[arg(long)]
    memory: Option<String>,
    #[arg(long, default_value_t = 110)]
    max_pods: i64,
    /// Held back from allocatable for the system, e.g. `cpu=500m,memory=1Gi`.
    #[arg(long, value_delimiter = ',')]
    system_reserved: Vec<String>,
    /// Node labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Taints, `key=value:Effect,...`.
    #[arg(long, value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// How often the node Lease is renewed.
    #[arg(long, default_value = "10s", value_parser = duration)]
    lease_renew_interval: Duration,
    /// How often the node status (conditions, heartbeat) is written.
    #[arg(long, default_value = "10s", value_parser = duration)]
    node_status_update_frequency: Duration,
    /// How often each pod is re-synced without changes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    sync_frequency: Duration,
    /// pids.max of every container (0: no limit).
    #[arg(long, default_value_t = 4096)]
    pod_pids_limit: i64,
    /// A static busybox to build `busybox:latest` from when the store lacks it
    /// (empty: don't).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Pod network: `host` (pods share the node's), `cni` (a namespace per pod on a
    /// bridge, addresses from the node's podCIDR), `auto` (cni when root with the CNI
    /// plugins installed; pods started before the node has a podCIDR use the host's).
    #[arg(long, value_enum, default_value_t = NetworkMode::Auto)]
    network: NetworkMode,
    /// The node's podCIDR (default: the Node's spec.podCIDR, as node IPAM assigns it).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// Where pods' network namespaces are bind-mounted.
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// A network namespace to run in (a bind-mounted namespace file, as `nodeagent
    /// node-network add` makes): the agent, its pods' bridge and its proxy rules live there.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Run the service proxy (nftables table `nodeagent-proxy-<node>`).
    #[arg(long)]
    proxy: bool,
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetworkMode {
    Auto,
    Host,
    Cni,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The shim runs without a tokio runtime or a log subscriber: it only copies and waits.
    if let Some(Command::Shim(s)) = &cli.command {
        let code = shim::run(&ShimArgs {
            runc: s.runc.clone(),
            runc_root: s.runc_root.clone(),
            id: s.id.clone(),
            bundle: s.bundle.clone(),
            log: s.log.clone(),
            cgroups_path: s.cgroups_path.clone(),
        });
        std::process::exit(code);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nodeagent=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Some(Command::Image(cmd)) => image(cmd),
        Some(Command::Run(args)) => run(*args),
        Some(Command::Teardown(args)) => teardown(*args),
        Some(Command::NodeNetwork(cmd)) => node_network(cmd),
        Some(Command::HostRoutes(args)) => host_routes(args),
        None => run(cli.run),
        Some(Command::Shim(_)) => unreachable!("handled above"),
    }
}

fn image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { file, root_dir } => {
            let store = ImageStore::new(Store::new(root_dir).images());
            for r in store.import(&file)? {
                println!("{r}");
            }
        }
        ImageCommand::BuildBusybox { out, busybox } => build_busybox(&busybox, &out)?,
        ImageCommand::List { root_dir } => {
            let dir = Store::new(root_dir).images();
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            let cfg = std::fs::read(e.path().join("image.json")).ok()?;
                            let v: serde_json::Value = serde_json::from_slice(&cfg).ok()?;
                            v["reference"].as_str().map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
    }
    Ok(())
}

/// Imports busybox:latest from a static busybox if the store lacks it.
fn ensure_busybox(images: &ImageStore, busybox: &Path) -> anyhow::Result<()> {
    if busybox.as_os_str().is_empty() || images.resolve("busybox").is_ok() || !busybox.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&images.dir)?;
    let tarball = images.dir.join(".busybox-oci.tar");
    build_busybox(busybox, &tarball)?;
    images.import(&tarball)?;
    let _ = std::fs::remove_file(&tarball);
    Ok(())
}

fn runc_version(runc: &Path) -> String {
    std::process::Command::new(runc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("runc version "))
                .map(|v| format!("runc://{}", v.trim()))
        })
        .unwrap_or_else(|| "runc://unknown".into())
}

/// `--node-name`, or the host name.
fn node_name(args: &RunArgs) -> anyhow::Result<String> {
    Ok(match args.node_name.clone() {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase(),
    })
}

/// The arguments with `--root-dir` made absolute: its paths end up in OCI bundles, which
/// runc resolves relative to the bundle. Enters `--netns` first: it must happen while
/// this is the process's only thread, so every thread started later is in it.
fn absolute_root(mut args: RunArgs) -> anyhow::Result<RunArgs> {
    if let Some(ns) = &args.netns {
        nodeagent::netns::enter(ns).with_context(|| format!("entering {}", ns.display()))?;
    }
    args.root_dir = std::path::absolute(&args.root_dir).context("--root-dir")?;
    Ok(args)
}

fn node_network(cmd: NodeNetworkCommand) -> anyhow::Result<()> {
    let open =
        |a: &NodeNetworkArgs| NodeNetwork::new(&a.cni_bin_dir, &a.bridge, &a.cidr, &a.netns_dir);
    match cmd {
        NodeNetworkCommand::Add {
            net,
            node_name,
            index,
        } => {
            let net = open(&net)?;
            let ip = net.node_ip(index)?;
            net.add(&node_name, ip)?;
            println!("{} {ip}", net.netns_path(&node_name).display());
        }
        NodeNetworkCommand::Del {
            net,
            node_names,
            bridge_too,
        } => {
            let net = open(&net)?;
            let node_names = if node_names.is_empty() {
                net.nodes()
            } else {
                node_names
            };
            for n in &node_names {
                net.del(n);
            }
            if bridge_too {
                net.remove_bridge()?;
            }
        }
    }
    Ok(())
}

fn host_routes(args: HostRoutesArgs) -> anyhow::Result<()> {
    use controlplane::client::{Api, ListParams};
    let network = parse_cidr(&args.node_network)
        .with_context(|| format!("invalid --node-network {:?}", args.node_network))?;
    let services = parse_cidr(&args.service_cidr)
        .with_context(|| format!("invalid --service-cidr {:?}", args.service_cidr))?;
    let api = HttpClient::from_kubeconfig(&args.kubeconfig)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut routes = NodeRoutes::new(KernelRoutes);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            match api
                .list::<k8s_openapi::api::core::v1::Node>(None, &ListParams::default())
                .await
            {
                Ok(list) => {
                    for change in routes.sync(&nodeagent::nodenet::wanted_routes(
                        &list.items,
                        network,
                        services,
                    )) {
                        tracing::info!(route = %change, "host route");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing nodes"),
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(args.interval) => {}
            }
        }
        routes.clear();
        tracing::info!("host routes removed");
        Ok(())
    })
}

fn teardown(mut args: RunArgs) -> anyhow::Result<()> {
    // A node whose namespace is already gone has nothing left in it.
    args.netns = args.netns.filter(|ns| nodeagent::netns::is_mounted(ns));
    let args = absolute_root(args)?;
    let node_name = node_name(&args)?;
    let store = Store::new(&args.root_dir);
    // The records say which pods got a CNI network; the podCIDR each came from is in them.
    let network = CniNetwork {
        exec: PluginExec {
            bin_dir: args.cni_bin_dir.clone(),
        },
        bin_dir: args.cni_bin_dir.clone(),
        store: store.clone(),
        netns_dir: args.netns_dir.clone(),
        node_name: node_name.clone(),
        node_ip: args.node_ip.to_string(),
        pod_cidr: PodCidr::default(),
        host_until_cidr: false,
        real_netns: true,
    };
    let nft = NftBinary {
        nft: args.nft.clone(),
    };
    let report = nodeagent::teardown::Teardown {
        store: &store,
        runc: &args.runc,
        network: &network,
        nft: &nft,
        bridge: nodeagent::cni::bridge_name(&node_name),
        table: format!("nodeagent-proxy-{node_name}"),
        cgroup: PathBuf::from(format!("/sys/fs/cgroup/nodeagent-{node_name}")),
    }
    .run();
    println!(
        "teardown of {node_name}: {} containers, {} pod networks, bridge {}, proxy table {}, {} cgroups removed",
        report.containers,
        report.pod_networks,
        if report.bridge { "removed" } else { "absent" },
        if report.table { "removed" } else { "absent" },
        report.cgroups
    );
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let args = absolute_root(args)?;
    let node_name = node_name(&args)?;
    let store = Store::new(&args.root_dir);
    std::fs::create_dir_all(store.pods())
        .with_context(|| format!("creating {}", args.root_dir.display()))?;
    std::fs::create_dir_all(store.runc_root())?;
    let images = ImageStore::new(store.images());
    ensure_busybox(&images, &args.busybox).context("building the busybox image")?;

    let (host_cpu, host_mem) = host_capacity();
    let cpu_millis = match &args.cpu {
        Some(c) => parse_quantity(c, true)
            .filter(|v| *v > 0)
            .with_context(|| format!("invalid --cpu {c:?}"))?,
        None => host_cpu,
    };
    let memory_bytes = match &args.memory {
        Some(m) => parse_quantity(m, false)
            .filter(|v| *v > 0)
            .with_context(|| format!("invalid --memory {m:?}"))?,
        None => host_mem,
    };
    let (mut reserved_cpu_millis, mut reserved_memory_bytes) = (0, 0);
    for r in &args.system_reserved {
        match r.split_once('=') {
            Some(("cpu", q)) => {
                reserved_cpu_millis = parse_quantity(q, true)
                    .filter(|v| *v >= 0)
                    .with_context(|| format!("invalid --system-reserved {r:?}"))?
            }
            Some(("memory", q)) => {
                reserved_memory_bytes = parse_quantity(q, false)
                    .filter(|v| *v >= 0)
                    .with_context(|| format!("invalid --system-reserved {r:?}"))?
            }
            _ => bail!("invalid --system-reserved entry {r:?}: want cpu=Q or memory=Q"),
        }
    }
    let mut labels = BTreeMap::new();
    for l in &args.node_labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => bail!("invalid --node-labels entry {l:?}: want key=value"),
        }
    }
    let taints = args
        .register_with_taints
        .iter()
        .map(|t| parse_taint(t).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let node_cfg = NodeConfig {
        name: node_name.clone(),
        ip: args.node_ip.to_string(),
        port: args.port,
        cpu_millis,
        memory_bytes,
        max_pods: args.max_pods,
        reserved_cpu_millis,
        reserved_memory_bytes,
        labels,
        taints,
        root_dir: args.root_dir.clone(),
        runtime_version: runc_version(&args.runc),
        runc: args.runc.clone(),
    };
    let api = HttpClient::from_kubeconfig(&args.kubeconfig)?;
    let runtime = Runc {
        runc: args.runc.clone(),
        root: store.runc_root(),
        shim_exe: std::env::current_exe()?,
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let use_cni = match args.network {
        NetworkMode::Host => false,
        NetworkMode::Cni => true,
        NetworkMode::Auto => root && args.cni_bin_dir.join("bridge").exists(),
    };
    let pod_cidr = PodCidr::default();
    if let Some(c) = &args.pod_cidr {
        pod_cidr.set(c.clone());
    }
    let network: Box<dyn PodNetwork> = if use_cni {
        Box::new(CniNetwork {
            exec: PluginExec {
                bin_dir: args.cni_bin_dir.clone(),
            },
            bin_dir: args.cni_bin_dir.clone(),
            store: store.clone(),
            netns_dir: args.netns_dir.clone(),
            node_name: node_name.clone(),
            node_ip: args.node_ip.to_string(),
            pod_cidr: pod_cidr.clone(),
            host_until_cidr: args.network == NetworkMode::Auto,
            real_netns: true,
        })
    } else {
        Box::new(HostNetwork {
            node_ip: args.node_ip.to_string(),
        })
    };
    tracing::info!(cni = use_cni, "pod network");
    let shared = Arc::new(Shared {
        api: api.clone(),
        runtime,
        network,
        store: store.clone(),
        images,
        config: Config {
            node_name: node_name.clone(),
            node_ip: args.node_ip.to_string(),
            pids_limit: (args.pod_pids_limit > 0).then_some(args.pod_pids_limit),
            cgroup_parent: format!("/nodeagent-{node_name}"),
            resync: args.sync_frequency,
        },
        clock: Arc::new(SystemClock),
    });
    let metrics = Arc::new(Metrics::default());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (cert, key) = controlplane::apiserver::tls::cert_files(None, None, &args.root_dir.join("certs"), args.node_ip)?;
        let tls = controlplane::apiserver::tls::server_config(&cert, &key, None)?;
        let addr = SocketAddr::new(args.node_ip, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let app = router(ServerState {
            store: store.clone(),
            metrics: metrics.clone(),
            poll: Duration::from_millis(200),
        });
        tokio::spawn(async move {
            if let Err(e) = controlplane::apiserver::tls::serve(listener, tls, app).await {
                tracing::error!(error = %e, "log server stopped");
            }
        });
        tracing::info!(node = %node_name, %addr, root = %args.root_dir.display(), "node agent running");
        let stop = CancellationToken::new();
        let s = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            // Containers keep running: a restarted agent re-adopts them.
            tracing::info!("stopping; containers keep running");
            s.cancel();
        });
        let intervals = Intervals {
            lease_renew: args.lease_renew_interval,
            node_status: args.node_status_update_frequency,
        };
        if use_cni && pod_cidr.get().is_none() {
            tokio::spawn(watch_pod_cidr(api.clone(), node_name.clone(), pod_cidr, stop.clone()));
        }
        if args.proxy {
            let cfg = ProxyConfig {
                table: format!("nodeagent-proxy-{node_name}"),
                node_ip: args.node_ip.to_string(),
            };
            let nft = NftBinary { nft: args.nft.clone() };
            tokio::spawn(proxy::run(api.clone(), cfg, nft, metrics.clone(), stop.clone()));
        }
        agent::run(shared, node_cfg, intervals, metrics, stop).await?;
        Ok(())
    })
}

/// Polls the Node until it has a podCIDR (node IPAM assigns it after registration).
async fn watch_pod_cidr(api: HttpClient, node: String, cidr: PodCidr, stop: CancellationToken) {
    use controlplane::client::Api;
    loop {
        if let Ok(n) = api
            .get::<k8s_openapi::api::core::v1::Node>(None, &node)
            .await
        {
            if let Some(c) = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                tracing::info!(pod_cidr = %c, "node podCIDR");
                cidr.set(c);
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
