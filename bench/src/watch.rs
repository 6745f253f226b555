//! The watch fan-out step, modelled on etcd's `benchmark watch-latency`: `--clients` watchers
//! (one gRPC watch stream each, spread over the shared connections) watch one key while a
//! single client puts to it at `--watch-put-rate`. The latency of an event is the time from
//! sending its put to a watcher receiving it; throughput is delivered events per second.
//!
//! Not a closed loop like the other workloads, so it has its own runner; it reports in the
//! same [`StepOutcome`]. A watcher that misses an acknowledged put, or sees puts out of
//! order, is an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchStream};
use tokio::sync::watch as signal;
use tokio::task::JoinSet;

use crate::histogram::LatencyHistogram;
use crate::runner::{Counters, Limits, Progress, StepOutcome};
use crate::workload::{key, value, Workload, WorkloadConfig, WorkloadError};

/// How long watchers keep listening for events after the last put was acknowledged.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// The send time of each put, in nanoseconds since the step started (0 = not sent), and
/// whether it was acknowledged.
struct Puts {
    sent_nanos: Vec<AtomicU64>,
    acked: Vec<AtomicBool>,
}

/// Runs one watch step with `watchers` watchers.
pub async fn run_watch_step(
    conns: &[Client],
    watchers: usize,
    config: &WorkloadConfig,
    step: u64,
    limits: Limits,
    label: &str,
) -> Result<StepOutcome, WorkloadError> {
    let watched = key("watch", step);
    let streams = create_watchers(conns, watchers, &watched, limits.op_timeout).await?;

    let total = config.watch_puts;
    let puts = Arc::new(Puts {
        sent_nanos: (0..total).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..total).map(|_| AtomicBool::new(false)).collect(),
    });
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(label.to_string(), total * watchers as u64, counters.clone());
    // Set once the putter is done: watchers stop listening at that instant plus the grace.
    let (stop_tx, stop_rx) = signal::channel::<Option<Instant>>(None);
    let start = Instant::now();

    let mut tasks = JoinSet::new();
    for stream in streams {
        let (puts, counters, stop_rx) = (puts.clone(), counters.clone(), stop_rx.clone());
        tasks.spawn(receive_events(stream, step, start, puts, counters, stop_rx));
    }

    let mut putter = conns[0].kv_client();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / config.watch_put_rate.max(1) as f64,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut put_errors = Vec::new();
    for seq in 0..total {
        tick.tick().await;
        if start.elapsed() >= limits.step_timeout {
            put_errors.push(format!(
                "step deadline of {:?} reached after {seq} of {total} puts",
                limits.step_timeout
            ));
            break;
        }
        let v = value(step, seq, config.value_size);
        // Stored before sending, so a watcher never sees an event without its send time.
        puts.sent_nanos[seq as usize].store(nanos_since(start).max(1), Ordering::Release);
        match tokio::time::timeout(limits.op_timeout, putter.put(watched.clone(), v, None)).await {
            Ok(Ok(_)) => puts.acked[seq as usize].store(true, Ordering::Release),
            Ok(Err(e)) => put_errors.push(format!("watch put: {e}")),
            Err(_) => put_errors.push(format!("watch put timed out after {:?}", limits.op_timeout)),
        }
    }
    let _ = stop_tx.send(Some(Instant::now() + DELIVERY_GRACE));

    let mut outcome = StepOutcome::default();
    let mut last_delivery = start;
    let acked_puts: Vec<bool> = puts
        .acked
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => {
                outcome.latency.merge(&result.latency);
                last_delivery = last_delivery.max(result.last_event);
                if let Some(problem) = result.problem {
                    counters.record_error(problem);
                }
                let missed = acked_puts
                    .iter()
                    .zip(&result.seen)
                    .filter(|(acked, seen)| **acked && !**seen)
                    .count();
                if missed > 0 {
                    counters.record_error(format!(
                        "a watcher missed {missed} events of acknowledged puts"
                    ));
                }
            }
            Err(e) => counters.record_error(format!("watcher task failed: {e}")),
        }
    }
    progress.finish();
    for problem in put_errors {
        counters.record_error(problem);
    }
    outcome.elapsed = last_delivery.duration_since(start);
    outcome.acked = counters.acked.load(Ordering::Relaxed);
    outcome.errors = counters.errors.load(Ordering::Relaxed);
    outcome.first_error = counters.first_error();
    Ok(outcome)
}

