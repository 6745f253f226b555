//! The `raftkv` binary: `raftkv [etcd flags]` serves; `raftkv snapshot restore` restores a
//! snapshot file into a data directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use proto::raftkvpb::raft_server::RaftServer;
use raftkv::clock::SystemClock;
use raftkv::config::{is_https, resolve, ServerArgs};
use raftkv::listener::ClientListener;
use raftkv::mvcc::backend::META_CLUSTER_ID;
use raftkv::mvcc::Backend;
use raftkv::raft::network::Peers;
use raftkv::raft::service::PeerService;
use raftkv::raft::MemberNode;
use raftkv::server::{EtcdServer, Identity, InitialCluster, Limits, Options};
use raftkv::tls::{ClientIdentity, TlsListener};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "raftkv",
    version,
    about = "An etcd v3-compatible key-value server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot files made by `etcdctl snapshot save` against raftkv.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Restores a snapshot (raftkv's or etcd's) into a new data directory.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Accept a file without the trailing sha256, e.g. an etcd member's `member/snap/db`
        /// (etcdctl's flag of the same name).
        #[arg(long)]
        skip_hash_check: bool,
    },
}

/// Where the state machine's RocksDB lives inside the data directory.
fn kv_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("member").join("kv")
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Snapshot {
            action:
                SnapshotAction::Restore {
                    file,
                    data_dir,
                    skip_hash_check,
                },
        }) => restore(&file, &data_dir, skip_hash_check),
        None => tokio::runtime::Runtime::new()?.block_on(serve(cli.server)),
    }
}

fn restore(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    skip_hash_check: bool,
) -> Result<()> {
    let dir = kv_dir(data_dir);
    if dir.exists() {
        bail!("data dir {} already holds a store", data_dir.display());
    }
    std::fs::create_dir_all(data_dir.join("member"))
        .with_context(|| format!("create {}", data_dir.display()))?;
    let restored = raftkv::snapshot::restore(file, &dir, skip_hash_check)
        .with_context(|| format!("restore {}", file.display()))?;
    // Prove the restored store opens before reporting success.
    Backend::open(&dir).context("restored store does not open")?;
    eprintln!(
        "restored {} into {}: revision {}, {} key rows, {} leases, {} alarms, {} users, {} roles",
        file.display(),
        data_dir.display(),
        restored.revision,
        restored.kv_rows,
        restored.leases,
        restored.alarms,
        restored.users,
        restored.roles
    );
    Ok(())
}

