//! The lease/lock workload: a lock built from etcd primitives the way etcd's own
//! `concurrency.Mutex` is, but on plain KV so it needs no v3lock service. A client
//! grants a short lease (kept alive in the background), acquires by creating the lock
//! key with a Txn guarded by `create_revision(lock) == 0`, and while holding it performs
//! *fenced* writes: each creates a new entry key, guarded by
//! `create_revision(lock) == the revision it acquired at`. Then it releases (a guarded
//! delete, plus revoking the lease). At the end all entries are read back.
//!
//! Lease-based locks are not safe by wall-clock alone (a paused holder can outlive its
//! lease, which is what Jepsen found for etcd's locks), so the property checked is the
//! one etcd does promise: fenced writes of different holders never interleave, each
//! acquisition has its own revision, acknowledged fenced writes persist, and failed
//! ones never take effect.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    connect, execute, join_workers, reachable, Ctx, Outcome, Process, WorkloadError,
    FINAL_PROCESS_BASE,
};
use crate::history::{Kind, Recorder};

pub const LOCK_KEY: &str = "jepsen/lock/holder";
pub const ENTRY_PREFIX: &str = "jepsen/lock/entries/";
/// Lease TTL in seconds: short, so faults make leases expire during the run.
const LEASE_TTL: i64 = 2;

/// One lock operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum LockCall {
    /// Acquire; on `ok`, `lock_rev` is the lock key's create revision.
    Acquire {
        owner: u64,
        #[serde(default)]
        lock_rev: Option<i64>,
    },
    /// A fenced write creating `entry`, valid only while the lock is still `lock_rev`.
    Fenced {
        owner: u64,
        lock_rev: i64,
        entry: String,
    },
    Release {
        owner: u64,
        lock_rev: i64,
    },
    /// The end-of-run read of every entry: (key, fencing revision in its value, mod revision).
    ReadEntries {
        #[serde(default)]
        entries: Option<Vec<(String, i64, i64)>>,
    },
}

fn fence(lock_rev: i64) -> Compare {
    Compare::create_revision(LOCK_KEY, CompareOp::Equal, lock_rev)
}

/// Runs clients competing for the lock until `ctx.stop`.
pub async fn run(ctx: &Ctx, rec: Arc<Recorder<LockCall>>) -> Result<(), WorkloadError> {
    join_workers(ctx.concurrency, |w| {
        let ctx = ctx.clone();
        let rec = rec.clone();
        async move { worker(w, ctx, rec).await }
    })
    .await
}

