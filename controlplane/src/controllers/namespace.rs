//! The namespace controller: a deleted namespace stays (phase Terminating, which the API
//! server sets, refusing new content) while its `spec.finalizers` holds `kubernetes`. This
//! controller deletes everything in it, waits until all of it is gone (pods included,
//! after their graceful termination), then removes `kubernetes` through the namespace's
//! `finalize` subresource, upon which the API server deletes the namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Pod, Secret, Service};

use super::runtime::{Action, Informer, Reconciler, Store, WorkQueue};
use crate::client::{Api, ClientError, ListParams, Object};

/// The finalizer of `spec.finalizers` this controller owns.
pub const FINALIZER: &str = "kubernetes";
/// While content remains, look again this often (deletions of other kinds do not wake us).
const POLL: Duration = Duration::from_secs(1);

pub struct NamespaceController<C: Api> {
    api: C,
    namespaces: Arc<Store<Namespace>>,
}

/// Deletes every object of `K` in `ns` not yet being deleted; returns how many remain.
async fn purge<C: Api, K: Object>(api: &C, ns: &str) -> Result<usize, ClientError> {
    let items = api.list::<K>(Some(ns), &ListParams::default()).await?.items;
    for o in &items {
        if o.metadata().deletion_timestamp.is_some() {
            continue;
        }
        let name = o.metadata().name.as_deref().unwrap_or("");
        match api.delete::<K>(Some(ns), name).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(items.len())
}

impl<C: Api> NamespaceController<C> {
    pub fn new(api: C, namespaces: &Arc<Informer<Namespace>>, queue: &Arc<WorkQueue>) -> Self {
        let q = queue.clone();
        namespaces.add_handler(move |c| {
            if c.object().metadata.deletion_timestamp.is_some() {
                q.add(c.object().metadata.name.clone().unwrap_or_default());
            }
        });
        NamespaceController {
            api,
            namespaces: namespaces.store.clone(),
        }
    }

    /// Deletes the namespace's content; returns how many objects remain.
    async fn purge_all(&self, ns: &str) -> Result<usize, ClientError> {
        let api = &self.api;
        // Owners first, so their dependents are not recreated meanwhile.
        Ok(purge::<C, Deployment>(api, ns).await?
            + purge::<C, ReplicaSet>(api, ns).await?
            + purge::<C, Pod>(api, ns).await?
            + purge::<C, Service>(api, ns).await?
            + purge::<C, Endpoints>(api, ns).await?
            + purge::<C, ConfigMap>(api, ns).await?
            + purge::<C, Secret>(api, ns).await?
            + purge::<C, Event>(api, ns).await?
            + purge::<C, Lease>(api, ns).await?)
    }
}

impl<C: Api> Reconciler for NamespaceController<C> {
    async fn reconcile(&self, key: &str) -> Result<Action, ClientError> {
        let Some(ns) = self.namespaces.get(key) else {
            return Ok(Action::Done);
        };
        let finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Action::Done);
        }
        let remaining = self.purge_all(key).await?;
        if remaining > 0 {
            tracing::debug!(
                namespace = key,
                remaining,
                "waiting for namespace content to go"
            );
            return Ok(Action::RequeueAfter(POLL));
        }
        let mut next = (*ns).clone();
        next.spec.get_or_insert_with(Default::default).finalizers =
            Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
        tracing::info!(namespace = key, "namespace emptied: finalizing");
        match self.api.update_subresource(None, &next, "finalize").await {
            Ok(_) | Err(ClientError::Api { code: 404, .. }) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}
