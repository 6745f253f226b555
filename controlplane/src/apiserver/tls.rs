//! HTTPS for the secure port (rustls, ring provider). As kube-apiserver does, without
//! `--tls-cert-file`/`--tls-private-key-file` the server generates a self-signed
//! certificate for its bind address and `localhost` into `--cert-dir` (PEM files
//! `apiserver.crt`/`apiserver.key`), and reuses it on the next start.
//!
//! kubectl sends bearer tokens only over TLS, so token authentication needs this port.
//!
//! With `--client-ca-file`, clients may present a certificate signed by that CA; as in
//! Kubernetes, its subject's common name is the user name and its organizations are the
//! groups. The identity is attached to each request of the connection as an extension.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::auth::User;

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
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
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

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: rustls_pki_types::pem::Error| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)
}

/// A rustls server configuration from PEM files; with `client_ca`, client certificates
/// signed by it are verified (and optional: token clients present none).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn certificate_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    groups.push("system:authenticated".into());
    Some(User {
        name,
        uid: String::new(),
        groups,
    })
}

/// A client certificate's user, as a request extension.
#[derive(Clone, Debug)]
pub struct ClientCertUser(pub User);

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
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| certificate_user(leaf));
            tracing::debug!(%peer, user = ?user.as_ref().map(|u| &u.name), "TLS connection");
            let router =
                router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(u) = &user {
                        req.extensions_mut().insert(ClientCertUser(u.clone()));
                    }
                    req
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_subject_is_the_user() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "carol");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "devs");
        let cert = params.self_signed(&key).unwrap();
        let user = certificate_user(cert.der()).expect("a user");
        assert_eq!(user.name, "carol");
        assert_eq!(user.groups, vec!["devs", "system:authenticated"]);
    }
}
