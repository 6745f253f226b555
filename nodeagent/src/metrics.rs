//! The agent's Prometheus metrics, served at `/metrics` by the log server.

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Pods with a worker on this node.
    pub pods: IntGauge,
    /// Container-log requests served.
    pub log_requests: IntCounter,
    /// Service proxy table replacements, and failed ones.
    pub proxy_syncs: IntCounter,
    pub proxy_sync_errors: IntCounter,
    /// Service endpoints programmed by the proxy.
    pub proxy_endpoints: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let pods = IntGauge::new("nodeagent_pods", "Pods with a worker on this node")
            .expect("valid metric");
        let log_requests = IntCounter::new(
            "nodeagent_log_requests_total",
            "Container log requests served",
        )
        .expect("valid metric");
        let proxy_syncs = IntCounter::new(
            "nodeagent_proxy_syncs_total",
            "Service proxy nftables table replacements",
        )
        .expect("valid metric");
        let proxy_sync_errors = IntCounter::new(
            "nodeagent_proxy_sync_errors_total",
            "Failed service proxy table replacements",
        )
        .expect("valid metric");
        let proxy_endpoints = IntGauge::new(
            "nodeagent_proxy_endpoints",
            "Service port endpoints programmed by the proxy",
        )
        .expect("valid metric");
        for m in [
            Box::new(pods.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(log_requests.clone()),
            Box::new(proxy_syncs.clone()),
            Box::new(proxy_sync_errors.clone()),
            Box::new(proxy_endpoints.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Metrics {
            registry,
            pods,
            log_requests,
            proxy_syncs,
            proxy_sync_errors,
            proxy_endpoints,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
