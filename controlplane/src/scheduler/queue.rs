//! The scheduling queue, after kube-scheduler's: new and updated pods go to the *active*
//! FIFO; a pod that fits nowhere goes to *unschedulable* with a backoff of 1 s doubling
//! per attempt up to 10 s; a cluster event that may make it fit (node added or updated,
//! pod deleted) moves unschedulable pods to active, or to *backoff* until their backoff
//! expires. If such an event arrives while a pod is being scheduled, its failure sends it
//! to backoff rather than unschedulable, so the event is not missed. Pods left
//! unschedulable for 60 s are retried anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;

use crate::client::key_of;
use crate::clock::{since, Clock};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
const UNSCHEDULABLE_MAX_STAY: Duration = Duration::from_secs(60);

/// Backoff after `attempts` failed attempts: 1 s, 2 s, 4 s, 8 s, 10 s, 10 s, ...
pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

#[derive(Debug)]
struct Entry {
    pod: Pod,
    attempts: u32,
    /// When the last failed attempt was recorded.
    failed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Active,
    Backoff,
    Unschedulable,
    /// Popped and being scheduled.
    InFlight,
}

pub struct SchedulingQueue<K: Clock> {
    clock: Arc<K>,
    entries: HashMap<String, Entry>,
    place: HashMap<String, Where>,
    active: VecDeque<String>,
    cycle: u64,
    /// The scheduling cycle current at the last move request.
    move_cycle: u64,
}

impl<K: Clock> SchedulingQueue<K> {
    pub fn new(clock: Arc<K>) -> Self {
        SchedulingQueue {
            clock,
            entries: HashMap::new(),
            place: HashMap::new(),
            active: VecDeque::new(),
            cycle: 0,
            move_cycle: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn location(&self, key: &str) -> Option<Where> {
        self.place.get(key).copied()
    }

    fn activate(&mut self, key: String) {
        if self.place.insert(key.clone(), Where::Active) != Some(Where::Active) {
            self.active.push_back(key);
        }
    }

    /// A new pending pod, or an update of a known one (which may now fit: retried).
    pub fn add(&mut self, pod: Pod) {
        let key = key_of(&pod.metadata);
        match self.entries.get_mut(&key) {
            Some(e) => {
                e.pod = pod;
                if self.place.get(&key) == Some(&Where::Unschedulable) {
                    self.requeue_after_backoff(key);
                }
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        attempts: 0,
                        failed_at: None,
                    },
                );
                self.activate(key);
            }
        }
    }

