//! Leader election on `coordination.k8s.io/v1` Leases through the API server, as
//! client-go's `leaderelection` package does it.
//!
//! A candidate takes the Lease when it is missing, unheld, already its own, or when its
//! holder record has not changed for `lease_duration` as observed on the candidate's own
//! clock (no cross-host clock comparison). Writes are optimistic: an update carries the
//! resourceVersion read, and a 409 means someone else won this round. The leader renews
//! every `retry_period`; if it cannot renew for `renew_deadline` (< `lease_duration`) it
//! cancels its work and returns, so it has stopped acting before any other candidate
//! can consider the Lease expired.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio_util::sync::CancellationToken;

use crate::client::{Api, ClientError};
use crate::clock::{since, Clock};

#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Config {
        Config {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leaseDuration must be greater than renewDeadline")]
    LeaseNotLongerThanDeadline,
    #[error("renewDeadline must be greater than retryPeriod")]
    DeadlineNotLongerThanRetry,
    #[error("leaderelection lost")]
    Lost,
}

/// How an election round ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Leading,
    /// Someone else holds an unexpired Lease.
    HeldBy(String),
    /// The write lost a race (409) or the server failed; try again next period.
    Failed,
}

pub struct LeaderElector<C: Api, K: Clock> {
    api: C,
    clock: Arc<K>,
    config: Config,
    /// The last holder record seen and when (our clock) it was first seen.
    observed: Option<(LeaseSpec, DateTime<Utc>)>,
}

fn same_record(a: &LeaseSpec, b: &LeaseSpec) -> bool {
    a.holder_identity == b.holder_identity
        && a.renew_time == b.renew_time
        && a.acquire_time == b.acquire_time
        && a.lease_transitions == b.lease_transitions
}

