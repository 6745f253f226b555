//! The controllers together on the fake API, with the real scheduler and the test
//! kubelet: rollouts (rolling, recreate, rollback), garbage collection under each
//! propagation policy, endpoints, and eviction from a node that stops heartbeating.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Endpoints, Node, Pod, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, WatchEvent};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio_util::sync::CancellationToken;

use super::testing::TestKubelet;
use super::{nodelifecycle, run, Options};
use crate::client::fake::FakeApi;
use crate::client::{Api, DeleteParams, Propagation};
use crate::clock::SystemClock;

const NS: &str = "default";

struct Cluster {
    api: FakeApi,
    kubelet: TestKubelet,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn cluster(nodes: &[&str]) -> Cluster {
    let api = FakeApi::new();
    let stop = CancellationToken::new();
    let opts = Options {
        resync_period: Duration::from_secs(2),
        node: nodelifecycle::Options {
            grace_period: Duration::from_secs(2),
            monitor_period: Duration::from_millis(200),
        },
        ..Options::default()
    };
    tokio::spawn(run(api.clone(), Arc::new(SystemClock), opts, stop.clone()));
    tokio::spawn(crate::scheduler::run(
        api.clone(),
        Arc::new(SystemClock),
        crate::scheduler::Options::default(),
        stop.clone(),
    ));
    let kubelet = TestKubelet::start(api.clone(), nodes, Duration::from_millis(100)).await;
    Cluster { api, kubelet, stop }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app.to_string())])
}

fn deployment(name: &str, replicas: i32, image: &str, strategy: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some(strategy.into()),
                rolling_update: (strategy == "RollingUpdate").then_some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "main".into(),
                        image: Some(image.into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn is_ready_pod(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && super::podutil::is_ready(p)
}

/// `d` with its (only) container's image replaced: a new pod template.
fn with_image(d: &Deployment, image: &str) -> Deployment {
    let mut d = d.clone();
    let template = &mut d.spec.as_mut().unwrap().template;
    template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
    d
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Waits until the deployment's `replicas` pods all run `image` and are ready, and no other pod of it remains.
async fn rolled_out(api: &FakeApi, name: &str, replicas: usize, image: &str) -> Deployment {
    eventually(30, &format!("{name} rolled out to {image}"), || async {
        let d: Deployment = api.get(Some(NS), name).await.ok()?;
        let st = d.status.clone()?;
        let pods = app_pods(api, name);
        let done = st.updated_replicas == Some(replicas as i32)
            && st.available_replicas == Some(replicas as i32)
            && st.replicas == Some(replicas as i32)
            && st.observed_generation == d.metadata.generation
            && pods.len() == replicas
            && pods.iter().all(|p| is_ready_pod(p) && image_of(p) == image);
        done.then_some(d)
    })
    .await
}

/// One watch event, reduced to what the tests compare.
struct Seen {
    /// The fake's resourceVersions are one global counter: they order events of all kinds.
    rv: u64,
    deleted: bool,
    /// Carries a deletionTimestamp.
    marked: bool,
}

/// Events of the `K`s whose name starts with `prefix` since `rv`.
async fn events_since<K: crate::client::Object>(
    api: &FakeApi,
    rv: &str,
    prefix: &str,
) -> Vec<Seen> {
    use futures::StreamExt;
    let mut stream = api
        .watch::<K>(Some(NS), &Default::default(), rv)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_millis(200), stream.next()).await
    {
        let meta = match &ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                o.metadata().clone()
            }
            _ => continue,
        };
        if meta.name.as_deref().unwrap_or("").starts_with(prefix) {
            out.push(Seen {
                rv: meta
                    .resource_version
                    .as_deref()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
                deleted: matches!(ev, WatchEvent::Deleted(_)),
                marked: meta.deletion_timestamp.is_some(),
            });
        }
    }
    out
}

/// The pods labelled `app=<name>`.
fn app_pods(api: &FakeApi, name: &str) -> Vec<Pod> {
    api.all::<Pod>()
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str)
                == Some(name)
        })
        .collect()
}

