//! Histories: what clients asked for and what they were told, in order.
//!
//! A history is a sequence of [`Event`]s in Jepsen's style: an `invoke` when a client
//! starts an operation, then exactly one completion from the same process — `ok` (it
//! happened, with this result), `fail` (it definitely did not happen) or `info` (unknown:
//! a timeout or a connection error after the request may have been sent). A process never
//! has two operations in flight, and after an `info` the worker continues under a fresh
//! process id, because the old "process" may still be executing the lost request.
//!
//! This module owns recording (in memory and streamed to a JSON-lines file, so a run that
//! dies still leaves its history behind), loading a saved file, and pairing invocations
//! with their completions. Each workload chooses its own operation type `T`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::{nanos, Clock};

/// How an event relates to its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The client is about to send the request.
    Invoke,
    /// The operation took effect with the recorded result.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// Unknown whether the operation took effect (or will, later).
    Info,
}

/// One line of a history file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<T> {
    /// Position in the history; strictly increasing.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    /// The logical client process that issued the operation.
    pub process: u64,
    /// Invocation or which kind of completion.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The workload-specific operation (and, on completions, its result).
    pub op: T,
    /// Why an operation failed or is indeterminate, for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An invocation together with its completion, if any.
#[derive(Clone, Copy, Debug)]
pub struct Completed<'a, T> {
    pub invoke: &'a Event<T>,
    /// `None` when the history ends before the operation completed, which means the same
    /// as an `info` completion: it may or may not have happened.
    pub completion: Option<&'a Event<T>>,
}

impl<T> Completed<'_, T> {
    /// The effective completion kind (`Info` when the history ends first).
    pub fn kind(&self) -> Kind {
        self.completion.map_or(Kind::Info, |c| c.kind)
    }

    /// Latency for operations that completed.
    pub fn latency_ns(&self) -> Option<u64> {
        self.completion
            .map(|c| c.time_ns.saturating_sub(self.invoke.time_ns))
    }
}

/// Errors reading or interpreting a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read history {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("history {path} line {line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("malformed history: process {process} invoked event {index} while event {pending} was still in flight")]
    DoubleInvoke {
        process: u64,
        index: u64,
        pending: u64,
    },
    #[error("malformed history: event {index} completes an operation of process {process} that was never invoked")]
    OrphanCompletion { process: u64, index: u64 },
    #[error("malformed history: event {index} has time {time_ns} before its predecessor")]
    TimeWentBackwards { index: u64, time_ns: u64 },
}

/// Pairs each invocation with its completion. Rejects histories that break the
/// one-operation-per-process rule or go back in time, since checkers rely on both.
pub fn pair<T>(events: &[Event<T>]) -> Result<Vec<Completed<'_, T>>, HistoryError> {
    use std::collections::HashMap;
    let mut pending: HashMap<u64, usize> = HashMap::new();
    let mut out: Vec<Completed<'_, T>> = Vec::new();
    let mut last_time = 0;
    for ev in events {
        if ev.time_ns < last_time {
            return Err(HistoryError::TimeWentBackwards {
                index: ev.index,
                time_ns: ev.time_ns,
            });
        }
        last_time = ev.time_ns;
        match ev.kind {
            Kind::Invoke => {
                if let Some(&slot) = pending.get(&ev.process) {
                    return Err(HistoryError::DoubleInvoke {
                        process: ev.process,
                        index: ev.index,
                        pending: out[slot].invoke.index,
                    });
                }
                pending.insert(ev.process, out.len());
                out.push(Completed {
                    invoke: ev,
                    completion: None,
                });
            }
            Kind::Ok | Kind::Fail | Kind::Info => {
                let Some(slot) = pending.remove(&ev.process) else {
                    return Err(HistoryError::OrphanCompletion {
                        process: ev.process,
                        index: ev.index,
                    });
                };
                out[slot].completion = Some(ev);
            }
        }
    }
    Ok(out)
}

/// Loads a JSON-lines history file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Vec<Event<T>>, HistoryError> {
    let io_err = |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        events.push(ev);
    }
    Ok(events)
}

struct RecorderInner<T> {
    events: Vec<Event<T>>,
    file: Option<BufWriter<File>>,
    /// The first write error; recording goes on in memory so the run can still be checked.
    file_error: Option<std::io::Error>,
}

/// Appends events to a history shared by all client tasks. Index and timestamp are taken
/// under one lock, so file order, index order and time order agree.
pub struct Recorder<T> {
    clock: Arc<dyn Clock>,
    inner: Mutex<RecorderInner<T>>,
}

