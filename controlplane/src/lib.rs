//! Kubernetes-style control plane on raftkv: the API server ([`apiserver`]), the typed
//! client the other components use ([`client`]), Lease-based leader election
//! ([`leaderelection`]) and the scheduler ([`scheduler`]).

pub mod apiserver;
pub mod client;
pub mod clock;
pub mod leaderelection;
pub mod scheduler;
