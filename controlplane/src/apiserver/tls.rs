//! HTTPS for the secure port (rustls, ring provider). As kube-apiserver does, without
//! `--tls-cert-file`/`--tls-private-key-file` the server generates a self-signed
//! certificate for its bind address and `localhost` into `--cert-dir` (PEM files
//! `apiserver.crt`/`apiserver.key`), and reuses it on the next start.
//!
//! kubectl sends bearer tokens only over TLS, so token authentication needs this port.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate and key files to serve with: the given ones, or a self-signed pair in
/// `cert_dir` (generated once).
pub fn cert_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    cert_dir: &Path,
    bind: IpAddr,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let (Some(c), Some(k)) = (cert, key) {
        return Ok((c.to_path_buf(), k.to_path_buf()));
    }
    let (c, k) = (
        cert_dir.join("apiserver.crt"),
        cert_dir.join("apiserver.key"),
    );
    if c.exists() && k.exists() {
        return Ok((c, k));
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(cert_dir).map_err(write_err(cert_dir))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !bind.is_unspecified() && !names.contains(&bind.to_string()) {
        names.push(bind.to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names)?;
    std::fs::write(&c, generated.cert.pem()).map_err(write_err(&c))?;
    std::fs::write(&k, generated.signing_key.serialize_pem()).map_err(write_err(&k))?;
    Ok((c, k))
}

/// A rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls_pki_types::pem::Error| TlsError::Read {
            path,
            reason: e.to_string(),
        }
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(read_err(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(read_err(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until the listener fails.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, %e, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %e, "connection ended with an error");
            }
        });
    }
}
