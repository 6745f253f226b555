//! The lessor. Its lease table and key attachments change only through the apply path, so
//! they are the same on every replica; deadlines are local (renewed by keep-alives and reset
//! on start-up, as etcd does) and live behind their own lock so a keep-alive never needs the
//! state machine's write lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::leasepb::Lease as LeaseRecord;

use crate::clock::Clock;

/// etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How long an expired lease waits before its revocation is proposed again.
const EXPIRED_RETRY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease not found")]
    NotFound,
    #[error("lease already exists")]
    Exists,
    #[error("too large lease TTL")]
    TtlTooLarge,
}

#[derive(Debug, Clone)]
struct Lease {
    ttl: i64,
    /// Checkpointed remaining TTL (0 = none), used when restoring.
    remaining_ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

/// A lease as `TimeToLive` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub granted_ttl: i64,
    /// Whole seconds left, truncated as etcd does.
    pub remaining_secs: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Deadlines {
    expiry: HashMap<i64, Instant>,
    /// Leases whose revocation was proposed, with when to retry.
    revoking: HashMap<i64, Instant>,
}

pub struct Lessor {
    min_ttl: i64,
    clock: Arc<dyn Clock>,
    leases: BTreeMap<i64, Lease>,
    key_lease: HashMap<Vec<u8>, i64>,
    deadlines: Mutex<Deadlines>,
}

impl Lessor {
    pub fn new(min_ttl: i64, clock: Arc<dyn Clock>) -> Self {
        Self {
            min_ttl,
            clock,
            leases: BTreeMap::new(),
            key_lease: HashMap::new(),
            deadlines: Mutex::new(Deadlines::default()),
        }
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.deadlines.lock().expect("lessor deadlines lock")
    }

    /// Loads persisted leases; every deadline starts afresh from now (etcd's `Promote`).
    pub fn restore(&mut self, records: Vec<LeaseRecord>, key_leases: HashMap<Vec<u8>, i64>) {
        let now = self.clock.now();
        let mut d = Deadlines::default();
        for r in records {
            let ttl = r.ttl.max(self.min_ttl);
            let left = if r.remaining_ttl > 0 {
                r.remaining_ttl
            } else {
                ttl
            };
            d.expiry
                .insert(r.id, now + Duration::from_secs(left as u64));
            self.leases.insert(
                r.id,
                Lease {
                    ttl,
                    remaining_ttl: r.remaining_ttl,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, id) in key_leases {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.insert(key.clone());
                self.key_lease.insert(key, id);
            } else {
                tracing::warn!(lease = id, "key attached to a lease that does not exist");
            }
        }
        *self.deadlines() = d;
    }

    /// Restarts every deadline from now, as a member that just became leader must: it cannot
    /// know when the old leader last renewed them (etcd's `Promote`).
    pub fn promote(&self) {
        let now = self.clock.now();
        let mut d = self.deadlines();
        d.revoking.clear();
        for (id, l) in &self.leases {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            d.expiry.insert(*id, now + Duration::from_secs(left as u64));
        }
    }

    /// Creates a lease; returns the record to persist. TTLs under the minimum are raised to it.
    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<LeaseRecord, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let ttl = ttl.max(self.min_ttl);
        self.leases.insert(
            id,
            Lease {
                ttl,
                remaining_ttl: 0,
                keys: BTreeSet::new(),
            },
        );
        let deadline = self.clock.now() + Duration::from_secs(ttl as u64);
        self.deadlines().expiry.insert(id, deadline);
        Ok(LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        })
    }

