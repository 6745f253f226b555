//! The workloads, modelled on etcd's `tools/benchmark` commands, and what one client task does
//! for one operation of each: the request it sends and the check it makes of the answer.
//!
//! Every written value encodes the step and key it was written for, so a read (of the range
//! workloads, or of the read-back after a write step) can tell a correct value from a stale
//! or misplaced one. Ranges check every returned value; writes are checked by reading back a
//! random sample of acknowledged keys once the step is over ([`verify_writes`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The step number the range keys are written with, before any timed step (which count
/// from 1).
const RANGE_SEED_STEP: u64 = 0;

/// Writes in flight while pre-populating the range keys.
const SETUP_CONCURRENCY: usize = 32;

/// One kind of load. The names are those of `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Workload {
    /// `benchmark put`: puts to random keys of the key space.
    #[serde(rename = "put-rand")]
    PutRand,
    /// `benchmark put --sequential-keys`: op i puts key i.
    #[serde(rename = "put-seq")]
    PutSeq,
    /// `benchmark range --consistency=l`: linearizable gets of pre-written keys.
    #[serde(rename = "range-lin")]
    RangeLin,
    /// `benchmark range --consistency=s`: serializable (member-local) gets.
    #[serde(rename = "range-ser")]
    RangeSer,
    /// `benchmark txn-put`: a txn of `--txn-ops` puts with no compare.
    #[serde(rename = "txn-put")]
    TxnPut,
    /// 80% linearizable gets, 20% random puts: a read-mostly service.
    #[serde(rename = "mixed")]
    Mixed,
    /// `benchmark lease-keepalive`: one lease per client, each op one keepalive round trip.
    #[serde(rename = "lease-keepalive")]
    LeaseKeepalive,
    /// `benchmark watch-latency`: `--clients` watchers on one key, puts at a fixed rate;
    /// latency is from sending a put to a watcher receiving its event.
    #[serde(rename = "watch")]
    Watch,
}

impl Workload {
    pub const ALL: [Workload; 8] = [
        Workload::PutRand,
        Workload::PutSeq,
        Workload::RangeLin,
        Workload::RangeSer,
        Workload::TxnPut,
        Workload::Mixed,
        Workload::LeaseKeepalive,
        Workload::Watch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PutRand => "put-rand",
            Workload::PutSeq => "put-seq",
            Workload::RangeLin => "range-lin",
            Workload::RangeSer => "range-ser",
            Workload::TxnPut => "txn-put",
            Workload::Mixed => "mixed",
            Workload::LeaseKeepalive => "lease-keepalive",
            Workload::Watch => "watch",
        }
    }

    /// Whether the workload writes keys that [`verify_writes`] should read back.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Workload::PutRand | Workload::PutSeq | Workload::TxnPut | Workload::Mixed
        )
    }

    /// Whether the workload reads the pre-written range keys ([`populate_range_keys`]).
    pub fn reads_range_keys(self) -> bool {
        matches!(
            self,
            Workload::RangeLin | Workload::RangeSer | Workload::Mixed
        )
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!(
                    "unknown workload {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The knobs shared by all workloads of a run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    /// Bytes per written value.
    pub value_size: usize,
    /// Keys the random-key writes pick from.
    pub key_space: u64,
    /// Puts per txn of `txn-put`.
    pub txn_ops: usize,
    /// Keys written before the range workloads and read by them.
    pub range_keys: u64,
    /// TTL of the leases of `lease-keepalive`, in seconds.
    pub lease_ttl: i64,
    /// Puts per second of `watch`.
    pub watch_put_rate: u64,
    /// Puts per step of `watch` (each is delivered to every watcher).
    pub watch_puts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("setting up {workload}: {source}")]
    Setup {
        workload: Workload,
        source: etcd_client::Error,
    },
    #[error("setting up {workload}: {message}")]
    SetupCheck { workload: Workload, message: String },
}

/// The key `index` of a key family (`put`, `txn`, `range`, `watch`).
pub fn key(family: &str, index: u64) -> String {
    format!("bench/{family}/{index:010}")
}

/// The value written to key `index` in step `step`: a header naming both, padded to `size`
/// bytes (truncated when `size` is smaller than the header).
pub fn value(step: u64, index: u64, size: usize) -> Vec<u8> {
    let mut v = format!("s{step}:k{index}:").into_bytes();
    v.resize(size, b'.');
    v
}

/// The key family a write workload puts to.
fn write_family(workload: Workload) -> &'static str {
    match workload {
        Workload::TxnPut => "txn",
        _ => "put",
    }
}

