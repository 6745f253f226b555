//! `controlplane controller-manager`: the level-triggered controllers that move the
//! cluster toward what its objects ask for, on the [`runtime`] (shared informers, work
//! queues with per-key backoff, workers, periodic resync):
//!
//! | controller | module |
//! |---|---|
//! | `replicaset` | [`replicaset`] |
//! | `deployment` | [`deployment`] |
//! | `nodelifecycle` | [`nodelifecycle`] |
//! | `endpoint` | [`endpoints`] |
//! | `garbagecollector` | [`gc`] |
//! | `namespace` | [`namespace`] |
//! | `nodeipam` | [`nodeipam`] |

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod metrics;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod runtime;
/// A test kubelet for the controllers' unit and integration tests.
pub mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Secret, Service};
use tokio_util::sync::CancellationToken;

use crate::client::{Api, ListParams, Object};
use crate::clock::Clock;
use runtime::{run_workers, Informer, Reconciler, WorkQueue};

/// Every controller, by the name `--controllers` uses.
pub const ALL: [&str; 7] = [
    "replicaset",
    "deployment",
    "nodelifecycle",
    "endpoint",
    "garbagecollector",
    "namespace",
    "nodeipam",
];

#[derive(Clone, Debug)]
pub struct Options {
    /// The controllers to run (names of [`ALL`]).
    pub controllers: Vec<String>,
    /// Workers per controller (`--concurrent-*-syncs`).
    pub workers: usize,
    /// Every object is re-queued this often (`--min-resync-period`).
    pub resync_period: Duration,
    pub node: nodelifecycle::Options,
    pub ipam: nodeipam::Options,
    pub metrics: Arc<metrics::Metrics>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            controllers: ALL.iter().map(|s| s.to_string()).collect(),
            workers: 2,
            resync_period: Duration::from_secs(30),
            node: nodelifecycle::Options::default(),
            ipam: nodeipam::Options::default(),
            metrics: Arc::default(),
        }
    }
}

/// The shared informers, one per type.
struct Informers {
    pods: Arc<Informer<Pod>>,
    replicasets: Arc<Informer<ReplicaSet>>,
    deployments: Arc<Informer<Deployment>>,
    nodes: Arc<Informer<Node>>,
    leases: Arc<Informer<Lease>>,
    services: Arc<Informer<Service>>,
    endpoints: Arc<Informer<Endpoints>>,
    configmaps: Arc<Informer<ConfigMap>>,
    secrets: Arc<Informer<Secret>>,
    namespaces: Arc<Informer<Namespace>>,
}

/// Starts one periodic resync.
type StartResync = Box<dyn FnOnce(&CancellationToken) + Send>;

/// One controller ready to run: starts its workers.
type Running = Box<dyn FnOnce(CancellationToken) -> tokio::task::JoinHandle<()> + Send>;

fn running<R: Reconciler>(reconciler: R, queue: Arc<WorkQueue>, opts: &Options) -> Running {
    let (workers, metrics) = (opts.workers, opts.metrics.clone());
    Box::new(move |shutdown| {
        tokio::spawn(run_workers(
            Arc::new(reconciler),
            queue,
            workers,
            metrics,
            shutdown,
        ))
    })
}

fn start_informer<C: Api, K: Object>(
    informer: &Arc<Informer<K>>,
    api: &C,
    ns: Option<&str>,
    shutdown: &CancellationToken,
) {
    informer.start(
        api.clone(),
        ns.map(String::from),
        ListParams::default(),
        shutdown.clone(),
    );
}

