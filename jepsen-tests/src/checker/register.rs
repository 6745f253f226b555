//! Checks register histories: per key, Wing–Gong–Lowe against the [`Register`] model.
//! Failed operations are dropped (they did not happen); indeterminate writes and CAS may
//! take effect at any time after invocation or never; indeterminate reads constrain
//! nothing and are dropped. When a key fails, the report names the anomaly as precisely
//! as the evidence allows (read of a never-written value, read of a failed write, stale
//! read or lost write, CAS anomaly).

use std::collections::{BTreeMap, BTreeSet};

use super::linearizable::{self, Operation, Outcome};
use super::model::{Register, RegisterOp};
use super::{CheckError, Report, Verdict};
use crate::history::{self, Event, Kind};
use crate::workload::register::RegisterCall;

#[derive(Default)]
struct KeyHistory {
    ops: Vec<Operation<RegisterOp>>,
    /// Values some ok or indeterminate write/CAS may have stored.
    maybe_written: BTreeSet<i64>,
    /// Values written only by operations that definitely failed.
    failed_writes: BTreeSet<i64>,
}

fn model_op(call: &RegisterCall, determinate: bool) -> Result<Option<RegisterOp>, CheckError> {
    Ok(match call {
        RegisterCall::Read { value, .. } => determinate.then_some(RegisterOp::Read(*value)),
        RegisterCall::Write { value, .. } => Some(RegisterOp::Write(*value)),
        RegisterCall::Cas {
            from,
            to,
            succeeded,
            ..
        } => {
            if determinate && succeeded.is_none() {
                return Err(CheckError::Malformed(format!(
                    "ok CAS on {} without a result",
                    call.key()
                )));
            }
            Some(RegisterOp::Cas {
                from: *from,
                to: *to,
                succeeded: if determinate { *succeeded } else { None },
            })
        }
    })
}

fn written_value(call: &RegisterCall) -> Option<i64> {
    match call {
        RegisterCall::Write { value, .. } => Some(*value),
        RegisterCall::Cas { to, .. } => Some(*to),
        RegisterCall::Read { .. } => None,
    }
}

/// Checks a register history, spending at most `budget` search steps per key.
pub fn check(events: &[Event<RegisterCall>], budget: u64) -> Result<Report, CheckError> {
    let mut keys: BTreeMap<String, KeyHistory> = BTreeMap::new();
    for p in history::pair(events)? {
        let key = p.invoke.op.key();
        let kh = keys.entry(key.to_string()).or_default();
        let kind = p.kind();
        if let Some(c) = p.completion {
            if c.op.key() != key {
                return Err(CheckError::Malformed(format!(
                    "event {} completes an operation on {key} with one on {}",
                    c.index,
                    c.op.key()
                )));
            }
        }
        let written = written_value(&p.invoke.op);
        let (call, ret) = match (kind, p.completion) {
            (Kind::Fail, _) => {
                kh.failed_writes.extend(written);
                continue;
            }
            (Kind::Ok, Some(c)) => (&c.op, Some(c.time_ns)),
            _ => (&p.invoke.op, None),
        };
        kh.maybe_written.extend(written);
        if let Some(op) = model_op(call, ret.is_some())? {
            kh.ops.push(Operation {
                id: p.invoke.index,
                process: p.invoke.process,
                call: p.invoke.time_ns,
                ret,
                op,
            });
        }
    }

    let mut verdict = Verdict::Valid;
    let mut notes = vec![];
    let mut checked_ops = 0;
    let mut bad_keys = 0;
    for (key, kh) in &keys {
        checked_ops += kh.ops.len();
        let v = match linearizable::check(&Register::default(), &kh.ops, budget) {
            Outcome::Linearizable => Verdict::Valid,
            Outcome::Unknown { budget } => Verdict::Unknown {
                reason: format!("key {key}: search gave up after {budget} steps"),
            },
            Outcome::NotLinearizable {
                blocked,
                linearized,
                state,
            } => {
                bad_keys += 1;
                Verdict::Invalid {
                    anomaly: describe(key, kh, blocked, linearized, &state),
                }
            }
        };
        if let Verdict::Invalid { anomaly } | Verdict::Unknown { reason: anomaly } = &v {
            if !matches!(verdict, Verdict::Valid) {
                notes.push(anomaly.clone());
            }
        }
        verdict = verdict.merge(v);
    }
    notes.insert(
        0,
        format!(
            "linearizability (WGL) over {} keys, {checked_ops} operations; {bad_keys} keys not linearizable",
            keys.len()
        ),
    );
    Ok(Report { verdict, notes })
}

