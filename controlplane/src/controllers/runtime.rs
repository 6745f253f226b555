//! The runtime every controller is built on, after client-go's shared informers and work
//! queues:
//!
//! - [`Informer`]: one list-then-watch per object type, a local [`Store`] of the latest
//!   objects and the handlers registered by the controllers that care (one watch of pods
//!   serves the ReplicaSet, endpoints, node-lifecycle and garbage collector controllers).
//! - [`WorkQueue`]: keys to reconcile. A key is queued at most once however many events
//!   name it, and one key is processed by one worker at a time (an event for a key in
//!   flight re-queues it when the worker is done); failures re-queue with per-key
//!   exponential backoff (5 ms doubling to 1000 s, client-go's default).
//! - [`run_workers`]: N workers per controller pulling keys and calling the
//!   [`Reconciler`], which is level-triggered: it reads the current state from the stores
//!   and moves the world toward the spec, whatever events led there. A periodic
//!   [`resync`] re-queues every object so missed or failed work is retried.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::watcher::{watcher, Event};
use crate::client::{key_of, Api, ClientError, ListParams, Object};
use crate::clock::Clock;

/// The latest known version of every object of one type, by `namespace/name`.
pub struct Store<K> {
    objects: RwLock<HashMap<String, Arc<K>>>,
}

impl<K: Object> Default for Store<K> {
    fn default() -> Self {
        Store {
            objects: RwLock::new(HashMap::new()),
        }
    }
}

fn rv_of<K: Object>(o: &K) -> u64 {
    o.metadata()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

impl<K: Object> Store<K> {
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.objects.read().unwrap().get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.objects.read().unwrap().values().cloned().collect()
    }

    /// Objects in namespace `ns`.
    pub fn list_ns(&self, ns: &str) -> Vec<Arc<K>> {
        self.objects
            .read()
            .unwrap()
            .values()
            .filter(|o| o.metadata().namespace.as_deref().unwrap_or("") == ns)
            .cloned()
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.read().unwrap().keys().cloned().collect()
    }

    /// Records `obj` unless the store already holds a newer version. Controllers also call
    /// this with the response of their own writes, so a resync that runs before the watch
    /// delivers the write does not act on the old state (client-go's mutation cache).
    pub fn apply(&self, obj: K) -> Arc<K> {
        let key = key_of(obj.metadata());
        let mut objects = self.objects.write().unwrap();
        match objects.get(&key) {
            Some(cur) if rv_of(cur.as_ref()) > rv_of(&obj) => cur.clone(),
            _ => {
                let obj = Arc::new(obj);
                objects.insert(key, obj.clone());
                obj
            }
        }
    }

    pub fn remove(&self, key: &str) -> Option<Arc<K>> {
        self.objects.write().unwrap().remove(key)
    }

    /// Replaces the whole set (a relist); returns what disappeared.
    fn replace(&self, items: Vec<K>) -> (Vec<Arc<K>>, Vec<Arc<K>>) {
        let mut fresh = HashMap::with_capacity(items.len());
        for o in items {
            fresh.insert(key_of(o.metadata()), Arc::new(o));
        }
        let mut objects = self.objects.write().unwrap();
        let gone = objects
            .iter()
            .filter(|(k, _)| !fresh.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect();
        *objects = fresh;
        (objects.values().cloned().collect(), gone)
    }
}

/// What an informer tells its handlers.
pub enum Change<K> {
    Applied(Arc<K>),
    Deleted(Arc<K>),
}

impl<K: Object> Change<K> {
    pub fn object(&self) -> &K {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

type Handler<K> = Box<dyn Fn(&Change<K>) + Send + Sync>;

/// A shared informer of one type: register handlers, then [`Informer::start`].
pub struct Informer<K> {
    pub store: Arc<Store<K>>,
    handlers: Mutex<Vec<Handler<K>>>,
    synced: AtomicBool,
    synced_notify: Notify,
}

impl<K: Object> Default for Informer<K> {
    fn default() -> Self {
        Informer {
            store: Arc::default(),
            handlers: Mutex::default(),
            synced: AtomicBool::new(false),
            synced_notify: Notify::new(),
        }
    }
}

impl<K: Object> Informer<K> {
    pub fn new() -> Arc<Informer<K>> {
        Arc::new(Informer::default())
    }

    pub fn add_handler(&self, f: impl Fn(&Change<K>) + Send + Sync + 'static) {
        self.handlers.lock().unwrap().push(Box::new(f));
    }

    fn notify(&self, change: Change<K>) {
        for h in self.handlers.lock().unwrap().iter() {
            h(&change);
        }
    }

    /// Watches `K` in `ns` (all namespaces if `None`) until `shutdown`.
    pub fn start<C: Api>(
        self: &Arc<Self>,
        api: C,
        ns: Option<String>,
        params: ListParams,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut rx = watcher::<C, K>(api, ns, params);
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = rx.recv() => match ev { Some(ev) => ev, None => return },
                };
                match ev {
                    Event::Restarted(items) => {
                        let (all, gone) = this.store.replace(items);
                        for o in gone {
                            this.notify(Change::Deleted(o));
                        }
                        for o in all {
                            this.notify(Change::Applied(o));
                        }
                        if !this.synced.swap(true, Ordering::SeqCst) {
                            this.synced_notify.notify_waiters();
                        }
                    }
                    Event::Applied(o) => {
                        let o = this.store.apply(o);
                        this.notify(Change::Applied(o));
                    }
                    Event::Deleted(o) => {
                        this.store.remove(&key_of(o.metadata()));
                        this.notify(Change::Deleted(Arc::new(o)));
                    }
                }
            }
        });
    }

    pub fn has_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Waits for the first full list; controllers must not act on a partial view.
    pub async fn wait_synced(&self) {
        loop {
            let notified = self.synced_notify.notified();
            if self.has_synced() {
                return;
            }
            notified.await;
        }
    }
}