async fn worker(w: usize, ctx: Ctx, rec: Arc<Recorder<LockCall>>) {
    let Ok(endpoint) = ctx.endpoint_for(w).map(str::to_string) else {
        return;
    };
    let Ok(mut client) = connect(&endpoint, ctx.op_timeout).await else {
        return;
    };
    let mut rng = ctx.rng_for(w, 5);
    let mut process = Process::new(w, ctx.concurrency);
    let mut seq = 0u64;
    while ctx.pace(&mut rng).await {
        if !reachable(&endpoint).await {
            continue;
        }
        // The owner id doubles as the process id, so history readers can follow one
        // holder; it changes after indeterminate results like every process id.
        let owner = process.id();
        let Outcome::Ok(lease) =
            execute(ctx.op_timeout, true, client.lease_grant(LEASE_TTL, None)).await
        else {
            continue;
        };
        let lease = lease.id();
        let keepalive = tokio::spawn(keep_alive(client.clone(), lease));
        let acquire = LockCall::Acquire {
            owner,
            lock_rev: None,
        };
        rec.record(owner, Kind::Invoke, acquire.clone(), None);
        let txn = Txn::new()
            .when([Compare::create_revision(LOCK_KEY, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                LOCK_KEY,
                owner.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let outcome = execute(ctx.op_timeout, false, client.txn(txn)).await;
        let lock_rev = match &outcome {
            Outcome::Ok(r) if r.succeeded() => r.header().map(|h| h.revision()),
            _ => None,
        };
        let kind = match (&outcome, lock_rev) {
            (Outcome::Ok(_), Some(_)) => Kind::Ok,
            (Outcome::Ok(_), None) | (Outcome::Fail(_), _) => Kind::Fail,
            (Outcome::Info(_), _) => Kind::Info,
        };
        let err = match &outcome {
            Outcome::Ok(_) if kind == Kind::Fail => Some("lock held by someone else".to_string()),
            Outcome::Fail(e) | Outcome::Info(e) => Some(e.clone()),
            Outcome::Ok(_) => None,
        };
        rec.record(owner, kind, LockCall::Acquire { owner, lock_rev }, err);
        ctx.stats.count(kind);
        process.completed(kind);
        if let Some(lock_rev) = lock_rev {
            hold(
                &ctx,
                &mut client,
                &rec,
                &mut process,
                owner,
                lock_rev,
                &mut seq,
                &mut rng,
            )
            .await;
        }
        keepalive.abort();
        // Best effort: an unrevoked lease just expires after its TTL.
        let _ = tokio::time::timeout(ctx.op_timeout, client.lease_revoke(lease)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn hold(
    ctx: &Ctx,
    client: &mut Client,
    rec: &Recorder<LockCall>,
    process: &mut Process,
    owner: u64,
    lock_rev: i64,
    seq: &mut u64,
    rng: &mut rand::rngs::StdRng,
) {
    for _ in 0..rng.random_range(1..=3) {
        *seq += 1;
        let entry = format!("{ENTRY_PREFIX}{owner:08}-{seq:06}");
        let call = LockCall::Fenced {
            owner,
            lock_rev,
            entry: entry.clone(),
        };
        let pid = process.id();
        rec.record(pid, Kind::Invoke, call.clone(), None);
        let txn = Txn::new().when([fence(lock_rev)]).and_then([TxnOp::put(
            entry.as_str(),
            lock_rev.to_string(),
            None,
        )]);
        let outcome = execute(ctx.op_timeout, false, client.txn(txn)).await;
        let (kind, err) = match &outcome {
            Outcome::Ok(r) if r.succeeded() => (Kind::Ok, None),
            Outcome::Ok(_) => (Kind::Fail, Some("lock lost (lease expired)".to_string())),
            Outcome::Fail(e) => (Kind::Fail, Some(e.clone())),
            Outcome::Info(e) => (Kind::Info, Some(e.clone())),
        };
        rec.record(pid, kind, call, err);
        ctx.stats.count(kind);
        process.completed(kind);
        if kind != Kind::Ok {
            return;
        }
        ctx.sleep(Duration::from_millis(rng.random_range(10..100)))
            .await;
    }
    let call = LockCall::Release { owner, lock_rev };
    let pid = process.id();
    rec.record(pid, Kind::Invoke, call.clone(), None);
    let txn = Txn::new()
        .when([fence(lock_rev)])
        .and_then([TxnOp::delete(LOCK_KEY, None)]);
    let outcome = execute(ctx.op_timeout, false, client.txn(txn)).await;
    let kind = outcome.kind();
    let err = match &outcome {
        Outcome::Fail(e) | Outcome::Info(e) => Some(e.clone()),
        Outcome::Ok(_) => None,
    };
    rec.record(pid, kind, call, err);
    ctx.stats.count(kind);
    process.completed(kind);
}

async fn keep_alive(mut client: Client, lease: i64) {
    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(LEASE_TTL as u64 * 1000 / 4)).await;
        if keeper.keep_alive().await.is_err() {
            return;
        }
        if !matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.message()).await,
            Ok(Ok(Some(_)))
        ) {
            return;
        }
    }
}

/// Reads every fenced entry after the run, through any member that answers.
pub async fn final_read(
    endpoints: &[String],
    rec: &Recorder<LockCall>,
    op_timeout: Duration,
) -> Result<(), WorkloadError> {
    let mut last = String::from("no endpoints");
    for (attempt, endpoint) in endpoints
        .iter()
        .cycle()
        .take(endpoints.len() * 3)
        .enumerate()
    {
        let mut client = connect(endpoint, op_timeout).await?;
        let process = FINAL_PROCESS_BASE + attempt as u64;
        rec.record(
            process,
            Kind::Invoke,
            LockCall::ReadEntries { entries: None },
            None,
        );
        match execute(
            op_timeout,
            true,
            client.get(ENTRY_PREFIX, Some(GetOptions::new().with_prefix())),
        )
        .await
        {
            Outcome::Ok(resp) => {
                let entries = resp
                    .kvs()
                    .iter()
                    .map(|kv| {
                        let fence = std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(i64::MIN);
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            fence,
                            kv.mod_revision(),
                        )
                    })
                    .collect();
                rec.record(
                    process,
                    Kind::Ok,
                    LockCall::ReadEntries {
                        entries: Some(entries),
                    },
                    None,
                );
                return Ok(());
            }
            Outcome::Fail(e) | Outcome::Info(e) => {
                rec.record(
                    process,
                    Kind::Fail,
                    LockCall::ReadEntries { entries: None },
                    Some(e.clone()),
                );
                last = e;
            }
        }
    }
    Err(WorkloadError::Task(format!(
        "final read of lock entries: {last}"
    )))
}
