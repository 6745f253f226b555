//! Time as the harness sees it: a monotonic clock measured from the start of a run.
//!
//! Histories record nanoseconds since the run started rather than wall-clock time, so
//! checkers only ever compare numbers and can be fed hand-written histories. The trait
//! lets tests drive the recorder with a manual clock; the real one is tokio's, so tests
//! that pause tokio time also get deterministic timestamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of "time since the run started".
pub trait Clock: Send + Sync {
    /// Time elapsed since the clock's origin.
    fn elapsed(&self) -> Duration;
}

/// The real clock: tokio's monotonic `Instant`, which tests can pause and advance.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn start() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that only moves when told to; for unit tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Nanoseconds in `d`, saturating (a run never lasts 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
