//! The in-memory key index: for every key, the revisions at which it was written, grouped in
//! generations (a generation runs from a key's creation to its deletion). Ported from etcd's
//! `mvcc/key_index.go` and `mvcc/index.go`; the index is rebuilt from the `kv` column family
//! at start-up, so it is never persisted itself.
//!
//! Example: a key put at 1.0 and 2.0, deleted at 3.0, put again at 4.0:
//! generations `[{created 1.0, ver 3, revs [1.0 2.0 3.0(tombstone)]}, {created 4.0, ver 1, revs [4.0]}]`.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use super::revision::Revision;

/// Which keys a request addresses, decoded from etcd's `key` / `range_end` convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub end: RangeEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// Only `key` itself (`range_end` empty).
    Single,
    /// Every key `>= key` (`range_end` is the single byte `\0`).
    FromKey,
    /// Keys in `[key, end)`.
    Until(Vec<u8>),
}

impl KeyRange {
    /// Decodes etcd's convention: empty `range_end` is one key, `"\0"` is everything from `key`.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::FromKey,
            e => RangeEnd::Until(e.to_vec()),
        };
        Self {
            key: key.to_vec(),
            end,
        }
    }

    pub fn single(key: &[u8]) -> Self {
        Self::new(key, &[])
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => k == self.key.as_slice(),
            RangeEnd::FromKey => k >= self.key.as_slice(),
            RangeEnd::Until(e) => k >= self.key.as_slice() && k < e.as_slice(),
        }
    }

    /// True when the range can contain no key at all (`end <= key`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, RangeEnd::Until(e) if e.as_slice() <= self.key.as_slice())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Number of puts in this generation (the key's `version` after its last put).
    ver: i64,
    created: Revision,
    revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Walks revisions newest first; returns the index of the first one for which `keep_going`
    /// is false.
    fn walk(&self, mut keep_going: impl FnMut(Revision) -> bool) -> Option<usize> {
        (0..self.revs.len())
            .rev()
            .find(|&i| !keep_going(self.revs[i]))
    }
}

/// The history of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex {
    modified: Revision,
    generations: Vec<Generation>,
}