    /// Forgets a lease; returns its keys in sorted order, for the caller to delete.
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        let lease = self.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        for k in &lease.keys {
            self.key_lease.remove(k);
        }
        let mut d = self.deadlines();
        d.expiry.remove(&id);
        d.revoking.remove(&id);
        Ok(lease.keys.into_iter().collect())
    }

    /// Records a checkpointed remaining TTL; returns the record to persist.
    pub fn checkpoint(&mut self, id: i64, remaining_ttl: i64) -> Option<LeaseRecord> {
        let l = self.leases.get_mut(&id)?;
        l.remaining_ttl = remaining_ttl;
        Some(LeaseRecord {
            id,
            ttl: l.ttl,
            remaining_ttl,
        })
    }

    /// Pushes the deadline out by a full TTL; returns the TTL.
    pub fn renew(&self, id: i64) -> Result<i64, LeaseError> {
        let l = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let mut d = self.deadlines();
        let now = self.clock.now();
        if d.expiry.get(&id).is_some_and(|&e| e <= now) {
            // Already expired: its revocation is on the way; renewing now would race it.
            return Err(LeaseError::NotFound);
        }
        d.expiry.insert(id, now + Duration::from_secs(l.ttl as u64));
        Ok(l.ttl)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn info(&self, id: i64, with_keys: bool) -> Option<LeaseInfo> {
        let l = self.leases.get(&id)?;
        let now = self.clock.now();
        let remaining = self
            .deadlines()
            .expiry
            .get(&id)
            .map_or(Duration::ZERO, |&e| e.saturating_duration_since(now));
        Some(LeaseInfo {
            id,
            granted_ttl: l.ttl,
            remaining_secs: remaining.as_secs() as i64,
            keys: if with_keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The lease `key` is attached to (0 = none).
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.key_lease.get(key).copied().unwrap_or(0)
    }

    /// Moves `key` to lease `id` (0 = no lease), detaching it from its previous lease.
    pub fn set_key_lease(&mut self, key: &[u8], id: i64) {
        let old = self.lease_of(key);
        if old == id {
            return;
        }
        if old != 0 {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
            self.key_lease.remove(key);
        }
        if id != 0 {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.insert(key.to_vec());
                self.key_lease.insert(key.to_vec(), id);
            }
        }
    }

    /// Leases past their deadline whose revocation should be proposed now (at most `limit`).
    pub fn take_expired(&self, limit: usize) -> Vec<i64> {
        let now = self.clock.now();
        let mut d = self.deadlines();
        let mut due: Vec<(Instant, i64)> = d
            .expiry
            .iter()
            .filter(|(id, &e)| e <= now && d.revoking.get(id).is_none_or(|&r| r <= now))
            .map(|(&id, &e)| (e, id))
            .collect();
        due.sort();
        due.truncate(limit);
        for (_, id) in &due {
            d.revoking.insert(*id, now + EXPIRED_RETRY);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn lessor() -> (Arc<ManualClock>, Lessor) {
        let clock = Arc::new(ManualClock::default());
        (clock.clone(), Lessor::new(2, clock))
    }

    #[test]
    fn grant_rules() {
        let (_, mut l) = lessor();
        // (id, ttl, expected)
        let cases = [
            (0, 10, Err(LeaseError::NotFound)),
            (1, 1, Ok(2)),
            (2, 10, Ok(10)),
            (2, 10, Err(LeaseError::Exists)),
            (3, MAX_LEASE_TTL + 1, Err(LeaseError::TtlTooLarge)),
            (-5, 5, Ok(5)),
        ];
        for (id, ttl, want) in cases {
            assert_eq!(l.grant(id, ttl).map(|r| r.ttl), want, "grant({id}, {ttl})");
        }
    }

    #[test]
    fn expiry_renewal_and_retry() {
        let (clock, mut l) = lessor();
        l.grant(1, 5).unwrap();
        l.grant(2, 10).unwrap();
        clock.advance(Duration::from_secs(4));
        assert_eq!(l.renew(1), Ok(5));
        assert_eq!(l.info(1, false).unwrap().remaining_secs, 5);
        clock.advance(Duration::from_secs(6));
        assert_eq!(l.take_expired(10), vec![1, 2], "oldest deadline first");
        assert!(
            l.take_expired(10).is_empty(),
            "no second proposal before the retry interval"
        );
        assert_eq!(
            l.renew(1),
            Err(LeaseError::NotFound),
            "an expired lease cannot be renewed"
        );
        clock.advance(EXPIRED_RETRY);
        assert_eq!(l.take_expired(1), vec![1]);
        l.promote();
        assert!(
            l.take_expired(10).is_empty(),
            "a new leader gives every lease a full TTL"
        );
        assert_eq!(l.info(2, false).unwrap().remaining_secs, 10);
    }

    #[test]
    fn keys_follow_their_lease() {
        let (_, mut l) = lessor();
        l.grant(1, 10).unwrap();
        l.grant(2, 10).unwrap();
        l.set_key_lease(b"a", 1);
        l.set_key_lease(b"b", 1);
        l.set_key_lease(b"a", 2);
        assert_eq!(l.info(1, true).unwrap().keys, vec![b"b".to_vec()]);
        assert_eq!(l.revoke(2), Ok(vec![b"a".to_vec()]));
        assert_eq!(l.lease_of(b"a"), 0);
        l.set_key_lease(b"b", 0);
        assert_eq!(l.revoke(1), Ok(vec![]));
        assert_eq!(l.revoke(1), Err(LeaseError::NotFound));
    }
}
