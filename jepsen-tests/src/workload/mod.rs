//! Workloads: the client side of a run. Each submodule owns one kind of test — its
//! operation type (what goes into the history), the client loop that drives a cluster
//! through etcd's gRPC API, and its end-of-run phase (final reads). This module owns what
//! they share: the run context, pacing, per-op timeouts, reachability probes and the rule
//! for turning a client error into `fail` (definitely not executed) or `info` (unknown).

pub mod append;
pub mod lock;
pub mod register;
pub mod watch;

use std::error::Error as _;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch as tokio_watch;

use crate::history::Kind;

/// The workloads the harness knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// Independent registers: read, write, compare-and-set; checked for linearizability.
    Register,
    /// Append-only lists in keys via read + guarded Txn; checked for linearizability.
    Append,
    /// Concurrent writers and resuming watchers; checked against etcd's watch guarantees.
    Watch,
    /// Lease-guarded lock with fenced writes; checked for mutual exclusion.
    Lock,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Append => "append",
            WorkloadKind::Watch => "watch",
            WorkloadKind::Lock => "lock",
        }
    }
}

impl FromStr for WorkloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// Errors that stop a workload as a whole (individual operation errors are recorded in
/// the history instead).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("invalid endpoint {endpoint}: {source}")]
    Endpoint {
        endpoint: String,
        source: etcd_client::Error,
    },
    #[error("no endpoints to run against")]
    NoEndpoints,
    #[error("a client task failed: {0}")]
    Task(String),
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub info: AtomicU64,
}

impl Stats {
    pub fn count(&self, kind: Kind) {
        let c = match kind {
            Kind::Ok => &self.ok,
            Kind::Fail => &self.fail,
            Kind::Info => &self.info,
            Kind::Invoke => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.fail.load(Ordering::Relaxed),
            self.info.load(Ordering::Relaxed),
        )
    }
}

/// Everything a workload needs to run.
#[derive(Clone)]
pub struct Ctx {
    /// Client URLs, one per member; worker `i` talks to member `i % len`, like Jepsen's
    /// one-client-per-node setup, so faults on a member show up in its clients' results.
    pub endpoints: Vec<String>,
    pub concurrency: usize,
    /// Target operations per second across all workers.
    pub rate: f64,
    pub seed: u64,
    /// After this long an operation is abandoned and recorded as indeterminate.
    pub op_timeout: Duration,
    /// Becomes `true` when the workload should wind down.
    pub stop: tokio_watch::Receiver<bool>,
    pub stats: Arc<Stats>,
    /// Watch workload only: whether watchers send progress requests.
    pub watch_progress_requests: bool,
}

impl Ctx {
    /// The endpoint worker `worker` uses.
    pub fn endpoint_for(&self, worker: usize) -> Result<&str, WorkloadError> {
        if self.endpoints.is_empty() {
            return Err(WorkloadError::NoEndpoints);
        }
        Ok(&self.endpoints[worker % self.endpoints.len()])
    }

    /// A per-worker RNG derived from the run seed, so a seed reproduces every choice.
    pub fn rng_for(&self, worker: usize, salt: u64) -> StdRng {
        StdRng::seed_from_u64(
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((worker as u64) << 16)
                .wrapping_add(salt),
        )
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for one pacing interval (with ±50% jitter so workers do not march in
    /// lockstep), returning early when the run stops. Returns whether to go on.
    pub async fn pace(&self, rng: &mut StdRng) -> bool {
        let per_worker = self.rate / self.concurrency.max(1) as f64;
        let mean = if per_worker > 0.0 {
            1.0 / per_worker
        } else {
            1.0
        };
        let wait = Duration::from_secs_f64(mean * rng.random_range(0.5..1.5));
        self.sleep(wait).await
    }

    /// Sleeps, returning early (with `false`) when the run stops.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !*stop.borrow(),
            _ = stop.changed() => false,
        }
    }
}

/// Logical process ids: a worker keeps its id until an operation ends `info`, then takes
/// the next one, because the abandoned request may still be executing "as" the old one.
#[derive(Debug)]
pub struct Process {
    worker: u64,
    stride: u64,
    generation: u64,
}

impl Process {
    pub fn new(worker: usize, concurrency: usize) -> Self {
        Process {
            worker: worker as u64,
            stride: concurrency.max(1) as u64,
            generation: 0,
        }
    }

    pub fn id(&self) -> u64 {
        self.worker + self.generation * self.stride
    }

    /// Call after recording a completion.
    pub fn completed(&mut self, kind: Kind) {
        if kind == Kind::Info {
            self.generation += 1;
        }
    }
}

/// Process ids at and above this are the harness's own end-of-run readers.
pub const FINAL_PROCESS_BASE: u64 = 1 << 40;

