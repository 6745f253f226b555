//! Prometheus metrics of the scheduler (kube-scheduler's names), served at `/metrics`
//! when `--metrics-address` is given: attempts by result, algorithm latency, pending pods,
//! and whether this replica leads.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub attempts: IntCounterVec,
    pub algorithm_seconds: Histogram,
    pub pending: IntGauge,
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let attempts = IntCounterVec::new(
            Opts::new(
                "scheduler_schedule_attempts_total",
                "Scheduling attempts by result (scheduled, unschedulable, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let algorithm_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "scheduler_scheduling_algorithm_duration_seconds",
                "Filter and score time per pod.",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        let pending = IntGauge::new(
            "scheduler_pending_pods",
            "Pods waiting in the scheduling queue.",
        )
        .expect("valid metric");
        let leader = crate::metrics::leader_gauge();
        let registry = crate::metrics::registry_of(vec![
            Box::new(attempts.clone()),
            Box::new(algorithm_seconds.clone()),
            Box::new(pending.clone()),
            Box::new(leader.clone()),
        ]);
        Metrics {
            registry,
            attempts,
            algorithm_seconds,
            pending,
            leader,
        }
    }

    pub fn render(&self) -> String {
        crate::metrics::render(&self.registry)
    }

    /// Serves `/metrics` (and `/healthz`) on `addr` until the process ends.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        crate::metrics::serve(self.registry.clone(), addr).await
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_attempts() {
        let m = super::Metrics::new();
        m.attempts.with_label_values(&["scheduled"]).inc();
        assert!(m
            .render()
            .contains(r#"scheduler_schedule_attempts_total{result="scheduled"} 1"#));
    }
}
