//! Prometheus metrics of the controller manager (client-go's workqueue names): reconciles
//! by controller and outcome, queue depth, and whether this replica leads.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub depth: IntGaugeVec,
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "workqueue_reconciles_total",
                "Keys processed, by controller and outcome (success, requeue, conflict, error).",
            ),
            &["name", "outcome"],
        )
        .expect("valid metric");
        let depth = IntGaugeVec::new(
            Opts::new(
                "workqueue_depth",
                "Keys waiting in each controller's queue.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let leader = crate::metrics::leader_gauge();
        let registry = crate::metrics::registry_of(vec![
            Box::new(reconciles.clone()),
            Box::new(depth.clone()),
            Box::new(leader.clone()),
        ]);
        Metrics {
            registry,
            reconciles,
            depth,
            leader,
        }
    }

    pub fn render(&self) -> String {
        crate::metrics::render(&self.registry)
    }

    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        crate::metrics::serve(self.registry.clone(), addr).await
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
