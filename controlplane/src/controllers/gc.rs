//! The garbage collector: deletes objects whose owners are all gone, and carries out the
//! Foreground and Orphan deletion policies, after kube-controller-manager's.
//!
//! It keeps a graph of every object of the [`Kind`]s it watches, by uid, with each
//! object's owner references and the reverse index owner → dependents. Keys of its queue
//! are uids. Processing an object:
//!
//! - as a dependent: every owner is looked up in the graph, and one not there is checked
//!   against the API server (a GET: 404, or a different uid, means gone) so an informer
//!   that lags never gets live objects deleted. All owners gone → the object is deleted
//!   (background; with a uid precondition). Some gone → the dangling references are
//!   removed.
//! - as an owner being deleted with the `orphan` finalizer: its reference is removed
//!   from every dependent, then the finalizer.
//! - as an owner being deleted with `foregroundDeletion`: its dependents are deleted
//!   (with Foreground themselves, so the deletion cascades depth-first), and once no
//!   dependent with `blockOwnerDeletion` remains, the finalizer is removed, which lets the
//!   API server delete the owner.
//!
//! Owner kinds it does not watch are never considered gone: it errs on keeping objects.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use super::runtime::{Action, Change, Informer, Reconciler, WorkQueue};
use crate::client::{Api, ClientError, DeleteParams, Object, Propagation};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// The kinds the garbage collector tracks (as owners and as dependents).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployment,
    ReplicaSet,
    Pod,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
}

impl Kind {
    fn parse(api_version: &str, kind: &str) -> Option<Kind> {
        Some(match (api_version, kind) {
            ("apps/v1", "Deployment") => Kind::Deployment,
            ("apps/v1", "ReplicaSet") => Kind::ReplicaSet,
            ("v1", "Pod") => Kind::Pod,
            ("v1", "Service") => Kind::Service,
            ("v1", "Endpoints") => Kind::Endpoints,
            ("v1", "ConfigMap") => Kind::ConfigMap,
            ("v1", "Secret") => Kind::Secret,
            _ => return None,
        })
    }
}

/// Calls the generic function `$f::<K>(args)` for the Rust type of a [`Kind`].
macro_rules! with_kind {
    ($kind:expr, $f:ident($($arg:expr),*)) => {
        match $kind {
            Kind::Deployment => $f::<C, Deployment>($($arg),*).await,
            Kind::ReplicaSet => $f::<C, ReplicaSet>($($arg),*).await,
            Kind::Pod => $f::<C, Pod>($($arg),*).await,
            Kind::Service => $f::<C, Service>($($arg),*).await,
            Kind::Endpoints => $f::<C, Endpoints>($($arg),*).await,
            Kind::ConfigMap => $f::<C, ConfigMap>($($arg),*).await,
            Kind::Secret => $f::<C, Secret>($($arg),*).await,
        }
    };
}

/// One object of the graph.
#[derive(Clone, Debug)]
struct GraphNode {
    kind: Kind,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, GraphNode>,
    /// owner uid → dependent uids (owners need not be in `nodes`).
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn unlink(&mut self, uid: &str) {
        if let Some(old) = self.nodes.get(uid) {
            for o in &old.owners {
                if let Some(set) = self.dependents.get_mut(&o.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&o.uid);
                    }
                }
            }
        }
    }

    fn upsert(&mut self, uid: &str, node: GraphNode) {
        self.unlink(uid);
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        self.nodes.insert(uid.to_string(), node);
    }

    fn remove(&mut self, uid: &str) {
        self.unlink(uid);
        self.nodes.remove(uid);
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, GraphNode)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d.clone(), self.nodes.get(d)?.clone())))
            .collect()
    }
}

pub struct GarbageCollector<C: Api> {
    api: C,
    graph: Arc<Mutex<Graph>>,
}

