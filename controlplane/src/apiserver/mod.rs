//! The Kubernetes-style API server: REST + watch over JSON, with all state in the etcd v3
//! API (raftkv or etcd). Replicas share nothing but the store, so any number of them serve
//! reads and writes at once (active-active); each keeps only a watch cache.
//!
//! Request path: [`request`] routes the URL, [`auth`] authenticates and authorizes,
//! [`handlers`] runs the verb against [`storage`] (and [`watch`] against the
//! [`watch_cache`]), and [`status`] renders failures as Kubernetes `Status` objects.

pub mod allocator;
pub mod auth;
pub mod discovery;
pub mod handlers;
pub mod metrics;
pub mod objects;
pub mod patch;
pub mod podlogs;
pub mod registry;
pub mod request;
pub mod selectors;
pub mod status;
pub mod storage;
pub mod table;
pub mod tls;
pub mod watch;
pub mod watch_cache;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::json;

use auth::{Attributes, Auth};
use handlers::{json_response, ResourceRequest};
use metrics::Metrics;
use registry::{Resource, RESOURCES};
use status::{ApiError, ForbiddenDetail};
use storage::Store;
use watch_cache::WatchCache;

/// kube-apiserver's default `--max-request-bytes`-style body limit (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Namespaces every cluster has; created at start when missing.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Wall-clock time, behind a trait so tests can pin it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("connecting to the store: {0}")]
    Store(#[from] storage::StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Ranges(#[from] allocator::RangeError),
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to run one API server.
#[derive(Clone, Debug)]
pub struct Config {
    pub etcd_servers: Vec<String>,
    /// HTTPS listener (the secure port).
    pub secure: Option<SecureListen>,
    /// Plain-HTTP listener; only requests without credentials make sense here, as kubectl
    /// sends tokens over TLS only.
    pub insecure: Option<SocketAddr>,
    pub token_auth_file: Option<PathBuf>,
    pub authorization_policy_file: Option<PathBuf>,
    pub kubeconfig_out: Option<PathBuf>,
    /// ClusterIPs of Services come from here (`--service-cluster-ip-range`).
    pub service_cluster_ip_range: String,
    /// NodePorts come from here (`--service-node-port-range`, `low-high`).
    pub service_node_port_range: String,
}

/// The secure port's address and certificate.
#[derive(Clone, Debug)]
pub struct SecureListen {
    pub addr: SocketAddr,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Where a self-signed certificate is generated when no files are given.
    pub cert_dir: PathBuf,
    /// CA whose client certificates authenticate users (CN = user, O = groups).
    pub client_ca_file: Option<PathBuf>,
}

/// One API server replica's shared state.
pub struct ApiServer {
    pub store: Store,
    caches: HashMap<String, Arc<WatchCache>>,
    pub auth: Auth,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// `host:port` clients reach us at, for `/api`'s serverAddressByClientCIDRs.
    pub address: String,
    pub ranges: allocator::ServiceRanges,
}

impl ApiServer {
    pub fn now_rfc3339(&self) -> String {
        self.clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    pub fn cache(&self, r: &Resource) -> Result<Arc<WatchCache>, ApiError> {
        self.caches
            .get(&r.qualified())
            .cloned()
            .ok_or_else(|| ApiError::Internal(format!("no watch cache for {}", r.qualified())))
    }
}

/// Connects to the store, starts one watch cache per resource and creates the system
/// namespaces.
pub async fn build(config: &Config, address: String) -> Result<Arc<ApiServer>, ServeError> {
    let ranges = allocator::ServiceRanges::new(
        &config.service_cluster_ip_range,
        &config.service_node_port_range,
    )?;
    let store = Store::connect(&config.etcd_servers).await?;
    let client_certs = config
        .secure
        .as_ref()
        .is_some_and(|s| s.client_ca_file.is_some());
    let auth = Auth::load(
        config.token_auth_file.as_deref(),
        config.authorization_policy_file.as_deref(),
        client_certs,
    )?;
    let mut caches = HashMap::new();
    for r in RESOURCES {
        caches.insert(
            r.qualified(),
            WatchCache::start(store.clone(), r.list_prefix(None)).await?,
        );
    }
    let server = Arc::new(ApiServer {
        store,
        caches,
        auth,
        metrics: Metrics::new(),
        clock: Arc::new(SystemClock),
        address,
        ranges,
    });
    ensure_system_namespaces(&server).await?;
    Ok(server)
}

async fn ensure_system_namespaces(server: &ApiServer) -> Result<(), storage::StoreError> {
    let r = registry::lookup("", "v1", "namespaces").expect("namespaces are served");
    for ns in SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        objects::init_metadata(r, &mut obj, &server.now_rfc3339());
        match server.store.create(&r.key(None, ns), &obj).await {
            Ok(_) | Err(storage::StoreError::AlreadyExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The HTTP routes: a fixed set of meta endpoints, and everything under `/api` and
/// `/apis` routed by [`request::parse`].
pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new().fallback(dispatch).with_state(server)
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Runs the server until a listener fails.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let secure = match &config.secure {
        Some(s) => Some((bind(s.addr).await?, s)),
        None => None,
    };
    let insecure = match config.insecure {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let advertised = secure
        .as_ref()
        .map(|((_, a), _)| *a)
        .or(insecure.as_ref().map(|(_, a)| *a))
        .ok_or_else(|| ServeError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither a secure nor an insecure port is configured",
            ),
        })?;
    let server = build(&config, advertised.to_string()).await?;
    let router = router(server);
    let mut tasks = tokio::task::JoinSet::new();
    let mut kubeconfig_target = None;
    if let Some(((listener, addr), s)) = secure {
        let (cert, key) = tls::cert_files(
            s.cert_file.as_deref(),
            s.key_file.as_deref(),
            &s.cert_dir,
            addr.ip(),
        )?;
        let tls_config = tls::server_config(&cert, &key, s.client_ca_file.as_deref())?;
        tracing::info!(%addr, cert = %cert.display(), "apiserver serving HTTPS");
        kubeconfig_target = Some((format!("https://{addr}"), Some(cert)));
        let r = router.clone();
        tasks.spawn(async move { (addr, tls::serve(listener, tls_config, r).await) });
    }
    if let Some((listener, addr)) = insecure {
        tracing::info!(%addr, "apiserver serving plain HTTP");
        // kubectl sends no credentials over plain HTTP, so the kubeconfig points there only
        // when there are none to send.
        if config.token_auth_file.is_none() || kubeconfig_target.is_none() {
            kubeconfig_target = Some((format!("http://{addr}"), None));
        }
        let r = router.clone();
        tasks.spawn(async move { (addr, axum::serve(listener, r).await) });
    }
    if let (Some(path), Some((url, ca))) = (&config.kubeconfig_out, kubeconfig_target) {
        write_kubeconfig(path, &url, ca.as_deref(), config.token_auth_file.as_deref())?;
    }
    match tasks.join_next().await {
        Some(Ok((addr, result))) => result.map_err(|source| ServeError::Listen { addr, source }),
        Some(Err(e)) => Err(ServeError::Listen {
            addr: advertised,
            source: std::io::Error::other(e),
        }),
        None => Ok(()),
    }
}

/// Writes a kubeconfig for `server` (trusting `ca` for HTTPS); with a token file, as its
/// first user.
pub fn write_kubeconfig(
    path: &std::path::Path,
    server: &str,
    ca: Option<&std::path::Path>,
    token_file: Option<&std::path::Path>,
) -> Result<(), ServeError> {
    let err = |source| ServeError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let token = match token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(err)?
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split(',').next())
            .map(|t| t.trim().to_string()),
        None => None,
    };
    let user = match token {
        Some(t) => format!("  user:\n    token: {t}\n"),
        None => "  user: {}\n".to_string(),
    };
    let ca = match ca {
        Some(c) => {
            let abs = std::fs::canonicalize(c).map_err(err)?;
            format!("    certificate-authority: {}\n", abs.display())
        }
        None => String::new(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: raftkv\n  cluster:\n    server: {server}\n{ca}contexts:\n- name: raftkv\n  context:\n    cluster: raftkv\n    user: raftkv\n    namespace: default\ncurrent-context: raftkv\nusers:\n- name: raftkv\n{user}"
    );
    std::fs::write(path, text).map_err(err)
}

/// Meta endpoints that need no resource routing.
async fn non_resource(
    server: &ApiServer,
    method: &Method,
    path: &str,
    accept: &str,
) -> Option<Result<Response, ApiError>> {
    if method != Method::GET {
        return None;
    }
    let ok_json = |v: serde_json::Value| Some(Ok(json_response(StatusCode::OK, &v)));
    match path {
        "/healthz" | "/livez" => Some(Ok("ok".into_response())),
        "/readyz" => Some(match server.store.revision().await {
            Ok(_) => Ok("ok".into_response()),
            Err(e) => Err(ApiError::Unavailable(format!("[-]etcd failed: {e}"))),
        }),
        "/version" => ok_json(discovery::version()),
        "/api" => ok_json(discovery::core_versions(&server.address)),
        "/apis" => ok_json(discovery::groups()),
        "/metrics" => Some(Ok(server.metrics.render().into_response())),
        "/openapi/v2" => Some(Ok(if accept.contains("protobuf") {
            // kube-apiserver labels it octet-stream: Go's mime parser rejects the `@` in the type kubectl asks for.
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                discovery::openapi_protobuf(),
            )
                .into_response()
        } else {
            json_response(StatusCode::OK, &discovery::openapi_json())
        })),
        _ => {
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            match segs.as_slice() {
                ["api", v] => {
                    discovery::resources("", v).map(|v| Ok(json_response(StatusCode::OK, &v)))
                }
                ["apis", g] => discovery::group(g).map(|v| Ok(json_response(StatusCode::OK, &v))),
                ["apis", g, v] => {
                    discovery::resources(g, v).map(|v| Ok(json_response(StatusCode::OK, &v)))
                }
                _ => None,
            }
        }
    }
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

async fn dispatch(State(server): State<Arc<ApiServer>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let mut label = ("", String::from("nonresource"));
    let result = route(&server, parts, body, &path, &mut label).await;
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%path, error = %e, "request failed");
            e.into_response()
        }
    };
    server.metrics.observe(
        if label.0.is_empty() { "get" } else { label.0 },
        &label.1,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn route(
    server: &Arc<ApiServer>,
    parts: axum::http::request::Parts,
    body: Body,
    path: &str,
    label: &mut (&'static str, String),
) -> Result<Response, ApiError> {
    let auth_header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // As in Kubernetes, a verified client certificate wins over a bearer token.
    let cert_user = parts
        .extensions
        .get::<tls::ClientCertUser>()
        .map(|c| c.0.clone());
    let user = match cert_user.or_else(|| server.auth.authenticate(auth_header)) {
        Some(u) => u,
        None if is_public(path) => auth::User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec![],
        },
        None => return Err(ApiError::Unauthorized),
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(r) = non_resource(server, &parts.method, path, accept).await {
        return r;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let target = request::parse(&segs)?;
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((decode_component(k)?, decode_component(v)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let watch_param = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = request::verb(&parts.method, &target, watch_param)?;
    *label = (verb, target.resource.qualified());
    let attrs = Attributes {
        verb,
        namespace: target.namespace.as_deref(),
        resource: target.resource.plural,
        api_group: target.resource.group,
    };
    if !server.auth.authorize(&user, &attrs) {
        return Err(ApiError::Forbidden(Box::new(ForbiddenDetail {
            user: user.name,
            verb: verb.into(),
            resource: target.resource.plural.into(),
            group: target.resource.group.into(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        })));
    }
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
    handlers::handle(
        server,
        ResourceRequest {
            target,
            verb,
            query,
            headers: parts.headers,
            body,
        },
    )
    .await
}

/// Percent-decodes a query component (`+` is a space, as Go's `url.ParseQuery` reads it).
fn decode_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_decoding() {
        let cases = [
            ("a%3Db", Some("a=b")),
            ("app+in+%28x%29", Some("app in (x)")),
            ("plain", Some("plain")),
            ("%zz", None),
            ("%4", None),
        ];
        for (input, want) in cases {
            assert_eq!(super::decode_component(input).as_deref(), want, "{input}");
        }
    }
}
