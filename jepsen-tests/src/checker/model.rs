//! Sequential models of the data types the workloads exercise, for the
//! linearizability checker: a register with compare-and-set, and an append-only list.

use super::linearizable::Model;

/// A single key holding an integer, or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Register(pub Option<i64>);

/// An operation on a [`Register`], with its observed result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    /// A read that returned this value (`None`: key absent).
    Read(Option<i64>),
    /// An unconditional write.
    Write(i64),
    /// Compare-and-set. `succeeded` is what the client was told; `None` when the outcome
    /// is unknown, in which case a linearization point means it succeeded (an
    /// indeterminate CAS whose compare failed had no effect, exactly like one that never
    /// happened, and the checker already allows that).
    Cas {
        from: i64,
        to: i64,
        succeeded: Option<bool>,
    },
}

impl Model for Register {
    type Op = RegisterOp;

    fn step(&self, op: &RegisterOp) -> Option<Self> {
        match *op {
            RegisterOp::Read(v) => (self.0 == v).then(|| self.clone()),
            RegisterOp::Write(v) => Some(Register(Some(v))),
            RegisterOp::Cas {
                from,
                to,
                succeeded: Some(true) | None,
            } => (self.0 == Some(from)).then_some(Register(Some(to))),
            RegisterOp::Cas {
                from,
                succeeded: Some(false),
                ..
            } => (self.0 != Some(from)).then(|| self.clone()),
        }
    }
}

/// A key holding a list that only ever grows at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct List(pub Vec<i64>);

/// An operation on a [`List`], with its observed result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListOp {
    Append(i64),
    /// A read that returned this list (empty when the key was absent).
    Read(Vec<i64>),
}

impl Model for List {
    type Op = ListOp;

    fn step(&self, op: &ListOp) -> Option<Self> {
        match op {
            ListOp::Append(e) => {
                let mut next = self.0.clone();
                next.push(*e);
                Some(List(next))
            }
            ListOp::Read(seen) => (&self.0 == seen).then(|| self.clone()),
        }
    }
}

/// The [`List`] model specialised for histories whose appended elements are unique and
/// whose reads are all prefixes of one longest read, `order`: then every legal
/// linearization applies the elements of `order` first and in exactly that order, so the
/// state is just how much of `order` has been applied, plus any appends past its end.
/// Same answers as [`List`], without the checker exploring every interleaving of
/// concurrent appends (which is factorial between two reads).
#[derive(Clone)]
pub struct OrderedList {
    order: std::sync::Arc<Vec<i64>>,
    len: usize,
    /// Appends after the whole of `order` (which no read has seen).
    extra: Vec<i64>,
}

impl OrderedList {
    pub fn new(order: Vec<i64>) -> Self {
        OrderedList {
            order: std::sync::Arc::new(order),
            len: 0,
            extra: Vec::new(),
        }
    }
}

impl std::fmt::Debug for OrderedList {
    /// Shows the list this state stands for.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<i64> = self.order[..self.len]
            .iter()
            .chain(&self.extra)
            .copied()
            .collect();
        write!(f, "{list:?}")
    }
}

// `order` is shared by every state of one search, so only the position matters.
impl PartialEq for OrderedList {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.extra == other.extra
    }
}
impl Eq for OrderedList {}
impl std::hash::Hash for OrderedList {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.len.hash(state);
        self.extra.hash(state);
    }
}

impl Model for OrderedList {
    type Op = ListOp;

    fn step(&self, op: &ListOp) -> Option<Self> {
        match op {
            ListOp::Append(e) => {
                let mut next = self.clone();
                if self.len < self.order.len() && self.extra.is_empty() {
                    (self.order[self.len] == *e).then_some(())?;
                    next.len += 1;
                } else if self.order[..self.len].contains(e) {
                    return None;
                } else {
                    next.extra.push(*e);
                }
                Some(next)
            }
            ListOp::Read(seen) => (self.extra.is_empty()
                && seen.len() == self.len
                && seen[..] == self.order[..self.len])
                .then(|| self.clone()),
        }
    }
}
