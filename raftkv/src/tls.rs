//! TLS on the client and peer ports, with rustls: etcd's `--cert-file`, `--key-file`,
//! `--trusted-ca-file` and `--client-cert-auth` (and their `--peer-*` twins) become a
//! server configuration for the `https://` listeners ([`TlsListener`]) and, for peers, the
//! client configuration a member dials `https://` peer URLs with (its CA bundle plus its own
//! certificate, which the peer checks when `--peer-client-cert-auth` is on).
//!
//! Files are PEM, as etcd's: the certificate file may hold a chain, the key file one PKCS#8,
//! PKCS#1 or SEC1 private key.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use crate::listener::{ClientListener, FixAuthority};

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: no certificate in the file")]
    NoCert(PathBuf),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verification: {0}")]
    Verifier(String),
    #[error("--client-cert-auth needs --trusted-ca-file (and --peer-client-cert-auth --peer-trusted-ca-file)")]
    NoTrustedCa,
    #[error("an https:// URL needs --cert-file and --key-file (--peer-cert-file and --peer-key-file for peer URLs)")]
    NoCertFile,
}

/// One side's TLS flags (client or peer).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub trusted_ca: Option<PathBuf>,
    pub client_cert_auth: bool,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read(path.into(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read(path.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read(path.into(), e.to_string()))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c)?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Whether any TLS flag was given.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.trusted_ca.is_some()
    }

    fn cert_and_key(&self) -> Result<(&Path, &Path), TlsError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok((c, k)),
            _ => Err(TlsError::NoCertFile),
        }
    }

    /// The listener side. With client-cert-auth, clients must present a certificate
    /// signed by the trusted CA; without it none is asked for, as etcd does.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let (cert, key_path) = self.cert_and_key()?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = if self.client_cert_auth {
            let ca = self.trusted_ca.as_deref().ok_or(TlsError::NoTrustedCa)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs(cert)?, key(key_path)?)?;
        // gRPC needs HTTP/2; /health and /metrics may come over HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// How a member dials https peers: trusting the peer CA bundle (or the system's web
    /// roots without one) and presenting its own certificate.
    pub fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.into(), e.to_string()));
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.trusted_ca {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

/// Who a client proved to be with its certificate (etcd's `AuthInfoFromTLS`): the subject
/// CN of the certificate it presented, which rustls asks for and verifies only under
/// client-cert-auth. Attached to every request of the connection by the HTTP server.
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity {
    pub common_name: Option<String>,
}

/// The subject CN of a DER certificate: the first `2.5.4.3` attribute of the subject
/// name (RFC 5280: Certificate = SEQUENCE { tbsCertificate = SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity, subject, ... }, ... }).
fn common_name(der: &[u8]) -> Option<String> {
    use yasna::Tag;
    const CN: &[u64] = &[2, 5, 4, 3];
    let mut cn = None;
    let parsed = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..4 {
                    // serialNumber, signature, issuer, validity
                    r.next().read_der()?;
                }
                r.next().read_sequence_of(|r| {
                    r.read_set_of(|r| {
                        r.read_sequence(|r| {
                            let oid = r.next().read_oid()?;
                            let value = r.next().read_tagged_der()?;
                            if cn.is_none() && oid.components().as_slice() == CN {
                                cn = String::from_utf8(value.value().to_vec()).ok();
                            }
                            Ok(())
                        })
                    })
                })?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(())
            })?;
            while r.read_optional(|r| r.read_der())?.is_some() {}
            Ok(())
        })
    });
    parsed.ok().and(cn)
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientIdentity {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref().get_ref();
        ClientIdentity {
            common_name: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf)),
        }
    }
}

impl Connected<IncomingStream<'_, ClientListener>> for ClientIdentity {
    fn connect_info(_: IncomingStream<'_, ClientListener>) -> Self {
        ClientIdentity::default()
    }
}

/// Accepts TCP connections and completes their TLS handshakes concurrently (a slow client
/// holds up only itself), handing finished ones to the HTTP server.
pub struct TlsListener {
    ready: mpsc::Receiver<(FixAuthority<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((FixAuthority::new(tls), addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = FixAuthority<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subject_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "raftkv");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));

        let no_cn = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        let mut no_cn = no_cn;
        no_cn.distinguished_name = rcgen::DistinguishedName::new();
        let cert = no_cn.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
