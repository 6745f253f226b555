//! The watchable layer (etcd's `watchable_store`): which watchers exist, and delivering each
//! applied revision's events to them.
//!
//! A watcher is *synced* when it has seen everything up to the current revision: new events are
//! pushed to it as they are applied. It is *unsynced* when it starts in the past, or when its
//! stream could not take an event in time: the sync loop then reads what it missed back from
//! storage, at most [`MAX_REVS_PER_RESPONSE`] revisions per response, until it is caught up.
//!
//! Consistency: [`WatchHub::notify`] runs while the apply path holds the state write lock, and
//! [`WatchHub::watch`] and [`WatchHub::sync`] while their callers hold the read lock, so a
//! watcher registered at revision R sees every event after R exactly once.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;

use super::backend::Backend;
use super::key_index::KeyRange;
use super::store::{MvccError, MvccState};

/// etcd's `watchBatchMaxRevs`.
pub const MAX_REVS_PER_RESPONSE: i64 = 1000;

/// What the hub hands to a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvents {
    pub watch_id: i64,
    pub events: Vec<Event>,
    /// Store revision the response is as of.
    pub revision: i64,
    /// Non-zero: the watcher asked for compacted history and is cancelled.
    pub compact_revision: i64,
}

/// A watcher's identity in the hub; unique for the life of the process.
pub type WatcherKey = u64;

#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The id the client sees, unique within its stream.
    pub watch_id: i64,
    pub range: KeyRange,
    /// 0 = from the next revision.
    pub start_rev: i64,
    pub no_put: bool,
    pub no_delete: bool,
}

struct Watcher {
    spec: WatchSpec,
    /// Lowest revision not yet delivered.
    min_rev: i64,
    tx: mpsc::Sender<WatchEvents>,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let kv = ev.kv.as_ref().expect("events carry a kv");
        if kv.mod_revision < self.min_rev || !self.spec.range.contains(&kv.key) {
            return false;
        }
        let is_put = ev.r#type == EventType::Put as i32;
        !(is_put && self.spec.no_put || !is_put && self.spec.no_delete)
    }
}

#[derive(Default)]
struct Groups {
    synced: HashMap<WatcherKey, Watcher>,
    unsynced: HashMap<WatcherKey, Watcher>,
    next_key: WatcherKey,
}

#[derive(Default)]
pub struct WatchHub {
    groups: Mutex<Groups>,
}

impl WatchHub {
    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().expect("watch hub lock")
    }

    /// Registers a watcher; `current_rev` must be read under the same state lock the caller
    /// holds. Returns its key and whether it needs catching up.
    pub fn watch(
        &self,
        current_rev: i64,
        spec: WatchSpec,
        tx: mpsc::Sender<WatchEvents>,
    ) -> (WatcherKey, bool) {
        let mut g = self.groups();
        let key = g.next_key;
        g.next_key += 1;
        let synced = spec.start_rev == 0 || spec.start_rev > current_rev;
        let min_rev = if synced {
            (current_rev + 1).max(spec.start_rev)
        } else {
            spec.start_rev
        };
        let w = Watcher { spec, min_rev, tx };
        if synced {
            g.synced.insert(key, w);
        } else {
            g.unsynced.insert(key, w);
        }
        (key, !synced)
    }

    /// Removes a watcher; false if it was not there.
    pub fn cancel(&self, key: WatcherKey) -> bool {
        let mut g = self.groups();
        g.synced.remove(&key).is_some() || g.unsynced.remove(&key).is_some()
    }

    pub fn watcher_count(&self) -> (usize, usize) {
        let g = self.groups();
        (g.synced.len(), g.unsynced.len())
    }

    /// Delivers the events of revision `rev` to synced watchers. A watcher whose stream is full
    /// becomes unsynced and catches up from storage.
    pub fn notify(&self, rev: i64, events: &[Event]) {
        let mut g = self.groups();
        let mut lagging = Vec::new();
        g.synced.retain(|&key, w| {
            let evs: Vec<Event> = events.iter().filter(|e| w.wants(e)).cloned().collect();
            if evs.is_empty() {
                return true;
            }
            let resp = WatchEvents {
                watch_id: w.spec.watch_id,
                events: evs,
                revision: rev,
                compact_revision: 0,
            };
            match w.tx.try_send(resp) {
                Ok(()) => {
                    w.min_rev = rev + 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    lagging.push(key);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        for key in lagging {
            let w = g.synced.remove(&key).expect("just seen");
            g.unsynced.insert(key, w);
        }
    }

    /// Whether a watcher has been sent everything up to the current revision.
    pub fn is_synced(&self, key: WatcherKey) -> bool {
        self.groups().synced.contains_key(&key)
    }

    /// Makes every watcher catch up from storage, e.g. after the store was replaced by a
    /// snapshot and revisions jumped ahead of what was notified.
    pub fn resync_all(&self) {
        let mut g = self.groups();
        let synced: Vec<(WatcherKey, Watcher)> = g.synced.drain().collect();
        g.unsynced.extend(synced);
    }

    /// Answers a progress request: a synced watcher gets an empty response at `current_rev`.
    pub fn request_progress(&self, key: WatcherKey, current_rev: i64) {
        let g = self.groups();
        if let Some(w) = g.synced.get(&key) {
            let _ = w.tx.try_send(WatchEvents {
                watch_id: w.spec.watch_id,
                events: Vec::new(),
                revision: current_rev,
                compact_revision: 0,
            });
        }
    }

    /// One round of catching up unsynced watchers (etcd's `syncWatchers`); returns how many
    /// are still behind. The caller holds the state read lock.
    pub fn sync(&self, state: &MvccState, backend: &Backend) -> Result<usize, MvccError> {
        let mut g = self.groups();
        if g.unsynced.is_empty() {
            return Ok(0);
        }
        let cur = state.current_rev();
        let compact = state.compact_rev();
        let keys: Vec<WatcherKey> = g.unsynced.keys().copied().collect();
        for key in keys {
            let w = g.unsynced.get_mut(&key).expect("listed");
            if w.min_rev < compact {
                let resp = WatchEvents {
                    watch_id: w.spec.watch_id,
                    events: Vec::new(),
                    revision: 0,
                    compact_revision: compact,
                };
                if !matches!(w.tx.try_send(resp), Err(mpsc::error::TrySendError::Full(_))) {
                    g.unsynced.remove(&key);
                }
                continue;
            }
            let until = cur.min(w.min_rev.saturating_add(MAX_REVS_PER_RESPONSE - 1));
            let evs: Vec<Event> = state
                .events_between(backend, w.min_rev, until)?
                .into_iter()
                .filter(|e| w.wants(e))
                .collect();
            let delivered = evs.is_empty()
                || match w.tx.try_send(WatchEvents {
                    watch_id: w.spec.watch_id,
                    events: evs,
                    revision: cur,
                    compact_revision: 0,
                }) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => false,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        g.unsynced.remove(&key);
                        continue;
                    }
                };
            if delivered {
                w.min_rev = until + 1;
                if until == cur {
                    let w = g.unsynced.remove(&key).expect("listed");
                    g.synced.insert(key, w);
                }
            }
        }
        Ok(g.unsynced.len())
    }
}