impl<T: Serialize + Clone> Recorder<T> {
    /// A recorder that keeps events in memory and, if `path` is given, streams them there.
    pub fn new(clock: Arc<dyn Clock>, path: Option<&Path>) -> Result<Self, HistoryError> {
        let file = match path {
            Some(p) => Some(BufWriter::new(File::create(p).map_err(|source| {
                HistoryError::Io {
                    path: p.to_path_buf(),
                    source,
                }
            })?)),
            None => None,
        };
        Ok(Recorder {
            clock,
            inner: Mutex::new(RecorderInner {
                events: Vec::new(),
                file,
                file_error: None,
            }),
        })
    }

    /// Records one event and returns a copy of it.
    pub fn record(&self, process: u64, kind: Kind, op: T, error: Option<String>) -> Event<T> {
        // A poisoned lock only means another client panicked mid-record; the vector is
        // still consistent, so keep going rather than cascade the panic.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let ev = Event {
            index: inner.events.len() as u64,
            time_ns: nanos(self.clock.elapsed()),
            process,
            kind,
            op,
            error,
        };
        if let Some(f) = inner.file.as_mut() {
            let res = serde_json::to_writer(&mut *f, &ev)
                .map_err(std::io::Error::other)
                .and_then(|()| f.write_all(b"\n"));
            if let Err(e) = res {
                inner.file_error.get_or_insert(e);
            }
        }
        inner.events.push(ev.clone());
        ev
    }

    /// Flushes the file and returns everything recorded so far.
    pub fn finish(&self) -> Result<Vec<Event<T>>, std::io::Error> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = inner.file_error.take() {
            return Err(e);
        }
        if let Some(f) = inner.file.as_mut() {
            f.flush()?;
        }
        Ok(inner.events.clone())
    }

    /// Everything recorded so far, without flushing.
    pub fn events(&self) -> Vec<Event<T>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    fn ev(index: u64, process: u64, kind: Kind, time_ns: u64) -> Event<u32> {
        Event {
            index,
            time_ns,
            process,
            kind,
            op: 0,
            error: None,
        }
    }

    #[test]
    fn pairs_interleaved_operations() {
        let h = vec![
            ev(0, 1, Kind::Invoke, 0),
            ev(1, 2, Kind::Invoke, 1),
            ev(2, 2, Kind::Ok, 2),
            ev(3, 1, Kind::Info, 3),
            ev(4, 3, Kind::Invoke, 4),
        ];
        let p = pair(&h).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].kind(), Kind::Info);
        assert_eq!(p[1].kind(), Kind::Ok);
        assert_eq!(p[1].latency_ns(), Some(1));
        assert!(p[2].completion.is_none());
        assert_eq!(p[2].kind(), Kind::Info);
    }

    #[test]
    fn rejects_malformed_histories() {
        let double = vec![ev(0, 1, Kind::Invoke, 0), ev(1, 1, Kind::Invoke, 1)];
        assert!(matches!(
            pair(&double),
            Err(HistoryError::DoubleInvoke { .. })
        ));
        let orphan = vec![ev(0, 1, Kind::Ok, 0)];
        assert!(matches!(
            pair(&orphan),
            Err(HistoryError::OrphanCompletion { .. })
        ));
        let backwards = vec![ev(0, 1, Kind::Invoke, 5), ev(1, 1, Kind::Ok, 4)];
        assert!(matches!(
            pair(&backwards),
            Err(HistoryError::TimeWentBackwards { .. })
        ));
    }

    #[test]
    fn recorder_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let clock = Arc::new(ManualClock::default());
        let rec: Recorder<String> = Recorder::new(clock.clone(), Some(&path)).unwrap();
        rec.record(7, Kind::Invoke, "a".into(), None);
        clock.advance(Duration::from_millis(3));
        rec.record(7, Kind::Fail, "a".into(), Some("refused".into()));
        let mem = rec.finish().unwrap();
        let disk: Vec<Event<String>> = load(&path).unwrap();
        assert_eq!(mem, disk);
        assert_eq!(disk[1].time_ns, 3_000_000);
        assert_eq!(disk[1].error.as_deref(), Some("refused"));
    }

    #[test]
    fn load_reports_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        std::fs::write(
            &path,
            "{\"index\":0,\"time_ns\":0,\"process\":0,\"type\":\"invoke\",\"op\":1}\nnot json\n",
        )
        .unwrap();
        match load::<u32>(&path) {
            Err(HistoryError::Parse { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}
