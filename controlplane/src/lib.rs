//! Kubernetes-style control plane on raftkv. Today: the API server ([`apiserver`]); the
//! scheduler and controller manager (issues 8 and 12) will live beside it and elect a
//! leader with Leases stored through it.

pub mod apiserver;
