//! A test kubelet for the controllers' tests (unit tests on the fake API, integration
//! tests on a real API server): it registers nodes, renews their Leases in
//! `kube-node-lease`, marks the pods bound to them Running and Ready (with a pod IP) after
//! a delay, and finishes the graceful deletion of their pods. A node can be stopped, after
//! which it neither heartbeats nor touches its pods: a dead machine.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Node, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

use crate::client::watcher::{watcher, Event};
use crate::client::{Api, DeleteParams, ListParams};
use crate::scheduler::testing::node;

/// The running kubelet; dropping it stops every node.
pub struct TestKubelet {
    shared: Arc<Shared>,
}

struct Shared {
    stopped: Mutex<HashSet<String>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn lease(name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kube-node-lease".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Utc::now())),
            ..Default::default()
        }),
    }
}

/// The pod a kubelet reports once its containers run.
fn running(pod: &Pod, ip: &str) -> Pod {
    let now = Time(Utc::now());
    let mut next = pod.clone();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    next.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.into()),
        host_ip: Some("127.0.0.1".into()),
        start_time: Some(now.clone()),
        conditions: Some(
            ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
                .iter()
                .map(|t| PodCondition {
                    type_: t.to_string(),
                    status: "True".into(),
                    last_transition_time: Some(now.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        container_statuses: Some(
            containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    ready: true,
                    started: Some(true),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(now.clone()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    next
}

impl TestKubelet {
    /// Registers `nodes` and starts serving them; pods turn Ready `ready_after` after
    /// they are bound.
    pub async fn start<C: Api>(api: C, nodes: &[&str], ready_after: Duration) -> TestKubelet {
        let shared = Arc::new(Shared {
            stopped: Mutex::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        });
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: ObjectMeta {
                name: Some("kube-node-lease".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let _ = api.create(None, &ns).await;
        for name in nodes {
            let mut n: Node = node(name, "8", "16Gi");
            n.metadata.labels = Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )]));
            if let Some(c) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                c[0].last_heartbeat_time = Some(Time(Utc::now()));
            }
            match api.create(None, &n).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => panic!("registering node {name}: {e}"),
            }
            tokio::spawn(shared.clone().heartbeat(api.clone(), name.to_string()));
        }
        let managed: HashSet<String> = nodes.iter().map(|s| s.to_string()).collect();
        tokio::spawn(shared.clone().pods(api, managed, ready_after));
        TestKubelet { shared }
    }

    /// The node stops heartbeating and handling its pods.
    pub fn stop_node(&self, name: &str) {
        self.shared.stopped.lock().unwrap().insert(name.to_string());
    }
}

impl Shared {
    fn is_stopped(&self, name: &str) -> bool {
        self.stopped.lock().unwrap().contains(name)
    }

    async fn heartbeat<C: Api>(self: Arc<Self>, api: C, name: String) {
        loop {
            if self.shutdown.is_cancelled() || self.is_stopped(&name) {
                return;
            }
            let renewed = match api.get::<Lease>(Some("kube-node-lease"), &name).await {
                Ok(mut l) => {
                    l.spec.get_or_insert_with(Default::default).renew_time =
                        Some(MicroTime(Utc::now()));
                    api.update(Some("kube-node-lease"), &l).await.map(drop)
                }
                Err(e) if e.is_not_found() => api
                    .create(Some("kube-node-lease"), &lease(&name))
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = renewed {
                tracing::debug!(node = %name, error = %e, "lease renewal failed");
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn pods<C: Api>(self: Arc<Self>, api: C, nodes: HashSet<String>, ready_after: Duration) {
        let mut rx = watcher::<C, Pod>(api.clone(), None, ListParams::default());
        let ips = Arc::new(Mutex::new(0u32));
        let started: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            let ev = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            };
            let pods = match ev {
                Event::Restarted(pods) => pods,
                Event::Applied(p) => vec![p],
                Event::Deleted(_) => continue,
            };
            for pod in pods {
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                if !nodes.contains(&node) || self.is_stopped(&node) {
                    continue;
                }
                let (api, me) = (api.clone(), self.clone());
                let ns = pod.metadata.namespace.clone();
                let name = pod.metadata.name.clone().unwrap_or_default();
                if pod.metadata.deletion_timestamp.is_some() {
                    // The containers are stopped at once: finish the deletion.
                    tokio::spawn(async move {
                        let params = DeleteParams {
                            grace_period_seconds: Some(0),
                            precondition_uid: pod.metadata.uid.clone(),
                            ..Default::default()
                        };
                        let _ = api.delete_with::<Pod>(ns.as_deref(), &name, &params).await;
                    });
                    continue;
                }
                let running_already =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if running_already || !started.lock().unwrap().insert(uid) {
                    continue;
                }
                let ip = {
                    let mut n = ips.lock().unwrap();
                    *n += 1;
                    format!("10.244.{}.{}", *n / 250, *n % 250 + 1)
                };
                tokio::spawn(async move {
                    tokio::time::sleep(ready_after).await;
                    if me.is_stopped(&node) {
                        return;
                    }
                    // Re-read: the pod may have been deleted or changed meanwhile.
                    let Ok(current) = api.get::<Pod>(ns.as_deref(), &name).await else {
                        return;
                    };
                    if current.metadata.deletion_timestamp.is_none() {
                        let _ = api
                            .update_status(ns.as_deref(), &running(&current, &ip))
                            .await;
                    }
                });
            }
        }
    }
}
