//! Prometheus metrics, named after etcd's where one exists so existing dashboards apply.

use crate::raft::log_store::LogCounters;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub proposals_applied: IntCounter,
    pub proposals_failed: IntCounter,
    pub apply_duration: Histogram,
    /// Where a write's time goes, by `stage`: per write, `queued` (waiting for the next
    /// entry or forward call, lingering included) and `catch_up` (a follower applying up to
    /// the entry after the leader answered a forwarded lease, compaction or auth request);
    /// per batch, `entry` (an entry proposed, committed and applied on the leader), `forward`
    /// (a follower's call to the leader) and `follower_apply` (a follower waiting, after the
    /// leader queued its KV writes, until it has applied them itself).
    pub proposal_stage: HistogramVec,
    /// Requests per entry (`path="entry"`) or per forward call (`path="forward"`).
    pub proposal_batch: HistogramVec,
    pub leases_expired: IntCounter,
    pub auth_failures: IntCounter,
    pub auth_invalid_tokens: IntCounter,
    pub grpc_requests: IntCounterVec,
    pub db_size: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub keys: IntGauge,
    pub watchers: IntGauge,
    pub slow_watchers: IntGauge,
    pub leases: IntGauge,
    pub has_leader: IntGauge,
    /// The Raft log writer's batches and syncs.
    pub log: LogCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        Self {
            proposals_applied: counter("etcd_server_proposals_applied_total", "Proposals applied."),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "Proposals that applied with a request error.",
            ),
            leases_expired: counter(
                "etcd_debugging_server_lease_expired_total",
                "Leases revoked because they expired.",
            ),
            auth_failures: counter(
                "raftkv_auth_failures_total",
                "Authenticate requests refused for a wrong user name or password.",
            ),
            auth_invalid_tokens: counter(
                "raftkv_auth_invalid_tokens_total",
                "Requests refused for their token: malformed, unknown, expired or badly signed.",
            ),
            apply_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "etcd_disk_backend_commit_duration_seconds",
                        "Time to apply and fsync one group of proposals.",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
                    ),
                )
                .expect("valid metric"),
            ),
            proposal_stage: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "raftkv_proposal_stage_duration_seconds",
                        "Time writes spend in each stage of their way through the log (queued and catch_up per write; entry, forward and follower_apply per batch).",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
                    ),
                    &["stage"],
                )
                .expect("valid metric"),
            ),
            proposal_batch: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "raftkv_proposal_batch_size",
                        "Client writes carried by one log entry or one forward call.",
                    )
                    .buckets(
                        prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets"),
                    ),
                    &["path"],
                )
                .expect("valid metric"),
            ),
            grpc_requests: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "grpc_server_handled_total",
                        "gRPC calls by method and code.",
                    ),
                    &["grpc_method", "grpc_code"],
                )
                .expect("valid metric"),
            ),
            db_size: gauge("etcd_mvcc_db_total_size_in_bytes", "Backend size in bytes."),
            current_revision: gauge(
                "etcd_debugging_mvcc_current_revision",
                "Current store revision.",
            ),
            compact_revision: gauge(
                "etcd_debugging_mvcc_compact_revision",
                "Last compacted revision.",
            ),
            keys: gauge("etcd_debugging_mvcc_keys_total", "Live keys."),
            watchers: gauge("etcd_debugging_mvcc_watcher_total", "Watchers."),
            slow_watchers: gauge(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Watchers catching up from storage.",
            ),
            leases: gauge("etcd_debugging_lease_total", "Live leases."),
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether a leader exists (1) or not (0).",
            ),
            log: {
                let log = LogCounters::default();
                reg(&registry, log.writes.clone());
                reg(&registry, log.syncs.clone());
                log
            },
            registry,
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