fn revision(meta: &ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get(super::deployment::REVISION)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_availability_and_rollback_reuses_the_old_replica_set() {
    let c = cluster(&["n1", "n2"]).await;
    let api = &c.api;
    api.create(Some(NS), &deployment("web", 4, "nginx:1", "RollingUpdate"))
        .await
        .unwrap();
    let d = rolled_out(api, "web", 4, "nginx:1").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("1"));

    // Roll out a new image while sampling the ready pods: never below 4 - maxUnavailable.
    let sampler = {
        let api = api.clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut min = usize::MAX;
            while !s.is_cancelled() {
                let ready = api.all::<Pod>().iter().filter(|p| is_ready_pod(p)).count();
                min = min.min(ready);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            min
        });
        (stop, task)
    };
    api.update(Some(NS), &with_image(&d, "nginx:2"))
        .await
        .unwrap();
    let d = rolled_out(api, "web", 4, "nginx:2").await;
    sampler.0.cancel();
    let min_ready = sampler.1.await.unwrap();
    assert!(
        min_ready >= 3,
        "ready pods dropped to {min_ready} during the rollout"
    );
    assert_eq!(revision(&d.metadata).as_deref(), Some("2"));
    let sets = api.all::<ReplicaSet>();
    assert_eq!(sets.len(), 2);
    let old = sets
        .iter()
        .find(|rs| revision(&rs.metadata).as_deref() == Some("1"))
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));

    // `kubectl rollout undo`: the old template back into the deployment.
    let mut template = old.spec.as_ref().unwrap().template.clone().unwrap();
    template
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .remove("pod-template-hash");
    let patch = serde_json::json!({"spec": {"template": template}});
    api.patch_merge::<Deployment>(Some(NS), "web", &patch)
        .await
        .unwrap();
    let d = rolled_out(api, "web", 4, "nginx:1").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("3"));
    let sets = api.all::<ReplicaSet>();
    assert_eq!(
        sets.len(),
        2,
        "the old ReplicaSet is reused, not a third one made"
    );
    let reused = api
        .get::<ReplicaSet>(Some(NS), old.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(revision(&reused.metadata).as_deref(), Some("3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_every_old_pod_before_starting_new_ones() {
    let c = cluster(&["n1"]).await;
    let api = &c.api;
    api.create(Some(NS), &deployment("db", 3, "pg:1", "Recreate"))
        .await
        .unwrap();
    let d = rolled_out(api, "db", 3, "pg:1").await;
    let sampler = {
        let api = api.clone();
        tokio::spawn(async move {
            for _ in 0..4000 {
                let images: std::collections::HashSet<String> =
                    api.all::<Pod>().iter().map(image_of).collect();
                if images.len() > 1 {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            true
        })
    };
    api.update(Some(NS), &with_image(&d, "pg:2")).await.unwrap();
    rolled_out(api, "db", 3, "pg:2").await;
    sampler.abort();
    if let Ok(Ok(no_overlap)) = tokio::time::timeout(Duration::from_millis(10), sampler).await {
        assert!(no_overlap, "old and new pods ran at the same time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_follows_the_propagation_policy() {
    let c = cluster(&["n1"]).await;
    let api = &c.api;
    for name in ["bg", "fg", "orphan"] {
        api.create(Some(NS), &deployment(name, 2, "app:1", "RollingUpdate"))
            .await
            .unwrap();
        rolled_out(api, name, 2, "app:1").await;
    }
    let owned_by = |name: &'static str| {
        let api = api.clone();
        move || {
            let sets = api
                .all::<ReplicaSet>()
                .into_iter()
                .filter(|rs| {
                    rs.metadata
                        .name
                        .as_deref()
                        .unwrap_or("")
                        .starts_with(&format!("{name}-"))
                })
                .count();
            (sets, app_pods(&api, name).len())
        }
    };
    let params = |p| DeleteParams {
        propagation: Some(p),
        ..Default::default()
    };

    api.delete_with::<Deployment>(Some(NS), "bg", &params(Propagation::Background))
        .await
        .unwrap();
    let bg = owned_by("bg");
    eventually(
        20,
        "background deletion of bg's replica set and pods",
        || async { (bg() == (0, 0)).then_some(()) },
    )
    .await;

    let before = api
        .list::<Deployment>(Some(NS), &Default::default())
        .await
        .unwrap()
        .resource_version;
    api.delete_with::<Deployment>(Some(NS), "fg", &params(Propagation::Foreground))
        .await
        .unwrap();
    let fg = owned_by("fg");
    eventually(20, "foreground deletion of fg", || async {
        let gone = api
            .get::<Deployment>(Some(NS), "fg")
            .await
            .is_err_and(|e| e.is_not_found());
        (gone && fg() == (0, 0)).then_some(())
    })
    .await;
    // The owner was only marked first, and left the store after its dependents.
    let deployment_events = events_since::<Deployment>(api, &before, "fg").await;
    let set_events = events_since::<ReplicaSet>(api, &before, "fg-").await;
    let marked = deployment_events.iter().any(|e| e.marked && !e.deleted);
    assert!(marked, "the owner was marked before its deletion");
    let deleted_at = |events: &[Seen]| events.iter().filter(|e| e.deleted).map(|e| e.rv).max();
    assert!(deleted_at(&set_events).is_some());
    assert!(deleted_at(&set_events) < deleted_at(&deployment_events));

    api.delete_with::<Deployment>(Some(NS), "orphan", &params(Propagation::Orphan))
        .await
        .unwrap();
    eventually(20, "orphaning of orphan's replica set", || async {
        let gone = api
            .get::<Deployment>(Some(NS), "orphan")
            .await
            .is_err_and(|e| e.is_not_found());
        let sets: Vec<ReplicaSet> = api
            .all::<ReplicaSet>()
            .into_iter()
            .filter(|rs| {
                rs.metadata
                    .name
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("orphan-")
            })
            .collect();
        let released = sets.len() == 1
            && sets[0]
                .metadata
                .owner_references
                .as_ref()
                .is_none_or(|r| r.is_empty());
        (gone && released).then_some(())
    })
    .await;
    // The orphaned ReplicaSet still keeps its pods.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owned_by("orphan")().1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_ready_pods_of_a_service() {
    let c = cluster(&["n1"]).await;
    let api = &c.api;
    api.create(Some(NS), &deployment("api", 3, "api:1", "RollingUpdate"))
        .await
        .unwrap();
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("api".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels("api")),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    api.create(Some(NS), &svc).await.unwrap();
    let ready_ips = || async {
        let ep: Endpoints = api.get(Some(NS), "api").await.ok()?;
        let subsets = ep.subsets.unwrap_or_default();
        Some(
            subsets
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .count(),
        )
    };
    eventually(20, "3 endpoint addresses", || async {
        (ready_ips().await == Some(3)).then_some(())
    })
    .await;
    api.patch_merge::<Deployment>(
        Some(NS),
        "api",
        &serde_json::json!({"spec": {"replicas": 1}}),
    )
    .await
    .unwrap();
    eventually(20, "1 endpoint address", || async {
        (ready_ips().await == Some(1)).then_some(())
    })
    .await;
    api.delete::<Service>(Some(NS), "api").await.unwrap();
    eventually(20, "endpoints deleted with the service", || async {
        api.get::<Endpoints>(Some(NS), "api")
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_node_that_stops_heartbeating_are_replaced_elsewhere() {
    let c = cluster(&["n1", "n2"]).await;
    let api = &c.api;
    let mut d = deployment("svc", 4, "svc:1", "RollingUpdate");
    // Evicted 1 s after the node is tainted unreachable.
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .tolerations = Some(vec![Toleration {
        key: Some(nodelifecycle::UNREACHABLE.into()),
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        toleration_seconds: Some(1),
        ..Default::default()
    }]);
    api.create(Some(NS), &d).await.unwrap();
    rolled_out(api, "svc", 4, "svc:1").await;
    let on = |node: &'static str| {
        let api = api.clone();
        move || {
            api.all::<Pod>()
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                        && p.metadata.deletion_timestamp.is_none()
                })
                .count()
        }
    };
    // Put pods on both nodes first, if the scheduler spread them unevenly it still
    // must have used n1 for some of them.
    let victim = if on("n1")() > 0 { "n1" } else { "n2" };
    let survivor = if victim == "n1" { "n2" } else { "n1" };
    c.kubelet.stop_node(victim);
    let node = eventually(20, "node marked unreachable", || async {
        let n: Node = api.get(None, victim).await.ok()?;
        let unknown = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == nodelifecycle::UNREACHABLE && t.effect == "NoExecute");
        (unknown && tainted).then_some(n)
    })
    .await;
    assert!(node
        .spec
        .unwrap()
        .taints
        .unwrap()
        .iter()
        .any(|t| t.effect == "NoSchedule"));
    let survivor_count = on(survivor);
    eventually(30, "all 4 pods ready on the surviving node", || async {
        let ready = api
            .all::<Pod>()
            .into_iter()
            .filter(|p| {
                is_ready_pod(p)
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(survivor)
            })
            .count();
        (ready == 4 && survivor_count() == 4).then_some(())
    })
    .await;
    assert_eq!(on(victim)(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_is_emptied_then_finalized() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, NamespaceSpec};
    let c = cluster(&["n1"]).await;
    let api = &c.api;
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("team".into()),
            ..Default::default()
        },
        spec: Some(NamespaceSpec {
            finalizers: Some(vec![super::namespace::FINALIZER.into()]),
        }),
        status: None,
    };
    api.create(None, &ns).await.unwrap();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cm".into()),
            namespace: Some("team".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(Some("team"), &cm).await.unwrap();
    let mut d = deployment("app", 1, "app:1", "RollingUpdate");
    d.metadata.namespace = Some("team".into());
    api.create(Some("team"), &d).await.unwrap();
    eventually(20, "the team pod", || async {
        api.all::<Pod>()
            .iter()
            .any(|p| p.metadata.namespace.as_deref() == Some("team"))
            .then_some(())
    })
    .await;
    api.delete::<Namespace>(None, "team").await.unwrap();
    eventually(20, "the namespace and its content gone", || async {
        let gone = api.get::<Namespace>(None, "team").await.is_err();
        let empty = api.all::<ConfigMap>().is_empty()
            && api.all::<Pod>().is_empty()
            && api.all::<ReplicaSet>().is_empty()
            && api.all::<Deployment>().is_empty();
        (gone && empty).then_some(())
    })
    .await;
}
