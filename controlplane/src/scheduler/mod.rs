//! `controlplane scheduler`: assigns pending pods to nodes.
//!
//! Two watchers (nodes; pods in all namespaces) feed the [`cache::Cache`] and the
//! [`queue::SchedulingQueue`]; one scheduling loop pops a pod, runs the
//! [`framework::Framework`] over a consistent view of the cache, assumes the pod on the
//! chosen node and sends the `pods/binding` in the background (bounded in flight), so the
//! next pod is scheduled without waiting for the round trip. A failed binding forgets
//! the assumption and requeues the pod; a pod that fits nowhere backs off and gets a
//! "FailedScheduling" event. The API server refuses a second binding of a pod (409), so a
//! pod is never rebound even by two schedulers racing.

pub mod cache;
pub mod framework;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod resources;
/// Object builders for tests (the unit tests here and the scheduler integration tests).
pub mod testing;
pub mod throughput;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Event, EventSource, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::watcher::{watcher, Event as WatchEvent};
use crate::client::{key_of, Api, ListParams};
use crate::clock::Clock;
use cache::Cache;
use framework::{FitError, Framework};
use plugins::Weights;
use queue::SchedulingQueue;

pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const MAX_IN_FLIGHT_BINDINGS: usize = 128;

#[derive(Clone, Debug)]
pub struct Options {
    /// Pods whose `spec.schedulerName` is this (or empty) are ours.
    pub scheduler_name: String,
    pub weights: Weights,
    pub metrics: Arc<metrics::Metrics>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            weights: Weights::default(),
            metrics: Arc::default(),
        }
    }
}

struct Shared<K: Clock> {
    cache: Mutex<Cache>,
    queue: Mutex<SchedulingQueue<K>>,
    wake: Notify,
}

fn is_pending_and_ours(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let ours = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == name);
    let unbound = spec.node_name.as_deref().is_none_or(str::is_empty);
    let live = pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
    ours && unbound && live
}

fn is_bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Runs the scheduler until `stop` is cancelled.
pub async fn run<C: Api, K: Clock>(api: C, clock: Arc<K>, opts: Options, stop: CancellationToken) {
    let shared = Arc::new(Shared {
        cache: Mutex::new(Cache::default()),
        queue: Mutex::new(SchedulingQueue::new(clock.clone())),
        wake: Notify::new(),
    });
    let framework = Arc::new(plugins::default_framework(&opts.weights));
    let nodes = tokio::spawn(watch_nodes(api.clone(), shared.clone()));
    let pods = tokio::spawn(watch_pods(
        api.clone(),
        shared.clone(),
        opts.scheduler_name.clone(),
    ));
    tracing::info!(name = %opts.scheduler_name, "scheduler started");
    tokio::select! {
        _ = schedule_loop(api, clock, shared, framework, opts) => {}
        _ = stop.cancelled() => {}
    }
    nodes.abort();
    pods.abort();
    tracing::info!("scheduler stopped");
}

async fn watch_nodes<C: Api, K: Clock>(api: C, shared: Arc<Shared<K>>) {
    let mut rx = watcher::<C, Node>(api, None, ListParams::default());
    while let Some(ev) = rx.recv().await {
        {
            let mut cache = shared.cache.lock().unwrap();
            match ev {
                WatchEvent::Restarted(nodes) => {
                    let names: std::collections::HashSet<String> = nodes
                        .iter()
                        .filter_map(|n| n.metadata.name.clone())
                        .collect();
                    let stale: Vec<String> = cache
                        .nodes()
                        .map(|n| n.name().to_string())
                        .filter(|n| !names.contains(n))
                        .collect();
                    for n in stale {
                        cache.remove_node(&n);
                    }
                    for n in nodes {
                        cache.upsert_node(n);
                    }
                }
                WatchEvent::Applied(n) => cache.upsert_node(n),
                WatchEvent::Deleted(n) => {
                    cache.remove_node(n.metadata.name.as_deref().unwrap_or(""))
                }
            }
        }
        shared.queue.lock().unwrap().move_all_to_active_or_backoff();
        shared.wake.notify_one();
    }
}

