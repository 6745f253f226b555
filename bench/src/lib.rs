//! `bench`: loads raftkv and real etcd 3.4 with the same workloads in the same run and
//! compares throughput and latency. raftkv is a black box here: it is only ever run as a
//! binary and spoken to over gRPC, like etcd.
//!
//! Modules, in the order a run uses them: [`cli`] (flags), [`cluster`] (spawning servers),
//! [`compare`] (the run), [`workload`] and [`watch`] (what is sent and checked),
//! [`runner`] (client tasks and progress), [`histogram`] (latencies), [`report`] (table and
//! JSON) and [`plot`] (SVG).

pub mod cli;
pub mod cluster;
pub mod compare;
pub mod histogram;
pub mod plot;
pub mod report;
pub mod runner;
pub mod watch;
pub mod workload;
