//! Writes this member handed to the leader to propose (etcd's `wait.Wait`): each waits here,
//! by request id, until this member applies it and answers its client with what its own
//! apply produced. The leader stamps every such request with its term and the log applies
//! it only from an entry of that term (see [`crate::raft::state_machine`]), so once an
//! entry of a later term is applied, a request still waiting was dropped (its leader lost
//! office before committing it) and will never apply: it fails with `NotLeader`, which
//! tells the proposer that nothing happened and it may ask the new leader. Each attempt goes
//! under a new id (`EtcdServer::replicate`): a dropped attempt can still reach the log in an
//! entry of a later term, skipped there, and that must not answer the attempt after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::error::ServerError;
use crate::raft::state_machine::ApplyObserver;
use crate::state_machine::ApplyResult;

/// Request ids unique across the cluster and across restarts, laid out as etcd's `idutil`:
///
/// | bits  | what                                                              |
/// |-------|-------------------------------------------------------------------|
/// | 63-48 | low 16 bits of the member id                                      |
/// | 47-8  | low 40 bits of the milliseconds since 1970 when the member started |
/// | 7-0   | a counter, carrying into the milliseconds                         |
///
/// A restarted member starts past the ids it handed out before, unless it made more than
/// 256 a millisecond for as long as it ran, as etcd assumes too.
pub struct RequestIds {
    prefix: u64,
    suffix: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;
const COUNTER_BITS: u32 = 8;

impl RequestIds {
    pub fn new(member_id: u64, now: SystemTime) -> Self {
        let millis = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let low = |v: u64, bits: u32| v & ((1 << bits) - 1);
        RequestIds {
            prefix: low(member_id, 64 - SUFFIX_BITS) << SUFFIX_BITS,
            suffix: AtomicU64::new(low(millis, SUFFIX_BITS - COUNTER_BITS) << COUNTER_BITS),
        }
    }

    pub fn next(&self) -> u64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        self.prefix | (suffix & ((1 << SUFFIX_BITS) - 1))
    }
}

/// What a waiting request learns.
pub type Outcome = ApplyResult;

#[derive(Default)]
pub struct Waits {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<u64, Waiter>,
    /// The term of the newest applied entry.
    applied_term: u64,
}

struct Waiter {
    /// The term the leader stamped the request with; `None` until its answer arrives.
    term: Option<u64>,
    tx: oneshot::Sender<Outcome>,
}

/// Dropped: the entry it was queued for was never committed, so it never applies.
fn dropped() -> Outcome {
    Err(ServerError::NotLeader)
}

