//! Pod networking behind a trait, the seam where a CNI-like plugin (per-pod network
//! namespaces, veth pairs, a bridge) plugs in later. Today's [`HostNetwork`] shares the
//! node's network namespace with every pod, so a pod's IP is the node's IP and probes
//! reach containers on the node's addresses.

use std::path::PathBuf;

/// A pod's network as the runtime spec and the pod status need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetworkStatus {
    pub ip: String,
    /// The network namespace the pod's containers join; `None` is the host's.
    pub netns: Option<PathBuf>,
}

pub trait PodNetwork: Send + Sync + 'static {
    /// Sets up (idempotently) the network of the pod with this uid.
    fn setup(&self, uid: &str) -> std::io::Result<PodNetworkStatus>;
    /// Releases it; a no-op for a pod without one.
    fn teardown(&self, uid: &str) -> std::io::Result<()>;
}

/// Every pod in the host's network namespace.
#[derive(Clone, Debug)]
pub struct HostNetwork {
    pub node_ip: String,
}

impl PodNetwork for HostNetwork {
    fn setup(&self, _uid: &str) -> std::io::Result<PodNetworkStatus> {
        Ok(PodNetworkStatus {
            ip: self.node_ip.clone(),
            netns: None,
        })
    }
    fn teardown(&self, _uid: &str) -> std::io::Result<()> {
        Ok(())
    }
}
