//! Checks list-append histories. Cheap direct checks first, because they name the
//! anomaly precisely — a read containing an element twice (duplicate append), or an
//! element no append could have produced (read of a failed or never-issued append) —
//! then, per key, Wing–Gong–Lowe against the [`List`] model, which catches every other
//! violation: lost appends, reordered lists, stale reads.

use std::collections::{BTreeMap, BTreeSet};

use super::linearizable::{self, Operation, Outcome};
use super::model::{ListOp, OrderedList};
use super::{CheckError, Report, Verdict};
use crate::history::{self, Event, Kind};
use crate::workload::append::AppendCall;

#[derive(Default)]
struct KeyHistory {
    ops: Vec<Operation<ListOp>>,
    maybe_appended: BTreeSet<i64>,
    failed: BTreeSet<i64>,
}

/// Checks an append history, spending at most `budget` search steps per key.
pub fn check(events: &[Event<AppendCall>], budget: u64) -> Result<Report, CheckError> {
    let mut keys: BTreeMap<String, KeyHistory> = BTreeMap::new();
    for p in history::pair(events)? {
        let key = p.invoke.op.key();
        let kh = keys.entry(key.to_string()).or_default();
        let (call, ret) = match (p.kind(), p.completion) {
            (Kind::Fail, _) => {
                if let AppendCall::Append { elem, .. } = p.invoke.op {
                    kh.failed.insert(elem);
                }
                continue;
            }
            (Kind::Ok, Some(c)) => (&c.op, Some(c.time_ns)),
            _ => (&p.invoke.op, None),
        };
        if call.key() != key {
            return Err(CheckError::Malformed(format!(
                "operation {} changes key from {key} to {}",
                p.invoke.index,
                call.key()
            )));
        }
        let op = match call {
            AppendCall::Append { elem, .. } => {
                kh.maybe_appended.insert(*elem);
                ListOp::Append(*elem)
            }
            AppendCall::Read { list, .. } => match (ret, list) {
                (Some(_), Some(list)) => ListOp::Read(list.clone()),
                (Some(_), None) => {
                    return Err(CheckError::Malformed(format!(
                        "ok read {} without a list",
                        p.invoke.index
                    )))
                }
                // An indeterminate read tells us nothing.
                (None, _) => continue,
            },
        };
        kh.ops.push(Operation {
            id: p.invoke.index,
            process: p.invoke.process,
            call: p.invoke.time_ns,
            ret,
            op,
        });
    }

    // An indeterminate append whose (unique) element no read ever returned can be
    // dropped without changing the answer: had it taken effect before any read, that
    // read would contain it, so it either never happened or came after every read. Such
    // appends are common under faults and would otherwise blow up the search, since each
    // one could be placed anywhere.
    for kh in keys.values_mut() {
        let read: BTreeSet<i64> = kh
            .ops
            .iter()
            .filter_map(|o| match &o.op {
                ListOp::Read(l) => Some(l.iter().copied()),
                ListOp::Append(_) => None,
            })
            .flatten()
            .collect();
        kh.ops.retain(|o| match o.op {
            ListOp::Append(e) => o.ret.is_some() || read.contains(&e),
            ListOp::Read(_) => true,
        });
    }

    let mut verdict = Verdict::Valid;
    let mut notes = Vec::new();
    let mut total = 0;
    for (key, kh) in &keys {
        total += kh.ops.len();
        let v = direct_anomalies(key, kh).unwrap_or_else(|| {
            let order = match longest_read(key, kh) {
                Ok(order) => order,
                Err(v) => return v,
            };
            match linearizable::check(&OrderedList::new(order.clone()), &kh.ops, budget) {
                Outcome::Linearizable => Verdict::Valid,
                Outcome::Unknown { budget } => Verdict::Unknown {
                    reason: format!("key {key}: search gave up after {budget} steps"),
                },
                Outcome::NotLinearizable {
                    blocked,
                    linearized,
                    state,
                } => {
                    let op = kh.ops.iter().find(|o| o.id == blocked);
                    let what = match op.map(|o| &o.op) {
                        Some(ListOp::Read(_)) => "stale read",
                        Some(ListOp::Append(e)) if !order.contains(e) => {
                            "lost append (acknowledged, then missing from a later read)"
                        }
                        Some(ListOp::Append(_)) => {
                            "reordered append (reads place it where real time forbids)"
                        }
                        None => "not linearizable",
                    };
                    Verdict::Invalid {
                        anomaly: format!(
                            "{what} on key {key}: op #{blocked} {:?} cannot be ordered after {linearized} earlier operations; the list could only be one of {state}",
                            op.map(|o| &o.op)
                        ),
                    }
                }
            }
        });
        if let (Verdict::Invalid { anomaly }, false) = (&v, verdict == Verdict::Valid) {
            notes.push(anomaly.clone());
        }
        verdict = verdict.merge(v);
    }
    notes.insert(
        0,
        format!(
            "list-append linearizability (WGL) over {} keys, {total} operations",
            keys.len()
        ),
    );
    Ok(Report { verdict, notes })
}