fn describe(key: &str, kh: &KeyHistory, blocked: u64, linearized: usize, state: &str) -> String {
    let Some(op) = kh.ops.iter().find(|o| o.id == blocked) else {
        return format!("key {key}: not linearizable (operation {blocked})");
    };
    let at = format!(
        "op #{} (process {}) {:?} cannot be ordered after {linearized} earlier operations; the register could only hold one of {state}",
        op.id, op.process, op.op
    );
    match op.op {
        RegisterOp::Read(Some(v)) if !kh.maybe_written.contains(&v) => {
            if kh.failed_writes.contains(&v) {
                format!("read of a failed write on key {key}: {at}")
            } else {
                format!("read of a value never written on key {key}: {at}")
            }
        }
        RegisterOp::Read(_) => format!("stale read (or lost write) on key {key}: {at}"),
        RegisterOp::Cas { .. } => format!("CAS anomaly on key {key}: {at}"),
        RegisterOp::Write(_) => format!("not linearizable on key {key}: {at}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact way to write histories: (process, kind, time, call).
    fn h(rows: &[(u64, Kind, u64, RegisterCall)]) -> Vec<Event<RegisterCall>> {
        rows.iter()
            .enumerate()
            .map(|(i, (p, k, t, c))| Event {
                index: i as u64,
                time_ns: *t,
                process: *p,
                kind: *k,
                op: c.clone(),
                error: None,
            })
            .collect()
    }
    fn r(v: Option<i64>) -> RegisterCall {
        RegisterCall::Read {
            key: "k".into(),
            value: v,
        }
    }
    fn w(v: i64) -> RegisterCall {
        RegisterCall::Write {
            key: "k".into(),
            value: v,
        }
    }
    fn cas(from: i64, to: i64, ok: Option<bool>) -> RegisterCall {
        RegisterCall::Cas {
            key: "k".into(),
            from,
            to,
            succeeded: ok,
        }
    }
    use Kind::{Fail, Info, Invoke, Ok as K};

    fn verdict(rows: &[(u64, Kind, u64, RegisterCall)]) -> Verdict {
        check(&h(rows), 100_000).unwrap().verdict
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            rows: Vec<(u64, Kind, u64, RegisterCall)>,
            valid: bool,
            anomaly: &'static str,
        }
        let cases = vec![
            Case {
                name: "sequential write then read",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (2, Invoke, 2, r(None)),
                    (2, K, 3, r(Some(1))),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "read of an absent key before any write",
                rows: vec![(1, Invoke, 0, r(None)), (1, K, 1, r(None))],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "concurrent read may see the old or new value",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (1, Invoke, 2, w(2)),
                    (2, Invoke, 3, r(None)),
                    (2, K, 4, r(Some(1))),
                    (1, K, 5, w(2)),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "stale read",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (1, Invoke, 2, w(2)),
                    (1, K, 3, w(2)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(1))),
                ],
                valid: false,
                anomaly: "stale read",
            },
            Case {
                name: "lost write: acknowledged, then a later read misses it",
                rows: vec![
                    (1, Invoke, 0, w(3)),
                    (1, K, 1, w(3)),
                    (2, Invoke, 2, r(None)),
                    (2, K, 3, r(None)),
                ],
                valid: false,
                anomaly: "stale read (or lost write)",
            },
            Case {
                name: "read of a value never written",
                rows: vec![(1, Invoke, 0, r(None)), (1, K, 1, r(Some(4)))],
                valid: false,
                anomaly: "never written",
            },
            Case {
                name: "read of a failed write",
                rows: vec![
                    (1, Invoke, 0, w(4)),
                    (1, Fail, 1, w(4)),
                    (2, Invoke, 2, r(None)),
                    (2, K, 3, r(Some(4))),
                ],
                valid: false,
                anomaly: "failed write",
            },
            Case {
                name: "successful CAS from the current value",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (1, Invoke, 2, cas(1, 2, None)),
                    (1, K, 3, cas(1, 2, Some(true))),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(2))),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "CAS succeeded although the value differed",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (1, Invoke, 2, cas(3, 2, None)),
                    (1, K, 3, cas(3, 2, Some(true))),
                ],
                valid: false,
                anomaly: "CAS anomaly",
            },
            Case {
                name: "CAS reported a failed compare although the value matched",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (1, Invoke, 2, cas(1, 2, None)),
                    (1, K, 3, cas(1, 2, Some(false))),
                ],
                valid: false,
                anomaly: "CAS anomaly",
            },
            Case {
                name: "two CAS from the same value both succeed",
                rows: vec![
                    (1, Invoke, 0, w(0)),
                    (1, K, 1, w(0)),
                    (1, Invoke, 2, cas(0, 1, None)),
                    (2, Invoke, 2, cas(0, 2, None)),
                    (1, K, 3, cas(0, 1, Some(true))),
                    (2, K, 3, cas(0, 2, Some(true))),
                ],
                valid: false,
                anomaly: "CAS anomaly",
            },
            Case {
                name: "indeterminate write that took effect",
                rows: vec![
                    (1, Invoke, 0, w(7)),
                    (1, Info, 1, w(7)),
                    (2, Invoke, 5, r(None)),
                    (2, K, 6, r(Some(7))),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "indeterminate write that never took effect",
                rows: vec![
                    (1, Invoke, 0, w(7)),
                    (1, Info, 1, w(7)),
                    (2, Invoke, 5, r(None)),
                    (2, K, 6, r(None)),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "indeterminate write may take effect long after its timeout",
                rows: vec![
                    (1, Invoke, 0, w(7)),
                    (1, Info, 1, w(7)),
                    (2, Invoke, 5, r(None)),
                    (2, K, 6, r(None)),
                    (2, Invoke, 7, r(None)),
                    (2, K, 8, r(Some(7))),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "indeterminate write cannot take effect before it was invoked",
                rows: vec![
                    (2, Invoke, 0, r(None)),
                    (2, K, 1, r(Some(7))),
                    (1, Invoke, 2, w(7)),
                    (1, Info, 3, w(7)),
                ],
                valid: false,
                anomaly: "Read(Some(7))",
            },
            Case {
                name: "indeterminate write cannot flip back and forth",
                rows: vec![
                    (3, Invoke, 0, w(1)),
                    (3, K, 1, w(1)),
                    (1, Invoke, 2, w(7)),
                    (1, Info, 3, w(7)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(7))),
                    (2, Invoke, 6, r(None)),
                    (2, K, 7, r(Some(1))),
                ],
                valid: false,
                anomaly: "stale read",
            },
            Case {
                name: "indeterminate CAS applied",
                rows: vec![
                    (1, Invoke, 0, w(1)),
                    (1, K, 1, w(1)),
                    (1, Invoke, 2, cas(1, 3, None)),
                    (1, Info, 3, cas(1, 3, None)),
                    (2, Invoke, 4, r(None)),
                    (2, K, 5, r(Some(3))),
                ],
                valid: true,
                anomaly: "",
            },
            Case {
                name: "an unfinished operation at the end of the history counts as indeterminate",
                rows: vec![
                    (1, Invoke, 0, w(2)),
                    (2, Invoke, 1, r(None)),
                    (2, K, 2, r(Some(2))),
                ],
                valid: true,
                anomaly: "",
            },
        ];
        for c in cases {
            let v = verdict(&c.rows);
            match (&v, c.valid) {
                (Verdict::Valid, true) => {}
                (Verdict::Invalid { anomaly }, false) => assert!(
                    anomaly.contains(c.anomaly),
                    "{}: expected anomaly containing {:?}, got {anomaly}",
                    c.name,
                    c.anomaly
                ),
                _ => panic!("{}: expected valid={}, got {v:?}", c.name, c.valid),
            }
        }
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut rows = vec![(1, Invoke, 0, w(1)), (1, K, 1, w(1))];
        // Same value on another key must not satisfy a read of "k".
        rows.push((
            2,
            Invoke,
            2,
            RegisterCall::Write {
                key: "other".into(),
                value: 9,
            },
        ));
        rows.push((
            2,
            K,
            3,
            RegisterCall::Write {
                key: "other".into(),
                value: 9,
            },
        ));
        rows.push((3, Invoke, 4, r(None)));
        rows.push((3, K, 5, r(Some(9))));
        assert!(matches!(verdict(&rows), Verdict::Invalid { .. }));
    }

    #[test]
    fn budget_exhaustion_is_unknown() {
        let mut rows = vec![];
        // Many concurrent indeterminate writes make the search space large.
        for p in 0..12 {
            rows.push((p, Invoke, p, w(p as i64)));
        }
        for p in 0..12 {
            rows.push((p, Info, 20 + p, w(p as i64)));
        }
        rows.push((99, Invoke, 40, r(None)));
        rows.push((99, K, 41, r(Some(42))));
        let v = check(&h(&rows), 5).unwrap().verdict;
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
    }

    #[test]
    fn key_mismatch_is_malformed() {
        let rows = vec![
            (1, Invoke, 0, w(1)),
            (
                1,
                K,
                1,
                RegisterCall::Write {
                    key: "x".into(),
                    value: 1,
                },
            ),
        ];
        assert!(matches!(
            check(&h(&rows), 10),
            Err(CheckError::Malformed(_))
        ));
    }
}