/// Asks the other members of `--initial-cluster` for the cluster ID (etcd's
/// `GetClusterFromRemotePeers`), for a member joining with `--initial-cluster-state existing`.
async fn fetch_cluster_id(
    cluster: &InitialCluster,
    me: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<u64> {
    let peers = Peers::with_tls(tls);
    let others: Vec<MemberNode> = cluster
        .members
        .iter()
        .filter(|(name, _)| name != me)
        .map(|(name, peer_urls)| MemberNode {
            name: name.clone(),
            peer_urls: peer_urls.clone(),
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for peer in &others {
            match peers.cluster_id(peer, Duration::from_secs(2)).await {
                Ok(id) => return Ok(id),
                Err(e) => tracing::debug!(peer = %peer, error = %e, "asking for the cluster ID"),
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("could not reach any member of --initial-cluster to join it");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn serve(args: ServerArgs) -> Result<()> {
    // Before anything is created on disk: a bad --auth-token (or key file) stops the start.
    let clock = Arc::new(SystemClock);
    let token_provider = args.token_provider(clock.clone())?;
    let data_dir = args.data_dir();
    let dir = kv_dir(&data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let backend =
        Backend::open(&dir).with_context(|| format!("open store in {}", dir.display()))?;
    let initial_cluster = InitialCluster::parse(&args.initial_cluster)?;
    let new_cluster = match args.initial_cluster_state.as_str() {
        "new" => true,
        "existing" => false,
        other => bail!("invalid --initial-cluster-state {other:?}: expected new or existing"),
    };
    // Members dial https peers with the peer CA and present the peer certificate.
    let peer_client_tls = if args.peer_tls().is_set() {
        Some(args.peer_tls().client_config()?)
    } else {
        None
    };
    let joined_cluster_id = if new_cluster || backend.get_meta_u64(META_CLUSTER_ID)?.is_some() {
        None
    } else {
        Some(fetch_cluster_id(&initial_cluster, &args.name, peer_client_tls.clone()).await?)
    };
    let identity = Identity::resolve(
        &backend,
        &args.name,
        &initial_cluster,
        args.advertise_client_urls.clone(),
        &args.initial_cluster_token,
        joined_cluster_id,
    )?;
    let opts = Options {
        identity,
        initial_cluster,
        new_cluster,
        token: args.initial_cluster_token.clone(),
        raft_dir: data_dir.join("member").join("raft"),
        heartbeat: Duration::from_millis(args.heartbeat_interval),
        election_timeout: Duration::from_millis(args.election_timeout),
        min_lease_ttl: args.min_lease_ttl()?,
        snapshot_count: args.snapshot_count,
        limits: Limits {
            max_txn_ops: args.max_txn_ops,
            max_request_bytes: args.max_request_bytes,
            quota_backend_bytes: args.quota(),
            watch_progress_interval: args.watch_progress_notify_interval,
            unsafe_stale_reads: args.unsafe_stale_reads,
            unsafe_no_fsync: args.unsafe_no_fsync,
            bcrypt_cost: args.bcrypt_cost,
            client_cert_auth: args.client_cert_auth,
        },
        clock,
        token_provider,
        peer_tls: peer_client_tls.clone(),
    };
    let server = EtcdServer::start(opts, backend).await?;
    server
        .sm
        .tokens()
        .set_ttl(Duration::from_secs(args.auth_token_ttl));
    server.spawn_background();
    tracing::info!(
        name = %args.name,
        member_id = format!("{:x}", server.identity.member_id),
        data_dir = %data_dir.display(),
        revision = server.sm.read().mvcc.current_rev(),
        "raftkv starting"
    );

    // gRPC, the JSON gateway (which calls the same gRPC router in-process) and plain HTTP
    // share the client port; requests are told apart by path.
    let grpc = raftkv::api::routes(server.clone()).into_axum_router();
    let client_app = grpc
        .clone()
        .merge(raftkv::gateway::router(grpc))
        .merge(raftkv::http::router(server.clone()))
        .fallback(raftkv::http::fallback);
    let peer_app = tonic::service::Routes::new(
        RaftServer::new(PeerService(server.clone()))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
    )
    .into_axum_router();
    let mut tasks = tokio::task::JoinSet::new();
    let (client_tls, peer_tls) = (args.client_tls(), args.peer_tls());
    let listeners = [
        (
            &args.listen_peer_urls,
            peer_app,
            &peer_tls,
            "peer traffic (Raft)",
        ),
        (
            &args.listen_client_urls,
            client_app,
            &client_tls,
            "client requests (gRPC, JSON gateway, HTTP)",
        ),
        (
            &args.listen_metrics_urls,
            raftkv::http::router(server.clone()),
            &client_tls,
            "metrics",
        ),
    ];
    for (urls, app, tls, what) in listeners {
        for url in urls {
            // Built per URL, so a bad certificate fails only configurations that use it.
            let tls_config = is_https(url).then(|| tls.server_config()).transpose()?;
            for addr in resolve(url).await? {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listen on {addr}"))?;
                tracing::info!(%addr, tls = tls_config.is_some(), "serving {what}");
                // Requests learn the client certificate's CN (ClientIdentity) through this.
                let app = app
                    .clone()
                    .into_make_service_with_connect_info::<ClientIdentity>();
                match &tls_config {
                    Some(config) => {
                        let listener = TlsListener::new(listener, config.clone())?;
                        tasks.spawn(async move { axum::serve(listener, app).await });
                    }
                    None => {
                        tasks
                            .spawn(async move { axum::serve(ClientListener(listener), app).await });
                    }
                }
            }
        }
    }
    tokio::select! {
        res = tasks.join_next() => {
            res.context("no listener")??.context("listener failed")?;
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
    let _ = server.raft.shutdown().await;
    Ok(())
}