/// Writes the range keys with their seed values and reads one back. Untimed.
pub async fn populate_range_keys(
    client: &Client,
    config: &WorkloadConfig,
) -> Result<(), WorkloadError> {
    let setup = |source| WorkloadError::Setup {
        workload: Workload::RangeLin,
        source,
    };
    let mut next = 0;
    while next < config.range_keys {
        let end = (next + SETUP_CONCURRENCY as u64).min(config.range_keys);
        let mut batch = tokio::task::JoinSet::new();
        for k in next..end {
            let mut kv = client.kv_client();
            let v = value(RANGE_SEED_STEP, k, config.value_size);
            batch.spawn(async move { kv.put(key("range", k), v, None).await });
        }
        while let Some(joined) = batch.join_next().await {
            joined.expect("a put task does not panic").map_err(setup)?;
        }
        next = end;
    }
    let mut kv = client.kv_client();
    let resp = kv.get(key("range", 0), None).await.map_err(setup)?;
    let expected = value(RANGE_SEED_STEP, 0, config.value_size);
    match resp.kvs().first() {
        Some(kv) if kv.value() == expected.as_slice() => Ok(()),
        other => Err(WorkloadError::SetupCheck {
            workload: Workload::RangeLin,
            message: format!(
                "range key 0 reads back {:?}",
                other.map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            ),
        }),
    }
}

/// What one client task needs between operations.
enum TaskState {
    Kv,
    // Boxed: the keepalive stream is large and most tasks are `Kv`.
    Lease(Box<LeaseState>),
}

/// The lease of a `lease-keepalive` task and its keepalive stream.
struct LeaseState {
    id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

/// One client task of a closed-loop step: it sends one request at a time on its shared
/// connection and checks each answer.
pub struct Worker {
    workload: Workload,
    client: Client,
    config: WorkloadConfig,
    step: u64,
    rng: StdRng,
    state: TaskState,
    /// Key indices of acknowledged writes, for the read-back after the step.
    written: Vec<u64>,
}

impl Worker {
    /// Prepares task `task` of step `step`. For `lease-keepalive` this grants the task's
    /// lease and opens its keepalive stream (untimed, like etcd's benchmark).
    pub async fn new(
        workload: Workload,
        client: Client,
        config: WorkloadConfig,
        step: u64,
        task: usize,
    ) -> Result<Worker, WorkloadError> {
        // Seeded per step and task: runs are repeatable, and both servers get the same keys.
        let rng = StdRng::seed_from_u64(step << 32 | task as u64);
        let mut client = client;
        let state = match workload {
            Workload::LeaseKeepalive => {
                let setup = |source| WorkloadError::Setup { workload, source };
                let id = client
                    .lease_grant(config.lease_ttl, None)
                    .await
                    .map_err(setup)?
                    .id();
                let (keeper, responses) = client.lease_keep_alive(id).await.map_err(setup)?;
                TaskState::Lease(Box::new(LeaseState {
                    id,
                    keeper,
                    responses,
                }))
            }
            _ => TaskState::Kv,
        };
        Ok(Worker {
            workload,
            client,
            config,
            step,
            rng,
            state,
            written: Vec::new(),
        })
    }

    /// Performs operation `index` of the step. `Err` carries a description of what failed:
    /// an RPC error or an answer that does not check out.
    pub async fn op(&mut self, index: u64) -> Result<(), String> {
        match self.workload {
            Workload::PutRand => {
                let k = self.rng.random_range(0..self.config.key_space);
                self.put(k).await
            }
            Workload::PutSeq => self.put(index).await,
            Workload::RangeLin => self.range(false).await,
            Workload::RangeSer => self.range(true).await,
            Workload::TxnPut => self.txn_put().await,
            Workload::Mixed => {
                if self.rng.random_ratio(4, 5) {
                    self.range(false).await
                } else {
                    let k = self.rng.random_range(0..self.config.key_space);
                    self.put(k).await
                }
            }
            Workload::LeaseKeepalive => self.keepalive().await,
            Workload::Watch => Err("watch is not a closed-loop workload".into()),
        }
    }

    async fn put(&mut self, k: u64) -> Result<(), String> {
        let v = value(self.step, k, self.config.value_size);
        self.client
            .put(key("put", k), v, None)
            .await
            .map_err(|e| format!("put: {e}"))?;
        self.written.push(k);
        Ok(())
    }

    async fn range(&mut self, serializable: bool) -> Result<(), String> {
        let k = self.rng.random_range(0..self.config.range_keys);
        let options = serializable.then(|| GetOptions::new().with_serializable());
        let resp = self
            .client
            .get(key("range", k), options)
            .await
            .map_err(|e| format!("range: {e}"))?;
        let expected = value(RANGE_SEED_STEP, k, self.config.value_size);
        match resp.kvs() {
            [kv] if kv.value() == expected.as_slice() => Ok(()),
            [kv] => Err(format!(
                "range {}: wrong value {:?}",
                key("range", k),
                preview(kv.value())
            )),
            kvs => Err(format!(
                "range {}: {} kvs instead of 1",
                key("range", k),
                kvs.len()
            )),
        }
    }