async fn watch_pods<C: Api, K: Clock>(api: C, shared: Arc<Shared<K>>, name: String) {
    let mut rx = watcher::<C, Pod>(api, None, ListParams::default());
    while let Some(ev) = rx.recv().await {
        let mut cache = shared.cache.lock().unwrap();
        let mut queue = shared.queue.lock().unwrap();
        match ev {
            WatchEvent::Restarted(pods) => {
                cache.reset_pods();
                let keys: std::collections::HashSet<String> =
                    pods.iter().map(|p| key_of(&p.metadata)).collect();
                queue.retain(|k| keys.contains(k));
                for p in pods {
                    if is_bound(&p) {
                        queue.delete(&key_of(&p.metadata));
                        cache.upsert_pod(p);
                    } else if is_pending_and_ours(&p, &name) {
                        queue.add(p);
                    }
                }
                queue.move_all_to_active_or_backoff();
            }
            WatchEvent::Applied(p) => {
                let key = key_of(&p.metadata);
                if is_bound(&p) {
                    queue.delete(&key);
                    cache.upsert_pod(p);
                } else if is_pending_and_ours(&p, &name) {
                    // An assumed pod is being bound; its binding decides what happens.
                    if !cache.is_placed(&key) {
                        queue.add(p);
                    }
                } else {
                    queue.delete(&key);
                }
            }
            WatchEvent::Deleted(p) => {
                let key = key_of(&p.metadata);
                queue.delete(&key);
                let freed = cache.is_placed(&key);
                cache.remove_pod(&key);
                if freed {
                    queue.move_all_to_active_or_backoff();
                }
            }
        }
        drop((cache, queue));
        shared.wake.notify_one();
    }
}

async fn schedule_loop<C: Api, K: Clock>(
    api: C,
    clock: Arc<K>,
    shared: Arc<Shared<K>>,
    framework: Arc<Framework>,
    opts: Options,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BINDINGS));
    loop {
        let next = {
            let mut q = shared.queue.lock().unwrap();
            opts.metrics.pending.set(q.len() as i64);
            q.pop()
        };
        let Some((pod, cycle)) = next else {
            // Backoffs expire without any event: look again at least every 100 ms.
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = clock.sleep(Duration::from_millis(100)) => {}
            }
            continue;
        };
        let key = key_of(&pod.metadata);
        let decision = {
            let mut cache = shared.cache.lock().unwrap();
            if cache.is_placed(&key) {
                None
            } else {
                let nodes: Vec<&cache::NodeInfo> = cache.nodes().collect();
                let timer = opts.metrics.algorithm_seconds.start_timer();
                let d = framework.schedule(&pod, &nodes);
                timer.observe_duration();
                if let Ok(node) = &d {
                    cache.assume(&pod, node);
                }
                Some(d)
            }
        };
        match decision {
            None => shared.queue.lock().unwrap().done(&key),
            Some(Ok(node)) => {
                opts.metrics
                    .attempts
                    .with_label_values(&["scheduled"])
                    .inc();
                shared.queue.lock().unwrap().done(&key);
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let (api, shared, metrics) = (api.clone(), shared.clone(), opts.metrics.clone());
                tokio::spawn(async move {
                    if !bind(&api, &shared, &pod, &node, cycle).await {
                        metrics.attempts.with_label_values(&["error"]).inc();
                    }
                    drop(permit);
                });
            }
            Some(Err(fit)) => {
                opts.metrics
                    .attempts
                    .with_label_values(&["unschedulable"])
                    .inc();
                tracing::debug!(pod = %key, reason = %fit, "unschedulable");
                shared.queue.lock().unwrap().add_unschedulable(&pod, cycle);
                let api = api.clone();
                let (clock, name) = (clock.clone(), opts.scheduler_name.clone());
                tokio::spawn(async move {
                    record_failure(&api, clock.as_ref(), &name, &pod, &fit).await
                });
            }
        }
    }
}

