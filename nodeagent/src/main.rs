//! The node agent (kubelet role): registers its node, heartbeats, runs pod containers with runc
//! from OCI bundles and reports their status; plus the service proxy (kube-proxy role).
//! Not built yet: see the open issues.

fn main() {
    eprintln!("nodeagent: not implemented yet (see issues 9 and 10)");
    std::process::exit(2);
}