/// Opens `n` watch streams on `watched`, round-robin over `conns`, and waits until the
/// server confirms each (so no put of the step can precede a watcher).
async fn create_watchers(
    conns: &[Client],
    n: usize,
    watched: &str,
    timeout: Duration,
) -> Result<Vec<WatchStream>, WorkloadError> {
    let mut opening = JoinSet::new();
    for i in 0..n {
        let mut client = conns[i % conns.len()].watch_client();
        let watched = watched.to_string();
        opening.spawn(async move {
            let mut stream = client.watch(watched, None).await?;
            match stream.message().await? {
                Some(resp) if resp.created() => Ok(stream),
                _ => Err(etcd_client::Error::WatchError(
                    "watch stream did not confirm creation".into(),
                )),
            }
        });
    }
    let mut streams = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while let Some(joined) = tokio::time::timeout_at(deadline, opening.join_next())
        .await
        .map_err(|_| WorkloadError::SetupCheck {
            workload: Workload::Watch,
            message: format!("watchers not created within {timeout:?}"),
        })?
    {
        let stream = joined
            .expect("a watch-creating task does not panic")
            .map_err(|source| WorkloadError::Setup {
                workload: Workload::Watch,
                source,
            })?;
        streams.push(stream);
    }
    Ok(streams)
}

/// What one watcher saw.
struct WatcherResult {
    latency: LatencyHistogram,
    /// `seen[seq]`: whether the event of put `seq` arrived.
    seen: Vec<bool>,
    last_event: Instant,
    /// The first thing wrong with the stream (out-of-order or foreign event, error).
    problem: Option<String>,
}

async fn receive_events(
    mut stream: WatchStream,
    step: u64,
    start: Instant,
    puts: Arc<Puts>,
    counters: Arc<Counters>,
    mut stop: signal::Receiver<Option<Instant>>,
) -> WatcherResult {
    let total = puts.sent_nanos.len();
    let mut result = WatcherResult {
        latency: LatencyHistogram::new(),
        seen: vec![false; total],
        last_event: start,
        problem: None,
    };
    let mut next_expected = 0usize;
    let mut stop_at: Option<Instant> = None;
    while next_expected < total {
        let message = match stop_at {
            Some(at) => match tokio::time::timeout_at(at.into(), stream.message()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => {
                    stop_at = *stop.borrow();
                    continue;
                }
            },
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                result
                    .problem
                    .get_or_insert("watch stream closed by the server".into());
                break;
            }
            Err(e) => {
                result.problem.get_or_insert(format!("watch stream: {e}"));
                break;
            }
        };
        let now = Instant::now();
        for event in response.events() {
            let seq = event
                .kv()
                .filter(|_| event.event_type() == EventType::Put)
                .and_then(|kv| parse_seq(kv.value(), step));
            let Some(seq) = seq.filter(|&s| (s as usize) < total) else {
                result
                    .problem
                    .get_or_insert("watch delivered an event no put of this step made".into());
                continue;
            };
            let seq = seq as usize;
            if seq < next_expected {
                result.problem.get_or_insert(format!(
                    "watch delivered put {seq} after put {}",
                    next_expected - 1
                ));
                continue;
            }
            let sent = puts.sent_nanos[seq].load(Ordering::Acquire);
            result.latency.record(Duration::from_nanos(
                nanos_since(start).saturating_sub(sent),
            ));
            result.seen[seq] = true;
            result.last_event = now;
            next_expected = seq + 1;
            counters.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

/// The sequence number of a put of step `step`, from its value (see [`value`]).
fn parse_seq(value: &[u8], step: u64) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix(&format!("s{step}:k"))?;
    rest.split(':').next()?.parse().ok()
}

fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_come_back_out_of_values() {
        let cases = [
            (value(3, 17, 256), 3, Some(17)),
            (value(3, 0, 64), 3, Some(0)),
            (value(4, 17, 256), 3, None),
            (b"garbage".to_vec(), 3, None),
        ];
        for (v, step, expected) in cases {
            assert_eq!(
                parse_seq(&v, step),
                expected,
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }
}
