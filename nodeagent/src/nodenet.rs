//! A node's own network namespace, so that the node agents of one machine behave like
//! hosts on one LAN (`controlplane up` runs them so as root): each node gets a namespace
//! `<netns_dir>/<bridge>-<node>` whose `eth0` hangs on a host bridge, with a fixed
//! address of the node network and a default route via the bridge's address. The node
//! agent enters the namespace at start (`nodeagent run --netns`), so its pods' bridge, the
//! service proxy's nftables table and its log server are all the node's own.
//!
//! The wiring is the standard CNI plugins again ([`crate::cni`]): `loopback`, then
//! `bridge` (isGateway: the host bridge takes the gateway address and the host forwards)
//! with `static` IPAM, so a node keeps its address across restarts of the cluster.
//!
//! Addresses in the node network `N/len`: the gateway (the host's side) is N+1, node
//! `i` (from 1) is N+10+i. Between nodes, pod traffic goes through the host, which
//! routes each node's podCIDR to that node's address ([`NodeRoutes`]), as a cloud's route
//! controller does for Kubernetes nodes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use crate::cni::{CniError, CniExec, PluginExec};

/// Parses `a.b.c.d/len` into the network address and the prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(ip) & mask), len))
}

#[derive(Debug, thiserror::Error)]
pub enum NodeNetError {
    #[error("invalid node network {0:?}: want an IPv4 CIDR of /8 to /28")]
    Cidr(String),
    #[error("the node network {cidr} has no address for node {index}")]
    Full { cidr: String, index: u32 },
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The node network of one cluster: its host bridge and address range.
pub struct NodeNetwork<E: CniExec = PluginExec> {
    pub exec: E,
    pub bin_dir: PathBuf,
    /// The host bridge (at most 15 bytes); also the namespaces' name prefix.
    pub bridge: String,
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub netns_dir: PathBuf,
    /// Namespaces are real kernel objects; tests with a fake exec use plain files.
    pub real_netns: bool,
}

impl NodeNetwork<PluginExec> {
    pub fn new(
        bin_dir: &Path,
        bridge: &str,
        cidr: &str,
        netns_dir: &Path,
    ) -> Result<Self, NodeNetError> {
        let (network, prefix) = parse_cidr(cidr)
            .filter(|(_, p)| (8..=28).contains(p))
            .ok_or_else(|| NodeNetError::Cidr(cidr.into()))?;
        Ok(NodeNetwork {
            exec: PluginExec {
                bin_dir: bin_dir.to_path_buf(),
            },
            bin_dir: bin_dir.to_path_buf(),
            bridge: bridge.into(),
            network,
            prefix,
            netns_dir: netns_dir.to_path_buf(),
            real_netns: true,
        })
    }
}

impl<E: CniExec> NodeNetwork<E> {
    fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// The host's address on the bridge: the nodes' gateway, where they reach the API.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Node `index`'s address (from 1).
    pub fn node_ip(&self, index: u32) -> Result<Ipv4Addr, NodeNetError> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        // The last address is the broadcast address.
        if index == 0 || u64::from(10 + index) >= size - 1 {
            return Err(NodeNetError::Full {
                cidr: self.cidr(),
                index,
            });
        }
        Ok(Ipv4Addr::from(u32::from(self.network) + 10 + index))
    }

    pub fn netns_path(&self, node: &str) -> PathBuf {
        self.netns_dir.join(format!("{}-{node}", self.bridge))
    }

