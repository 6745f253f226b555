//! A whole test run: start the cluster, run the workload while the nemesis injects
//! faults, stop both at the time limit, heal, wait for recovery, do the workload's final
//! reads, save the history, check it, and summarize. Printing is left to the caller;
//! the progress line goes to stderr while the run is going.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::checker::{self, CheckError, Report, Verdict};
use crate::clock::TokioClock;
use crate::cluster::{Cluster, ClusterConfig, ClusterError, Target};
use crate::history::{self, Event, HistoryError, Kind, Recorder};
use crate::nemesis::{self, FaultKind, NemesisLog, NemesisSpec, Schedule};
use crate::process::OsSpawner;
use crate::workload::{self, Ctx, Stats, WorkloadError, WorkloadKind, FINAL_PROCESS_BASE};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub workload: WorkloadKind,
    pub nemesis: NemesisSpec,
    pub time_limit: Duration,
    pub rate: f64,
    pub concurrency: usize,
    pub seed: u64,
    pub target: Target,
    pub members: usize,
    pub binary: PathBuf,
    /// Each run gets a fresh directory below this.
    pub store: PathBuf,
    pub nemesis_interval: Duration,
    pub op_timeout: Duration,
    /// How long to wait for the cluster to become healthy after healing.
    pub recovery_time: Duration,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// Print a progress line to stderr while running.
    pub progress: bool,
    /// Keep the members' data dirs after the run (logs and history are always kept).
    pub keep_data: bool,
    /// Watch workload: ask for progress notifications (RequestProgress) while watching.
    pub watch_progress_requests: bool,
}

/// Errors that abort a run (as opposed to anomalies, which are verdicts).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the nemesis task failed: {0}")]
    Nemesis(String),
}

/// Operation counts and latencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpStats {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Counts client operations (not the harness's final reads) in a history; `is_op`
/// selects the records that are request/response operations.
pub fn op_stats<T>(events: &[Event<T>], is_op: impl Fn(&T) -> bool) -> OpStats {
    let ops: Vec<&Event<T>> = events
        .iter()
        .filter(|e| e.process < FINAL_PROCESS_BASE && is_op(&e.op))
        .collect();
    let mut stats = OpStats::default();
    let mut latencies = Vec::new();
    let mut pending: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for e in ops {
        match e.kind {
            Kind::Invoke => {
                pending.insert(e.process, e.time_ns);
            }
            kind => {
                let start = pending.remove(&e.process);
                match kind {
                    Kind::Ok => {
                        stats.ok += 1;
                        latencies.extend(start.map(|s| e.time_ns.saturating_sub(s)));
                    }
                    Kind::Fail => stats.fail += 1,
                    _ => stats.info += 1,
                }
            }
        }
    }
    // Operations cut off by the end of the history are indeterminate too.
    stats.info += pending.len();
    latencies.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let last = latencies.len().checked_sub(1)?;
        let idx = ((last as f64) * p).round() as usize;
        Some(latencies[idx.min(last)] as f64 / 1e6)
    };
    stats.p50_ms = pct(0.50);
    stats.p99_ms = pct(0.99);
    stats
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: Report,
    pub stats: OpStats,
    pub nemesis: NemesisLog,
    pub dir: PathBuf,
    pub history: PathBuf,
    /// `Some(reason)` if the cluster did not become healthy again after healing.
    pub unrecovered: Option<String>,
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Faults applied, by kind.
    pub fn faults(&self) -> BTreeMap<&'static str, usize> {
        self.nemesis.applied()
    }
}