/// Connects a client to one endpoint. etcd-client dials lazily, so this only fails on a
/// malformed endpoint; unreachable members surface as per-request errors.
pub async fn connect(endpoint: &str, op_timeout: Duration) -> Result<Client, WorkloadError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(op_timeout)
        // Keepalives notice a paused or partitioned member instead of waiting forever.
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
    Client::connect([endpoint], Some(opts))
        .await
        .map_err(|source| WorkloadError::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        })
}

/// Whether a TCP connection to the endpoint's port can be opened right now. Workers probe
/// before sending after a failure: if nobody is listening the request is never sent, so
/// the operation need not be recorded at all, instead of piling up as indeterminate
/// timeouts against a dead member (etcd-client's balanced channel waits, rather than
/// failing, while its only endpoint is down).
pub async fn reachable(endpoint: &str) -> bool {
    let addr = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    matches!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// How an operation ended, as far as the history is concerned.
#[derive(Debug)]
pub enum Outcome<T> {
    Ok(T),
    Fail(String),
    Info(String),
}

impl<T> Outcome<T> {
    pub fn kind(&self) -> Kind {
        match self {
            Outcome::Ok(_) => Kind::Ok,
            Outcome::Fail(_) => Kind::Fail,
            Outcome::Info(_) => Kind::Info,
        }
    }
}

/// Runs a request with the per-op timeout and classifies errors. `read_only` requests
/// can never have an effect, so any error is a plain failure for them.
pub async fn execute<T, F>(timeout: Duration, read_only: bool, fut: F) -> Outcome<T>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Outcome::Ok(v),
        Ok(Err(e)) => {
            let msg = error_chain(&e);
            if read_only || definitely_not_executed(&e, &msg) {
                Outcome::Fail(msg)
            } else {
                Outcome::Info(msg)
            }
        }
        Err(_) if read_only => Outcome::Fail("timed out".into()),
        Err(_) => Outcome::Info(format!("timed out after {timeout:?}")),
    }
}

/// The error and its sources on one line.
pub fn error_chain(e: &etcd_client::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Errors after which the server certainly did not apply the request. Everything else
/// on a write is indeterminate: etcd may have proposed it to Raft before the error (e.g.
/// "request timed out", or a connection that broke after sending).
fn definitely_not_executed(e: &etcd_client::Error, msg: &str) -> bool {
    use tonic::Code;
    if msg.contains("Connection refused") || msg.contains("tcp connect error") {
        return true;
    }
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::ResourceExhausted
        ),
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::EndpointError(_) => true,
        _ => false,
    }
}

/// Picks keys Jepsen-"independent"-style: the run moves through a sequence of keys, each
/// shared by all workers for a bounded number of operations, so per-key histories stay
/// small enough to check while still seeing real contention.
#[derive(Debug)]
pub struct KeyRotation {
    prefix: String,
    ops_per_key: u64,
    window: u64,
    started: AtomicU64,
}

impl KeyRotation {
    pub fn new(prefix: &str, ops_per_key: u64, window: u64) -> Self {
        KeyRotation {
            prefix: prefix.to_string(),
            ops_per_key: ops_per_key.max(1),
            window: window.max(1),
            started: AtomicU64::new(0),
        }
    }

    /// The key for the next operation.
    pub fn next(&self, rng: &mut StdRng) -> String {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let group = n / (self.ops_per_key * self.window);
        let key = group * self.window + rng.random_range(0..self.window);
        format!("{}{key:05}", self.prefix)
    }
}

/// Spawns `n` workers and waits for all of them, turning a panicked worker into an error
/// (the others have already been told to stop by then, or stop at the deadline).
pub async fn join_workers<F, Fut>(n: usize, mut make: F) -> Result<(), WorkloadError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(make(i));
    }
    let mut first_err = None;
    while let Some(res) = set.join_next().await {
        if let Err(e) = res {
            first_err.get_or_insert_with(|| WorkloadError::Task(e.to_string()));
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ids_advance_only_after_info() {
        let mut p = Process::new(2, 5);
        assert_eq!(p.id(), 2);
        p.completed(Kind::Ok);
        p.completed(Kind::Fail);
        assert_eq!(p.id(), 2);
        p.completed(Kind::Info);
        assert_eq!(p.id(), 7);
    }

    #[test]
    fn key_rotation_bounds_ops_per_key() {
        let rot = KeyRotation::new("k/", 10, 2);
        let mut rng = StdRng::seed_from_u64(1);
        let keys: Vec<String> = (0..40).map(|_| rot.next(&mut rng)).collect();
        let mut counts = std::collections::BTreeMap::new();
        for k in &keys {
            *counts.entry(k.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(keys[..20].iter().all(|k| k == "k/00000" || k == "k/00001"));
    }
}