    async fn txn_put(&mut self) -> Result<(), String> {
        // Consecutive keys from a random start: distinct within the txn, since etcd rejects
        // a txn that puts the same key twice.
        let start = self.rng.random_range(0..self.config.key_space);
        let keys: Vec<u64> = (0..self.config.txn_ops as u64)
            .map(|j| (start + j) % self.config.key_space)
            .collect();
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|&k| {
                TxnOp::put(
                    key("txn", k),
                    value(self.step, k, self.config.value_size),
                    None,
                )
            })
            .collect();
        let resp = self
            .client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| format!("txn: {e}"))?;
        if !resp.succeeded() {
            return Err("txn without compares did not succeed".into());
        }
        self.written.extend(keys);
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), String> {
        let TaskState::Lease(lease) = &mut self.state else {
            return Err("lease-keepalive task without a lease".into());
        };
        let LeaseState {
            id,
            keeper,
            responses,
        } = lease.as_mut();
        keeper
            .keep_alive()
            .await
            .map_err(|e| format!("keepalive send: {e}"))?;
        match responses.message().await {
            Ok(Some(resp)) if resp.id() == *id && resp.ttl() > 0 => Ok(()),
            Ok(Some(resp)) => Err(format!(
                "keepalive of lease {id:x}: answer for lease {:x} with ttl {}",
                resp.id(),
                resp.ttl()
            )),
            Ok(None) => Err("keepalive stream closed by the server".into()),
            Err(e) => Err(format!("keepalive: {e}")),
        }
    }

    /// Releases what [`Worker::new`] acquired (the lease) and returns the key indices of the
    /// acknowledged writes.
    pub async fn finish(mut self) -> Vec<u64> {
        if let TaskState::Lease(lease) = &self.state {
            let id = lease.id;
            // Best effort and untimed: an unrevoked lease only expires after its TTL.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.client.lease_revoke(id)).await;
        }
        self.written
    }
}

/// Reads back up to `sample` random keys among `written` (acknowledged writes of step `step`)
/// with linearizable gets and returns a description of each mismatch. Every acknowledged
/// write must be visible once the step is over.
pub async fn verify_writes(
    client: &Client,
    workload: Workload,
    config: &WorkloadConfig,
    step: u64,
    written: &[u64],
    sample: usize,
    seed: u64,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kv = client.kv_client();
    let family = write_family(workload);
    let mut problems = Vec::new();
    for &k in written.choose_multiple(&mut rng, sample) {
        let expected = value(step, k, config.value_size);
        let read = tokio::time::timeout(Duration::from_secs(10), kv.get(key(family, k), None));
        match read.await {
            Err(_) => problems.push(format!("read-back of {}: timed out", key(family, k))),
            Ok(Err(e)) => problems.push(format!("read-back of {}: {e}", key(family, k))),
            Ok(Ok(resp)) => match resp.kvs().first() {
                Some(kv) if kv.value() == expected.as_slice() => {}
                Some(kv) => problems.push(format!(
                    "read-back of {}: acknowledged {:?}, read {:?}",
                    key(family, k),
                    preview(&expected),
                    preview(kv.value())
                )),
                None => problems.push(format!(
                    "read-back of {}: acknowledged write is missing",
                    key(family, k)
                )),
            },
        }
    }
    problems
}

/// The start of a value, for error messages.
fn preview(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
            assert_eq!(serde_json::to_value(w).unwrap(), w.name());
        }
        assert!("put".parse::<Workload>().unwrap_err().contains("put-rand"));
    }

    #[test]
    fn values_name_their_step_and_key_and_have_the_requested_size() {
        let cases = [
            (1, 7, 256, "s1:k7:"),
            (12, 0, 16, "s12:k0:"),
            (3, 99, 4, "s3:k"),
        ];
        for (step, k, size, prefix) in cases {
            let v = value(step, k, size);
            assert_eq!(v.len(), size, "{step}/{k}/{size}");
            assert!(v.starts_with(prefix.as_bytes()), "{step}/{k}/{size}");
        }
        assert_ne!(value(1, 7, 256), value(2, 7, 256));
        assert_ne!(value(1, 7, 256), value(1, 8, 256));
    }

    #[test]
    fn keys_sort_in_index_order() {
        assert_eq!(key("put", 42), "bench/put/0000000042");
        assert!(key("put", 9) < key("put", 10));
    }
}
