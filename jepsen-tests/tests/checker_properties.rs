//! Property tests: histories produced by a correct (sequential, linearizable) system are
//! always accepted. A simulated system applies every operation atomically at one instant
//! between its invocation and completion; clients may time out (indeterminate), and
//! such operations still take effect later — or never — as a real server's might.

use jepsen_tests::checker::linearizable::{self, Operation, Outcome};
use jepsen_tests::checker::model::{List, ListOp};
use jepsen_tests::checker::{append, register, Verdict};
use jepsen_tests::history::{Event, Kind};
use jepsen_tests::workload::append::AppendCall;
use jepsen_tests::workload::register::RegisterCall;
use proptest::prelude::*;

/// One step of the simulation, drawn by proptest.
#[derive(Clone, Debug)]
struct Action {
    process: u8,
    /// 0: invoke/linearize/complete as the process's state allows; 1: time out now.
    choice: u8,
    kind: u8,
    value: u8,
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    prop::collection::vec(
        (0u8..4, 0u8..8, 0u8..3, 0u8..4).prop_map(|(process, choice, kind, value)| Action {
            process,
            choice,
            kind,
            value,
        }),
        1..120,
    )
}

/// A simulated system with a sequential state; `apply` runs one operation on it and
/// returns the completed operation (with its result).
trait System {
    type Call: Clone;
    fn new_call(&mut self, kind: u8, value: u8) -> Self::Call;
    fn apply(&mut self, call: &Self::Call) -> Self::Call;
}

#[derive(Default)]
struct RegisterSystem(Option<i64>);

impl System for RegisterSystem {
    type Call = RegisterCall;
    fn new_call(&mut self, kind: u8, value: u8) -> RegisterCall {
        let key = "k".to_string();
        match kind {
            0 => RegisterCall::Read { key, value: None },
            1 => RegisterCall::Write {
                key,
                value: i64::from(value),
            },
            _ => RegisterCall::Cas {
                key,
                from: i64::from(value % 2),
                to: i64::from(value),
                succeeded: None,
            },
        }
    }
    fn apply(&mut self, call: &RegisterCall) -> RegisterCall {
        match call {
            RegisterCall::Read { key, .. } => RegisterCall::Read {
                key: key.clone(),
                value: self.0,
            },
            RegisterCall::Write { value, .. } => {
                self.0 = Some(*value);
                call.clone()
            }
            RegisterCall::Cas { key, from, to, .. } => {
                let ok = self.0 == Some(*from);
                if ok {
                    self.0 = Some(*to);
                }
                RegisterCall::Cas {
                    key: key.clone(),
                    from: *from,
                    to: *to,
                    succeeded: Some(ok),
                }
            }
        }
    }
}

#[derive(Default)]
struct ListSystem {
    list: Vec<i64>,
    next: i64,
}

impl System for ListSystem {
    type Call = AppendCall;
    fn new_call(&mut self, kind: u8, _value: u8) -> AppendCall {
        let key = "k".to_string();
        if kind == 0 {
            AppendCall::Read { key, list: None }
        } else {
            self.next += 1;
            AppendCall::Append {
                key,
                elem: self.next,
            }
        }
    }
    fn apply(&mut self, call: &AppendCall) -> AppendCall {
        match call {
            AppendCall::Read { key, .. } => AppendCall::Read {
                key: key.clone(),
                list: Some(self.list.clone()),
            },
            AppendCall::Append { elem, .. } => {
                self.list.push(*elem);
                call.clone()
            }
        }
    }
}

enum Slot<C> {
    Idle,
    /// Invoked, not yet applied.
    Pending(C),
    /// Applied; waiting to report this result.
    Applied(C),
}