    /// The pod is gone or bound.
    pub fn delete(&mut self, key: &str) {
        self.entries.remove(key);
        self.place.remove(key);
        // `active` is cleaned lazily in `pop`.
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.entries.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.delete(&k);
        }
    }

    /// The next pod to schedule and the cycle it is scheduled in.
    pub fn pop(&mut self) -> Option<(Pod, u64)> {
        self.flush();
        while let Some(key) = self.active.pop_front() {
            if self.place.get(&key) != Some(&Where::Active) {
                continue;
            }
            self.place.insert(key.clone(), Where::InFlight);
            self.cycle += 1;
            let pod = self.entries.get(&key).map(|e| e.pod.clone())?;
            return Some((pod, self.cycle));
        }
        None
    }

    /// Scheduling `pod` (popped in `cycle`) failed: back off before trying again.
    pub fn add_unschedulable(&mut self, pod: &Pod, cycle: u64) {
        let key = key_of(&pod.metadata);
        let now = self.clock.now();
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        e.attempts += 1;
        e.failed_at = Some(now);
        let to = if self.move_cycle >= cycle {
            Where::Backoff
        } else {
            Where::Unschedulable
        };
        self.place.insert(key, to);
    }

    /// Scheduled (binding sent): the queue forgets it.
    pub fn done(&mut self, key: &str) {
        self.delete(key);
    }

    fn backoff_over(&self, e: &Entry, now: DateTime<Utc>) -> bool {
        e.failed_at
            .is_none_or(|t| since(now, t) >= backoff(e.attempts))
    }

    fn requeue_after_backoff(&mut self, key: String) {
        let now = self.clock.now();
        let over = self
            .entries
            .get(&key)
            .is_some_and(|e| self.backoff_over(e, now));
        if over {
            self.activate(key);
        } else {
            self.place.insert(key, Where::Backoff);
        }
    }

    /// A cluster event that may let unschedulable pods fit.
    pub fn move_all_to_active_or_backoff(&mut self) {
        let keys: Vec<String> = self
            .place
            .iter()
            .filter(|(_, w)| **w == Where::Unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.requeue_after_backoff(k);
        }
        self.move_cycle = self.cycle;
    }

    /// Backoffs that expired go active; long-unschedulable pods are retried.
    pub fn flush(&mut self) {
        let now = self.clock.now();
        let mut ready: Vec<String> = Vec::new();
        for (k, w) in &self.place {
            let Some(e) = self.entries.get(k) else {
                continue;
            };
            let go = match w {
                Where::Backoff => self.backoff_over(e, now),
                Where::Unschedulable => e
                    .failed_at
                    .is_none_or(|t| since(now, t) >= UNSCHEDULABLE_MAX_STAY),
                _ => false,
            };
            if go {
                ready.push(k.clone());
            }
        }
        ready.sort();
        for k in ready {
            self.activate(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::scheduler::testing::pod;

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let want = [1, 2, 4, 8, 10, 10, 10];
        for (i, w) in want.into_iter().enumerate() {
            assert_eq!(
                backoff(i as u32 + 1),
                Duration::from_secs(w),
                "attempt {}",
                i + 1
            );
        }
    }

    #[test]
    fn unschedulable_pod_waits_out_its_backoff_after_an_event() {
        let clock = Arc::new(ManualClock::default());
        let mut q = SchedulingQueue::new(clock.clone());
        q.add(pod("p", "", ""));
        // Attempt n fails; an event arrives at once; the pod may only come back after
        // its backoff (1, 2, 4, 8, 10 s).
        for (attempt, secs) in [1u64, 2, 4, 8, 10, 10].into_iter().enumerate() {
            let (p, cycle) = q.pop().expect("pod is active");
            q.add_unschedulable(&p, cycle);
            assert_eq!(
                q.location("default/p"),
                Some(Where::Unschedulable),
                "attempt {attempt}"
            );
            q.move_all_to_active_or_backoff();
            assert_eq!(q.location("default/p"), Some(Where::Backoff));
            clock.advance(Duration::from_secs(secs) - Duration::from_millis(1));
            assert!(q.pop().is_none(), "attempt {attempt}: still backing off");
            clock.advance(Duration::from_millis(1));
            q.flush();
            assert_eq!(q.location("default/p"), Some(Where::Active));
        }
    }

    #[test]
    fn without_events_unschedulable_pods_wait_sixty_seconds() {
        let clock = Arc::new(ManualClock::default());
        let mut q = SchedulingQueue::new(clock.clone());
        q.add(pod("p", "", ""));
        let (p, c) = q.pop().unwrap();
        q.add_unschedulable(&p, c);
        clock.advance(Duration::from_secs(59));
        assert!(q.pop().is_none());
        clock.advance(Duration::from_secs(1));
        assert!(q.pop().is_some());
    }

    #[test]
    fn event_during_scheduling_sends_failure_to_backoff() {
        let clock = Arc::new(ManualClock::default());
        let mut q = SchedulingQueue::new(clock.clone());
        q.add(pod("p", "", ""));
        let (p, c) = q.pop().unwrap();
        q.move_all_to_active_or_backoff(); // a node was added meanwhile
        q.add_unschedulable(&p, c);
        assert_eq!(q.location("default/p"), Some(Where::Backoff));
        clock.advance(Duration::from_secs(1));
        assert!(q.pop().is_some());
    }

    #[test]
    fn fifo_update_and_delete() {
        let clock = Arc::new(ManualClock::default());
        let mut q = SchedulingQueue::new(clock);
        for n in ["a", "b", "c"] {
            q.add(pod(n, "", ""));
        }
        q.add(pod("a", "1", "")); // an update keeps its place
        q.delete("default/b");
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|(p, _)| p.metadata.name.unwrap())
            .collect();
        assert_eq!(order, ["a", "c"]);
    }
}
