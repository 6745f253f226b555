//! The ReplicaSet controller: keeps `spec.replicas` active pods that match the selector
//! and are controlled by the ReplicaSet, adopting matching orphans; creates missing pods
//! in slow-start batches (1, 2, 4, ...) so a broken template fails fast; deletes surplus
//! pods least useful first ([`podutil::deletion_order`]); writes `status` (replicas,
//! fullyLabeled, ready, available, observedGeneration).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::podutil::{self, controller_ref, owner_ref};
use super::runtime::{Action, Change, Informer, Reconciler, Store, WorkQueue};
use crate::client::{key_of, Api, ClientError, DeleteParams};
use crate::clock::Clock;
use crate::labels::selector_matches;

/// At most this many creations or deletions per sync (kube-controller-manager's burst).
const BURST: usize = 500;

pub struct ReplicaSetController<C: Api> {
    api: C,
    clock: Arc<dyn Clock>,
    sets: Arc<Store<ReplicaSet>>,
    pods: Arc<Store<Pod>>,
}

impl<C: Api> ReplicaSetController<C> {
    /// Registers the event handlers that feed `queue`.
    pub fn new(
        api: C,
        clock: Arc<dyn Clock>,
        sets: &Arc<Informer<ReplicaSet>>,
        pods: &Arc<Informer<Pod>>,
        queue: &Arc<WorkQueue>,
    ) -> Self {
        let q = queue.clone();
        sets.add_handler(move |c| q.add(key_of(&c.object().metadata)));
        let (q, set_store) = (queue.clone(), sets.store.clone());
        pods.add_handler(move |c: &Change<Pod>| {
            let pod = c.object();
            let ns = pod.metadata.namespace.as_deref().unwrap_or("");
            match controller_ref(&pod.metadata) {
                Some(r) if r.kind == "ReplicaSet" => q.add(format!("{ns}/{}", r.name)),
                Some(_) => {}
                // An orphan: every ReplicaSet that selects it may adopt it.
                None => {
                    if let Change::Applied(p) = c {
                        for rs in set_store.list_ns(ns) {
                            if selects(&rs, p) {
                                q.add(key_of(&rs.metadata));
                            }
                        }
                    }
                }
            }
        });
        ReplicaSetController {
            api,
            clock,
            sets: sets.store.clone(),
            pods: pods.store.clone(),
        }
    }