/// Runs the simulation and returns the history it produced.
fn simulate<S: System>(sys: &mut S, actions: &[Action]) -> Vec<Event<S::Call>> {
    let mut events = Vec::new();
    let mut slots: Vec<Slot<S::Call>> = (0..4).map(|_| Slot::Idle).collect();
    let mut process_ids: Vec<u64> = (0..4).collect();
    // Timed-out operations that have not taken effect yet; they may, later.
    let mut orphans: Vec<S::Call> = Vec::new();
    let mut t = 0u64;
    let mut push = |events: &mut Vec<Event<S::Call>>, process: u64, kind: Kind, op: S::Call| {
        t += 1;
        events.push(Event {
            index: events.len() as u64,
            time_ns: t,
            process,
            kind,
            op,
            error: None,
        });
    };
    for a in actions {
        let p = usize::from(a.process);
        let pid = process_ids[p];
        let slot = std::mem::replace(&mut slots[p], Slot::Idle);
        slots[p] = match (slot, a.choice) {
            (Slot::Idle, _) => {
                let call = sys.new_call(a.kind, a.value);
                push(&mut events, pid, Kind::Invoke, call.clone());
                Slot::Pending(call)
            }
            // Time out: report info; the operation lives on as an orphan (if not applied).
            (Slot::Pending(call), 1) => {
                push(&mut events, pid, Kind::Info, call.clone());
                orphans.push(call);
                process_ids[p] += 4;
                Slot::Idle
            }
            (Slot::Applied(call), 1) => {
                push(&mut events, pid, Kind::Info, call);
                process_ids[p] += 4;
                Slot::Idle
            }
            (Slot::Pending(call), 2) if !orphans.is_empty() => {
                // A late orphan takes effect now.
                let o = orphans.remove(usize::from(a.value) % orphans.len());
                sys.apply(&o);
                Slot::Pending(call)
            }
            (Slot::Pending(call), _) => Slot::Applied(sys.apply(&call)),
            (Slot::Applied(done), _) => {
                push(&mut events, pid, Kind::Ok, done);
                Slot::Idle
            }
        };
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn register_histories_from_a_sequential_system_are_linearizable(actions in actions()) {
        let history = simulate(&mut RegisterSystem::default(), &actions);
        let report = register::check(&history, 2_000_000).unwrap();
        prop_assert_eq!(&report.verdict, &Verdict::Valid, "{:?}", history);
    }

    #[test]
    fn list_histories_from_a_sequential_system_are_linearizable(actions in actions()) {
        let history = simulate(&mut ListSystem::default(), &actions);
        let report = append::check(&history, 2_000_000).unwrap();
        prop_assert_eq!(&report.verdict, &Verdict::Valid, "{:?}", history);
    }

    /// Sanity check of the property's power: corrupting one read of a sequential
    /// history (to a value no operation wrote) is always caught.
    #[test]
    fn a_corrupted_read_is_rejected(actions in actions()) {
        let mut history = simulate(&mut RegisterSystem::default(), &actions);
        let target = history.iter().position(|e| e.kind == Kind::Ok && matches!(e.op, RegisterCall::Read { .. }));
        prop_assume!(target.is_some());
        if let Some(i) = target {
            history[i].op = RegisterCall::Read { key: "k".into(), value: Some(99) };
        }
        let report = register::check(&history, 2_000_000).unwrap();
        prop_assert!(matches!(report.verdict, Verdict::Invalid { .. }), "{:?}", report);
    }
}

/// Small arbitrary list histories: (append?, element list for reads, invoke, duration or
/// indeterminate).
fn small_list_histories() -> impl Strategy<Value = Vec<(bool, Vec<i64>, u64, Option<u64>)>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::collection::vec(0i64..6, 0..4),
            0u64..20,
            prop::option::weighted(0.8, 1u64..10),
        ),
        1..7,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The append checker (prefix shortcut + ordered-list model) agrees with plain WGL
    /// over the unrestricted list model, on valid and invalid histories alike.
    #[test]
    fn append_checker_agrees_with_the_plain_list_model(ops in small_list_histories()) {
        let mut events = Vec::new();
        let mut plain = Vec::new();
        // One process per operation, so invocations never overlap per process.
        let mut points: Vec<(u64, usize, Kind)> = Vec::new();
        for (i, (is_append, _, call, dur)) in ops.iter().enumerate() {
            points.push((call * 2, i, Kind::Invoke));
            if let Some(d) = dur {
                points.push(((call + d) * 2 + 1, i, Kind::Ok));
            } else {
                points.push((1000, i, Kind::Info));
            }
            let op = if *is_append { ListOp::Append(i as i64) } else { ListOp::Read(ops[i].1.clone()) };
            let keep = *is_append || dur.is_some();
            if keep {
                plain.push(Operation { id: i as u64, process: i as u64, call: call * 2, ret: dur.map(|d| (call + d) * 2 + 1), op });
            }
        }
        points.sort_by_key(|p| (p.0, p.1));
        for (t, i, kind) in points {
            let (is_append, list, _, _) = &ops[i];
            let op = if *is_append {
                AppendCall::Append { key: "k".into(), elem: i as i64 }
            } else {
                AppendCall::Read { key: "k".into(), list: (kind == Kind::Ok).then(|| list.clone()) }
            };
            events.push(Event { index: events.len() as u64, time_ns: t, process: i as u64, kind, op, error: None });
        }
        let ours = append::check(&events, 1_000_000).unwrap().verdict;
        let reference = linearizable::check(&List::default(), &plain, 1_000_000);
        prop_assume!(!matches!(reference, Outcome::Unknown { .. }));
        prop_assert_eq!(
            matches!(ours, Verdict::Valid),
            reference == Outcome::Linearizable,
            "ours {:?}, plain WGL {:?}", ours, reference
        );
    }
}
