//! The watch cache: ONE etcd watch per resource, fanned out to every client watch.
//!
//! A feeder task follows the resource's key prefix in etcd from the revision the cache
//! started at, turns each etcd event into an ADDED/MODIFIED/DELETED [`Event`], appends it to a
//! ring buffer of recent events and broadcasts it. A client watch that resumes from
//! resourceVersion `rv` gets the buffered events after `rv` and then the live ones, so N
//! `kubectl get -w` cost one etcd watch. A `rv` older than the buffer's window answers 410
//! Gone ("too old resource version"), as kube-apiserver's cache does; the client re-lists.
//!
//! Buffer and broadcast are updated under one lock, and a subscriber takes its backlog and
//! its receiver under the same lock, so no event falls between the two.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use etcd_client::{EventType, WatchOptions};
use serde_json::Value;
use tokio::sync::broadcast;

use super::storage::{self, Store};

/// How many recent events each resource keeps for resuming watches.
pub const BUFFER_EVENTS: usize = 4096;
/// Broadcast queue per resource; a watcher further behind than this is dropped (410).
const BROADCAST_CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// One change to one object. The object carries `metadata.resourceVersion = revision`
/// (for a deletion: the last stored state, stamped with the deletion's revision).
#[derive(Debug)]
pub struct Event {
    pub kind: EventKind,
    pub object: Value,
    /// The state before a modification, so a watch with a selector can tell an object
    /// entering (ADDED) or leaving (DELETED) its selection.
    pub prev: Option<Value>,
    pub revision: i64,
}

struct Window {
    events: VecDeque<Arc<Event>>,
    /// Every event with a revision above this is in `events` (or still to come).
    oldest: i64,
    /// The newest revision the cache has seen (an event or its start).
    latest: i64,
    tx: broadcast::Sender<Arc<Event>>,
}

/// The cache of one resource.
pub struct WatchCache {
    prefix: String,
    /// Events kept for resuming watches.
    capacity: usize,
    window: Mutex<Window>,
}

/// A resume point older than the cache's window: the client must re-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooOld {
    pub asked: i64,
    /// The oldest resourceVersion the cache can still resume from.
    pub oldest: i64,
}

/// What a client watch starts with.
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl WatchCache {
    /// Starts following `prefix` from the store's current revision.
    pub async fn start(
        store: Store,
        prefix: String,
    ) -> Result<Arc<WatchCache>, storage::StoreError> {
        let rev = store.revision().await?;
        let cache = Arc::new(WatchCache::empty(prefix, rev, BUFFER_EVENTS));
        tokio::spawn(feed(cache.clone(), store));
        Ok(cache)
    }

    /// A cache holding no events, complete from `rev` on, keeping `capacity` events.
    fn empty(prefix: String, rev: i64, capacity: usize) -> WatchCache {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        WatchCache {
            prefix,
            capacity,
            window: Mutex::new(Window {
                events: VecDeque::new(),
                oldest: rev,
                latest: rev,
                tx,
            }),
        }
    }

    /// The newest revision seen, for bookmarks.
    pub fn latest(&self) -> i64 {
        self.window.lock().expect("watch cache lock").latest
    }

    /// Events after `rv`, then live ones. Gone if `rv` is older than the window.
    pub fn subscribe(&self, rv: i64) -> Result<Subscription, TooOld> {
        let w = self.window.lock().expect("watch cache lock");
        if rv < w.oldest {
            return Err(TooOld {
                asked: rv,
                oldest: w.oldest + 1,
            });
        }
        let backlog = w
            .events
            .iter()
            .filter(|e| e.revision > rv)
            .cloned()
            .collect();
        Ok(Subscription {
            backlog,
            live: w.tx.subscribe(),
        })
    }

    fn push(&self, event: Event) {
        let mut w = self.window.lock().expect("watch cache lock");
        w.latest = w.latest.max(event.revision);
        let event = Arc::new(event);
        if w.events.len() == self.capacity {
            if let Some(old) = w.events.pop_front() {
                w.oldest = old.revision;
            }
        }
        w.events.push_back(event.clone());
        // No receivers is fine: the event stays in the buffer for later watches.
        let _ = w.tx.send(event);
    }

    /// Forgets everything before `rev` and disconnects current watchers (they see their
    /// stream end and re-list), after the etcd watch could not resume.
    fn reset(&self, rev: i64) {
        let mut w = self.window.lock().expect("watch cache lock");
        w.events.clear();
        w.oldest = rev;
        w.latest = rev;
        w.tx = broadcast::channel(BROADCAST_CAPACITY).0;
    }
}

