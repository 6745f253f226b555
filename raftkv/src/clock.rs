//! Time behind a trait, so lease and token expiry can be tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for deadlines this member keeps to itself (leases, simple tokens).
    fn now(&self) -> Instant;
    /// Wall-clock time, for what other members read too (a JWT's `exp`).
    fn wall(&self) -> SystemTime;
}

/// The monotonic system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to. Its wall clock starts at the real time of its
/// creation and advances with it.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
    start: Instant,
    start_wall: SystemTime,
}

impl Default for ManualClock {
    fn default() -> Self {
        let start = Instant::now();
        Self {
            now: Mutex::new(start),
            start,
            start_wall: SystemTime::now(),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.now.lock().expect("clock lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().expect("clock lock")
    }

    fn wall(&self) -> SystemTime {
        self.start_wall + (self.now() - self.start)
    }
}
