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

/// Starts the periodic resync of a controller's primary objects into its queue.
type Resync = Box<dyn FnOnce(Arc<WorkQueue>, Arc<dyn Clock>, CancellationToken) + Send>;

/// Every object of `store`, every `period`.
fn every<K: Object>(store: &Arc<runtime::Store<K>>, period: Duration) -> Option<Resync> {
    let store = store.clone();
    Some(Box::new(move |queue, clock, shutdown| {
        runtime::resync(store, queue, period, clock, shutdown)
    }))
}

/// One controller ready to run: starts its resync and its workers.
type Running = Box<dyn FnOnce(CancellationToken) -> tokio::task::JoinHandle<()> + Send>;

fn running<R: Reconciler>(
    reconciler: R,
    queue: Arc<WorkQueue>,
    opts: &Options,
    clock: &Arc<dyn Clock>,
    resync: Option<Resync>,
) -> Running {
    let (workers, metrics, clock) = (opts.workers, opts.metrics.clone(), clock.clone());
    Box::new(move |shutdown| {
        if let Some(resync) = resync {
            resync(queue.clone(), clock, shutdown.clone());
        }
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
    if enabled("replicaset") {
        let q = queue("replicaset");
        let c = replicaset::ReplicaSetController::new(
            api.clone(),
            clock.clone(),
            &inf.replicasets,
            &inf.pods,
            &q,
        );
        controllers.push(running(
            c,
            q,
            &opts,
            &clock,
            every(&inf.replicasets.store, opts.resync_period),
        ));
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
        controllers.push(running(
            c,
            q,
            &opts,
            &clock,
            every(&inf.deployments.store, opts.resync_period),
        ));
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
        controllers.push(running(
            c,
            q,
            &opts,
            &clock,
            every(&inf.nodes.store, opts.node.monitor_period),
        ));
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
        controllers.push(running(
            c,
            q,
            &opts,
            &clock,
            every(&inf.services.store, opts.resync_period),
        ));
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
        controllers.push(running(c, q, &opts, &clock, None));
    }
    if enabled("nodeipam") {
        let q = queue("nodeipam");
        let c = nodeipam::NodeIpamController::new(api.clone(), opts.ipam.clone(), &inf.nodes, &q);
        controllers.push(running(c, q, &opts, &clock, None));
    }
    if enabled("namespace") {
        let q = queue("namespace");
        let c = namespace::NamespaceController::new(api.clone(), &inf.namespaces, &q);
        controllers.push(running(
            c,
            q,
            &opts,
            &clock,
            every(&inf.namespaces.store, opts.resync_period),
        ));
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
    let mut tasks = Vec::new();
    for start in controllers {
        tasks.push(start(shutdown.clone()));
    }
    for t in tasks {
        let _ = t.await;
    }
}
