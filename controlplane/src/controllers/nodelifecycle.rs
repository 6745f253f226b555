//! The node lifecycle controller: watches each node's heartbeat (its Lease in
//! `kube-node-lease`, and the Ready condition's lastHeartbeatTime) and, when neither has
//! moved for `grace_period`:
//!
//! - sets the node's Ready, MemoryPressure, DiskPressure and PIDPressure conditions to
//!   Unknown ("Kubelet stopped posting node status.") and its pods' Ready condition to
//!   False, so Services stop sending them traffic;
//! - taints the node `node.kubernetes.io/unreachable` with NoSchedule (no new pods) and
//!   NoExecute (or `node.kubernetes.io/not-ready` when the kubelet reports Ready=False);
//! - evicts (deletes) the pods on a NoExecute-tainted node that do not tolerate the
//!   taint, at once, or once their `tolerationSeconds` since the taint was added run out.
//!
//! When the heartbeat resumes and the kubelet reports Ready, the taints are removed.
//! Pods deleted from an unreachable node stay Terminating (no kubelet confirms them), as
//! in Kubernetes; their ReplicaSets already count them gone and replace them elsewhere.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::podutil;
use super::runtime::{Action, Informer, Reconciler, Store, WorkQueue};
use crate::client::{Api, ClientError};
use crate::clock::{since, Clock};
use crate::scheduler::plugins::taints::toleration_matches;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

#[derive(Clone, Debug)]
pub struct Options {
    /// A node whose heartbeat is older than this is unreachable
    /// (`--node-monitor-grace-period`).
    pub grace_period: Duration,
    /// How often every node is looked at (`--node-monitor-period`).
    pub monitor_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace_period: Duration::from_secs(40),
            monitor_period: Duration::from_secs(5),
        }
    }
}

pub struct NodeLifecycleController<C: Api> {
    api: C,
    clock: Arc<dyn Clock>,
    opts: Options,
    nodes: Arc<Store<Node>>,
    leases: Arc<Store<Lease>>,
    pods: Arc<Store<Pod>>,
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// The NoSchedule + NoExecute taints a node should carry for its Ready status.
fn wanted_taint_key(node: &Node) -> Option<&'static str> {
    match ready_status(node) {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    }
}

fn is_condition_taint(t: &Taint) -> bool {
    t.key == UNREACHABLE || t.key == NOT_READY
}

impl<C: Api> NodeLifecycleController<C> {
    pub fn new(
        api: C,
        clock: Arc<dyn Clock>,
        opts: Options,
        nodes: &Arc<Informer<Node>>,
        leases: &Arc<Informer<Lease>>,
        pods: &Arc<Informer<Pod>>,
        queue: &Arc<WorkQueue>,
    ) -> Self {
        let q = queue.clone();
        nodes.add_handler(move |c| q.add(c.object().metadata.name.clone().unwrap_or_default()));
        let q = queue.clone();
        leases.add_handler(move |c| q.add(c.object().metadata.name.clone().unwrap_or_default()));
        // A pod landing on a tainted node must be looked at for eviction.
        let q = queue.clone();
        pods.add_handler(move |c| {
            if let Some(node) = c.object().spec.as_ref().and_then(|s| s.node_name.clone()) {
                q.add(node);
            }
        });
        NodeLifecycleController {
            api,
            clock,
            opts,
            nodes: nodes.store.clone(),
            leases: leases.store.clone(),
            pods: pods.store.clone(),
        }
    }

    fn last_heartbeat(&self, node: &Node) -> Option<DateTime<Utc>> {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let lease = self
            .leases
            .get(&format!("{LEASE_NAMESPACE}/{name}"))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
        let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
        [lease, condition, created].into_iter().flatten().max()
    }

    fn pods_on(&self, node: &str) -> Vec<Arc<Pod>> {
        self.pods
            .list()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .collect()
    }

