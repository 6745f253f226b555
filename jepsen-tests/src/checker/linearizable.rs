//! The Wing–Gong–Lowe linearizability checker.
//!
//! Given operations with invocation and return times and a sequential [`Model`], decide
//! whether some total order of the operations (a) respects real time — an operation that
//! returned before another was invoked comes first — and (b) is legal for the model with
//! the results the clients observed. This is Lowe's refinement of Wing & Gong's search:
//! a doubly linked list of call/return entries, a stack of linearized calls for
//! backtracking, and a cache of (set of linearized operations, model state) pairs already
//! explored, which is what keeps the search tractable in practice.
//!
//! Indeterminate operations (an `info` completion: a timeout or a connection error after
//! the request may have been sent) get a return time of +∞: they may take effect at any
//! moment after their invocation, or never. The search therefore succeeds as soon as every
//! determinate operation is linearized.
//!
//! Callers partition histories by key first (per-key linearizability composes), which
//! keeps each search small.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification: a state and how each operation (with the result the
/// client observed) changes it.
pub trait Model: Clone + Eq + Hash + Debug {
    /// An operation together with its observed result.
    type Op: Debug;

    /// The state after `op`, or `None` if `op`'s observed result is impossible here.
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

/// One operation as the checker sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<O> {
    /// Identifies the operation in reports (typically the invoke event's index).
    pub id: u64,
    /// The client process, for reports.
    pub process: u64,
    /// Invocation time.
    pub call: u64,
    /// Return time; `None` for indeterminate operations.
    pub ret: Option<u64>,
    /// The operation and its observed result.
    pub op: O,
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No legal order exists. `blocked` is the operation the deepest search attempt could
    /// not get past; `linearized` how many operations that attempt had ordered before it,
    /// and `state` the model state(s) it was stuck in, rendered for people.
    NotLinearizable {
        blocked: u64,
        linearized: usize,
        state: String,
    },
    /// The search gave up after `budget` steps without an answer.
    Unknown {
        budget: u64,
    },
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call entry, the index of its return entry.
    matching: usize,
    prev: usize,
    next: usize,
}

/// The call/return list, with a sentinel head at index 0.
struct List {
    entries: Vec<Entry>,
}

impl List {
    fn build<O>(ops: &[Operation<O>]) -> List {
        // (time, is_return, op): at equal times calls sort before returns, so operations
        // that touch at a single instant count as concurrent — the permissive reading,
        // which never turns a linearizable history into a violation.
        let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            points.push((o.call, false, i));
            points.push((o.ret.unwrap_or(u64::MAX), true, i));
        }
        points.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
        let mut entries = Vec::with_capacity(points.len() + 1);
        entries.push(Entry {
            op: NIL,
            is_call: false,
            matching: NIL,
            prev: NIL,
            next: NIL,
        });
        let mut ret_slot = vec![NIL; ops.len()];
        for (pos, &(_, is_ret, op)) in points.iter().enumerate() {
            let idx = pos + 1;
            entries.push(Entry {
                op,
                is_call: !is_ret,
                matching: NIL,
                prev: idx - 1,
                next: if pos + 1 < points.len() { idx + 1 } else { NIL },
            });
            if is_ret {
                ret_slot[op] = idx;
            }
        }
        entries[0].next = if points.is_empty() { NIL } else { 1 };
        for idx in 1..entries.len() {
            if entries[idx].is_call {
                entries[idx].matching = ret_slot[entries[idx].op];
            }
        }
        List { entries }
    }

    fn unlink(&mut self, i: usize) {
        let Entry { prev, next, .. } = self.entries[i];
        self.entries[prev].next = next;
        if next != NIL {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Entry { prev, next, .. } = self.entries[i];
        self.entries[prev].next = i;
        if next != NIL {
            self.entries[next].prev = i;
        }
    }

    /// Removes a call entry and its return entry.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.entries[call].matching);
    }

    /// Undoes `lift`, in reverse order.
    fn unlift(&mut self, call: usize) {
        self.relink(self.entries[call].matching);
        self.relink(call);
    }
}

/// Decides whether `ops` are linearizable with respect to `init`, giving up after
/// `budget` search steps.
pub fn check<M: Model>(init: &M, ops: &[Operation<M::Op>], budget: u64) -> Outcome {
    let mut list = List::build(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = init.clone();
    let mut entry = list.entries[0].next;
    let mut steps = 0u64;
    // The deepest point any attempt reached, for the report.
    let mut deepest: (usize, usize, Vec<M>) = (0, NIL, Vec::new());

    loop {
        if entry == NIL {
            // Only reachable when every entry has been lifted.
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Outcome::Unknown { budget };
        }
        let e = list.entries[entry];
        if e.is_call {
            let op = &ops[e.op];
            if let Some(next_state) = state.step(&op.op) {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    list.lift(entry);
                    entry = list.entries[0].next;
                    continue;
                }
                linearized[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else {
            if ops[e.op].ret.is_none() {
                // Return entries of indeterminate operations sort after every determinate
                // one, so reaching one means all determinate operations are linearized;
                // the remaining indeterminate ones simply never took effect.
                return Outcome::Linearizable;
            }
            if stack.len() > deepest.0 || deepest.1 == NIL {
                deepest = (stack.len(), e.op, vec![state.clone()]);
            } else if stack.len() == deepest.0
                && e.op == deepest.1
                && deepest.2.len() < 4
                && !deepest.2.contains(&state)
            {
                deepest.2.push(state.clone());
            }
            let Some((call, prev_state)) = stack.pop() else {
                let (linearized, blocked, states) = deepest;
                return Outcome::NotLinearizable {
                    blocked: ops[blocked].id,
                    linearized,
                    state: format!("{states:?}"),
                };
            };
            let op = list.entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            list.unlift(call);
            entry = list.entries[call].next;
        }
    }
}
