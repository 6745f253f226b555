//! Consensus with openraft: the type configuration, and the storage openraft drives. The Raft
//! log lives in its own RocksDB instance, separate from the state machine's store, so
//! consensus and MVCC storage share no keys and no locks.

pub mod log_store;
pub mod membership;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use types::{MemberNode, Request, Response, TypeConfig};