    /// Marks the node's conditions Unknown and its pods not ready.
    async fn mark_unknown(&self, node: &Node) -> Result<Arc<Node>, ClientError> {
        let now = Time(self.clock.now());
        let mut next = node.clone();
        let conditions = next
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new);
        for ty in CONDITIONS {
            let fresh = NodeCondition {
                type_: ty.into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some("Kubelet stopped posting node status.".into()),
                last_transition_time: Some(now.clone()),
                last_heartbeat_time: None,
            };
            match conditions.iter_mut().find(|c| c.type_ == ty) {
                Some(c) => {
                    *c = NodeCondition {
                        last_heartbeat_time: c.last_heartbeat_time.clone(),
                        ..fresh
                    }
                }
                None => conditions.push(fresh),
            }
        }
        let name = node.metadata.name.as_deref().unwrap_or("");
        tracing::warn!(
            node = name,
            "node stopped posting status: marking it Unknown"
        );
        let updated = self.api.update_status(None, &next).await?;
        for pod in self.pods_on(name) {
            self.mark_pod_not_ready(&pod).await?;
        }
        Ok(self.nodes.apply(updated))
    }

    async fn mark_pod_not_ready(&self, pod: &Pod) -> Result<(), ClientError> {
        if !podutil::is_ready(pod) {
            return Ok(());
        }
        let mut next = pod.clone();
        let now = Time(self.clock.now());
        let status = next.status.get_or_insert_with(Default::default);
        for c in status.conditions.iter_mut().flatten() {
            if c.type_ == "Ready" {
                *c = PodCondition {
                    status: "False".into(),
                    last_transition_time: Some(now.clone()),
                    ..c.clone()
                };
            }
        }
        match self
            .api
            .update_status(pod.metadata.namespace.as_deref(), &next)
            .await
        {
            Ok(p) => {
                self.pods.apply(p);
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync_taints(&self, node: &Node) -> Result<Arc<Node>, ClientError> {
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want = wanted_taint_key(node);
        let has =
            |key: &str, effect: &str| current.iter().any(|t| t.key == key && t.effect == effect);
        let in_sync = match want {
            None => !current.iter().any(is_condition_taint),
            Some(k) => {
                has(k, "NoSchedule")
                    && has(k, "NoExecute")
                    && current.iter().filter(|t| is_condition_taint(t)).count() == 2
            }
        };
        if in_sync {
            return Ok(Arc::new(node.clone()));
        }
        let mut taints: Vec<Taint> = current
            .into_iter()
            .filter(|t| !is_condition_taint(t))
            .collect();
        if let Some(key) = want {
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: Some(Time(self.clock.now())),
                    value: None,
                });
            }
        }
        let mut next = node.clone();
        next.spec.get_or_insert_with(Default::default).taints = Some(taints);
        tracing::info!(node = ?node.metadata.name, taint = ?want, "updating node taints");
        let updated = self.api.update(None, &next).await?;
        Ok(self.nodes.apply(updated))
    }

    /// Deletes pods that do not tolerate the node's NoExecute taints; returns when the
    /// next toleration runs out.
    async fn evict(&self, node: &Node) -> Result<Option<Duration>, ClientError> {
        let taints: Vec<&Taint> = node
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if taints.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now();
        let mut next_check: Option<Duration> = None;
        for pod in self.pods_on(node.metadata.name.as_deref().unwrap_or("")) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // The earliest moment some taint stops being tolerated (None: tolerated forever).
            let mut evict_at: Option<DateTime<Utc>> = None;
            for taint in &taints {
                let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
                let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
                let matching = tolerations
                    .into_iter()
                    .flatten()
                    .filter(|t| toleration_matches(t, taint));
                let mut tolerated_forever = false;
                let mut limit: Option<i64> = None;
                let mut any = false;
                for t in matching {
                    any = true;
                    match t.toleration_seconds {
                        None => tolerated_forever = true,
                        Some(s) => limit = Some(limit.map_or(s, |l: i64| l.min(s))),
                    }
                }
                let at = if !any {
                    Some(now)
                } else if tolerated_forever && limit.is_none() {
                    None
                } else {
                    limit.map(|s| added + chrono::Duration::seconds(s.max(0)))
                };
                if let Some(at) = at {
                    evict_at = Some(evict_at.map_or(at, |e| e.min(at)));
                }
            }
            let Some(at) = evict_at else { continue };
            if at <= now {
                let ns = pod.metadata.namespace.as_deref();
                let name = pod.metadata.name.as_deref().unwrap_or("");
                tracing::info!(pod = name, node = ?node.metadata.name, "evicting pod from tainted node");
                match self.api.delete::<Pod>(ns, name).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            } else {
                let wait = since(at, now);
                next_check = Some(next_check.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next_check)
    }
}

impl<C: Api> Reconciler for NodeLifecycleController<C> {
    async fn reconcile(&self, key: &str) -> Result<Action, ClientError> {
        let Some(mut node) = self.nodes.get(key) else {
            return Ok(Action::Done);
        };
        let now = self.clock.now();
        let stale = self
            .last_heartbeat(&node)
            .map(|t| since(now, t))
            .unwrap_or_default();
        if stale > self.opts.grace_period && ready_status(&node) != Some("Unknown") {
            node = self.mark_unknown(&node).await?;
        }
        node = self.sync_taints(&node).await?;
        let next_eviction = self.evict(&node).await?;
        // Staleness is noticed by the periodic resync of every node (monitor_period); only
        // a toleration running out needs its own wake-up.
        Ok(next_eviction.map_or(Action::Done, |e| {
            Action::RequeueAfter(e + Duration::from_millis(100))
        }))
    }
}
