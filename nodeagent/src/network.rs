//! Pod networking behind a trait. [`HostNetwork`] shares the node's network namespace with
//! every pod (a pod's IP is the node's IP); [`crate::cni::CniNetwork`] gives each pod its
//! own network namespace wired to a per-node bridge by the standard CNI plugins. Pods with
//! `hostNetwork: true` get the host's namespace from either.

use std::path::PathBuf;

/// A pod's network as the runtime spec and the pod status need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetworkStatus {
    pub ip: String,
    /// The network namespace the pod's containers join; `None` is the host's.
    pub netns: Option<PathBuf>,
}

pub trait PodNetwork: Send + Sync + 'static {
    /// Sets up (idempotently) the network of the pod with this uid; `host_network` is the
    /// pod's `spec.hostNetwork`.
    fn setup(&self, uid: &str, host_network: bool) -> std::io::Result<PodNetworkStatus>;
    /// Releases it; a no-op for a pod without one.
    fn teardown(&self, uid: &str) -> std::io::Result<()>;
}

/// Every pod in the host's network namespace.
#[derive(Clone, Debug)]
pub struct HostNetwork {
    pub node_ip: String,
}

impl PodNetwork for HostNetwork {
    fn setup(&self, _uid: &str, _host_network: bool) -> std::io::Result<PodNetworkStatus> {
        Ok(PodNetworkStatus {
            ip: self.node_ip.clone(),
            netns: None,
        })
    }
    fn teardown(&self, _uid: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// The agent picks its network at start (`--network`).
impl PodNetwork for Box<dyn PodNetwork> {
    fn setup(&self, uid: &str, host_network: bool) -> std::io::Result<PodNetworkStatus> {
        (**self).setup(uid, host_network)
    }
    fn teardown(&self, uid: &str) -> std::io::Result<()> {
        (**self).teardown(uid)
    }
}
