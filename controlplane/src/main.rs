//! Kubernetes-style control plane on raftkv: the API server (REST + watch), the scheduler and
//! the controller manager. Several replicas of each run at once; the scheduler and controllers
//! elect a leader with Leases stored in raftkv. Not built yet: see the open issues.

fn main() {
    eprintln!("controlplane: not implemented yet (see issues 7, 8 and 12)");
    std::process::exit(2);
}
