//! The node network: as root, each node agent runs in a network namespace of its own, on
//! a host bridge of the cluster, so the nodes behave like hosts on one LAN (their own
//! address, pod bridge, proxy rules and log server port). The launcher drives it through
//! the node agent binary: `nodeagent node-network add|del` makes and removes a node's
//! namespace, and a supervised `nodeagent host-routes` process keeps the host's routes to
//! each node's podCIDR (and the service range, via a Ready node) as node IPAM hands them
//! out. The host side of the bridge, the gateway, is where node agents reach the API
//! servers' load balancer.
//!
//! Without root or the CNI plugins the node agents share the host's network namespace
//! (`--node-network host`), told apart by their ports.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// `--node-network`: `auto`, `host` or the node network's CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Namespaces on `DEFAULT_CIDR` when root with the CNI plugins, the host's otherwise.
    Auto,
    Host,
    Namespaces {
        network: Ipv4Addr,
        prefix: u8,
    },
}

pub const DEFAULT_CIDR: &str = "10.100.0.0/24";
/// Where the node agents' CNI plugins are, `bridge` and `static` among them.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --node-network {0:?}: want auto, host or an IPv4 CIDR of /8 to /28")]
pub struct ModeError(String);

impl std::str::FromStr for Mode {
    type Err = ModeError;
    fn from_str(s: &str) -> Result<Mode, ModeError> {
        match s {
            "auto" => Ok(Mode::Auto),
            "host" => Ok(Mode::Host),
            _ => {
                let err = || ModeError(s.into());
                let (ip, len) = s.split_once('/').ok_or_else(err)?;
                let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
                let prefix: u8 = len.parse().map_err(|_| err())?;
                if !(8..=28).contains(&prefix) {
                    return Err(err());
                }
                let mask = u32::MAX << (32 - u32::from(prefix));
                Ok(Mode::Namespaces {
                    network: Ipv4Addr::from(u32::from(ip) & mask),
                    prefix,
                })
            }
        }
    }
}

impl Mode {
    /// What `auto` means on this machine: namespaces need root and the CNI plugins.
    pub fn resolve(&self, root: bool, cni_bin_dir: &Path) -> Mode {
        match self {
            Mode::Auto
                if root
                    && cni_bin_dir.join("bridge").exists()
                    && cni_bin_dir.join("static").exists() =>
            {
                DEFAULT_CIDR.parse().expect("the default parses")
            }
            Mode::Auto => Mode::Host,
            other => other.clone(),
        }
    }
}

/// The node network of a running cluster, as the state file records it for `down`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// The host bridge; also the prefix of the namespaces' names.
    pub bridge: String,
    pub cidr: String,
}

impl NodeNetwork {
    /// The cluster folder's node network: a bridge named after the folder (`hk` and 8 hex
    /// digits of its FNV-1a hash), so two clusters' bridges differ.
    pub fn new(dir: &Path, network: Ipv4Addr, prefix: u8) -> NodeNetwork {
        let hash = dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
            });
        NodeNetwork {
            bridge: format!("hk{hash:08x}"),
            cidr: format!("{network}/{prefix}"),
        }
    }

    /// The host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        let network: Ipv4Addr = self
            .cidr
            .split_once('/')
            .and_then(|(ip, _)| ip.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ipv4Addr::from(u32::from(network) + 1)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--bridge".into(),
            self.bridge.clone(),
            "--cidr".into(),
            self.cidr.clone(),
            "--cni-bin-dir".into(),
            CNI_BIN_DIR.into(),
            "--netns-dir".into(),
            NETNS_DIR.into(),
        ]
    }

    /// Makes node `index`'s (from 1) namespace; its path and address.
    pub fn add(
        &self,
        nodeagent: &Path,
        name: &str,
        index: usize,
    ) -> Result<(PathBuf, Ipv4Addr), String> {
        let out = Command::new(nodeagent)
            .args(["node-network", "add"])
            .args(self.args())
            .args(["--node-name", name, "--index", &index.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        stdout
            .split_once(' ')
            .and_then(|(path, ip)| Some((PathBuf::from(path), ip.trim().parse().ok()?)))
            .ok_or_else(|| format!("unexpected answer {stdout:?}"))
    }

    /// Removes every node's namespace and the bridge.
    pub fn remove(&self, nodeagent: &Path) -> Result<(), String> {
        let out = Command::new(nodeagent)
            .args(["node-network", "del"])
            .args(self.args())
            .arg("--bridge-too")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let cases: &[(&str, Option<Mode>)] = &[
            ("auto", Some(Mode::Auto)),
            ("host", Some(Mode::Host)),
            (
                "10.100.0.9/24",
                Some(Mode::Namespaces {
                    network: Ipv4Addr::new(10, 100, 0, 0),
                    prefix: 24,
                }),
            ),
            ("10.100.0.0/30", None),
            ("10.100.0.0", None),
            ("none", None),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Mode>().ok(), *want, "{s}");
        }
        let no_cni = Path::new("/nonexistent");
        assert_eq!(Mode::Auto.resolve(true, no_cni), Mode::Host);
        assert_eq!(Mode::Auto.resolve(false, no_cni), Mode::Host);
        assert_eq!(Mode::Host.resolve(true, no_cni), Mode::Host);
    }

    #[test]
    fn bridges_differ_per_folder_and_fit_a_name() {
        let a = NodeNetwork::new(Path::new("/a/hakube"), Ipv4Addr::new(10, 100, 0, 0), 24);
        let b = NodeNetwork::new(Path::new("/b/hakube"), Ipv4Addr::new(10, 100, 0, 0), 24);
        assert_ne!(a.bridge, b.bridge);
        assert!(a.bridge.len() <= 15);
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(a.cidr, "10.100.0.0/24");
    }
}
