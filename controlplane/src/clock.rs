//! Time behind a trait, so leader election and the scheduling queue can be tested with a
//! clock the test moves: [`SystemClock`] in production, [`ManualClock`] in tests (its
//! `sleep` advances the clock itself, so loops run deterministically without waiting).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// Wall-clock time and tokio timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(d).boxed()
    }
}

/// A clock that moves only when told to (or when something sleeps on it).
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(
                DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid timestamp"),
            )),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, d: Duration) {
        *self.now.lock().unwrap() += chrono::Duration::from_std(d).expect("duration in range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.advance(d);
        // Yield so other tasks on the runtime get their turn, as a real sleep would allow.
        tokio::task::yield_now().boxed()
    }
}

/// `a - b` as a std duration, zero if negative.
pub fn since(a: DateTime<Utc>, b: DateTime<Utc>) -> Duration {
    (a - b).to_std().unwrap_or_default()
}
