//! Wiring of a running agent: registers the node, starts the lease and node-status loops
//! and the log server, adopts what is on disk, and runs one [`crate::pods::Worker`] per
//! pod bound to this node (a `spec.nodeName=<node>` list-then-watch). Pods whose state is
//! on disk but which the API server no longer has are torn down; runc containers of this
//! agent that belong to no pod are removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use controlplane::client::watcher::{watcher, Event};
use controlplane::client::{Api, ListParams};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::network::PodNetwork;
use crate::node::{self, NodeConfig};
use crate::pods::{Shared, Worker};
use crate::runtime::Runtime;

/// Loop intervals.
#[derive(Clone, Debug)]
pub struct Intervals {
    pub lease_renew: Duration,
    pub node_status: Duration,
}

struct PodEntry {
    tx: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the agent until `stop` is cancelled. Containers keep running after it returns.
pub async fn run<C: Api, R: Runtime, N: PodNetwork>(
    shared: Arc<Shared<C, R, N>>,
    node_cfg: NodeConfig,
    intervals: Intervals,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), controlplane::client::ClientError> {
    let api = shared.api.clone();
    let clock = shared.clock.clone();
    let node = loop {
        match node::register(&api, &node_cfg, clock.now()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %e, "registering the node; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tokio::spawn(node::lease_loop(
        api.clone(),
        node_cfg.name.clone(),
        node.metadata.uid.clone(),
        clock.clone(),
        intervals.lease_renew,
        stop.clone(),
    ));
    tokio::spawn(node::status_loop(
        api.clone(),
        node_cfg.clone(),
        clock.clone(),
        intervals.node_status,
        stop.clone(),
    ));

    let params = ListParams {
        field_selector: Some(format!("spec.nodeName={}", node_cfg.name)),
        timeout_seconds: Some(300),
        ..Default::default()
    };
    let mut events = watcher::<C, Pod>(api.clone(), None, params);
    let mut pods: HashMap<String, PodEntry> = HashMap::new();
    let mut adopted = false;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = events.recv() => match ev { Some(ev) => ev, None => break },
        };
        match ev {
            Event::Restarted(list) => {
                let live: HashMap<String, Pod> = list
                    .into_iter()
                    .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
                    .collect();
                for (uid, entry) in &pods {
                    if !live.contains_key(uid) {
                        let _ = entry.tx.send(None);
                    }
                }
                if !adopted {
                    adopted = true;
                    // State on disk for pods the API server no longer has: tear down.
                    for rec in shared.store.pod_records() {
                        if !live.contains_key(&rec.uid) {
                            tracing::info!(pod = %format!("{}/{}", rec.namespace, rec.name), "tearing down a pod that is gone");
                            dispatch(&shared, &mut pods, rec.uid.clone(), None);
                        }
                    }
                    remove_strays(&shared).await;
                }
                for (uid, pod) in live {
                    dispatch(&shared, &mut pods, uid, Some(pod));
                }
            }
            Event::Applied(p) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    dispatch(&shared, &mut pods, uid, Some(p));
                }
            }
            Event::Deleted(p) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    dispatch(&shared, &mut pods, uid, None);
                }
            }
        }
        pods.retain(|_, e| !e.task.is_finished());
        metrics.pods.set(pods.len() as i64);
    }
    Ok(())
}

fn dispatch<C: Api, R: Runtime, N: PodNetwork>(
    shared: &Arc<Shared<C, R, N>>,
    pods: &mut HashMap<String, PodEntry>,
    uid: String,
    pod: Option<Pod>,
) {
    if let Some(e) = pods.get(&uid) {
        if !e.task.is_finished() {
            let _ = e.tx.send(pod);
            return;
        }
        if pod.is_none() {
            return;
        }
    }
    if pod.is_none() && !shared.store.pod_dir(&uid).exists() {
        return;
    }
    let (tx, rx) = watch::channel(pod);
    let worker = Worker::new(shared.clone(), uid.clone());
    let task = tokio::spawn(worker.run(rx));
    pods.insert(uid, PodEntry { tx, task });
}

