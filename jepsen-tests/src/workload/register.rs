//! The register workload: many independent keys, each an integer register, driven with
//! linearizable reads (Range), writes (Put) and compare-and-set (a Txn comparing the
//! value). Values come from a small domain, as in Jepsen's etcd tests, so CAS often
//! succeeds and reads are ambiguous enough to be interesting. After the run every key is
//! read once more, so a write that was acknowledged and then lost cannot hide.

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    connect, execute, join_workers, reachable, Ctx, KeyRotation, Outcome, Process, WorkloadError,
    FINAL_PROCESS_BASE,
};
use crate::history::{Kind, Recorder};

/// Key prefix of this workload.
pub const PREFIX: &str = "jepsen/register/";
/// Values are drawn from `0..VALUES`.
const VALUES: i64 = 5;
/// Operations per key before the run moves on; keeps each WGL search small.
const OPS_PER_KEY: u64 = 120;

/// One register operation. On invocations result fields are absent; completions carry
/// what the server answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum RegisterCall {
    Read {
        key: String,
        /// The value read; `None` when the key did not exist (or, on invocations, unknown).
        #[serde(default)]
        value: Option<i64>,
    },
    Write {
        key: String,
        value: i64,
    },
    Cas {
        key: String,
        from: i64,
        to: i64,
        /// Whether the compare matched; present on `ok` completions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        succeeded: Option<bool>,
    },
}

impl RegisterCall {
    pub fn key(&self) -> &str {
        match self {
            RegisterCall::Read { key, .. }
            | RegisterCall::Write { key, .. }
            | RegisterCall::Cas { key, .. } => key,
        }
    }
}

/// Values the workload cannot parse still reach the checker, as a number no write ever
/// produces, so they show up as an anomaly instead of vanishing.
const GARBAGE: i64 = i64::MIN;

fn parse_value(bytes: &[u8]) -> i64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(GARBAGE)
}

async fn perform(
    client: &mut Client,
    call: &RegisterCall,
) -> Result<RegisterCall, etcd_client::Error> {
    match call {
        RegisterCall::Read { key, .. } => {
            let resp = client.get(key.as_str(), None).await?;
            Ok(RegisterCall::Read {
                key: key.clone(),
                value: resp.kvs().first().map(|kv| parse_value(kv.value())),
            })
        }
        RegisterCall::Write { key, value } => {
            client.put(key.as_str(), value.to_string(), None).await?;
            Ok(call.clone())
        }
        RegisterCall::Cas { key, from, to, .. } => {
            let txn = Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    from.to_string(),
                )])
                .and_then([TxnOp::put(key.as_str(), to.to_string(), None)]);
            let resp = client.txn(txn).await?;
            Ok(RegisterCall::Cas {
                key: key.clone(),
                from: *from,
                to: *to,
                succeeded: Some(resp.succeeded()),
            })
        }
    }
}

/// Runs the workload until `ctx.stop`, then reads every key once more.
pub async fn run(ctx: &Ctx, rec: Arc<Recorder<RegisterCall>>) -> Result<(), WorkloadError> {
    let rotation = Arc::new(KeyRotation::new(PREFIX, OPS_PER_KEY, 2));
    let mut clients = Vec::new();
    for w in 0..ctx.concurrency {
        clients.push(connect(ctx.endpoint_for(w)?, ctx.op_timeout).await?);
    }
    let mut clients = clients.into_iter();
    join_workers(ctx.concurrency, |w| {
        let ctx = ctx.clone();
        let rec = rec.clone();
        let rotation = rotation.clone();
        let client = clients.next();
        async move {
            if let Some(client) = client {
                worker(w, ctx, rec, rotation, client).await;
            }
        }
    })
    .await?;
    Ok(())
}

async fn worker(
    w: usize,
    ctx: Ctx,
    rec: Arc<Recorder<RegisterCall>>,
    rotation: Arc<KeyRotation>,
    mut client: Client,
) {
    let mut rng = ctx.rng_for(w, 1);
    let mut process = Process::new(w, ctx.concurrency);
    let Ok(endpoint) = ctx.endpoint_for(w).map(str::to_string) else {
        return;
    };
    let mut last_failed = false;
    while ctx.pace(&mut rng).await {
        if last_failed && !reachable(&endpoint).await {
            continue;
        }
        let key = rotation.next(&mut rng);
        let call = match rng.random_range(0..4) {
            0 | 1 => RegisterCall::Read { key, value: None },
            2 => RegisterCall::Write {
                key,
                value: rng.random_range(0..VALUES),
            },
            _ => RegisterCall::Cas {
                key,
                from: rng.random_range(0..VALUES),
                to: rng.random_range(0..VALUES),
                succeeded: None,
            },
        };
        let read_only = matches!(call, RegisterCall::Read { .. });
        rec.record(process.id(), Kind::Invoke, call.clone(), None);
        let outcome = execute(ctx.op_timeout, read_only, perform(&mut client, &call)).await;
        let kind = outcome.kind();
        match outcome {
            Outcome::Ok(done) => rec.record(process.id(), kind, done, None),
            Outcome::Fail(e) | Outcome::Info(e) => rec.record(process.id(), kind, call, Some(e)),
        };
        ctx.stats.count(kind);
        process.completed(kind);
        last_failed = kind != Kind::Ok;
    }
}

/// Reads every key used during the run, through any member that answers, after the
/// cluster has healed. Retries each read a few times: these reads are what exposes lost
/// writes, so they should not be given up lightly.
pub async fn final_reads(
    endpoints: &[String],
    rec: &Recorder<RegisterCall>,
    op_timeout: std::time::Duration,
) -> Result<usize, WorkloadError> {
    let keys = keys_in_history(rec);
    let mut clients = Vec::new();
    for e in endpoints {
        clients.push(connect(e, op_timeout).await?);
    }
    let mut done = 0;
    for (i, key) in keys.iter().enumerate() {
        let process = FINAL_PROCESS_BASE + i as u64;
        let n = clients.len();
        if n == 0 {
            return Err(WorkloadError::NoEndpoints);
        }
        for attempt in 0..n * 3 {
            let c = &mut clients[attempt % n];
            let call = RegisterCall::Read {
                key: key.clone(),
                value: None,
            };
            rec.record(process, Kind::Invoke, call.clone(), None);
            match execute(op_timeout, true, perform(c, &call)).await {
                Outcome::Ok(v) => {
                    rec.record(process, Kind::Ok, v, None);
                    done += 1;
                    break;
                }
                Outcome::Fail(e) | Outcome::Info(e) => {
                    rec.record(process, Kind::Fail, call, Some(e));
                }
            }
        }
    }
    Ok(done)
}

fn keys_in_history(rec: &Recorder<RegisterCall>) -> Vec<String> {
    let mut keys: Vec<String> = rec
        .events()
        .iter()
        .map(|e| e.op.key().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}
