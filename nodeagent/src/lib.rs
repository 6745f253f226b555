//! The node agent (kubelet role): registers its Node and renews its Lease ([`node`]),
//! watches the pods bound to it and reconciles them level-triggered ([`pods`]) into runc
//! containers built from OCI bundles ([`spec`], [`images`], [`volumes`]) through a small
//! runtime trait ([`runtime`]) whose runc implementation supervises each container with a
//! per-container shim process ([`shim`]); it serves container logs over HTTPS for the API
//! server's pods/log proxy ([`server`], [`logs`]) and records Events ([`events`]).

pub mod agent;
pub mod backoff;
pub mod cni;
pub mod env;
pub mod events;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod node;
pub mod nodenet;
pub mod pods;
pub mod probes;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod shim;
pub mod spec;
pub mod status;
pub mod store;
pub mod teardown;
pub mod volumes;
