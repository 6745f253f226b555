//! The agent's Prometheus metrics, served at `/metrics` by the log server.

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Pods with a worker on this node.
    pub pods: IntGauge,
    /// Container-log requests served.
    pub log_requests: IntCounter,
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
        for m in [
            Box::new(pods.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(log_requests.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Metrics {
            registry,
            pods,
            log_requests,
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
