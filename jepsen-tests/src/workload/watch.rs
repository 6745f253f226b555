//! The watch workload, after etcd's robustness tests: writers put unique values under a
//! prefix (sometimes two keys in one Txn, so one revision carries several events, which
//! is what makes atomicity observable), while watchers watch the prefix, periodically
//! drop their stream on purpose and resume from the revision after the last one they
//! saw (or were told about via a progress notification), and request progress
//! notifications. Once the run is over and the cluster healed, one reference watch
//! replays everything from the start revision: the checker compares every watcher and
//! every acknowledged write with it.
//!
//! Watch records are not request/response pairs, so the history interleaves paired
//! `write` operations with unpaired watch observations (all recorded as `ok`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, TxnOp, WatchOptions, WatchResponse};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    connect, execute, join_workers, reachable, Ctx, Outcome, Process, WorkloadError,
    FINAL_PROCESS_BASE,
};
use crate::history::{Kind, Recorder};

pub const PREFIX: &str = "jepsen/watch/";
const KEYS: u32 = 8;
/// Watcher process ids start here so they never collide with writers'.
pub const WATCHER_PROCESS_BASE: u64 = 1 << 32;

/// One event as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub rev: i64,
    pub key: String,
    /// Empty for deletes.
    pub value: String,
    pub delete: bool,
}

/// A record in a watch history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum WatchCall {
    /// A writer's Txn of one or more puts (paired invoke/completion). `revision` is the
    /// revision the server reported, on `ok` completions.
    Write {
        puts: Vec<(String, String)>,
        #[serde(default)]
        revision: Option<i64>,
    },
    /// A watcher (re)opened its watch from `start_rev`.
    Start {
        watcher: u64,
        session: u64,
        start_rev: i64,
    },
    /// One watch response. `progress` marks a progress notification (no events): the
    /// server promises everything up to `header_rev` has been delivered.
    Response {
        watcher: u64,
        session: u64,
        header_rev: i64,
        progress: bool,
        events: Vec<WatchEvent>,
    },
    /// The session ended (on purpose, by error, or because the server canceled it).
    End {
        watcher: u64,
        session: u64,
        reason: String,
    },
    /// The reference replay after the run (paired invoke/completion): every event from
    /// `from_rev` through `to_rev`, the revision current when it started. `complete`
    /// is false if it could not read that far.
    Reference {
        from_rev: i64,
        to_rev: i64,
        #[serde(default)]
        events: Vec<WatchEvent>,
        #[serde(default)]
        complete: bool,
    },
}

fn convert(resp: &WatchResponse) -> Vec<WatchEvent> {
    resp.events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(WatchEvent {
                rev: kv.mod_revision(),
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                delete: e.event_type() == EventType::Delete,
            })
        })
        .collect()
}

/// Runs writers and watchers until `ctx.stop`; returns the revision watchers started at.
pub async fn run(ctx: &Ctx, rec: Arc<Recorder<WatchCall>>) -> Result<i64, WorkloadError> {
    let endpoint = ctx.endpoint_for(0)?.to_string();
    let mut probe = connect(&endpoint, ctx.op_timeout).await?;
    // The start revision: everything after the current one belongs to this run.
    let start_rev = match execute(ctx.op_timeout, true, probe.get(PREFIX, None)).await {
        Outcome::Ok(r) => r.header().map_or(1, |h| h.revision()) + 1,
        Outcome::Fail(e) | Outcome::Info(e) => {
            return Err(WorkloadError::Task(format!(
                "cannot read the start revision: {e}"
            )))
        }
    };
    let writers = (ctx.concurrency / 2).max(1);
    let watchers = ctx.concurrency.saturating_sub(writers).max(1);
    let counter = Arc::new(AtomicI64::new(0));
    join_workers(writers + watchers, |i| {
        let ctx = ctx.clone();
        let rec = rec.clone();
        let counter = counter.clone();
        async move {
            if i < writers {
                writer(i, writers, ctx, rec, counter).await;
            } else {
                watcher(i - writers, ctx, rec, start_rev).await;
            }
        }
    })
    .await?;
    Ok(start_rev)
}

async fn writer(
    w: usize,
    writers: usize,
    ctx: Ctx,
    rec: Arc<Recorder<WatchCall>>,
    counter: Arc<AtomicI64>,
) {
    let Ok(endpoint) = ctx.endpoint_for(w).map(str::to_string) else {
        return;
    };
    let Ok(mut client) = connect(&endpoint, ctx.op_timeout).await else {
        return;
    };
    let mut rng = ctx.rng_for(w, 3);
    let mut process = Process::new(w, writers);
    let mut last_failed = false;
    // Writers get the whole rate: watchers issue no operations of their own.
    let mut pacing = ctx.clone();
    pacing.concurrency = writers;
    while pacing.pace(&mut rng).await {
        if last_failed && !reachable(&endpoint).await {
            continue;
        }
        let n = if rng.random_bool(0.3) { 2 } else { 1 };
        let first = rng.random_range(0..KEYS);
        let puts: Vec<(String, String)> = (0..n)
            .map(|j| {
                let v = counter.fetch_add(1, Ordering::Relaxed);
                (format!("{PREFIX}{}", (first + j) % KEYS), format!("v{v}"))
            })
            .collect();
        let call = WatchCall::Write {
            puts: puts.clone(),
            revision: None,
        };
        rec.record(process.id(), Kind::Invoke, call.clone(), None);
        let ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        let outcome = execute(
            ctx.op_timeout,
            false,
            client.txn(etcd_client::Txn::new().and_then(ops)),
        )
        .await;
        let kind = outcome.kind();
        match outcome {
            Outcome::Ok(resp) => rec.record(
                process.id(),
                kind,
                WatchCall::Write {
                    puts,
                    revision: resp.header().map(|h| h.revision()),
                },
                None,
            ),
            Outcome::Fail(e) | Outcome::Info(e) => rec.record(process.id(), kind, call, Some(e)),
        };
        ctx.stats.count(kind);
        process.completed(kind);
        last_failed = kind != Kind::Ok;
    }
}