/// Sends the binding; `false` if it failed and the pod was requeued.
async fn bind<C: Api, K: Clock>(
    api: &C,
    shared: &Shared<K>,
    pod: &Pod,
    node: &str,
    cycle: u64,
) -> bool {
    let key = key_of(&pod.metadata);
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let binding = Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    match api.bind(&ns, &binding).await {
        Ok(()) => tracing::debug!(pod = %key, node, "bound"),
        // Bound already (by another scheduler, or our earlier attempt): the watch brings
        // the real placement, which replaces our assumption.
        Err(e) if e.is_conflict() => tracing::info!(pod = %key, error = %e, "already bound"),
        // Gone: the watch's delete cleans up.
        Err(e) if e.is_not_found() => shared.cache.lock().unwrap().remove_pod(&key),
        Err(e) => {
            tracing::warn!(pod = %key, node, error = %e, "binding failed; retrying with backoff");
            shared.cache.lock().unwrap().remove_pod(&key);
            let mut q = shared.queue.lock().unwrap();
            q.add(pod.clone());
            q.add_unschedulable(pod, cycle);
            return false;
        }
    }
    true
}

/// A "FailedScheduling" Warning event on the pod, as kube-scheduler writes it.
pub fn failed_scheduling_event(
    pod: &Pod,
    scheduler: &str,
    fit: &FitError,
    now: chrono::DateTime<chrono::Utc>,
) -> Event {
    let name = pod.metadata.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{name}.{:x}",
                now.timestamp_nanos_opt().unwrap_or(0)
            )),
            namespace: pod.metadata.namespace.clone(),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            name: Some(name),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some("FailedScheduling".into()),
        message: Some(fit.to_string()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(scheduler.into()),
            host: None,
        }),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        ..Default::default()
    }
}

async fn record_failure<C: Api, K: Clock>(
    api: &C,
    clock: &K,
    scheduler: &str,
    pod: &Pod,
    fit: &FitError,
) {
    let ev = failed_scheduling_event(pod, scheduler, fit, clock.now());
    if let Err(e) = api.create(ev.metadata.namespace.as_deref(), &ev).await {
        tracing::warn!(error = %e, "writing a FailedScheduling event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::FakeApi;
    use crate::clock::SystemClock;
    use testing::{node, pod};

    /// End to end on the fake API: pods that fit are bound, spread over the nodes; the
    /// one that fits nowhere gets a FailedScheduling event, and is bound once a node
    /// with room appears.
    #[tokio::test]
    async fn binds_fitting_pods_and_reports_the_rest() {
        let api = FakeApi::new();
        for n in ["n1", "n2", "n3"] {
            api.create(None, &node(n, "2", "4Gi")).await.unwrap();
        }
        for i in 0..6 {
            api.create(Some("default"), &pod(&format!("p{i}"), "1", "1Gi"))
                .await
                .unwrap();
        }
        api.create(Some("default"), &pod("big", "3", "1Gi"))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            api.clone(),
            Arc::new(SystemClock),
            Options::default(),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let bound = |api: &FakeApi| api.all::<Pod>().iter().filter(|p| is_bound(p)).count();
        while bound(&api) < 6 || api.all::<Event>().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "bound {}",
                bound(&api)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut per_node = std::collections::BTreeMap::new();
        for p in api.all::<Pod>() {
            if let Some(n) = p.spec.unwrap().node_name {
                *per_node.entry(n).or_insert(0) += 1;
            }
        }
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "{per_node:?}"
        );
        let ev = &api.all::<Event>()[0];
        assert_eq!(ev.reason.as_deref(), Some("FailedScheduling"));
        assert_eq!(
            ev.message.as_deref(),
            Some("0/3 nodes are available: 3 Insufficient cpu.")
        );
        assert_eq!(ev.involved_object.name.as_deref(), Some("big"));
        api.create(None, &node("n4", "4", "4Gi")).await.unwrap();
        while bound(&api) < 7 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "big pod not bound after a node was added"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }
}
