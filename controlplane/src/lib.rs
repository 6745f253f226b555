//! Kubernetes-style control plane on raftkv: the API server ([`apiserver`]), the typed
//! client the other components use ([`client`]), Lease-based leader election
//! ([`leaderelection`]), the scheduler ([`scheduler`]) and the controller manager
//! ([`controllers`]), and the launcher of a whole local cluster ([`launcher`]); [`testing`]
//! is the process harness of the black-box tests.

pub mod apiserver;
pub mod client;
pub mod clock;
pub mod controllers;
pub mod labels;
pub mod launcher;
pub mod leaderelection;
pub mod metrics;
pub mod scheduler;
pub mod testing;
