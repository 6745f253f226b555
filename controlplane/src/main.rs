//! `controlplane`: the control plane's processes, one subcommand each. Today only
//! `controlplane apiserver`; `scheduler` and `controller-manager` are to be added as
//! further subcommands.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "controlplane", about = "Kubernetes-style control plane on raftkv")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The API server: Kubernetes REST + watch, state in the etcd v3 API.
    Apiserver(ApiserverArgs),
}

#[derive(clap::Args)]
struct ApiserverArgs {
    /// etcd v3 endpoints (raftkv or etcd), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_servers: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// Plain-HTTP port (0 picks a free one). TLS (`--secure-port`) is not implemented yet.
    #[arg(long, default_value_t = 8080)]
    insecure_port: u16,
    /// Static bearer tokens, kube-apiserver's CSV format: token,user,uid,"group1,group2".
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// ABAC policy, one JSON Policy object a line (kube-apiserver's format).
    #[arg(long)]
    authorization_policy_file: Option<PathBuf>,
    /// Write a kubeconfig for this server (and the token file's first user) here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Apiserver(a) => {
            let config = controlplane::apiserver::Config {
                etcd_servers: a.etcd_servers,
                listen: SocketAddr::new(a.bind_address, a.insecure_port),
                token_auth_file: a.token_auth_file,
                authorization_policy_file: a.authorization_policy_file,
                kubeconfig_out: a.kubeconfig_out,
            };
            controlplane::apiserver::serve(config).await.context("apiserver")
        }
    }
}