async fn watcher(w: usize, ctx: Ctx, rec: Arc<Recorder<WatchCall>>, start_rev: i64) {
    let Ok(endpoint) = ctx.endpoint_for(w + 1).map(str::to_string) else {
        return;
    };
    let Ok(mut client) = connect(&endpoint, ctx.op_timeout).await else {
        return;
    };
    let id = w as u64;
    let process = WATCHER_PROCESS_BASE + id;
    let mut rng = ctx.rng_for(w, 4);
    let mut next_rev = start_rev;
    let mut session = 0u64;
    while !ctx.stopped() {
        if !reachable(&endpoint).await {
            ctx.sleep(Duration::from_millis(200)).await;
            continue;
        }
        session += 1;
        rec.record(
            process,
            Kind::Ok,
            WatchCall::Start {
                watcher: id,
                session,
                start_rev: next_rev,
            },
            None,
        );
        let reason = watch_session(
            &ctx,
            &mut client,
            &rec,
            process,
            id,
            session,
            &mut next_rev,
            &mut rng,
        )
        .await;
        rec.record(
            process,
            Kind::Ok,
            WatchCall::End {
                watcher: id,
                session,
                reason,
            },
            None,
        );
    }
}

/// One watch stream, until it breaks, the run stops, or the watcher drops it on purpose
/// to exercise resumption. Returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn watch_session(
    ctx: &Ctx,
    client: &mut Client,
    rec: &Recorder<WatchCall>,
    process: u64,
    id: u64,
    session: u64,
    next_rev: &mut i64,
    rng: &mut rand::rngs::StdRng,
) -> String {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*next_rev)
        .with_progress_notify();
    let mut stream =
        match tokio::time::timeout(ctx.op_timeout, client.watch(PREFIX, Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return format!("watch failed: {}", super::error_chain(&e)),
            Err(_) => return "watch creation timed out".into(),
        };
    let lifetime = tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000)));
    tokio::pin!(lifetime);
    let mut progress_tick = tokio::time::interval(Duration::from_millis(400));
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = &mut lifetime => return "dropped on purpose to test resumption".into(),
            _ = stop.changed() => return "run stopped".into(),
            _ = progress_tick.tick(), if ctx.watch_progress_requests => {
                // A lost request only means no notification; the stream errors separately.
                let _ = stream.request_progress().await;
            }
            msg = tokio::time::timeout(Duration::from_secs(3), stream.message()) => {
                let resp = match msg {
                    Err(_) => return "no response for 3s".into(),
                    Ok(Err(e)) => return format!("stream error: {}", super::error_chain(&e)),
                    Ok(Ok(None)) => return "stream closed by server".into(),
                    Ok(Ok(Some(r))) => r,
                };
                if resp.canceled() {
                    return format!("canceled by server: {} (compact revision {})", resp.cancel_reason(), resp.compact_revision());
                }
                if resp.created() && resp.events().is_empty() {
                    continue;
                }
                let events = convert(&resp);
                let header_rev = resp.header().map_or(0, |h| h.revision());
                let progress = events.is_empty();
                if let Some(last) = events.last() {
                    *next_rev = (*next_rev).max(last.rev + 1);
                } else {
                    *next_rev = (*next_rev).max(header_rev + 1);
                }
                rec.record(process, Kind::Ok, WatchCall::Response { watcher: id, session, header_rev, progress, events }, None);
            }
        }
    }
}

/// After the run: replays every event from `start_rev` up to the current revision
/// through one member, as the reference the checker compares everything with.
pub async fn reference(
    endpoints: &[String],
    rec: &Recorder<WatchCall>,
    start_rev: i64,
    op_timeout: Duration,
) -> Result<(), WorkloadError> {
    let mut last_err = String::from("no endpoint answered");
    for endpoint in endpoints {
        let mut client = connect(endpoint, op_timeout).await?;
        let to_rev = match execute(op_timeout, true, client.get(PREFIX, None)).await {
            Outcome::Ok(r) => r.header().map_or(0, |h| h.revision()),
            Outcome::Fail(e) | Outcome::Info(e) => {
                last_err = e;
                continue;
            }
        };
        let call = WatchCall::Reference {
            from_rev: start_rev,
            to_rev,
            events: vec![],
            complete: false,
        };
        rec.record(FINAL_PROCESS_BASE, Kind::Invoke, call, None);
        let (events, complete) = replay(&mut client, start_rev, to_rev).await;
        rec.record(
            FINAL_PROCESS_BASE,
            Kind::Ok,
            WatchCall::Reference {
                from_rev: start_rev,
                to_rev,
                events,
                complete,
            },
            None,
        );
        return Ok(());
    }
    Err(WorkloadError::Task(format!("reference watch: {last_err}")))
}

async fn replay(client: &mut Client, from: i64, to: i64) -> (Vec<WatchEvent>, bool) {
    let mut events = Vec::new();
    if to < from {
        return (events, true);
    }
    let opts = WatchOptions::new().with_prefix().with_start_revision(from);
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(5), client.watch(PREFIX, Some(opts))).await
    else {
        return (events, false);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if events.last().is_some_and(|e: &WatchEvent| e.rev >= to) {
            return (events, true);
        }
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(resp))) => events.extend(convert(&resp).into_iter().filter(|e| e.rev <= to)),
            _ => return (events, false),
        }
    }
}