/// The longest list any read returned, after checking every other read is a prefix of
/// it: lists only grow at the end, so two reads that disagree on order cannot both be
/// right whatever the timing.
fn longest_read(key: &str, kh: &KeyHistory) -> Result<Vec<i64>, Verdict> {
    let reads: Vec<(&Vec<i64>, u64)> = kh
        .ops
        .iter()
        .filter_map(|o| match &o.op {
            ListOp::Read(l) => Some((l, o.id)),
            ListOp::Append(_) => None,
        })
        .collect();
    let Some(&(longest, longest_id)) = reads.iter().max_by_key(|(l, _)| l.len()) else {
        return Ok(Vec::new());
    };
    for &(l, id) in &reads {
        if !longest.starts_with(l) {
            return Err(Verdict::Invalid {
                anomaly: format!(
                    "reads disagree on order on key {key}: op #{id} read {l:?}, which is not a prefix of op #{longest_id}'s {longest:?}"
                ),
            });
        }
    }
    Ok(longest.clone())
}

fn direct_anomalies(key: &str, kh: &KeyHistory) -> Option<Verdict> {
    for op in &kh.ops {
        let ListOp::Read(list) = &op.op else { continue };
        let mut seen = BTreeSet::new();
        for e in list {
            if !seen.insert(*e) {
                return Some(Verdict::Invalid {
                    anomaly: format!(
                        "duplicate append on key {key}: read op #{} saw element {e} twice in {list:?}",
                        op.id
                    ),
                });
            }
            if !kh.maybe_appended.contains(e) {
                let what = if kh.failed.contains(e) {
                    "read of a failed append"
                } else {
                    "read of an element never appended"
                };
                return Some(Verdict::Invalid {
                    anomaly: format!(
                        "{what} on key {key}: read op #{} saw {e} in {list:?}",
                        op.id
                    ),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::{Fail, Info, Invoke, Ok as K};

    fn a(e: i64) -> AppendCall {
        AppendCall::Append {
            key: "k".into(),
            elem: e,
        }
    }
    fn r(l: Option<Vec<i64>>) -> AppendCall {
        AppendCall::Read {
            key: "k".into(),
            list: l,
        }
    }
    fn verdict(rows: &[(u64, Kind, u64, AppendCall)]) -> Verdict {
        let events: Vec<Event<AppendCall>> = rows
            .iter()
            .enumerate()
            .map(|(i, (p, k, t, c))| Event {
                index: i as u64,
                time_ns: *t,
                process: *p,
                kind: *k,
                op: c.clone(),
                error: None,
            })
            .collect();
        check(&events, 100_000).unwrap().verdict
    }

    type Case = (
        &'static str,
        Vec<(u64, Kind, u64, AppendCall)>,
        Option<&'static str>,
    );

    #[test]
    fn table() {
        let cases: Vec<Case> = vec![
            (
                "appends then read in order",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, K, 1, a(1)),
                    (1, Invoke, 2, a(2)),
                    (1, K, 3, a(2)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![1, 2]))),
                ],
                None,
            ),
            (
                "concurrent appends in either order",
                vec![
                    (1, Invoke, 0, a(1)),
                    (2, Invoke, 0, a(2)),
                    (1, K, 3, a(1)),
                    (2, K, 3, a(2)),
                    (3, Invoke, 4, r(None)),
                    (3, K, 5, r(Some(vec![2, 1]))),
                ],
                None,
            ),
            (
                "lost append",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, K, 1, a(1)),
                    (1, Invoke, 2, a(2)),
                    (1, K, 3, a(2)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![2]))),
                ],
                Some("lost"),
            ),
            (
                "reordered list",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, K, 1, a(1)),
                    (1, Invoke, 2, a(2)),
                    (1, K, 3, a(2)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![2, 1]))),
                ],
                Some("reordered"),
            ),
            (
                "reads disagree on order",
                vec![
                    (1, Invoke, 0, a(1)),
                    (2, Invoke, 0, a(2)),
                    (1, K, 3, a(1)),
                    (2, K, 3, a(2)),
                    (3, Invoke, 4, r(None)),
                    (3, K, 5, r(Some(vec![1, 2]))),
                    (3, Invoke, 6, r(None)),
                    (3, K, 7, r(Some(vec![2, 1]))),
                ],
                Some("disagree on order"),
            ),
            (
                "duplicate element",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, K, 1, a(1)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![1, 1]))),
                ],
                Some("duplicate"),
            ),
            (
                "read of a failed append",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, Fail, 1, a(1)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![1]))),
                ],
                Some("failed append"),
            ),
            (
                "indeterminate append seen",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, Info, 1, a(1)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![1]))),
                ],
                None,
            ),
            (
                "indeterminate append never seen",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, Info, 1, a(1)),
                    (1, Invoke, 2, a(2)),
                    (1, K, 3, a(2)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![2]))),
                ],
                None,
            ),
            (
                "indeterminate append seen, then gone",
                vec![
                    (1, Invoke, 0, a(1)),
                    (1, Info, 1, a(1)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(vec![1]))),
                    (2, Invoke, 6, r(None)),
                    (2, K, 7, r(Some(vec![]))),
                ],
                Some("stale read"),
            ),
        ];
        for (name, rows, anomaly) in cases {
            match (verdict(&rows), anomaly) {
                (Verdict::Valid, None) => {}
                (Verdict::Invalid { anomaly: got }, Some(want)) => {
                    assert!(got.contains(want), "{name}: wanted {want:?} in {got}")
                }
                (v, _) => panic!("{name}: unexpected {v:?}"),
            }
        }
    }
}
