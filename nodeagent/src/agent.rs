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