/// Runs the enabled controllers until `shutdown`.
pub async fn run<C: Api>(
    api: C,
    clock: Arc<dyn Clock>,
    opts: Options,
    shutdown: CancellationToken,
) {
    let inf = Informers {
        pods: Informer::new(),
        replicasets: Informer::new(),
        deployments: Informer::new(),
        nodes: Informer::new(),
        leases: Informer::new(),
        services: Informer::new(),
        endpoints: Informer::new(),
        configmaps: Informer::new(),
        secrets: Informer::new(),
        namespaces: Informer::new(),
    };
    let enabled = |name: &str| opts.controllers.iter().any(|c| c == name || c == "*");
    let mut controllers: Vec<Running> = Vec::new();
    let queue = |name| WorkQueue::new(name, clock.clone());
    let mut resyncs: Vec<StartResync> = Vec::new();
    macro_rules! resync_of {
        ($store:expr, $queue:expr, $period:expr) => {{
            let (store, q, clock, period) =
                ($store.clone(), $queue.clone(), clock.clone(), $period);
            resyncs.push(Box::new(move |s: &CancellationToken| {
                runtime::resync(store, q, period, clock, s.clone())
            }));
        }};
    }
    if enabled("replicaset") {
        let q = queue("replicaset");
        let c = replicaset::ReplicaSetController::new(
            api.clone(),
            clock.clone(),
            &inf.replicasets,
            &inf.pods,
            &q,
        );
        resync_of!(inf.replicasets.store, q, opts.resync_period);
        controllers.push(running(c, q, &opts));
    }
    if enabled("deployment") {
        let q = queue("deployment");
        let c = deployment::DeploymentController::new(
            api.clone(),
            clock.clone(),
            &inf.deployments,
            &inf.replicasets,
            &inf.pods,
            &q,
        );
        resync_of!(inf.deployments.store, q, opts.resync_period);
        controllers.push(running(c, q, &opts));
    }
    if enabled("nodelifecycle") {
        let q = queue("nodelifecycle");
        let c = nodelifecycle::NodeLifecycleController::new(
            api.clone(),
            clock.clone(),
            opts.node.clone(),
            &inf.nodes,
            &inf.leases,
            &inf.pods,
            &q,
        );
        resync_of!(inf.nodes.store, q, opts.node.monitor_period);
        controllers.push(running(c, q, &opts));
    }
    if enabled("endpoint") {
        let q = queue("endpoint");
        let c = endpoints::EndpointsController::new(
            api.clone(),
            &inf.services,
            &inf.endpoints,
            &inf.pods,
            &q,
        );
        resync_of!(inf.services.store, q, opts.resync_period);
        controllers.push(running(c, q, &opts));
    }
    if enabled("garbagecollector") {
        let q = queue("garbagecollector");
        let c = gc::GarbageCollector::new(
            api.clone(),
            gc::Informers {
                deployments: &inf.deployments,
                replicasets: &inf.replicasets,
                pods: &inf.pods,
                services: &inf.services,
                endpoints: &inf.endpoints,
                configmaps: &inf.configmaps,
                secrets: &inf.secrets,
            },
            &q,
        );
        controllers.push(running(c, q, &opts));
    }
    if enabled("nodeipam") {
        let q = queue("nodeipam");
        let c = nodeipam::NodeIpamController::new(api.clone(), opts.ipam.clone(), &inf.nodes, &q);
        controllers.push(running(c, q, &opts));
    }
    if enabled("namespace") {
        let q = queue("namespace");
        let c = namespace::NamespaceController::new(api.clone(), &inf.namespaces, &q);
        resync_of!(inf.namespaces.store, q, opts.resync_period);
        controllers.push(running(c, q, &opts));
    }
    start_informer(&inf.pods, &api, None, &shutdown);
    start_informer(&inf.namespaces, &api, None, &shutdown);
    start_informer(&inf.replicasets, &api, None, &shutdown);
    start_informer(&inf.deployments, &api, None, &shutdown);
    start_informer(&inf.nodes, &api, None, &shutdown);
    start_informer(
        &inf.leases,
        &api,
        Some(nodelifecycle::LEASE_NAMESPACE),
        &shutdown,
    );
    start_informer(&inf.services, &api, None, &shutdown);
    start_informer(&inf.endpoints, &api, None, &shutdown);
    if enabled("garbagecollector") {
        start_informer(&inf.configmaps, &api, None, &shutdown);
        start_informer(&inf.secrets, &api, None, &shutdown);
    }
    // Acting on a partial view would, e.g., create pods that already exist.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = async {
            inf.pods.wait_synced().await;
            inf.replicasets.wait_synced().await;
            inf.deployments.wait_synced().await;
            inf.nodes.wait_synced().await;
            inf.leases.wait_synced().await;
            inf.services.wait_synced().await;
            inf.endpoints.wait_synced().await;
            inf.namespaces.wait_synced().await;
            if enabled("garbagecollector") {
                inf.configmaps.wait_synced().await;
                inf.secrets.wait_synced().await;
            }
        } => {}
    }
    tracing::info!(controllers = ?opts.controllers, "caches synced; starting controllers");
    for r in resyncs {
        r(&shutdown);
    }
    let mut tasks = Vec::new();
    for start in controllers {
        tasks.push(start(shutdown.clone()));
    }
    for t in tasks {
        let _ = t.await;
    }
}
