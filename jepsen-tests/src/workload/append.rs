//! The list-append workload: each key holds a comma-separated list that only grows.
//! An append reads the list (Range, remembering the key's mod_revision), then writes the
//! extended list in a Txn guarded by `mod_revision(key) == seen`, so it only applies if no
//! one appended in between; a failed guard is a definite failure. Reads return the whole
//! list. Elements are unique per run, so any read pins down exactly which appends it
//! saw and in which order. Keys rotate like the register workload's; every key is read
//! again at the end.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    connect, execute, join_workers, reachable, Ctx, KeyRotation, Outcome, Process, WorkloadError,
    FINAL_PROCESS_BASE,
};
use crate::history::{Kind, Recorder};

pub const PREFIX: &str = "jepsen/append/";
const OPS_PER_KEY: u64 = 80;

/// One list operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum AppendCall {
    Append {
        key: String,
        elem: i64,
    },
    Read {
        key: String,
        /// The list read (empty if the key was absent); absent on invocations.
        #[serde(default)]
        list: Option<Vec<i64>>,
    },
}

impl AppendCall {
    pub fn key(&self) -> &str {
        match self {
            AppendCall::Append { key, .. } | AppendCall::Read { key, .. } => key,
        }
    }
}

/// Parses a stored list. Unparseable elements become `i64::MIN`, which no append
/// produces, so corruption surfaces as an anomaly rather than an error.
pub fn decode(bytes: &[u8]) -> Vec<i64> {
    let s = String::from_utf8_lossy(bytes);
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(i64::MIN))
        .collect()
}

fn encode(list: &[i64]) -> String {
    list.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn read(client: &mut Client, key: &str) -> Result<(Vec<i64>, i64), etcd_client::Error> {
    let resp = client.get(key, None).await?;
    Ok(resp.kvs().first().map_or((Vec::new(), 0), |kv| {
        (decode(kv.value()), kv.mod_revision())
    }))
}

async fn perform(
    client: &mut Client,
    call: &AppendCall,
    timeout: std::time::Duration,
) -> Outcome<AppendCall> {
    match call {
        AppendCall::Read { key, .. } => match execute(timeout, true, read(client, key)).await {
            Outcome::Ok((list, _)) => Outcome::Ok(AppendCall::Read {
                key: key.clone(),
                list: Some(list),
            }),
            Outcome::Fail(e) | Outcome::Info(e) => Outcome::Fail(e),
        },
        AppendCall::Append { key, elem } => {
            // The read half changes nothing, so its errors are plain failures.
            let (mut list, seen_rev) = match execute(timeout, true, read(client, key)).await {
                Outcome::Ok(v) => v,
                Outcome::Fail(e) | Outcome::Info(e) => return Outcome::Fail(e),
            };
            list.push(*elem);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    seen_rev,
                )])
                .and_then([TxnOp::put(key.as_str(), encode(&list), None)]);
            match execute(timeout, false, client.txn(txn)).await {
                Outcome::Ok(resp) if resp.succeeded() => Outcome::Ok(call.clone()),
                Outcome::Ok(_) => Outcome::Fail("concurrent append won the race".into()),
                Outcome::Fail(e) => Outcome::Fail(e),
                Outcome::Info(e) => Outcome::Info(e),
            }
        }
    }
}

/// Runs the workload until `ctx.stop`.
pub async fn run(ctx: &Ctx, rec: Arc<Recorder<AppendCall>>) -> Result<(), WorkloadError> {
    let rotation = Arc::new(KeyRotation::new(PREFIX, OPS_PER_KEY, 2));
    let next_elem = Arc::new(AtomicI64::new(1));
    let mut clients = Vec::new();
    for w in 0..ctx.concurrency {
        clients.push(connect(ctx.endpoint_for(w)?, ctx.op_timeout).await?);
    }
    let mut clients = clients.into_iter();
    join_workers(ctx.concurrency, |w| {
        let ctx = ctx.clone();
        let rec = rec.clone();
        let rotation = rotation.clone();
        let next_elem = next_elem.clone();
        let client = clients.next();
        async move {
            let Some(mut client) = client else { return };
            let Ok(endpoint) = ctx.endpoint_for(w).map(str::to_string) else {
                return;
            };
            let mut rng = ctx.rng_for(w, 2);
            let mut process = Process::new(w, ctx.concurrency);
            let mut last_failed = false;
            while ctx.pace(&mut rng).await {
                if last_failed && !reachable(&endpoint).await {
                    continue;
                }
                let key = rotation.next(&mut rng);
                let call = if rng.random_bool(0.5) {
                    AppendCall::Read { key, list: None }
                } else {
                    AppendCall::Append {
                        key,
                        elem: next_elem.fetch_add(1, Ordering::Relaxed),
                    }
                };
                rec.record(process.id(), Kind::Invoke, call.clone(), None);
                let outcome = perform(&mut client, &call, ctx.op_timeout).await;
                let kind = outcome.kind();
                match outcome {
                    Outcome::Ok(done) => rec.record(process.id(), kind, done, None),
                    Outcome::Fail(e) | Outcome::Info(e) => {
                        rec.record(process.id(), kind, call, Some(e))
                    }
                };
                ctx.stats.count(kind);
                process.completed(kind);
                last_failed = kind != Kind::Ok;
            }
        }
    })
    .await
}

/// Reads every key once more after the cluster healed, so lost appends are exposed.
pub async fn final_reads(
    endpoints: &[String],
    rec: &Recorder<AppendCall>,
    op_timeout: std::time::Duration,
) -> Result<usize, WorkloadError> {
    let mut keys: Vec<String> = rec
        .events()
        .iter()
        .map(|e| e.op.key().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    let mut clients = Vec::new();
    for e in endpoints {
        clients.push(connect(e, op_timeout).await?);
    }
    if clients.is_empty() {
        return Err(WorkloadError::NoEndpoints);
    }
    let mut done = 0;
    for (i, key) in keys.iter().enumerate() {
        let process = FINAL_PROCESS_BASE + i as u64;
        for attempt in 0..clients.len() * 3 {
            let n = clients.len();
            let call = AppendCall::Read {
                key: key.clone(),
                list: None,
            };
            rec.record(process, Kind::Invoke, call.clone(), None);
            match perform(&mut clients[attempt % n], &call, op_timeout).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_encoding_round_trips() {
        assert_eq!(decode(b""), Vec::<i64>::new());
        assert_eq!(decode(encode(&[3, 1, 2]).as_bytes()), vec![3, 1, 2]);
        assert_eq!(decode(b"1,x"), vec![1, i64::MIN]);
    }
}