    /// The nodes that have a namespace in `netns_dir`.
    pub fn nodes(&self) -> Vec<String> {
        let prefix = format!("{}-", self.bridge);
        let mut names: Vec<String> = std::fs::read_dir(&self.netns_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix(&prefix).map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn bridge_config(&self, ip: Ipv4Addr) -> serde_json::Value {
        json!({
            "cniVersion": crate::cni::CNI_VERSION,
            "name": self.bridge,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {
                "type": "static",
                "addresses": [{
                    "address": format!("{ip}/{}", self.prefix),
                    "gateway": self.gateway().to_string(),
                }],
                "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway().to_string()}],
            },
        })
    }

    fn run(
        &self,
        command: &'static str,
        node: &str,
        ifname: &str,
        config: &serde_json::Value,
    ) -> Result<Vec<u8>, CniError> {
        let id = format!("{}-{node}", self.bridge);
        let netns = self.netns_path(node);
        crate::cni::invoke(
            &self.exec,
            &self.bin_dir,
            command,
            &id,
            &netns,
            ifname,
            config,
        )
    }

    /// Makes node `node`'s namespace with address `ip`, replacing one left by an
    /// earlier run.
    pub fn add(&self, node: &str, ip: Ipv4Addr) -> Result<(), NodeNetError> {
        let path = self.netns_path(node);
        if path.exists() {
            self.del(node);
        }
        if self.real_netns {
            crate::netns::create(&path)?;
        } else {
            std::fs::create_dir_all(&self.netns_dir)?;
            std::fs::File::create(&path)?;
        }
        let wired = self
            .run("ADD", node, "lo", &crate::cni::loopback_config())
            .and_then(|_| self.run("ADD", node, "eth0", &self.bridge_config(ip)));
        if let Err(e) = wired {
            self.del(node);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes node `node`'s namespace (its interfaces and whatever the agent made in it
    /// go with it); what is already gone is skipped, so it is safe after a crash.
    pub fn del(&self, node: &str) {
        let path = self.netns_path(node);
        if !path.exists() {
            return;
        }
        // The veth pair goes with the namespace; DEL is for the plugin's own state.
        let cfg = self.bridge_config(Ipv4Addr::UNSPECIFIED);
        if let Err(e) = self.run("DEL", node, "eth0", &cfg) {
            tracing::warn!(node, error = %e, "CNI DEL of the node network");
        }
        let removed = if self.real_netns {
            crate::netns::remove(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(node, error = %e, "removing the node's network namespace");
        }
    }

    /// Deletes the host bridge once no node is on it; false if there was none.
    pub fn remove_bridge(&self) -> std::io::Result<bool> {
        crate::netlink::delete_link(&self.bridge)
    }
}

/// The host's routes to the nodes' podCIDRs: the seam tests replace.
pub trait Routes {
    fn replace(&self, dst: (Ipv4Addr, u8), via: Ipv4Addr) -> std::io::Result<()>;
    fn delete(&self, dst: (Ipv4Addr, u8)) -> std::io::Result<bool>;
}

/// The kernel's main routing table, over rtnetlink.
pub struct KernelRoutes;

impl Routes for KernelRoutes {
    fn replace(&self, dst: (Ipv4Addr, u8), via: Ipv4Addr) -> std::io::Result<()> {
        crate::netlink::replace_route(dst.0, dst.1, via)
    }
    fn delete(&self, dst: (Ipv4Addr, u8)) -> std::io::Result<bool> {
        crate::netlink::delete_route(dst.0, dst.1)
    }
}

/// Keeps the host's routes equal to a desired set (podCIDR → node address, and the
/// service range → one Ready node), changing only what differs from the last call.
pub struct NodeRoutes<R: Routes> {
    pub routes: R,
    applied: std::collections::BTreeMap<(Ipv4Addr, u8), Ipv4Addr>,
}

impl<R: Routes> NodeRoutes<R> {
    pub fn new(routes: R) -> Self {
        NodeRoutes {
            routes,
            applied: Default::default(),
        }
    }

    /// Applies `want`; returns the routes changed, as `dst via gw` or `dst deleted`.
    pub fn sync(
        &mut self,
        want: &std::collections::BTreeMap<(Ipv4Addr, u8), Ipv4Addr>,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for (dst, via) in want {
            if self.applied.get(dst) == Some(via) {
                continue;
            }
            match self.routes.replace(*dst, *via) {
                Ok(()) => {
                    self.applied.insert(*dst, *via);
                    changed.push(format!("{}/{} via {via}", dst.0, dst.1));
                }
                Err(e) => {
                    tracing::warn!(dst = %format!("{}/{}", dst.0, dst.1), %via, error = %e, "adding a route")
                }
            }
        }
        let stale: Vec<_> = self
            .applied
            .keys()
            .filter(|d| !want.contains_key(d))
            .copied()
            .collect();
        for dst in stale {
            let _ = self.routes.delete(dst);
            self.applied.remove(&dst);
            changed.push(format!("{}/{} deleted", dst.0, dst.1));
        }
        changed
    }

    /// Deletes every route this set made.
    pub fn clear(&mut self) {
        self.sync(&Default::default());
    }
}

/// The routes the host wants (`nodeagent host-routes`): each node's podCIDR via its InternalIP, and the
/// service range via the first Ready node (by name).
pub fn wanted_routes(
    nodes: &[Node],
    network: (Ipv4Addr, u8),
    services: (Ipv4Addr, u8),
) -> std::collections::BTreeMap<(Ipv4Addr, u8), Ipv4Addr> {
    let in_network = |ip: Ipv4Addr| parse_cidr(&format!("{ip}/{}", network.1)) == Some(network);
    let mut want = std::collections::BTreeMap::new();
    let mut ready = Vec::new();
    for n in nodes {
        let Some(status) = &n.status else { continue };
        let Some(ip) = status
            .addresses
            .iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
            .filter(|ip| in_network(*ip))
        else {
            continue;
        };
        if let Some(cidr) = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(parse_cidr)
        {
            want.insert(cidr, ip);
        }
        let is_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if is_ready {
            ready.push((n.metadata.name.clone().unwrap_or_default(), ip));
        }
    }
    ready.sort();
    if let Some((_, ip)) = ready.first() {
        want.insert(services, *ip);
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct FakeRoutes(Arc<Mutex<Vec<String>>>);

    impl Routes for FakeRoutes {
        fn replace(&self, dst: (Ipv4Addr, u8), via: Ipv4Addr) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("replace {}/{} {via}", dst.0, dst.1));
            Ok(())
        }
        fn delete(&self, dst: (Ipv4Addr, u8)) -> std::io::Result<bool> {
            self.0
                .lock()
                .unwrap()
                .push(format!("delete {}/{}", dst.0, dst.1));
            Ok(true)
        }
    }

    #[derive(Default, Clone)]
    struct FakeExec(Arc<Mutex<Vec<String>>>);

    impl CniExec for FakeExec {
        fn exec(
            &self,
            plugin: &str,
            env: &[(&str, String)],
            config: &[u8],
        ) -> Result<Vec<u8>, String> {
            let get = |k: &str| crate::cni::env_of(env, k);
            let cfg: serde_json::Value = serde_json::from_slice(config).unwrap();
            self.0.lock().unwrap().push(format!(
                "{plugin} {} {} {} {}",
                get("CNI_COMMAND"),
                get("CNI_CONTAINERID"),
                get("CNI_IFNAME"),
                cfg["ipam"]["addresses"][0]["address"]
                    .as_str()
                    .unwrap_or("-"),
            ));
            Ok(b"{}".to_vec())
        }
    }

    fn net(dir: &Path) -> NodeNetwork<FakeExec> {
        let real =
            NodeNetwork::new(Path::new("/usr/lib/cni"), "hk1234", "10.100.0.7/24", dir).unwrap();
        NodeNetwork {
            exec: FakeExec::default(),
            bin_dir: real.bin_dir,
            bridge: real.bridge,
            network: real.network,
            prefix: real.prefix,
            netns_dir: real.netns_dir,
            real_netns: false,
        }
    }

    #[test]
    fn addresses() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        assert_eq!(n.network, Ipv4Addr::new(10, 100, 0, 0));
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(n.node_ip(1).unwrap(), Ipv4Addr::new(10, 100, 0, 11));
        assert_eq!(n.node_ip(244).unwrap(), Ipv4Addr::new(10, 100, 0, 254));
        assert!(n.node_ip(245).is_err(), "the broadcast address");
        assert!(n.node_ip(0).is_err());
        let cases: &[(&str, bool)] = &[
            ("10.100.0.0/24", true),
            ("10.100.0.0/28", true),
            ("10.100.0.0/29", false),
            ("10.0.0.0/7", false),
            ("10.100.0.0", false),
            ("fd00::/64", false),
        ];
        for (cidr, ok) in cases {
            let made = NodeNetwork::new(Path::new("/x"), "b", cidr, dir.path());
            assert_eq!(made.is_ok(), *ok, "{cidr}");
        }
    }

    #[test]
    fn add_replaces_a_leftover_and_del_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        n.add("node-1", n.node_ip(1).unwrap()).unwrap();
        assert!(n.netns_path("node-1").exists());
        n.add("node-1", n.node_ip(1).unwrap()).unwrap();
        assert_eq!(n.nodes(), ["node-1"]);
        n.del("node-1");
        n.del("node-1");
        assert!(n.nodes().is_empty());
        assert!(!n.netns_path("node-1").exists());
        assert_eq!(
            *n.exec.0.lock().unwrap(),
            [
                "loopback ADD hk1234-node-1 lo -",
                "bridge ADD hk1234-node-1 eth0 10.100.0.11/24",
                "bridge DEL hk1234-node-1 eth0 0.0.0.0/24",
                "loopback ADD hk1234-node-1 lo -",
                "bridge ADD hk1234-node-1 eth0 10.100.0.11/24",
                "bridge DEL hk1234-node-1 eth0 0.0.0.0/24",
            ]
        );
    }

    #[test]
    fn routes_change_only_what_differs() {
        let fake = FakeRoutes::default();
        let mut r = NodeRoutes::new(fake.clone());
        let a = (Ipv4Addr::new(10, 244, 0, 0), 24);
        let b = (Ipv4Addr::new(10, 244, 1, 0), 24);
        let (n1, n2) = (Ipv4Addr::new(10, 100, 0, 11), Ipv4Addr::new(10, 100, 0, 12));
        let steps: Vec<(BTreeMap<_, _>, Vec<&str>)> = vec![
            (
                [(a, n1), (b, n2)].into(),
                vec![
                    "replace 10.244.0.0/24 10.100.0.11",
                    "replace 10.244.1.0/24 10.100.0.12",
                ],
            ),
            ([(a, n1), (b, n2)].into(), vec![]),
            (
                [(a, n2)].into(),
                vec!["replace 10.244.0.0/24 10.100.0.12", "delete 10.244.1.0/24"],
            ),
        ];
        for (want, calls) in steps {
            fake.0.lock().unwrap().clear();
            r.sync(&want);
            assert_eq!(*fake.0.lock().unwrap(), calls);
        }
        fake.0.lock().unwrap().clear();
        r.clear();
        assert_eq!(*fake.0.lock().unwrap(), ["delete 10.244.0.0/24"]);
    }

    fn node(name: &str, ip: &str, cidr: Option<&str>, ready: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {
                "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn wanted_routes_table() {
        let net = (Ipv4Addr::new(10, 100, 0, 0), 24);
        let svc = (Ipv4Addr::new(10, 96, 0, 0), 12);
        let cidr = |s: &str| parse_cidr(s).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        type Case = (Vec<Node>, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![], vec![]),
            (
                vec![
                    node("b", "10.100.0.12", Some("10.244.1.0/24"), true),
                    node("a", "10.100.0.11", Some("10.244.0.0/24"), true),
                ],
                vec![
                    ("10.96.0.0/12", "10.100.0.11"),
                    ("10.244.0.0/24", "10.100.0.11"),
                    ("10.244.1.0/24", "10.100.0.12"),
                ],
            ),
            // Not Ready: its podCIDR still routes, the services go to a Ready node.
            (
                vec![
                    node("a", "10.100.0.11", Some("10.244.0.0/24"), false),
                    node("b", "10.100.0.12", None, true),
                ],
                vec![
                    ("10.96.0.0/12", "10.100.0.12"),
                    ("10.244.0.0/24", "10.100.0.11"),
                ],
            ),
            // A node off the node network (sharing the host's) gets nothing.
            (
                vec![node("c", "127.0.0.1", Some("10.244.2.0/24"), true)],
                vec![],
            ),
        ];
        for (nodes, want) in cases {
            let want: std::collections::BTreeMap<_, _> =
                want.iter().map(|(c, v)| (cidr(c), ip(v))).collect();
            assert_eq!(wanted_routes(&nodes, net, svc), want);
        }
    }

    #[test]
    fn parses_cidrs() {
        assert_eq!(
            parse_cidr("10.96.0.0/12"),
            Some((Ipv4Addr::new(10, 96, 0, 0), 12))
        );
        assert_eq!(
            parse_cidr("10.97.3.4/12"),
            Some((Ipv4Addr::new(10, 96, 0, 0), 12))
        );
        assert_eq!(parse_cidr("0.0.0.0/0"), Some((Ipv4Addr::UNSPECIFIED, 0)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("10.0.0.0"), None);
    }
}
