//! The `raftkv` binary: `raftkv [etcd flags]` serves; `raftkv snapshot restore` restores a
//! snapshot file into a data directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use raftkv::clock::SystemClock;
use raftkv::config::{resolve, ServerArgs};
use raftkv::listener::ClientListener;
use raftkv::mvcc::Backend;
use raftkv::server::{EtcdServer, Identity, Limits};
use raftkv::state_machine::StateMachine;
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
        "restored {} into {}: revision {}, {} key rows, {} leases, {} alarms",
        file.display(),
        data_dir.display(),
        restored.revision,
        restored.kv_rows,
        restored.leases,
        restored.alarms
    );
    Ok(())
}

async fn serve(args: ServerArgs) -> Result<()> {
    let data_dir = args.data_dir();
    let dir = kv_dir(&data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let backend =
        Backend::open(&dir).with_context(|| format!("open store in {}", dir.display()))?;
    let identity = Identity::load_or_create(
        &backend,
        &args.name,
        args.initial_advertise_peer_urls.clone(),
        args.advertise_client_urls.clone(),
        &args.initial_cluster_token,
    )?;
    let sm = StateMachine::open(backend, args.min_lease_ttl()?, Arc::new(SystemClock))?;
    let limits = Limits {
        max_txn_ops: args.max_txn_ops,
        max_request_bytes: args.max_request_bytes,
        quota_backend_bytes: args.quota(),
        watch_progress_interval: args.watch_progress_notify_interval,
    };
    let server = EtcdServer::new(sm, identity, limits);
    server.spawn_background();
    tracing::info!(
        name = %args.name,
        member_id = format!("{:x}", server.identity.member_id),
        data_dir = %data_dir.display(),
        revision = server.sm.read().mvcc.current_rev(),
        "raftkv starting"
    );

    let app = raftkv::api::routes(server.clone())
        .into_axum_router()
        .merge(raftkv::http::router(server.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for url in &args.listen_client_urls {
        for addr in resolve(url).await? {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            tracing::info!(%addr, "serving client requests (gRPC + HTTP)");
            let app = app.clone();
            tasks.spawn(async move { axum::serve(ClientListener(listener), app).await });
        }
    }
    for url in &args.listen_metrics_urls {
        for addr in resolve(url).await? {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            tracing::info!(%addr, "serving metrics");
            let router = raftkv::http::router(server.clone());
            tasks.spawn(async move { axum::serve(ClientListener(listener), router).await });
        }
    }
    tokio::select! {
        res = tasks.join_next() => {
            res.context("no listener")??.context("listener failed")?;
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
    Ok(())
}