/// What a key looked like at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            modified: Revision::default(),
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    fn put(&mut self, rev: Revision) {
        debug_assert!(rev > self.modified, "put {rev} not after {}", self.modified);
        let g = self
            .generations
            .last_mut()
            .expect("a key index has a generation");
        if g.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Rebuilds a key's live generation from one stored row (start-up restore).
    fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        self.modified = modified;
        let g = self
            .generations
            .last_mut()
            .expect("a key index has a generation");
        *g = Generation {
            ver,
            created,
            revs: vec![modified],
        };
    }

    /// Records a deletion; false (and no change) if the key is not alive.
    fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    fn find_generation(&self, at_rev: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            if i != last {
                let tomb = g.revs.last().expect("non-empty").main;
                if tomb <= at_rev {
                    return None;
                }
            }
            if g.revs[0].main <= at_rev {
                return Some(g);
            }
        }
        None
    }

    pub fn get(&self, at_rev: i64) -> Option<KeyAt> {
        let g = self.find_generation(at_rev)?;
        let n = g.walk(|r| r.main > at_rev)?;
        Some(KeyAt {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// Adds to `available` the newest revision `<= at_rev` of the generation that is alive at
    /// `at_rev` (what a read at `at_rev` still needs); returns where that generation starts.
    fn do_compact(&self, at_rev: i64, available: &mut HashSet<Revision>) -> (usize, Option<usize>) {
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let tomb = self.generations[gen_idx]
                .revs
                .last()
                .expect("closed generation")
                .main;
            if tomb > at_rev {
                break;
            }
            gen_idx += 1;
        }
        let rev_idx = self.generations[gen_idx].walk(|r| {
            if r.main <= at_rev {
                available.insert(r);
                false
            } else {
                true
            }
        });
        (gen_idx, rev_idx)
    }

    fn compact(&mut self, at_rev: i64, available: &mut HashSet<Revision>) {
        let (mut gen_idx, rev_idx) = self.do_compact(at_rev, available);
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(i) = rev_idx {
                g.revs.drain(..i);
            }
            // A generation reduced to its tombstone says nothing a read needs.
            if g.revs.len() == 1 && gen_idx != last {
                available.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }

    fn keep(&self, at_rev: i64, available: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gen_idx, rev_idx) = self.do_compact(at_rev, available);
        let g = &self.generations[gen_idx];
        if let Some(i) = rev_idx {
            if !g.is_empty() && i == g.revs.len() - 1 && gen_idx != self.generations.len() - 1 {
                available.remove(&g.revs[i]);
            }
        }
    }
}

/// The index over all keys, ordered by key.
#[derive(Clone, Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

impl TreeIndex {
    /// Records a write of `key` at `rev`; returns the key's state at `rev.main` before it
    /// (what the write's create revision and version follow from), found in the same lookup.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> Option<KeyAt> {
        match self.keys.get_mut(key) {
            Some(ki) => {
                let before = ki.get(rev.main);
                ki.put(rev);
                before
            }
            None => {
                let mut ki = KeyIndex::default();
                ki.put(rev);
                self.keys.insert(key.to_vec(), ki);
                None
            }
        }
    }

    /// Start-up restore of one stored row; see etcd's `restoreIntoIndex`.
    pub fn restore_row(
        &mut self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: i64,
        ver: i64,
    ) {
        match self.keys.get_mut(key) {
            Some(ki) if tombstone => {
                ki.tombstone(rev);
            }
            Some(ki) => ki.put(rev),
            // A tombstone whose puts were compacted away: nothing to index.
            None if tombstone => {}
            None => {
                let mut ki = KeyIndex::default();
                ki.restore(Revision::new(created, 0), rev, ver);
                self.keys.insert(key.to_vec(), ki);
            }
        }
    }

    /// Records the deletion of a live key; false if the key is not alive.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    pub fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at_rev)
    }

    /// Keys in `range` alive at `at_rev`, in key order, with their state at that revision.
    pub fn range(&self, range: &KeyRange, at_rev: i64) -> Vec<(&[u8], KeyAt)> {
        let upper = match &range.end {
            RangeEnd::Single => {
                return self
                    .keys
                    .get_key_value(range.key.as_slice())
                    .and_then(|(k, ki)| ki.get(at_rev).map(|at| (k.as_slice(), at)))
                    .into_iter()
                    .collect();
            }
            _ if range.is_empty() => return Vec::new(),
            RangeEnd::FromKey => Bound::Unbounded,
            RangeEnd::Until(e) => Bound::Excluded(e.as_slice()),
        };
        self.keys
            .range::<[u8], _>((Bound::Included(range.key.as_slice()), upper))
            .filter_map(|(k, ki)| ki.get(at_rev).map(|at| (k.as_slice(), at)))
            .collect()
    }

    /// Drops history older than `at_rev`; returns the revisions that must stay in storage.
    pub fn compact(&mut self, at_rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        self.keys.retain(|_, ki| {
            ki.compact(at_rev, &mut available);
            !ki.is_empty()
        });
        available
    }

    /// The revisions a compaction at `at_rev` would keep, without compacting.
    pub fn keep(&self, at_rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at_rev, &mut available);
        }
        available
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put 2, put 4, del 6, put 8, put 10, del 12, put 14 (etcd's key_index_test fixture shape).
    fn fixture() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki
    }

    #[test]
    fn get_at_every_revision() {
        let ki = fixture();
        // (at, expected (modified, created, version))
        // (modified, created, version)
        type At = Option<(i64, i64, i64)>;
        let cases: &[(i64, At)] = &[
            (1, None),
            (2, Some((2, 2, 1))),
            (3, Some((2, 2, 1))),
            (4, Some((4, 2, 2))),
            (5, Some((4, 2, 2))),
            (6, None),
            (7, None),
            (8, Some((8, 8, 1))),
            (11, Some((10, 8, 2))),
            (12, None),
            (13, None),
            (14, Some((14, 14, 1))),
            (100, Some((14, 14, 1))),
        ];
        for &(at, want) in cases {
            let got = ki
                .get(at)
                .map(|k| (k.modified.main, k.created.main, k.version));
            assert_eq!(got, want, "at {at}");
        }
    }

    #[test]
    fn tombstone_of_dead_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(1)));
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
    }

    #[test]
    fn compact_keeps_what_reads_need() {
        // (compact at, revisions kept)
        let cases: &[(i64, &[i64])] = &[
            (1, &[]),
            (2, &[2]),
            (3, &[2]),
            (5, &[4]),
            (6, &[]),
            (7, &[]),
            (9, &[8]),
            (11, &[10]),
            (12, &[]),
            (14, &[14]),
            (20, &[14]),
        ];
        for &(at, want) in cases {
            let mut ki = fixture();
            let before = ki.clone();
            let mut avail = HashSet::new();
            ki.compact(at, &mut avail);
            let mut got: Vec<i64> = avail.iter().map(|r| r.main).collect();
            got.sort();
            assert_eq!(got, want, "compact at {at}");
            let mut kept = HashSet::new();
            before.keep(at, &mut kept);
            assert_eq!(kept, avail, "keep at {at}");
            // Reads at or after the compaction point are unchanged.
            for read_at in at..=16 {
                assert_eq!(
                    ki.get(read_at),
                    before.get(read_at),
                    "compact {at} read {read_at}"
                );
            }
        }
    }

    #[test]
    fn tree_range_and_compaction_removes_dead_keys() {
        let mut t = TreeIndex::default();
        t.put(b"a", r(2));
        t.put(b"b", r(3));
        t.put(b"c", r(4));
        assert!(t.tombstone(b"b", r(5)));
        let keys =
            |v: Vec<(&[u8], KeyAt)>| v.into_iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            keys(t.range(&KeyRange::new(b"a", b"\0"), 4)),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(t.range(&KeyRange::new(b"a", b"\0"), 5)),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(t.range(&KeyRange::new(b"b", b"c"), 4)),
            vec![b"b".to_vec()]
        );
        assert_eq!(
            keys(t.range(&KeyRange::new(b"c", b"a"), 4)),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(
            keys(t.range(&KeyRange::single(b"c"), 4)),
            vec![b"c".to_vec()]
        );
        t.compact(5);
        assert_eq!(t.len(), 2, "b is gone after compacting past its deletion");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8),
        Del(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u8..4).prop_map(Op::Put), (0u8..4).prop_map(Op::Del)]
    }

    proptest! {
        /// Against a naive model that remembers the whole history: every read at every
        /// revision at or after a compaction point answers the same as the model.
        #[test]
        fn matches_naive_history(ops in proptest::collection::vec(op(), 1..60), compact_frac in 0.0f64..1.0) {
            let mut idx = TreeIndex::default();
            // model[rev] = state of every key after rev: key -> (created, mod, version)
            // Revisions 0 and 1 exist before any write (a fresh store is at revision 1).
            let mut model: Vec<BTreeMap<u8, (i64, i64, i64)>> = vec![BTreeMap::new(), BTreeMap::new()];
            let mut rev = 1i64;
            for o in &ops {
                let mut state = model.last().unwrap().clone();
                match *o {
                    Op::Put(k) => {
                        rev += 1;
                        let before = idx.get(&[k], rev);
                        prop_assert_eq!(idx.put(&[k], r(rev)), before, "put answers the state it replaced");
                        let e = state.entry(k).or_insert((rev, rev, 0));
                        e.1 = rev;
                        e.2 += 1;
                    }
                    Op::Del(k) => {
                        if state.remove(&k).is_some() {
                            rev += 1;
                            prop_assert!(idx.tombstone(&[k], r(rev)));
                        } else {
                            prop_assert!(!idx.tombstone(&[k], r(rev + 1)));
                            continue;
                        }
                    }
                }
                while (model.len() as i64) < rev { model.push(model.last().unwrap().clone()); }
                model.push(state);
            }
            let compact_at = ((rev as f64) * compact_frac) as i64;
            if compact_at > 0 { idx.compact(compact_at); }
            for at in compact_at.max(1)..=rev {
                for k in 0u8..4 {
                    let got = idx.get(&[k], at).map(|a| (a.created.main, a.modified.main, a.version));
                    let want = model[at as usize].get(&k).copied();
                    prop_assert_eq!(got, want, "key {} at {}", k, at);
                }
            }
        }
    }
}