/// Runs a test end to end.
pub async fn run(cfg: RunConfig) -> Result<RunOutcome, RunError> {
    validate(&cfg)?;
    let started = tokio::time::Instant::now();
    let dir = cfg.store.join(format!(
        "{}-{}-{}m-seed{}-{}",
        cfg.workload.name(),
        cfg.target.name(),
        cfg.members,
        cfg.seed,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    ));
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    tracing::info!(dir = %dir.display(), "starting cluster");
    let cluster = Cluster::start(
        ClusterConfig {
            target: cfg.target,
            binary: cfg.binary.clone(),
            members: cfg.members,
            dir: dir.clone(),
            heartbeat_ms: cfg.heartbeat_ms,
            election_ms: cfg.election_ms,
            lazy_disk: cfg.nemesis.faults.contains(&FaultKind::LoseUnsynced),
        },
        Arc::new(OsSpawner),
        Duration::from_secs(30),
    )
    .await?;
    let endpoints = cluster.endpoints();
    let history_path = dir.join("history.jsonl");
    let clock = Arc::new(TokioClock::start());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(Stats::default());
    let ctx = Ctx {
        endpoints: endpoints.clone(),
        concurrency: cfg.concurrency,
        rate: cfg.rate,
        seed: cfg.seed,
        op_timeout: cfg.op_timeout,
        stop: stop_rx.clone(),
        stats: stats.clone(),
        watch_progress_requests: cfg.watch_progress_requests,
    };

    // The nemesis owns the cluster while faults are injected and hands it back healed.
    let schedule = Schedule::new(cfg.seed, cfg.nemesis_interval, cfg.nemesis.faults.clone());
    let nemesis_stop = stop_rx.clone();
    let nemesis_task = tokio::spawn(async move {
        let mut cluster = cluster;
        let log = nemesis::run(&mut cluster, schedule, nemesis_stop, started).await;
        (cluster, log)
    });
    let progress = cfg.progress.then(|| {
        tokio::spawn(progress_line(
            stats.clone(),
            tokio::time::Instant::now(),
            cfg.time_limit,
            stop_rx.clone(),
        ))
    });
    let timer = tokio::spawn({
        let stop_tx = stop_tx.clone();
        let limit = cfg.time_limit;
        async move {
            tokio::time::sleep(limit).await;
            stop_tx.send_replace(true);
        }
    });

    let recovery_time = cfg.recovery_time;
    let keep_data = cfg.keep_data;
    let recover = move |nemesis_task: tokio::task::JoinHandle<(Cluster, NemesisLog)>| async move {
        stop_tx.send_replace(true);
        let (mut cluster, log) = nemesis_task
            .await
            .map_err(|e| RunError::Nemesis(e.to_string()))?;
        let unrecovered = cluster
            .wait_ready(recovery_time)
            .await
            .err()
            .map(|e| e.to_string());
        if let Some(why) = &unrecovered {
            tracing::warn!("cluster did not recover: {why}");
        }
        Ok::<_, RunError>((cluster, log, unrecovered))
    };

    // The same sequence for every workload; only the operation type and the workload's
    // own functions differ. `$rec`, `$val` and `$events` name what the caller's
    // expressions refer to.
    macro_rules! drive {
        ($call:ty, $rec:ident, $val:ident, $events:ident,
         run: $run:expr, final: $final:expr, check: $check:expr, is_op: $is_op:expr) => {{
            let $rec: Arc<Recorder<$call>> =
                Arc::new(Recorder::new(clock.clone(), Some(&history_path))?);
            let run_result = $run.await;
            let (cluster, log, unrecovered) = recover(nemesis_task).await?;
            let $val = run_result?;
            if let Err(e) = $final.await {
                tracing::warn!("final phase: {e}");
            }
            // Kill the servers before checking: a long check should not keep them running.
            let mut cluster = cluster;
            if keep_data {
                cluster.shutdown();
            } else {
                cluster.remove_data();
            }
            drop(cluster);
            let $events = $rec.finish().map_err(|source| RunError::Io {
                what: format!("writing {}", history_path.display()),
                source,
            })?;
            let report = $check?;
            (report, op_stats(&$events, $is_op), log, unrecovered)
        }};
    }
    let op_timeout = cfg.op_timeout;
    use workload::{append, lock, register, watch as watchw};
    let (mut report, op_stats, log, unrecovered) = match cfg.workload {
        WorkloadKind::Register => drive!(register::RegisterCall, rec, _unit, events,
            run: register::run(&ctx, rec.clone()),
            final: register::final_reads(&endpoints, &rec, op_timeout),
            check: checker::register::check(&events, checker::DEFAULT_BUDGET),
            is_op: |_| true),
        WorkloadKind::Append => drive!(append::AppendCall, rec, _unit, events,
            run: append::run(&ctx, rec.clone()),
            final: append::final_reads(&endpoints, &rec, op_timeout),
            check: checker::append::check(&events, checker::DEFAULT_BUDGET),
            is_op: |_| true),
        WorkloadKind::Watch => drive!(watchw::WatchCall, rec, start_rev, events,
            run: watchw::run(&ctx, rec.clone()),
            final: watchw::reference(&endpoints, &rec, start_rev, op_timeout),
            check: checker::watch::check(&events),
            is_op: |op| matches!(op, watchw::WatchCall::Write { .. })),
        WorkloadKind::Lock => drive!(lock::LockCall, rec, _unit, events,
            run: lock::run(&ctx, rec.clone()),
            final: lock::final_read(&endpoints, &rec, op_timeout),
            check: checker::lock::check(&events),
            is_op: |op| !matches!(op, lock::LockCall::ReadEntries { .. })),
    };
    timer.abort();
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    if let Some(why) = &unrecovered {
        report
            .notes
            .push(format!("cluster did not recover after healing: {why}"));
        if report.verdict == Verdict::Valid {
            // Without recovery the final reads may be missing, so "no anomaly" is weak.
            report.verdict = Verdict::Unknown {
                reason: "the cluster did not recover after the faults were healed".into(),
            };
        }
    }
    write_nemesis_log(&dir, &log);
    Ok(RunOutcome {
        report,
        stats: op_stats,
        nemesis: log,
        dir,
        history: history_path,
        unrecovered,
        elapsed: started.elapsed(),
    })
}