/// Per-key backoff of [`WorkQueue::add_rate_limited`].
const BACKOFF_BASE: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1000);

#[derive(Default)]
struct QueueState {
    queue: VecDeque<String>,
    /// Keys waiting to be processed (queued, or re-queued while in flight).
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    shut_down: bool,
}

/// A deduplicating work queue of object keys (client-go's rate-limited workqueue).
pub struct WorkQueue {
    name: &'static str,
    state: Mutex<QueueState>,
    ready: Notify,
    clock: Arc<dyn Clock>,
}

impl WorkQueue {
    pub fn new(name: &'static str, clock: Arc<dyn Clock>) -> Arc<WorkQueue> {
        Arc::new(WorkQueue {
            name,
            state: Mutex::default(),
            ready: Notify::new(),
            clock,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut st = self.state.lock().unwrap();
        if st.shut_down || !st.dirty.insert(key.clone()) {
            return;
        }
        if st.processing.contains(&key) {
            return; // done() re-queues it
        }
        st.queue.push_back(key);
        drop(st);
        self.ready.notify_one();
    }

    /// Adds `key` once `delay` has passed.
    pub fn add_after(self: &Arc<Self>, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            return self.add(key);
        }
        let this = self.clone();
        let sleep = self.clock.sleep(delay);
        tokio::spawn(async move {
            sleep.await;
            this.add(key);
        });
    }

    /// Re-queues a key that failed, after its backoff.
    pub fn add_rate_limited(self: &Arc<Self>, key: &str) {
        let delay = {
            let mut st = self.state.lock().unwrap();
            let n = st.failures.entry(key.to_string()).or_default();
            let d = BACKOFF_BASE
                .saturating_mul(1u32 << (*n).min(31))
                .min(BACKOFF_MAX);
            *n += 1;
            d
        };
        self.add_after(key.to_string(), delay);
    }

    /// Clears a key's failure count (it reconciled).
    pub fn forget(&self, key: &str) {
        self.state.lock().unwrap().failures.remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .failures
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The next key, marked in flight; `None` once shut down.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = self.state.lock().unwrap();
                if st.shut_down {
                    return None;
                }
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; if it was added meanwhile it goes back in the queue.
    pub fn done(&self, key: &str) {
        let mut st = self.state.lock().unwrap();
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.queue.push_back(key.to_string());
            drop(st);
            self.ready.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shut_down(&self) {
        self.state.lock().unwrap().shut_down = true;
        self.ready.notify_waiters();
    }
}

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Done,
    /// Look again after this long (e.g. when minReadySeconds or a toleration runs out).
    RequeueAfter(Duration),
}

/// A level-triggered controller: brings the object named by `key` to its desired state.
pub trait Reconciler: Send + Sync + 'static {
    fn reconcile(&self, key: &str) -> impl Future<Output = Result<Action, ClientError>> + Send;
}

/// Runs `workers` workers on `queue` until `shutdown`, then shuts the queue down.
pub async fn run_workers<R: Reconciler>(
    reconciler: Arc<R>,
    queue: Arc<WorkQueue>,
    workers: usize,
    metrics: Arc<super::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (r, q, m) = (reconciler.clone(), queue.clone(), metrics.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(key) = q.get().await {
                let result = r.reconcile(&key).await;
                let outcome = match result {
                    Ok(Action::Done) => {
                        q.forget(&key);
                        "success"
                    }
                    Ok(Action::RequeueAfter(d)) => {
                        q.forget(&key);
                        q.add_after(key.clone(), d);
                        "requeue"
                    }
                    Err(e) if e.is_conflict() || e.is_not_found() => {
                        // Stale cache: the watch brings the new state; retry soon.
                        tracing::debug!(controller = q.name(), %key, error = %e, "retrying");
                        q.add_rate_limited(&key);
                        "conflict"
                    }
                    Err(e) => {
                        tracing::warn!(controller = q.name(), %key, error = %e, "reconcile failed");
                        q.add_rate_limited(&key);
                        "error"
                    }
                };
                m.reconciles.with_label_values(&[q.name(), outcome]).inc();
                q.done(&key);
                m.depth.with_label_values(&[q.name()]).set(q.len() as i64);
            }
        }));
    }
    shutdown.cancelled().await;
    queue.shut_down();
    for t in tasks {
        let _ = t.await;
    }
}

/// Re-queues every key of `store` every `period` (client-go's resync), until `shutdown`.
pub fn resync<K: Object>(
    store: Arc<Store<K>>,
    queue: Arc<WorkQueue>,
    period: Duration,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = clock.sleep(period) => {}
            }
            for key in store.keys() {
                queue.add(key);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_processed_twice_at_once() {
        let q = WorkQueue::new("test", Arc::new(SystemClock));
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // An event for "a" while it is in flight: not handed to another worker...
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        // ...but processed again once the first worker is done.
        q.done("a");
        assert_eq!(q.get().await.unwrap(), "a");
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::new("test", Arc::new(SystemClock));
        let cases = [(0, 5), (1, 10), (2, 20), (3, 40)];
        for (failures, want_ms) in cases {
            assert_eq!(q.failures("k"), failures);
            let start = tokio::time::Instant::now();
            q.add_rate_limited("k");
            let k = q.get().await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_millis(want_ms));
            q.done(&k);
        }
        q.forget("k");
        assert_eq!(q.failures("k"), 0);
    }

    #[tokio::test]
    async fn shut_down_releases_waiting_workers() {
        let q = WorkQueue::new("test", Arc::new(SystemClock));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
