//! The `/metrics` (Prometheus text format) and `/healthz` endpoint the scheduler and the
//! controller manager serve on `--metrics-address`.

use std::net::SocketAddr;

use prometheus::core::Collector;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};

/// A registry holding `collectors` (each registered once; names are static and distinct).
pub fn registry_of(collectors: Vec<Box<dyn Collector>>) -> Registry {
    let registry = Registry::new();
    for c in collectors {
        registry.register(c).expect("unique metric");
    }
    registry
}

/// `leader_election_master_status`, which every leader-elected component exports.
pub fn leader_gauge() -> IntGauge {
    IntGauge::new(
        "leader_election_master_status",
        "1 while this replica holds the Lease.",
    )
    .expect("valid metric")
}

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Serves `/metrics` (and `/healthz`) on `addr` until the process ends.
pub async fn serve(registry: Registry, addr: SocketAddr) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { render(&registry) }))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
