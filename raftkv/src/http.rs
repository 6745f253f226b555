//! Plain HTTP endpoints served beside gRPC on every client URL (and on `--listen-metrics-urls`):
//! `/health`, `/version`, `/metrics`, with etcd 3.4's response bodies.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::server::EtcdServer;

/// The etcd release whose API and version strings raftkv reproduces.
pub const ETCD_VERSION: &str = "3.4.23";
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// Answers requests no route takes, on the client port: a gRPC call of an unknown method gets
/// `Unimplemented` (what tonic's router answers), anything else the 404 of Go's
/// `http.ServeMux`, as etcd answers plain HTTP requests for unknown paths.
pub async fn fallback(req: axum::extract::Request) -> axum::response::Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented("").into_http();
    }
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
        .into_response()
}

pub fn router(server: Arc<EtcdServer>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(server)
}

/// Healthy means a leader is known and no alarm is raised, as etcd's /health says (the gRPC
/// health service uses the same rule).
pub fn is_healthy(s: &EtcdServer) -> bool {
    let alarmed = !s.sm.read().alarms.is_empty();
    !alarmed && s.leader().is_some()
}

async fn health(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    let (code, body) = if is_healthy(&s) {
        (StatusCode::OK, r#"{"health":"true"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#),
    )
}

async fn metrics(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    {
        let st = s.sm.read();
        let m = &s.metrics;
        m.current_revision.set(st.mvcc.current_rev());
        m.compact_revision.set(st.mvcc.compact_rev());
        m.keys.set(st.mvcc.key_count() as i64);
        m.leases.set(st.lessor.len() as i64);
        m.has_leader.set(i64::from(s.leader().is_some()));
    }
    let (synced, unsynced) = s.sm.hub().watcher_count();
    s.metrics.watchers.set((synced + unsynced) as i64);
    s.metrics.slow_watchers.set(unsynced as i64);
    s.metrics.db_size.set(s.sm.backend().size() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