/// Registers the graph's handlers on one informer.
fn track<K: Object>(
    kind: Kind,
    informer: &Arc<Informer<K>>,
    graph: &Arc<Mutex<Graph>>,
    queue: &Arc<WorkQueue>,
) {
    let (graph, queue) = (graph.clone(), queue.clone());
    informer.add_handler(move |c: &Change<K>| {
        let meta = c.object().metadata();
        let Some(uid) = meta.uid.clone() else { return };
        let mut g = graph.lock().unwrap();
        match c {
            Change::Applied(_) => g.upsert(&uid, node_of(kind, meta)),
            Change::Deleted(_) => g.remove(&uid),
        }
        // The object itself (its owners may be gone), what it owns (it may be gone, or
        // being deleted in the foreground) and its owners (one deleted in the foreground
        // waits for this dependent to go).
        queue.add(uid.clone());
        for o in meta.owner_references.iter().flatten() {
            queue.add(o.uid.clone());
        }
        for (d, _) in g.dependents_of(&uid) {
            queue.add(d);
        }
    });
}

fn node_of(kind: Kind, meta: &ObjectMeta) -> GraphNode {
    GraphNode {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        owners: meta.owner_references.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
    }
}

/// The live object's uid and owner references (`None` if it is gone).
async fn live<C: Api, K: Object>(
    api: &C,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<(String, Vec<OwnerReference>)>, ClientError> {
    match api.get::<K>(ns, name).await {
        Ok(o) => Ok(Some((
            o.metadata().uid.clone().unwrap_or_default(),
            o.metadata().owner_references.clone().unwrap_or_default(),
        ))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn delete<C: Api, K: Object>(
    api: &C,
    ns: Option<&str>,
    name: &str,
    params: &DeleteParams,
) -> Result<(), ClientError> {
    match api.delete_with::<K>(ns, name, params).await {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

async fn patch<C: Api, K: Object>(
    api: &C,
    ns: Option<&str>,
    name: &str,
    body: &serde_json::Value,
) -> Result<(), ClientError> {
    match api.patch_merge::<K>(ns, name, body).await {
        Err(e) if e.is_not_found() => Ok(()),
        r => r.map(drop),
    }
}

/// The informers the collector needs, one per [`Kind`].
pub struct Informers<'a> {
    pub deployments: &'a Arc<Informer<Deployment>>,
    pub replicasets: &'a Arc<Informer<ReplicaSet>>,
    pub pods: &'a Arc<Informer<Pod>>,
    pub services: &'a Arc<Informer<Service>>,
    pub endpoints: &'a Arc<Informer<Endpoints>>,
    pub configmaps: &'a Arc<Informer<ConfigMap>>,
    pub secrets: &'a Arc<Informer<Secret>>,
}

impl<C: Api> GarbageCollector<C> {
    pub fn new(api: C, informers: Informers<'_>, queue: &Arc<WorkQueue>) -> Self {
        let graph = Arc::new(Mutex::new(Graph::default()));
        track(Kind::Deployment, informers.deployments, &graph, queue);
        track(Kind::ReplicaSet, informers.replicasets, &graph, queue);
        track(Kind::Pod, informers.pods, &graph, queue);
        track(Kind::Service, informers.services, &graph, queue);
        track(Kind::Endpoints, informers.endpoints, &graph, queue);
        track(Kind::ConfigMap, informers.configmaps, &graph, queue);
        track(Kind::Secret, informers.secrets, &graph, queue);
        GarbageCollector { api, graph }
    }

    /// Whether the owner `r` of an object in `ns` is gone.
    async fn owner_gone(&self, ns: Option<&str>, r: &OwnerReference) -> Result<bool, ClientError> {
        if self.graph.lock().unwrap().nodes.contains_key(&r.uid) {
            return Ok(false);
        }
        let Some(kind) = Kind::parse(&r.api_version, &r.kind) else {
            return Ok(false);
        };
        // Every tracked kind is namespaced, and owners live in their dependents' namespace.
        let api = &self.api;
        let owner = with_kind!(kind, live(api, ns, &r.name))?;
        Ok(owner.is_none_or(|(uid, _)| uid != r.uid))
    }

    async fn set_owners(
        &self,
        node: &GraphNode,
        uid: &str,
        owners: Vec<OwnerReference>,
    ) -> Result<(), ClientError> {
        let body = json!({"metadata": {"ownerReferences": owners, "uid": uid}});
        let api = &self.api;
        with_kind!(
            node.kind,
            patch(api, node.namespace.as_deref(), &node.name, &body)
        )
    }

    async fn remove_finalizer(
        &self,
        node: &GraphNode,
        uid: &str,
        finalizer: &str,
    ) -> Result<(), ClientError> {
        let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let body = json!({"metadata": {"finalizers": rest, "uid": uid}});
        let api = &self.api;
        tracing::info!(kind = ?node.kind, name = %node.name, finalizer, "removing finalizer");
        with_kind!(
            node.kind,
            patch(api, node.namespace.as_deref(), &node.name, &body)
        )
    }

    async fn delete_node(
        &self,
        node: &GraphNode,
        uid: &str,
        propagation: Propagation,
    ) -> Result<(), ClientError> {
        let params = DeleteParams {
            propagation: Some(propagation),
            precondition_uid: Some(uid.to_string()),
            grace_period_seconds: None,
        };
        let api = &self.api;
        tracing::info!(kind = ?node.kind, name = %node.name, ?propagation, "deleting dependent");
        with_kind!(
            node.kind,
            delete(api, node.namespace.as_deref(), &node.name, &params)
        )
    }
}

impl<C: Api> Reconciler for GarbageCollector<C> {
    async fn reconcile(&self, uid: &str) -> Result<Action, ClientError> {
        let Some(node) = self.graph.lock().unwrap().nodes.get(uid).cloned() else {
            return Ok(Action::Done);
        };
        // As an owner being deleted.
        if node.deleting {
            let dependents = self.graph.lock().unwrap().dependents_of(uid);
            if node.finalizers.iter().any(|f| f == ORPHAN) {
                for (duid, d) in &dependents {
                    let owners = d.owners.iter().filter(|o| o.uid != uid).cloned().collect();
                    self.set_owners(d, duid, owners).await?;
                }
                self.remove_finalizer(&node, uid, ORPHAN).await?;
                return Ok(Action::Done);
            }
            if node.finalizers.iter().any(|f| f == FOREGROUND) {
                let mut blocking = false;
                for (duid, d) in &dependents {
                    let blocks = d
                        .owners
                        .iter()
                        .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
                    blocking |= blocks;
                    if !d.deleting {
                        self.delete_node(d, duid, Propagation::Foreground).await?;
                    }
                }
                if !blocking {
                    self.remove_finalizer(&node, uid, FOREGROUND).await?;
                }
                return Ok(Action::Done); // dependents' deletions bring us back
            }
        }
        // As a dependent.
        if node.owners.is_empty() {
            return Ok(Action::Done);
        }
        let ns = node.namespace.as_deref();
        let mut gone = Vec::new();
        for o in &node.owners {
            if self.owner_gone(ns, o).await? {
                gone.push(o.uid.clone());
            }
        }
        if gone.is_empty() {
            return Ok(Action::Done);
        }
        // Decide on the live object, not the graph: its references may have changed in an
        // event not seen yet (an orphaning removes them just before the owner goes).
        let api = &self.api;
        let Some((live_uid, live_owners)) = with_kind!(node.kind, live(api, ns, &node.name))?
        else {
            return Ok(Action::Done);
        };
        if live_uid != uid {
            return Ok(Action::Done);
        }
        let node = GraphNode {
            owners: live_owners,
            ..node
        };
        gone.retain(|g| node.owners.iter().any(|o| o.uid == *g));
        if gone.is_empty() {
            return Ok(Action::Done);
        }
        if gone.len() == node.owners.len() {
            if !node.deleting {
                self.delete_node(&node, uid, Propagation::Background)
                    .await?;
            }
        } else {
            let owners = node
                .owners
                .iter()
                .filter(|o| !gone.contains(&o.uid))
                .cloned()
                .collect();
            self.set_owners(&node, uid, owners).await?;
        }
        Ok(Action::Done)
    }
}
