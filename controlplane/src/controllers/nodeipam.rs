//! The node IPAM controller (kube-controller-manager's range allocator): every node gets a
//! `spec.podCIDR` (and `podCIDRs`), the first free `/node_mask` subnet of the cluster CIDR;
//! its node agent hands out pod IPs from it. A node that already has one keeps it (it may
//! have been set by hand or by a previous leader).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;

use super::runtime::{Action, Informer, Reconciler, Store, WorkQueue};
use crate::client::{Api, ClientError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The cluster CIDR (`--cluster-cidr`): base address and prefix length.
    pub cluster: (Ipv4Addr, u8),
    /// Prefix length of each node's subnet (`--node-cidr-mask-size`).
    pub node_mask: u8,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster: (Ipv4Addr::new(10, 244, 0, 0), 16),
            node_mask: 24,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --cluster-cidr {0:?} with --node-cidr-mask-size {1} (an IPv4 CIDR shorter than the node mask)")]
pub struct CidrError(pub String, pub u8);

impl Options {
    pub fn parse(cidr: &str, node_mask: u8) -> Result<Options, CidrError> {
        let err = || CidrError(cidr.into(), node_mask);
        let (ip, len) = cidr.split_once('/').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let len: u8 = len.parse().map_err(|_| err())?;
        if len == 0 || len >= node_mask || node_mask > 30 {
            return Err(err());
        }
        let mask = u32::MAX << (32 - u32::from(len));
        Ok(Options {
            cluster: (Ipv4Addr::from(u32::from(ip) & mask), len),
            node_mask,
        })
    }

    /// The `i`-th node subnet, if the cluster CIDR has that many.
    fn subnet(&self, i: u32) -> Option<String> {
        let bits = u32::from(self.node_mask - self.cluster.1);
        if bits < 32 && i >= 1 << bits {
            return None;
        }
        let base = u32::from(self.cluster.0) + (i << (32 - u32::from(self.node_mask)));
        Some(format!("{}/{}", Ipv4Addr::from(base), self.node_mask))
    }

    /// The first subnet not in `used`.
    pub fn first_free(&self, used: &HashSet<String>) -> Option<String> {
        (0..)
            .map_while(|i| self.subnet(i))
            .find(|s| !used.contains(s))
    }
}

pub struct NodeIpamController<C: Api> {
    api: C,
    opts: Options,
    nodes: Arc<Store<Node>>,
    /// Subnets handed out by this process, so two nodes reconciled at once (by two
    /// workers, before either update is back in the store) never get the same one.
    handed_out: Mutex<HashSet<String>>,
}

impl<C: Api> NodeIpamController<C> {
    pub fn new(api: C, opts: Options, nodes: &Arc<Informer<Node>>, queue: &Arc<WorkQueue>) -> Self {
        let q = queue.clone();
        nodes.add_handler(move |c| {
            let n = c.object();
            if n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none() {
                q.add(n.metadata.name.clone().unwrap_or_default());
            }
        });
        NodeIpamController {
            api,
            opts,
            nodes: nodes.store.clone(),
            handed_out: Mutex::default(),
        }
    }
}

impl<C: Api> Reconciler for NodeIpamController<C> {
    async fn reconcile(&self, key: &str) -> Result<Action, ClientError> {
        let Some(node) = self.nodes.get(key) else {
            return Ok(Action::Done);
        };
        if node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .is_some()
        {
            return Ok(Action::Done);
        }
        let cidr = {
            let mut handed_out = self.handed_out.lock().unwrap();
            let mut used: HashSet<String> = self
                .nodes
                .list()
                .iter()
                .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
                .collect();
            used.extend(handed_out.iter().cloned());
            let Some(cidr) = self.opts.first_free(&used) else {
                tracing::warn!(node = key, "the cluster CIDR has no free node subnet");
                return Ok(Action::Done);
            };
            handed_out.insert(cidr.clone());
            cidr
        };
        let mut next = (*node).clone();
        let spec = next.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = Some(cidr.clone());
        spec.pod_cidrs = Some(vec![cidr.clone()]);
        tracing::info!(node = key, %cidr, "allocated the node's pod CIDR");
        // A conflict (the node changed meanwhile) retries from the store.
        match self.api.update(None, &next).await {
            Ok(updated) => {
                self.nodes.apply(updated);
                Ok(Action::Done)
            }
            Err(e) => {
                self.handed_out.lock().unwrap().remove(&cidr);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_in_order_skipping_used_ones() {
        let o = Options::default();
        let used: HashSet<String> =
            ["10.244.0.0/24".to_string(), "10.244.2.0/24".to_string()].into();
        assert_eq!(
            o.first_free(&HashSet::new()).as_deref(),
            Some("10.244.0.0/24")
        );
        assert_eq!(o.first_free(&used).as_deref(), Some("10.244.1.0/24"));
        let small = Options::parse("10.1.0.0/23", 24).unwrap();
        let full: HashSet<String> = ["10.1.0.0/24".to_string(), "10.1.1.0/24".to_string()].into();
        assert_eq!(small.first_free(&full), None);
    }

    #[tokio::test]
    async fn a_subnet_is_not_handed_out_twice_before_the_store_shows_it() {
        use crate::client::fake::FakeApi;
        use crate::clock::SystemClock;
        let api = FakeApi::new();
        let nodes = Informer::<Node>::new();
        let queue = WorkQueue::new("nodeipam", Arc::new(SystemClock));
        let c = NodeIpamController::new(api.clone(), Options::default(), &nodes, &queue);
        let mut created = Vec::new();
        for name in ["a", "b"] {
            let n = api
                .create(None, &crate::scheduler::testing::node(name, "1", "1Gi"))
                .await
                .unwrap();
            nodes.store.apply(n.clone());
            created.push(n);
        }
        c.reconcile("a").await.unwrap();
        // The store has not seen a's update yet (as when two workers race).
        nodes.store.remove("a");
        nodes.store.apply(created[0].clone());
        c.reconcile("b").await.unwrap();
        let cidrs: HashSet<String> = api
            .all::<Node>()
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
            .collect();
        assert_eq!(cidrs.len(), 2, "{cidrs:?}");
    }

    #[test]
    fn options_parse() {
        assert_eq!(
            Options::parse("10.244.0.0/16", 24).unwrap(),
            Options::default()
        );
        assert_eq!(
            Options::parse("10.244.7.9/16", 24).unwrap().cluster.0,
            Ipv4Addr::new(10, 244, 0, 0)
        );
        assert!(Options::parse("10.244.0.0/24", 24).is_err());
        assert!(Options::parse("nope", 24).is_err());
    }
}
