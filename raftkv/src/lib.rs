//! raftkv: an etcd v3-compatible key-value server. Unmodified etcd clients (etcdctl, the
//! `etcd-client` crate, python-etcd3) talk to it over etcd's gRPC API.
//!
//! Layers, bottom up: [`mvcc`] (revisions, key index, RocksDB backend, watchers) and [`lease`]
//! know nothing of requests; [`state_machine`] applies log entries to them; [`raft`] is
//! consensus (openraft: the log store, the adapter onto the state machine, the peer
//! transport) and knows the state machine only through its apply and snapshot calls;
//! [`server`] turns requests into proposals and reads into read-index waits and runs the
//! background loops; [`api`], [`gateway`], [`http`] and [`listener`] are the client wire
//! (gRPC, its JSON form, plain HTTP, and the connections they share), [`tls`] its (and the
//! peers') encryption. [`auth`] holds users, roles and tokens; the state machine applies
//! their changes and consults them on every request it applies.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod http;
pub mod lease;
pub mod listener;
pub mod metrics;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod state_machine;
pub mod tls;
