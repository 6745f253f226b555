//! jepsen-tests: a Jepsen-style fault-injection harness for raftkv and etcd.
//!
//! It starts a cluster of real server processes on loopback ([`cluster`], with peer
//! traffic through a partitionable [`proxy`]), drives it through etcd's gRPC API with a
//! [`workload`] while a [`nemesis`] injects faults, records a [`history`], and hands it
//! to a [`checker`]: Wing–Gong–Lowe linearizability for registers and lists, etcd's watch
//! guarantees for watches, fencing for leases/locks. The servers are black boxes: this
//! crate never links raftkv, so it judges etcd with exactly the same code.

pub mod checker;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod history;
pub mod lazyfs;
pub mod nemesis;
pub mod process;
pub mod proxy;
pub mod runner;
pub mod workload;