/// runc containers of this agent that no pod on disk knows.
async fn remove_strays<C: Api, R: Runtime, N: PodNetwork>(shared: &Arc<Shared<C, R, N>>) {
    let ids = match shared.runtime.list().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "listing runc containers");
            return;
        }
    };
    let uids: Vec<String> = shared
        .store
        .pod_records()
        .into_iter()
        .map(|r| r.uid)
        .collect();
    for id in ids {
        if !uids.iter().any(|u| id.starts_with(&format!("{u}-"))) {
            tracing::info!(%id, "removing a container no pod owns");
            let _ = shared.runtime.kill(&id, libc::SIGKILL).await;
            let _ = shared.runtime.delete(&id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ImageStore;
    use crate::network::HostNetwork;
    use crate::pods::Config;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{CreateRequest, State};
    use crate::store::{PodRecord, Store};
    use controlplane::client::fake::FakeApi;
    use controlplane::clock::{ManualClock, SystemClock};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Container, Node, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A pod the API server has runs; state on disk for a pod it no longer has is torn
    /// down; a runc container no pod owns is removed; the node and its lease appear.
    #[tokio::test]
    async fn runs_pods_and_removes_what_no_pod_owns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let images = ImageStore::new(store.images());
        let img = images.dir.join("busybox_latest");
        std::fs::create_dir_all(img.join("rootfs")).unwrap();
        std::fs::write(
            img.join("image.json"),
            r#"{"reference":"busybox","cmd":["sh"]}"#,
        )
        .unwrap();
        let rt = FakeRuntime::new(ManualClock::default());
        // Leftovers of an earlier run: a pod that is gone and a container of no pod.
        let gone = store.attempt_dir("gone", "main", 0);
        std::fs::create_dir_all(&gone).unwrap();
        store
            .write_pod_record(&PodRecord {
                namespace: "ns".into(),
                name: "old".into(),
                uid: "gone".into(),
            })
            .unwrap();
        for (id, bundle) in [
            ("gone-main-0", gone.clone()),
            ("stray-c-0", dir.path().join("x")),
        ] {
            std::fs::create_dir_all(&bundle).unwrap();
            let req = CreateRequest {
                id: id.into(),
                bundle: bundle.clone(),
                log: bundle.join("log"),
                cgroups_path: String::new(),
            };
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec(&oci_spec::runtime::Spec::default()).unwrap(),
            )
            .unwrap();
            rt.create(&req).await.unwrap();
            rt.start(id).await.unwrap();
        }
        let api = FakeApi::new();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let pod = api.create(Some("ns"), &pod).await.unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        let shared = Arc::new(Shared {
            api: api.clone(),
            runtime: rt.clone(),
            network: HostNetwork {
                node_ip: "127.0.0.1".into(),
            },
            store: store.clone(),
            images,
            config: Config {
                node_name: "n1".into(),
                node_ip: "127.0.0.1".into(),
                pids_limit: None,
                cgroup_parent: "/nodeagent-n1".into(),
                resync: Duration::from_millis(100),
            },
            clock: Arc::new(SystemClock),
        });
        let node_cfg = crate::node::NodeConfig {
            name: "n1".into(),
            ip: "127.0.0.1".into(),
            port: 1,
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            max_pods: 10,
            reserved_cpu_millis: 0,
            reserved_memory_bytes: 0,
            labels: Default::default(),
            taints: vec![],
            root_dir: dir.path().into(),
            runtime_version: "fake".into(),
            runc: "true".into(),
        };
        let intervals = Intervals {
            lease_renew: Duration::from_millis(100),
            node_status: Duration::from_millis(100),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            shared,
            node_cfg,
            intervals,
            Arc::new(Metrics::default()),
            stop.clone(),
        ));
        let settled = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let running = rt.running();
                let web = running.iter().any(|id| id.starts_with(&uid));
                let leftovers = running
                    .iter()
                    .any(|id| id.starts_with("gone") || id.starts_with("stray"));
                if web && !leftovers && !store.pod_dir("gone").exists() {
                    return running;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the agent settled within 10s");
        assert_eq!(settled.len(), 1, "{settled:?}");
        assert_eq!(api.all::<Node>().len(), 1);
        let lease: Lease = api.get(Some("kube-node-lease"), "n1").await.unwrap();
        assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("n1"));
        let p: Pod = api.get(Some("ns"), "web").await.unwrap();
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
        assert!(matches!(
            rt.state("gone-main-0", &gone).await.unwrap(),
            State::Exited(_) | State::Missing
        ));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