impl<C: Api, K: Clock> LeaderElector<C, K> {
    pub fn new(api: C, clock: Arc<K>, config: Config) -> Result<Self, ElectionError> {
        if config.lease_duration <= config.renew_deadline {
            return Err(ElectionError::LeaseNotLongerThanDeadline);
        }
        if config.renew_deadline <= config.retry_period {
            return Err(ElectionError::DeadlineNotLongerThanRetry);
        }
        Ok(LeaderElector {
            api,
            clock,
            config,
            observed: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One round: read the Lease, and create, take over or renew it if we may.
    pub async fn try_acquire_or_renew(&mut self) -> Attempt {
        let now = self.clock.now();
        let ns = Some(self.config.namespace.as_str());
        let me = self.config.identity.clone();
        let mine = |acquire: DateTime<Utc>, transitions: i32| LeaseSpec {
            holder_identity: Some(me.clone()),
            // Rounded up: other candidates wait out the Lease's own duration, which must
            // not be shorter than ours or they could take it before we stop.
            lease_duration_seconds: Some(
                self.config.lease_duration.as_millis().div_ceil(1000).max(1) as i32,
            ),
            acquire_time: Some(MicroTime(acquire)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
        };
        let existing = match self.api.get::<Lease>(ns, &self.config.name).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(mine(now, 0)),
                };
                return match self.api.create(ns, &lease).await {
                    Ok(l) => {
                        self.observed = l.spec.map(|s| (s, now));
                        Attempt::Leading
                    }
                    Err(e) => self.failed(e),
                };
            }
            Err(e) => return self.failed(e),
        };
        let spec = existing.spec.clone().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|(o, _)| !same_record(o, &spec))
        {
            self.observed = Some((spec.clone(), now));
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let observed_at = self.observed.as_ref().map(|(_, t)| *t).unwrap_or(now);
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.config.lease_duration);
        if !holder.is_empty()
            && holder != self.config.identity
            && since(now, observed_at) < duration
        {
            return Attempt::HeldBy(holder);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.config.identity {
            mine(spec.acquire_time.map(|t| t.0).unwrap_or(now), transitions)
        } else {
            mine(now, transitions + 1)
        };
        let mut lease = existing;
        lease.spec = Some(new_spec);
        match self.api.update(ns, &lease).await {
            Ok(l) => {
                self.observed = l.spec.map(|s| (s, now));
                Attempt::Leading
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: ClientError) -> Attempt {
        if e.is_conflict() {
            tracing::debug!(lease = %self.config.name, "lease update lost a race");
        } else {
            tracing::warn!(lease = %self.config.name, error = %e, "lease read/write failed");
        }
        Attempt::Failed
    }

    /// Blocks until this candidate leads (or `shutdown` fires: then `false`).
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            if self.try_acquire_or_renew().await == Attempt::Leading {
                tracing::info!(lease = %self.config.name, identity = %self.config.identity, "successfully acquired lease");
                return true;
            }
            tokio::select! {
                _ = self.clock.sleep(self.config.retry_period) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// Renews every retry period until a renewal fails for `renew_deadline`; then
    /// cancels `leading` and returns [`ElectionError::Lost`]. Returns `Ok` (after
    /// releasing the Lease) when `shutdown` fires.
    pub async fn renew_until_lost(
        &mut self,
        leading: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), ElectionError> {
        let mut last_renew = self.clock.now();
        loop {
            tokio::select! {
                _ = self.clock.sleep(self.config.retry_period) => {}
                _ = shutdown.cancelled() => {
                    leading.cancel();
                    self.release().await;
                    return Ok(());
                }
            }
            match self.try_acquire_or_renew().await {
                Attempt::Leading => last_renew = self.clock.now(),
                _ if since(self.clock.now(), last_renew) + self.config.retry_period
                    >= self.config.renew_deadline =>
                {
                    // Stop before the next attempt could land past the deadline.
                    leading.cancel();
                    tracing::error!(lease = %self.config.name, "failed to renew lease within the renew deadline; stopping");
                    return Err(ElectionError::Lost);
                }
                _ => {}
            }
        }
    }

    /// Gives the Lease up (empty holder) so a successor need not wait it out.
    pub async fn release(&mut self) {
        let ns = Some(self.config.namespace.as_str());
        if let Ok(mut lease) = self.api.get::<Lease>(ns, &self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.config.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                let _ = self.api.update(ns, &lease).await;
            }
        }
    }

    /// Acquires, runs `work` with a token cancelled on loss of leadership, renews until
    /// lost or shut down. `Err(Lost)` means the caller must stop acting (client-go exits).
    pub async fn run<F, Fut>(
        &mut self,
        shutdown: CancellationToken,
        work: F,
    ) -> Result<(), ElectionError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !self.acquire(&shutdown).await {
            return Ok(());
        }
        let leading = CancellationToken::new();
        let task = tokio::spawn(work(leading.clone()));
        let result = self.renew_until_lost(&leading, &shutdown).await;
        leading.cancel();
        let _ = task.await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::FakeApi;
    use crate::clock::ManualClock;

    fn elector(
        api: &FakeApi,
        clock: &Arc<ManualClock>,
        id: &str,
    ) -> LeaderElector<FakeApi, ManualClock> {
        LeaderElector::new(
            api.clone(),
            clock.clone(),
            Config::new("kube-system", "kube-scheduler", id),
        )
        .unwrap()
    }

    async fn spec(api: &FakeApi) -> LeaseSpec {
        api.get::<Lease>(Some("kube-system"), "kube-scheduler")
            .await
            .unwrap()
            .spec
            .unwrap()
    }

    #[tokio::test]
    async fn takeover_only_after_lease_duration_unrenewed() {
        let api = FakeApi::new();
        let clock = Arc::new(ManualClock::default());
        let (mut a, mut b) = (elector(&api, &clock, "a"), elector(&api, &clock, "b"));
        let t0 = clock.now();
        // (step, who, advance before, expected)
        let steps: Vec<(&str, u64, Attempt)> = vec![
            ("a", 0, Attempt::Leading),
            ("b", 0, Attempt::HeldBy("a".into())),
            ("b", 14, Attempt::HeldBy("a".into())),
            ("a", 0, Attempt::Leading),            // renews at 14 s
            ("b", 1, Attempt::HeldBy("a".into())), // b sees the renewal at 15 s
            ("b", 14, Attempt::HeldBy("a".into())),
            ("b", 1, Attempt::Leading), // 15 s since b saw a's last renewal
            ("a", 0, Attempt::HeldBy("b".into())),
        ];
        for (i, (who, adv, want)) in steps.into_iter().enumerate() {
            clock.advance(Duration::from_secs(adv));
            let e = if who == "a" { &mut a } else { &mut b };
            assert_eq!(e.try_acquire_or_renew().await, want, "step {i}");
        }
        let s = spec(&api).await;
        assert_eq!(s.holder_identity.as_deref(), Some("b"));
        assert_eq!(s.lease_transitions, Some(1));
        assert_eq!(
            s.acquire_time.unwrap().0,
            t0 + chrono::Duration::seconds(30)
        );
        assert_eq!(s.lease_duration_seconds, Some(15));
    }

    #[tokio::test]
    async fn renewal_keeps_acquire_time_and_transitions() {
        let api = FakeApi::new();
        let clock = Arc::new(ManualClock::default());
        let mut a = elector(&api, &clock, "a");
        let t0 = clock.now();
        assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
        clock.advance(Duration::from_secs(2));
        assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
        let s = spec(&api).await;
        assert_eq!(s.acquire_time.unwrap().0, t0);
        assert_eq!(s.renew_time.unwrap().0, t0 + chrono::Duration::seconds(2));
        assert_eq!(s.lease_transitions, Some(0));
    }

    #[tokio::test]
    async fn stale_write_conflicts_and_fails_the_round() {
        let api = FakeApi::new();
        let clock = Arc::new(ManualClock::default());
        let mut a = elector(&api, &clock, "a");
        assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
        // Someone else rewrites the Lease between our read and write: simulate by a
        // stale object update, which the fake refuses like the server (409).
        let stale = api
            .get::<Lease>(Some("kube-system"), "kube-scheduler")
            .await
            .unwrap();
        assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
        let err = api.update(Some("kube-system"), &stale).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
    }

    #[test]
    fn durations_are_validated() {
        let api = FakeApi::new();
        let clock = Arc::new(ManualClock::default());
        let mut c = Config::new("ns", "l", "a");
        c.renew_deadline = c.lease_duration;
        assert!(matches!(
            LeaderElector::new(api.clone(), clock.clone(), c.clone()),
            Err(ElectionError::LeaseNotLongerThanDeadline)
        ));
        c.renew_deadline = c.retry_period;
        c.lease_duration = Duration::from_secs(15);
        assert!(matches!(
            LeaderElector::new(api, clock, c),
            Err(ElectionError::DeadlineNotLongerThanRetry)
        ));
    }

    /// The leader is cut off from the server: it must cancel its work before the other
    /// candidate (which keeps seeing the last renewal) can take the Lease.
    #[tokio::test(flavor = "current_thread")]
    async fn partitioned_leader_stops_before_takeover() {
        let api = FakeApi::new();
        let clock = Arc::new(ManualClock::default());
        let mut a = elector(&api, &clock, "a");
        let shutdown = CancellationToken::new();
        let leading = CancellationToken::new();
        assert!(a.acquire(&shutdown).await);
        // Renew a few times, then partition.
        let last_ok = {
            clock.advance(Duration::from_secs(2));
            assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
            clock.now()
        };
        api.set_unavailable(true);
        let r = a.renew_until_lost(&leading, &shutdown).await;
        assert!(matches!(r, Err(ElectionError::Lost)));
        assert!(leading.is_cancelled());
        let stopped_at = clock.now();
        assert!(
            since(stopped_at, last_ok) <= Duration::from_secs(10),
            "stopped {:?} after the last renewal",
            since(stopped_at, last_ok)
        );
        // The other candidate cannot take over until 15 s after it observed that renewal.
        api.set_unavailable(false);
        let mut b = elector(&api, &clock, "b");
        assert_eq!(b.try_acquire_or_renew().await, Attempt::HeldBy("a".into()));
        clock.advance(Duration::from_secs(15));
        assert_eq!(b.try_acquire_or_renew().await, Attempt::Leading);
    }

    #[tokio::test]
    async fn lease_duration_seconds_round_up() {
        for (millis, want) in [(2000, 2), (2500, 3), (15000, 15), (1200, 2)] {
            let api = FakeApi::new();
            let clock = Arc::new(ManualClock::default());
            let mut c = Config::new("kube-system", "kube-scheduler", "a");
            c.lease_duration = Duration::from_millis(millis);
            c.renew_deadline = Duration::from_millis(millis / 2);
            c.retry_period = Duration::from_millis(millis / 4);
            let mut a = LeaderElector::new(api.clone(), clock, c).unwrap();
            assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
            assert_eq!(
                spec(&api).await.lease_duration_seconds,
                Some(want),
                "{millis} ms"
            );
        }
    }

    #[tokio::test]
    async fn release_hands_over_at_once() {
        let api = FakeApi::new();
        let clock = Arc::new(ManualClock::default());
        let (mut a, mut b) = (elector(&api, &clock, "a"), elector(&api, &clock, "b"));
        assert_eq!(a.try_acquire_or_renew().await, Attempt::Leading);
        a.release().await;
        assert_eq!(b.try_acquire_or_renew().await, Attempt::Leading);
        assert_eq!(spec(&api).await.lease_transitions, Some(1));
    }
}
