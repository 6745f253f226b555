//! `nodeagent teardown`: removes what an agent made on the host, for a node that is gone
//! for good (the agent itself never does this on exit: its containers keep running so a
//! restarted agent re-adopts them). In order: the runc containers of its runc root (which
//! ends their processes), each pod's network (CNI DEL, the network namespace), the node's
//! CNI bridge, the service proxy's nftables table and the agent's cgroup subtree. Steps that find nothing to do
//! are no-ops, so it can run after a crash at any point, or twice.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::network::PodNetwork;
use crate::proxy::{Nft, NftBinary};
use crate::store::Store;

/// What was removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub containers: usize,
    pub pod_networks: usize,
    pub bridge: bool,
    pub table: bool,
    pub cgroups: usize,
}

pub struct Teardown<'a> {
    pub store: &'a Store,
    pub runc: &'a Path,
    pub network: &'a dyn PodNetwork,
    pub nft: &'a NftBinary,
    /// The node's CNI bridge.
    pub bridge: String,
    /// The proxy's table (`nodeagent-proxy-<node>`).
    pub table: String,
    /// The agent's cgroup parent under /sys/fs/cgroup (`nodeagent-<node>`).
    pub cgroup: PathBuf,
}

impl Teardown<'_> {
    pub fn run(&self) -> Report {
        Report {
            containers: self.containers(),
            pod_networks: self.pod_networks(),
            bridge: self.bridge(),
            table: self.table(),
            cgroups: remove_cgroup_tree(&self.cgroup),
        }
    }

    fn containers(&self) -> usize {
        let root = self.store.runc_root();
        let runc = |args: &[&str]| {
            Command::new(self.runc)
                .arg("--root")
                .arg(&root)
                .args(args)
                .output()
        };
        let Ok(out) = runc(&["list", "-q"]) else {
            return 0;
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|id| !id.is_empty())
            .filter(|id| {
                let ok = runc(&["delete", "--force", id]).is_ok_and(|o| o.status.success());
                if !ok {
                    tracing::warn!(id, "runc delete --force failed");
                }
                ok
            })
            .count()
    }

    fn pod_networks(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.store.pods()) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().join("network.json").exists())
            .filter(|e| {
                let uid = e.file_name().to_string_lossy().into_owned();
                match self.network.teardown(&uid) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(e.path().join("network.json"));
                        true
                    }
                    Err(err) => {
                        tracing::warn!(%uid, error = %err, "pod network teardown");
                        false
                    }
                }
            })
            .count()
    }

    fn bridge(&self) -> bool {
        crate::netlink::delete_link(&self.bridge).unwrap_or_else(|e| {
            tracing::warn!(bridge = %self.bridge, error = %e, "deleting the bridge");
            false
        })
    }

    fn table(&self) -> bool {
        let delete = serde_json::json!({"nftables": [
            {"delete": {"table": {"family": "ip", "name": self.table}}}
        ]});
        // Fails when there is no such table: nothing to remove.
        self.nft.apply(delete.to_string().as_bytes()).is_ok()
    }
}

/// Removes a cgroup v2 subtree, deepest first (a cgroup directory goes with `rmdir` once
/// it has no processes and no children); returns how many were removed.
fn remove_cgroup_tree(dir: &Path) -> usize {
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                removed += remove_cgroup_tree(&e.path());
            }
        }
    }
    if std::fs::remove_dir(dir).is_ok() {
        removed += 1;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::HostNetwork;

    #[test]
    fn nothing_to_do_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let network = HostNetwork {
            node_ip: "127.0.0.1".into(),
        };
        let nft = NftBinary {
            nft: "/nonexistent/nft".into(),
        };
        let t = Teardown {
            store: &store,
            runc: Path::new("/nonexistent/runc"),
            network: &network,
            nft: &nft,
            bridge: "nosuchbr0".into(),
            table: "nodeagent-proxy-test".into(),
            cgroup: dir.path().join("no-such-cgroup"),
        };
        assert_eq!(t.run(), Report::default());
    }

    #[test]
    fn pod_networks_are_released_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        for uid in ["a", "b"] {
            std::fs::create_dir_all(store.pod_dir(uid)).unwrap();
            std::fs::write(
                store.pod_dir(uid).join("network.json"),
                br#"{"mode":"host","ip":"1.2.3.4"}"#,
            )
            .unwrap();
        }
        std::fs::create_dir_all(store.pod_dir("c")).unwrap();
        let network = HostNetwork {
            node_ip: "127.0.0.1".into(),
        };
        let nft = NftBinary {
            nft: "/nonexistent/nft".into(),
        };
        let t = Teardown {
            store: &store,
            runc: Path::new("/nonexistent/runc"),
            network: &network,
            nft: &nft,
            bridge: "nosuchbr0".into(),
            table: "t".into(),
            cgroup: dir.path().join("cg"),
        };
        assert_eq!(t.run().pod_networks, 2);
        assert!(!store.pod_dir("a").join("network.json").exists());
        assert_eq!(t.run().pod_networks, 0);
    }
}
