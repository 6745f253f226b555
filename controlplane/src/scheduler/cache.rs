//! The scheduler's view of the cluster: nodes with the pods bound (or assumed bound) to
//! them and the resources and host ports those pods use. A pod is *assumed* on a node
//! as soon as it is chosen, before the binding is written, so the next pod sees the
//! capacity taken; the watch confirming the binding replaces the assumption, and a
//! failed binding forgets it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::resources::Resources;
use crate::client::key_of;

/// One node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    /// By pod key (`namespace/name`).
    pub pods: BTreeMap<String, Arc<Pod>>,
    pub requested: Resources,
    /// `requested` with Kubernetes' scoring defaults for pods without requests (see
    /// [`Resources::nonzero`]); kept here so scoring need not walk the pods.
    pub nonzero_requested: Resources,
    pub allocatable: Resources,
}

impl NodeInfo {
    pub fn new(node: Node) -> NodeInfo {
        let allocatable =
            Resources::from_map(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
        NodeInfo {
            node: Arc::new(node),
            pods: BTreeMap::new(),
            requested: Resources::default(),
            nonzero_requested: Resources::default(),
            allocatable,
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        let key = key_of(&pod.metadata);
        if let Some(old) = self.pods.insert(key, pod.clone()) {
            let r = Resources::of_pod(&old);
            self.requested.sub(&r);
            self.nonzero_requested.sub(&r.nonzero());
        }
        let r = Resources::of_pod(&pod);
        self.requested.add(&r);
        self.nonzero_requested.add(&r.nonzero());
    }

    pub fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            let r = Resources::of_pod(&old);
            self.requested.sub(&r);
            self.nonzero_requested.sub(&r.nonzero());
        }
    }
}

/// Nodes by name plus where each placed pod is.
#[derive(Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    /// Pod key → node name, for bound and assumed pods.
    placed: HashMap<String, String>,
    /// Pods placed on nodes the cache does not know (yet).
    orphans: HashMap<String, Arc<Pod>>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

impl Cache {
    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut info = NodeInfo::new(node);
        if let Some(old) = self.nodes.remove(&name) {
            for p in old.pods.into_values() {
                info.add_pod(p);
            }
        }
        let adopt: Vec<String> = self
            .orphans
            .iter()
            .filter(|(_, p)| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in adopt {
            if let Some(p) = self.orphans.remove(&k) {
                info.add_pod(p);
            }
        }
        self.nodes.insert(name, info);
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            for (k, p) in info.pods {
                self.orphans.insert(k, p);
            }
        }
    }

    /// Records a bound pod (from the watch); replaces an assumption of the same pod.
    /// Finished pods hold no resources.
    pub fn upsert_pod(&mut self, pod: Pod) {
        let key = key_of(&pod.metadata);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() || is_terminal(&pod) {
            self.remove_pod(&key);
            return;
        }
        self.place(key, node, Arc::new(pod));
    }

    /// Places `pod` on `node` before its binding is confirmed.
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let mut pod = pod.clone();
        pod.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        self.place(key_of(&pod.metadata), node.into(), Arc::new(pod));
    }

    fn place(&mut self, key: String, node: String, pod: Arc<Pod>) {
        self.remove_pod(&key);
        match self.nodes.get_mut(&node) {
            Some(info) => info.add_pod(pod),
            None => {
                self.orphans.insert(key.clone(), pod);
            }
        }
        self.placed.insert(key, node);
    }

    pub fn remove_pod(&mut self, key: &str) {
        if let Some(node) = self.placed.remove(key) {
            if let Some(info) = self.nodes.get_mut(&node) {
                info.remove_pod(key);
            }
        }
        self.orphans.remove(key);
    }

    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Clears everything (after a relist of nodes or pods the caller re-adds the rest).
    pub fn reset_pods(&mut self) {
        for info in self.nodes.values_mut() {
            info.pods.clear();
            info.requested = Resources::default();
            info.nonzero_requested = Resources::default();
        }
        self.placed.clear();
        self.orphans.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{node, pod};

    #[test]
    fn assumed_pods_count_until_forgotten_and_binding_replaces_assumption() {
        let mut c = Cache::default();
        c.upsert_node(node("n1", "4", "8Gi"));
        let p = pod("p1", "1", "1Gi");
        c.assume(&p, "n1");
        let req = |c: &Cache| c.nodes().next().unwrap().requested;
        assert_eq!(req(&c).milli_cpu, 1000);
        let mut bound = p.clone();
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        c.upsert_pod(bound);
        assert_eq!(
            req(&c).milli_cpu,
            1000,
            "the confirmation replaces the assumption"
        );
        c.remove_pod("default/p1");
        assert_eq!(req(&c), Resources::default());
    }

    #[test]
    fn pods_on_unknown_nodes_are_adopted_when_the_node_appears() {
        let mut c = Cache::default();
        let mut p = pod("p1", "1", "1Gi");
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        c.upsert_pod(p);
        c.upsert_node(node("n1", "4", "8Gi"));
        assert_eq!(c.nodes().next().unwrap().requested.milli_cpu, 1000);
    }
}
