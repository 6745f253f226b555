//! Checks lock histories (see `workload::lock`): every successful acquisition has its
//! own lock revision; the fenced entries, in commit (mod revision) order, never go back
//! to an earlier holder once a later one has written; every entry was written under an
//! acquisition that was not refused; acknowledged fenced writes are all present and
//! refused ones absent. Real-time overlap of holders is reported as a note only: with
//! leases, a holder that stalls past its TTL legitimately believes it still holds the
//! lock.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckError, Report, Verdict};
use crate::history::{self, Event, Kind};
use crate::workload::lock::LockCall;

/// Checks a lock history.
pub fn check(events: &[Event<LockCall>]) -> Result<Report, CheckError> {
    let pairs = history::pair(events)?;
    let mut anomalies = Vec::new();
    let mut granted: BTreeMap<i64, u64> = BTreeMap::new();
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut possible_fences: BTreeSet<i64> = BTreeSet::new();
    let mut entries: Option<&Vec<(String, i64, i64)>> = None;
    // (start, end, owner) of holds, for the real-time note.
    let mut holds: BTreeMap<(u64, i64), (u64, Option<u64>)> = BTreeMap::new();
    for p in &pairs {
        let done = p.completion.map(|c| &c.op);
        match (&p.invoke.op, p.kind(), done) {
            (
                LockCall::Acquire { owner, .. },
                Kind::Ok,
                Some(LockCall::Acquire {
                    lock_rev: Some(rev),
                    ..
                }),
            ) => {
                if let Some(other) = granted.insert(*rev, *owner) {
                    anomalies.push(format!("two holders acquired the lock at the same revision {rev}: owners {other} and {owner}"));
                }
                possible_fences.insert(*rev);
                if let Some(c) = p.completion {
                    holds.insert((*owner, *rev), (c.time_ns, None));
                }
            }
            (LockCall::Acquire { .. }, Kind::Ok, _) => {
                return Err(CheckError::Malformed(format!(
                    "ok acquire {} without a lock revision",
                    p.invoke.index
                )));
            }
            (
                LockCall::Fenced {
                    entry, lock_rev, ..
                },
                kind,
                _,
            ) => match kind {
                Kind::Ok => {
                    acked.insert(entry.clone());
                }
                Kind::Fail => {
                    refused.insert(entry.clone());
                }
                _ => {
                    // Indeterminate: may or may not exist; its fence still has to be real.
                    let _ = lock_rev;
                }
            },
            (LockCall::Release { owner, lock_rev }, _, _) => {
                if let Some(h) = holds.get_mut(&(*owner, *lock_rev)) {
                    h.1 = Some(p.invoke.time_ns);
                }
            }
            (
                LockCall::ReadEntries { .. },
                Kind::Ok,
                Some(LockCall::ReadEntries { entries: Some(e) }),
            ) => entries = Some(e),
            _ => {}
        }
    }
    // An indeterminate acquire may have succeeded at an unknown revision: then entries
    // fenced with it cannot exist (the client never learned the revision), so only
    // granted revisions are legitimate fences.
    let Some(entries) = entries else {
        return Ok(Report {
            verdict: Verdict::Unknown {
                reason: "no final read of the fenced entries".into(),
            },
            notes: vec![],
        });
    };
    let mut sorted: Vec<&(String, i64, i64)> = entries.iter().collect();
    sorted.sort_by_key(|e| e.2);
    let mut max_fence = i64::MIN;
    let present: BTreeSet<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    for (key, fence, rev) in &sorted {
        if !possible_fences.contains(fence) {
            anomalies.push(format!("entry {key} (revision {rev}) was written under lock revision {fence}, which was never granted"));
        }
        if *fence < max_fence {
            anomalies.push(format!(
                "mutual exclusion violated: entry {key} at revision {rev} was written by the holder of lock revision {fence} after a holder of lock revision {max_fence} had written"
            ));
        }
        max_fence = max_fence.max(*fence);
        if refused.contains(key.as_str()) {
            anomalies.push(format!(
                "fenced write {key} was refused but took effect (revision {rev})"
            ));
        }
    }
    for key in &acked {
        if !present.contains(key.as_str()) {
            anomalies.push(format!(
                "lost write: fenced write {key} was acknowledged but is missing at the end"
            ));
        }
    }
    let mut notes = vec![format!(
        "{} acquisitions, {} acknowledged fenced writes, {} entries at the end",
        granted.len(),
        acked.len(),
        entries.len()
    )];
    let mut spans: Vec<(u64, u64, i64)> = holds
        .iter()
        .map(|((_, rev), (start, end))| (*start, end.unwrap_or(u64::MAX), *rev))
        .collect();
    spans.sort();
    let overlaps = spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
    if overlaps > 0 {
        notes.push(format!(
            "{overlaps} holds overlapped in real time (expected when a lease expires under a paused or partitioned holder; fencing kept writes ordered)"
        ));
    }
    let verdict = match anomalies.first() {
        Some(a) => Verdict::Invalid { anomaly: a.clone() },
        None => Verdict::Valid,
    };
    notes.extend(anomalies.into_iter().skip(1).take(10));
    Ok(Report { verdict, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(rows: Vec<(u64, Kind, LockCall)>) -> Vec<Event<LockCall>> {
        rows.into_iter()
            .enumerate()
            .map(|(i, (p, k, op))| Event {
                index: i as u64,
                time_ns: i as u64,
                process: p,
                kind: k,
                op,
                error: None,
            })
            .collect()
    }
    fn acq(owner: u64, rev: Option<i64>) -> LockCall {
        LockCall::Acquire {
            owner,
            lock_rev: rev,
        }
    }
    fn fenced(owner: u64, rev: i64, e: &str) -> LockCall {
        LockCall::Fenced {
            owner,
            lock_rev: rev,
            entry: e.into(),
        }
    }
    fn read(entries: Vec<(&str, i64, i64)>) -> LockCall {
        LockCall::ReadEntries {
            entries: Some(
                entries
                    .into_iter()
                    .map(|(k, f, r)| (k.to_string(), f, r))
                    .collect(),
            ),
        }
    }

    fn base() -> Vec<(u64, Kind, LockCall)> {
        vec![
            (1, Kind::Invoke, acq(1, None)),
            (1, Kind::Ok, acq(1, Some(10))),
            (1, Kind::Invoke, fenced(1, 10, "e1")),
            (1, Kind::Ok, fenced(1, 10, "e1")),
            (2, Kind::Invoke, acq(2, None)),
            (2, Kind::Ok, acq(2, Some(20))),
            (2, Kind::Invoke, fenced(2, 20, "e2")),
            (2, Kind::Ok, fenced(2, 20, "e2")),
        ]
    }
    fn verdict(
        mut rows: Vec<(u64, Kind, LockCall)>,
        final_entries: Vec<(&str, i64, i64)>,
    ) -> Verdict {
        rows.push((99, Kind::Invoke, LockCall::ReadEntries { entries: None }));
        rows.push((99, Kind::Ok, read(final_entries)));
        check(&events(rows)).unwrap().verdict
    }

    type Case = (
        &'static str,
        Vec<(u64, Kind, LockCall)>,
        Vec<(&'static str, i64, i64)>,
        &'static str,
    );

    #[test]
    fn table() {
        assert_eq!(
            verdict(base(), vec![("e1", 10, 11), ("e2", 20, 21)]),
            Verdict::Valid
        );
        let cases: Vec<Case> = vec![
            (
                "interleaved holders",
                base(),
                vec![("e1", 10, 22), ("e2", 20, 21)],
                "mutual exclusion",
            ),
            (
                "lost fenced write",
                base(),
                vec![("e2", 20, 21)],
                "lost write",
            ),
            (
                "entry under an ungranted lock",
                base(),
                vec![("e1", 10, 11), ("e2", 20, 21), ("e3", 15, 23)],
                "never granted",
            ),
            (
                "refused write took effect",
                {
                    let mut b = base();
                    b.push((1, Kind::Invoke, fenced(1, 10, "e9")));
                    b.push((1, Kind::Fail, fenced(1, 10, "e9")));
                    b
                },
                vec![("e1", 10, 11), ("e2", 20, 21), ("e9", 10, 12)],
                "refused",
            ),
            (
                "same lock revision granted twice",
                {
                    let mut b = base();
                    b.push((3, Kind::Invoke, acq(3, None)));
                    b.push((3, Kind::Ok, acq(3, Some(20))));
                    b
                },
                vec![("e1", 10, 11), ("e2", 20, 21)],
                "same revision",
            ),
        ];
        for (name, rows, fin, want) in cases {
            match verdict(rows, fin) {
                Verdict::Invalid { anomaly } => assert!(
                    anomaly.contains(want),
                    "{name}: wanted {want:?}, got {anomaly}"
                ),
                v => panic!("{name}: unexpected {v:?}"),
            }
        }
    }
}