    fn owned_pods(&self, rs: &ReplicaSet) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
        let ns = rs.metadata.namespace.as_deref().unwrap_or("");
        let uid = rs.metadata.uid.as_deref().unwrap_or("");
        let mut owned = Vec::new();
        let mut orphans = Vec::new();
        for p in self.pods.list_ns(ns) {
            match controller_ref(&p.metadata) {
                Some(r) if r.uid == uid => owned.push(p),
                None if podutil::is_active(&p) && selects(rs, &p) => orphans.push(p),
                _ => {}
            }
        }
        (owned, orphans)
    }

    async fn adopt(&self, rs: &ReplicaSet, pod: &Pod) -> Result<Arc<Pod>, ClientError> {
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        refs.push(owner_ref("apps/v1", "ReplicaSet", &rs.metadata));
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": refs,
            "uid": pod.metadata.uid,
            "resourceVersion": pod.metadata.resource_version,
        }});
        let ns = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let adopted: Pod = self.api.patch_merge(ns, name, &patch).await?;
        Ok(self.pods.apply(adopted))
    }

    fn new_pod(rs: &ReplicaSet) -> Pod {
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let tm = template.metadata.unwrap_or_default();
        Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", rs.metadata.name.as_deref().unwrap_or(""))),
                namespace: rs.metadata.namespace.clone(),
                labels: tm.labels,
                annotations: tm.annotations,
                finalizers: tm.finalizers,
                owner_references: Some(vec![owner_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        }
    }

    /// Creates `n` pods in batches of 1, 2, 4, ...; stops at the first failed batch.
    async fn create_pods(&self, rs: &ReplicaSet, n: usize) -> Result<(), ClientError> {
        let ns = rs.metadata.namespace.as_deref();
        let pod = Self::new_pod(rs);
        let mut remaining = n;
        let mut batch = 1;
        while remaining > 0 {
            let size = batch.min(remaining);
            let results =
                futures::future::join_all((0..size).map(|_| self.api.create::<Pod>(ns, &pod)))
                    .await;
            let mut failure = None;
            for r in results {
                match r {
                    Ok(p) => {
                        self.pods.apply(p);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            remaining -= size;
            batch *= 2;
        }
        Ok(())
    }

    async fn delete_pods(&self, mut active: Vec<Arc<Pod>>, n: usize) -> Result<(), ClientError> {
        active.sort_by(|a, b| podutil::deletion_order(a, b));
        let doomed = &active[..n.min(active.len())];
        let results = futures::future::join_all(doomed.iter().map(|p| {
            let params = DeleteParams {
                precondition_uid: p.metadata.uid.clone(),
                ..Default::default()
            };
            let api = self.api.clone();
            async move {
                let ns = p.metadata.namespace.as_deref();
                let name = p.metadata.name.as_deref().unwrap_or("");
                api.delete_with::<Pod>(ns, name, &params).await
            }
        }))
        .await;
        for (p, r) in doomed.iter().zip(results) {
            match r {
                Ok(()) => {
                    self.pods.remove(&key_of(&p.metadata));
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn status(&self, rs: &ReplicaSet) -> (ReplicaSetStatus, bool) {
        let spec = rs.spec.as_ref();
        let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
        let template_labels = spec
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let now = self.clock.now();
        let (owned, _) = self.owned_pods(rs);
        let active: Vec<_> = owned.iter().filter(|p| podutil::is_active(p)).collect();
        let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
        let ready = count(&podutil::is_ready);
        let available = count(&|p| podutil::is_available(p, min_ready, now));
        let fully_labeled = count(&|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        });
        let previous = rs.status.clone().unwrap_or_default();
        let status = ReplicaSetStatus {
            replicas: active.len() as i32,
            fully_labeled_replicas: Some(fully_labeled),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: rs.metadata.generation,
            conditions: previous.conditions,
        };
        (status, ready > available)
    }
}

/// Whether the ReplicaSet's selector selects `pod`.
fn selects(rs: &ReplicaSet, pod: &Pod) -> bool {
    rs.spec
        .as_ref()
        .is_some_and(|s| selector_matches(&s.selector, pod.metadata.labels.as_ref()))
}

impl<C: Api> Reconciler for ReplicaSetController<C> {
    async fn reconcile(&self, key: &str) -> Result<Action, ClientError> {
        let Some(rs) = self.sets.get(key) else {
            return Ok(Action::Done); // gone: its pods are the garbage collector's
        };
        if rs.metadata.deletion_timestamp.is_none() {
            let (owned, orphans) = self.owned_pods(&rs);
            let mut active: Vec<Arc<Pod>> = owned
                .into_iter()
                .filter(|p| podutil::is_active(p))
                .collect();
            for o in orphans {
                match self.adopt(&rs, &o).await {
                    Ok(p) => active.push(p),
                    // Taken by someone else or gone meanwhile: not ours.
                    Err(e) if e.is_conflict() || e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            let want = rs
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(0) as usize;
            if active.len() < want {
                let n = (want - active.len()).min(BURST);
                tracing::info!(replicaset = key, n, "creating pods");
                self.create_pods(&rs, n).await?;
            } else if active.len() > want {
                let n = (active.len() - want).min(BURST);
                tracing::info!(replicaset = key, n, "deleting pods");
                self.delete_pods(active, n).await?;
            }
        }
        let (status, waiting_for_min_ready) = self.status(&rs);
        if rs.status.as_ref() != Some(&status) {
            let mut next = (*rs).clone();
            next.status = Some(status);
            let ns = rs.metadata.namespace.as_deref();
            let updated = self.api.update_status(ns, &next).await?;
            self.sets.apply(updated);
        }
        let min_ready = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        Ok(if waiting_for_min_ready {
            Action::RequeueAfter(Duration::from_secs(min_ready.max(1) as u64))
        } else {
            Action::Done
        })
    }
}
