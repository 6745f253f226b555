//! Running one closed-loop step: `--clients` tasks spread over the shared connections, each
//! sending one request at a time until the step's operations are used up, with a progress
//! line on stderr. Only acknowledged (and checked) operations count towards throughput and
//! latency; failures are counted and the first one kept.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::histogram::LatencyHistogram;
use crate::workload::Worker;

/// Time limits of a step.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long one operation may take before it counts as failed.
    pub op_timeout: Duration,
    /// How long the whole step may run; operations not started by then are not sent.
    pub step_timeout: Duration,
}

/// What a step measured.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub latency: LatencyHistogram,
    /// Key indices of acknowledged writes (empty for read-only workloads).
    pub written: Vec<u64>,
}

impl StepOutcome {
    /// Counts a failure, keeping the message if it is the first.
    pub fn add_error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    /// Acknowledged operations per second of wall time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.acked as f64 / secs
        } else {
            0.0
        }
    }
}

/// Counters shared by the tasks of a step and read by the progress line.
#[derive(Default)]
pub struct Counters {
    next_op: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("first-error lock");
        first.get_or_insert(message);
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("first-error lock").clone()
    }
}

/// Runs `ops` operations over `workers` (one task each) and merges what they measured.
pub async fn run_closed_loop(
    workers: Vec<Worker>,
    ops: u64,
    limits: Limits,
    label: &str,
) -> StepOutcome {
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = start + limits.step_timeout;
    let progress = Progress::start(label.to_string(), ops, counters.clone());

    // A JoinSet aborts its tasks when dropped, so an interrupted run leaves none behind.
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        let counters = counters.clone();
        tasks.spawn(async move {
            let mut latency = LatencyHistogram::new();
            loop {
                let index = counters.next_op.fetch_add(1, Ordering::Relaxed);
                if index >= ops || Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                match tokio::time::timeout(limits.op_timeout, worker.op(index)).await {
                    Ok(Ok(())) => {
                        latency.record(sent.elapsed());
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(message)) => counters.record_error(message),
                    Err(_) => counters
                        .record_error(format!("operation timed out after {:?}", limits.op_timeout)),
                }
            }
            (latency, worker.finish().await)
        });
    }

    let mut outcome = StepOutcome::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((latency, written)) => {
                outcome.latency.merge(&latency);
                outcome.written.extend(written);
            }
            Err(e) => counters.record_error(format!("client task failed: {e}")),
        }
    }
    outcome.elapsed = start.elapsed();
    progress.finish();

    outcome.acked = counters.acked.load(Ordering::Relaxed);
    outcome.errors = counters.errors.load(Ordering::Relaxed);
    outcome.first_error = counters.first_error();
    let unsent = ops.saturating_sub(outcome.acked + outcome.errors);
    if unsent > 0 {
        outcome.add_error(format!(
            "step deadline of {:?} reached with {unsent} operations not sent",
            limits.step_timeout
        ));
    }
    outcome
}

/// The progress line of a step on stderr: rewritten in place on a terminal, one line every
/// few seconds otherwise (so that logs stay readable).
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    label: String,
    total: u64,
    counters: Arc<Counters>,
    start: Instant,
}

impl Progress {
    pub fn start(label: String, total: u64, counters: Arc<Counters>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let period = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let start = Instant::now();
        let task = {
            let (label, counters) = (label.clone(), counters.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let line = progress_line(&label, total, &counters, start.elapsed());
                    let mut err = std::io::stderr().lock();
                    let _ = if tty {
                        write!(err, "\r{line}\x1b[K")
                    } else {
                        writeln!(err, "{line}")
                    };
                    let _ = err.flush();
                }
            })
        };
        Progress {
            task,
            label,
            total,
            counters,
            start,
        }
    }

    /// Stops the updates and prints the final line.
    pub fn finish(self) {
        self.task.abort();
        let line = progress_line(
            &self.label,
            self.total,
            &self.counters,
            self.start.elapsed(),
        );
        let mut err = std::io::stderr().lock();
        let _ = if err.is_terminal() {
            writeln!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
    }
}

impl Drop for Progress {
    /// Also stops the updates when the step is abandoned (interrupted run).
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn progress_line(label: &str, total: u64, counters: &Counters, elapsed: Duration) -> String {
    let acked = counters.acked.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let rate = acked as f64 / elapsed.as_secs_f64().max(1e-9);
    format!(
        "{label}: {}/{total} ops, {rate:.0} ops/s, {errors} errors, {:.1}s",
        acked + errors,
        elapsed.as_secs_f64()
    )
}