impl Waits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts waiting for request `id`, before it leaves this member: its entry may be
    /// applied here before the leader's answer arrives.
    pub fn register(&self, id: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().waiting.insert(id, Waiter { term: None, tx });
        rx
    }

    /// The leader queued request `id` stamped with `term`.
    pub fn queued(&self, id: u64, term: u64) {
        let mut inner = self.lock();
        let applied_term = inner.applied_term;
        if applied_term > term {
            // A later term's entry is already applied here, and the request was not in it
            // or before it.
            if let Some(w) = inner.waiting.remove(&id) {
                let _ = w.tx.send(dropped());
            }
        } else if let Some(w) = inner.waiting.get_mut(&id) {
            w.term = Some(term);
        }
    }

    /// Stops waiting for `id` (its call failed, or its client gave up).
    pub fn cancel(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl ApplyObserver for Waits {
    fn applied(&self, term: u64, ids: &[u64], results: &mut [Option<ApplyResult>]) {
        let mut inner = self.lock();
        inner.applied_term = inner.applied_term.max(term);
        if inner.waiting.is_empty() {
            return;
        }
        for (id, result) in ids.iter().zip(results.iter_mut()) {
            if *id == 0 {
                continue;
            }
            if let Some(w) = inner.waiting.remove(id) {
                // No result: skipped for its stamp, so dropped.
                let _ = w.tx.send(result.take().unwrap_or_else(dropped));
            }
        }
        let applied_term = inner.applied_term;
        for (_, w) in inner
            .waiting
            .extract_if(|_, w| matches!(w.term, Some(t) if t < applied_term))
        {
            let _ = w.tx.send(dropped());
        }
    }

    fn snapshot_installed(&self) {
        // Whether the snapshot holds a request is unknown: the client must not retry blindly.
        for (_, w) in self.lock().waiting.drain() {
            let _ = w.tx.send(Err(ServerError::LeaderFail));
        }
    }
}

/// Waits for an outcome; none comes if the server stops.
pub async fn wait(rx: oneshot::Receiver<Outcome>) -> Outcome {
    rx.await.unwrap_or(Err(ServerError::Stopped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::raftkvpb::InternalResponse;

    fn ok(revision: i64) -> Option<ApplyResult> {
        Some(Ok(InternalResponse {
            response: Some(proto::raftkvpb::internal_response::Response::Put(
                proto::etcdserverpb::PutResponse {
                    header: Some(proto::etcdserverpb::ResponseHeader {
                        revision,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            events: Vec::new(),
        }))
    }

    fn revision(o: &Outcome) -> i64 {
        match o {
            Ok(InternalResponse {
                response: Some(proto::raftkvpb::internal_response::Response::Put(p)),
                ..
            }) => p.header.as_ref().unwrap().revision,
            other => panic!("not a put: {other:?}"),
        }
    }

    #[test]
    fn request_ids_carry_the_member_and_grow() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(0x12_3456_789a);
        let ids = RequestIds::new(0xabcd_0000_0000_beef, at);
        let (a, b) = (ids.next(), ids.next());
        assert_eq!(a, 0xbeef_1234_5678_9a01);
        assert_eq!(b, a + 1);
        let later = RequestIds::new(0xbeef, at + std::time::Duration::from_millis(1));
        assert!(later.next() > b, "a restart starts past the ids before it");
    }

    /// The order of "the leader answered" and "applied here" does not matter; what the
    /// observer takes is gone from the results, the rest stays for openraft.
    #[tokio::test]
    async fn a_waiter_gets_its_own_result_whether_applied_before_or_after_the_answer() {
        let w = Waits::default();
        let (a, b) = (w.register(7), w.register(8));
        w.queued(7, 2);
        let mut results = vec![ok(10), ok(11), ok(12)];
        w.applied(2, &[7, 99, 8], &mut results);
        w.queued(8, 2);
        assert_eq!(revision(&wait(a).await), 10);
        assert_eq!(revision(&wait(b).await), 12);
        assert!(results[0].is_none() && results[2].is_none());
        assert!(
            results[1].is_some(),
            "another member's result is left alone"
        );
        assert_eq!(w.len(), 0);
    }

    /// Table: when a waiter stamped with term 3 learns it was dropped.
    #[tokio::test]
    async fn a_later_terms_entry_drops_what_an_earlier_term_queued() {
        struct Case {
            name: &'static str,
            /// (term of the applied entries, ids they carried, results)
            applies: Vec<(u64, Vec<u64>, Vec<Option<ApplyResult>>)>,
            queued_after_applies: bool,
            want_dropped: bool,
        }
        let cases = vec![
            Case {
                name: "same term, other requests",
                applies: vec![(3, vec![1], vec![ok(5)])],
                queued_after_applies: false,
                want_dropped: false,
            },
            Case {
                name: "later term applied after the answer",
                applies: vec![(4, vec![0], vec![None])],
                queued_after_applies: false,
                want_dropped: true,
            },
            Case {
                name: "later term applied before the answer",
                applies: vec![(4, vec![0], vec![None])],
                queued_after_applies: true,
                want_dropped: true,
            },
            Case {
                name: "skipped for its stamp",
                applies: vec![(5, vec![42], vec![None])],
                queued_after_applies: false,
                want_dropped: true,
            },
            Case {
                name: "its own entry, then a later term",
                applies: vec![(3, vec![42], vec![ok(9)]), (4, vec![0], vec![None])],
                queued_after_applies: false,
                want_dropped: false,
            },
        ];
        for c in cases {
            let w = Waits::default();
            let mut rx = w.register(42);
            if !c.queued_after_applies {
                w.queued(42, 3);
            }
            for (term, ids, mut results) in c.applies {
                w.applied(term, &ids, &mut results);
            }
            if c.queued_after_applies {
                w.queued(42, 3);
            }
            let got = rx.try_recv();
            let pending = matches!(got, Err(oneshot::error::TryRecvError::Empty));
            let outcome = got.ok();
            let was_dropped = matches!(outcome, Some(Err(ServerError::NotLeader)));
            assert_eq!(was_dropped, c.want_dropped, "{}", c.name);
            if !c.want_dropped {
                assert!(
                    pending || matches!(outcome, Some(Ok(_))),
                    "{}: {outcome:?}",
                    c.name
                );
            }
        }
    }

    /// A waiter whose term is not known yet is never dropped by a later term alone: the
    /// leader's answer decides.
    #[test]
    fn an_unanswered_waiter_survives_a_term_change() {
        let w = Waits::default();
        let mut rx = w.register(1);
        w.applied(9, &[0], &mut [None]);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        w.queued(1, 9);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        w.snapshot_installed();
        assert!(matches!(rx.try_recv(), Ok(Err(ServerError::LeaderFail))));
    }
}