fn validate(cfg: &RunConfig) -> Result<(), RunError> {
    if ![1, 3, 5].contains(&cfg.members) {
        return Err(RunError::Config(format!(
            "--members must be 1, 3 or 5 (got {})",
            cfg.members
        )));
    }
    if cfg.concurrency == 0 {
        return Err(RunError::Config("--concurrency must be at least 1".into()));
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        return Err(RunError::Config("--rate must be a positive number".into()));
    }
    if cfg.time_limit.is_zero() {
        return Err(RunError::Config("--time-limit must be positive".into()));
    }
    cfg.nemesis
        .validate(cfg.members)
        .map_err(RunError::Config)?;
    if !cfg.binary.is_file() {
        return Err(RunError::Config(format!(
            "{} binary not found at {}",
            cfg.target.name(),
            cfg.binary.display()
        )));
    }
    Ok(())
}

fn write_nemesis_log(dir: &std::path::Path, log: &NemesisLog) {
    let mut text = String::new();
    for e in &log.events {
        text.push_str(&format!(
            "{:>8.3}s {} {}: {}\n",
            e.at.as_secs_f64(),
            if e.start { "start" } else { "heal " },
            e.kind.name(),
            e.what
        ));
    }
    for p in &log.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    if let Err(e) = std::fs::write(dir.join("nemesis.log"), text) {
        tracing::warn!("cannot write nemesis.log: {e}");
    }
}

async fn progress_line(
    stats: Arc<Stats>,
    started: tokio::time::Instant,
    limit: Duration,
    stop: watch::Receiver<bool>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ok, fail, info) = stats.snapshot();
        let phase = if *stop.borrow() {
            "healing / final reads"
        } else {
            "running"
        };
        let line = format!(
            "[{:>4.0}s/{:.0}s] {phase}: {ok} ok, {fail} fail, {info} info",
            started.elapsed().as_secs_f64(),
            limit.as_secs_f64()
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Re-checks a saved history.
pub fn check_saved(
    workload: WorkloadKind,
    path: &std::path::Path,
) -> Result<(Report, OpStats), RunError> {
    let report = checker::check_file(workload, path)?;
    let stats = match workload {
        WorkloadKind::Register => op_stats(
            &history::load::<workload::register::RegisterCall>(path)?,
            |_| true,
        ),
        WorkloadKind::Append => op_stats(
            &history::load::<workload::append::AppendCall>(path)?,
            |_| true,
        ),
        WorkloadKind::Watch => {
            op_stats(&history::load::<workload::watch::WatchCall>(path)?, |op| {
                matches!(op, workload::watch::WatchCall::Write { .. })
            })
        }
        WorkloadKind::Lock => op_stats(&history::load::<workload::lock::LockCall>(path)?, |op| {
            !matches!(op, workload::lock::LockCall::ReadEntries { .. })
        }),
    };
    Ok((report, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: u64, process: u64, kind: Kind, time_ms: u64) -> Event<()> {
        Event {
            index,
            time_ns: time_ms * 1_000_000,
            process,
            kind,
            op: (),
            error: None,
        }
    }

    #[test]
    fn stats_count_client_ops_and_latencies() {
        let events = vec![
            ev(0, 1, Kind::Invoke, 0),
            ev(1, 1, Kind::Ok, 2),
            ev(2, 2, Kind::Invoke, 2),
            ev(3, 2, Kind::Fail, 3),
            ev(4, 3, Kind::Invoke, 3),
            ev(5, 3, Kind::Info, 9),
            ev(6, 1, Kind::Invoke, 10),
            ev(7, 1, Kind::Ok, 20),
            // Unfinished: counts as indeterminate.
            ev(8, 4, Kind::Invoke, 21),
            // The harness's own final read is not a client operation.
            ev(9, FINAL_PROCESS_BASE, Kind::Invoke, 30),
            ev(10, FINAL_PROCESS_BASE, Kind::Ok, 31),
        ];
        let s = op_stats(&events, |_| true);
        assert_eq!((s.ok, s.fail, s.info), (2, 1, 2));
        assert_eq!(s.p50_ms, Some(10.0));
        assert_eq!(s.p99_ms, Some(10.0));
        let none = op_stats::<()>(&[], |_| true);
        assert_eq!(none.p50_ms, None);
    }
}
