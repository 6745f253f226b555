//! `controlplane`: the control plane's processes, one subcommand each. Today only
//! `controlplane apiserver`; `scheduler` and `controller-manager` are to be added as
//! further subcommands.

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
            };
            controlplane::apiserver::serve(config)
                .await
                .context("apiserver")
        }
    }
}