/// Follows the prefix in etcd forever, reconnecting after errors.
async fn feed(cache: Arc<WatchCache>, store: Store) {
    loop {
        let from = cache.latest() + 1;
        match follow(&cache, &store, from).await {
            Ok(()) => tracing::warn!(prefix = %cache.prefix, "etcd watch ended; re-watching"),
            Err(FeedError::Compacted(rev)) => {
                tracing::warn!(prefix = %cache.prefix, rev, "watch cache fell behind compaction; resetting");
                match store.revision().await {
                    Ok(now) => cache.reset(now),
                    Err(e) => tracing::warn!(%e, "reading the store revision"),
                }
            }
            Err(FeedError::Etcd(e)) => {
                tracing::warn!(prefix = %cache.prefix, %e, "etcd watch failed; re-watching")
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

enum FeedError {
    Compacted(i64),
    Etcd(etcd_client::Error),
}

async fn follow(cache: &WatchCache, store: &Store, from: i64) -> Result<(), FeedError> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(from);
    let mut stream = store
        .client()
        .watch_client()
        .watch(cache.prefix.clone(), Some(opts))
        .await
        .map_err(FeedError::Etcd)?;
    while let Some(resp) = stream.message().await.map_err(FeedError::Etcd)? {
        if resp.compact_revision() > 0 {
            return Err(FeedError::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Ok(());
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let revision = kv.mod_revision();
            let decoded = match ev.event_type() {
                EventType::Put if kv.create_revision() == kv.mod_revision() => {
                    storage::decode(kv.value(), revision).map(|s| (EventKind::Added, s.object))
                }
                EventType::Put => {
                    storage::decode(kv.value(), revision).map(|s| (EventKind::Modified, s.object))
                }
                EventType::Delete => match ev.prev_kv() {
                    Some(prev) => storage::decode(prev.value(), revision)
                        .map(|s| (EventKind::Deleted, s.object)),
                    None => continue,
                },
            };
            let prev = match (ev.event_type(), ev.prev_kv()) {
                (EventType::Put, Some(p)) => storage::decode(p.value(), p.mod_revision())
                    .ok()
                    .map(|s| s.object),
                _ => None,
            };
            match decoded {
                Ok((kind, object)) => cache.push(Event {
                    kind,
                    object,
                    prev,
                    revision,
                }),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), %e, "skipping undecodable object")
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(rev: i64) -> Event {
        Event {
            kind: EventKind::Modified,
            object: json!({"metadata": {"name": format!("o{rev}")}}),
            prev: None,
            revision: rev,
        }
    }

    fn revs(events: &[Arc<Event>]) -> Vec<i64> {
        events.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn resume_from_a_revision_in_the_window() {
        let cache = WatchCache::empty("/registry/pods/".into(), 10, 3);
        for rev in [11, 13, 14] {
            cache.push(event(rev));
        }
        let too_old = |asked, oldest| Err(TooOld { asked, oldest });
        let cases: &[(i64, Result<Vec<i64>, TooOld>)] = &[
            (10, Ok(vec![11, 13, 14])),
            (12, Ok(vec![13, 14])),
            (14, Ok(vec![])),
            (20, Ok(vec![])),
            (9, too_old(9, 11)),
        ];
        for (rv, want) in cases {
            let got = cache.subscribe(*rv).map(|s| revs(&s.backlog));
            assert_eq!(&got, want, "rv {rv}");
        }
        // A fourth event pushes the oldest out: resuming before it is now too old.
        cache.push(event(15));
        assert_eq!(
            cache.subscribe(10).err(),
            Some(TooOld {
                asked: 10,
                oldest: 12
            })
        );
        assert_eq!(
            revs(&cache.subscribe(11).expect("in window").backlog),
            vec![13, 14, 15]
        );
        assert_eq!(cache.latest(), 15);
    }

    #[test]
    fn live_events_follow_the_backlog_without_a_gap() {
        let cache = WatchCache::empty("/registry/pods/".into(), 0, 10);
        cache.push(event(1));
        let mut sub = cache.subscribe(0).expect("subscribe");
        cache.push(event(2));
        assert_eq!(revs(&sub.backlog), vec![1]);
        assert_eq!(sub.live.try_recv().expect("live event").revision, 2);
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn reset_disconnects_watchers() {
        let cache = WatchCache::empty("/registry/pods/".into(), 0, 10);
        let mut sub = cache.subscribe(0).expect("subscribe");
        cache.reset(50);
        assert!(matches!(
            sub.live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert_eq!(
            cache.subscribe(49).err(),
            Some(TooOld {
                asked: 49,
                oldest: 51
            })
        );
    }
}
