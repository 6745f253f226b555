//! Batching of proposals. openraft 0.9's core writes one client request per log append and
//! waits for that append's fsync before it takes the next, so a leader would commit at most
//! one request per disk sync. Concurrent KV writes (put, delete range, txn) therefore share
//! one log entry: a request waits here while [`MAX_IN_FLIGHT`] entry is on its way
//! through the log, and the next entry carries everything that queued meanwhile (an
//! `InternalBatch`, applied request by request, each with its own revision). An idle leader
//! proposes a lone request at once, as it is, so batching adds no latency; under load the
//! entries grow with the queue, as etcd's raft groups a `Ready`'s entries into one sync.
//!
//! Between back-to-back entries the leader lingers (group commit's delay, as PostgreSQL's
//! `commit_delay` or MySQL's `binlog_group_commit_sync_delay`): the writers the last entry
//! answered mostly come back with their next write a moment later, and proposing at once
//! would send an entry with only those that queued meanwhile, leaving the returning ones a
//! whole entry to wait. Writers would then split into two cohorts taking turns, each
//! waiting out the other's entry. So the next entry waits until most of them are back
//! ([`RETURNING`]), but no longer than the last entry took (never worse for those coming
//! back than the entry they would otherwise wait out), and at most [`MAX_LINGER`]. Puts from
//! 64 clients on 3 members: entries of 51 writes instead of 28, 20-25% less CPU per put and
//! 5-15% more throughput, p99 no worse.
//!
//! A follower queues its clients' writes the same way and hands each batch to the leader in
//! one peer call ([`Route::Leader`], up to [`MAX_FORWARDS`] calls at once), where they join
//! the leader's queue ([`ProposalBatcher::enqueue`]: nobody waits there, the follower learns
//! each result from its own apply); etcd likewise forwards proposals inside its Raft
//! messages rather than one call per write.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Histogram;
use prost::Message;
use proto::raftkvpb::{internal_request, InternalRequest, InternalResponse};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::error::ServerError;

/// Entries of batched requests on their way through the log at once. One measured best
/// (`bench compare`, 3 members, puts from 64 and 256 clients: 7.5k and 13.9k/s, against
/// 6.9k and 13.4k/s with 2 and 5.2k and 9.1k/s with 4): the longer requests wait, the more
/// share an entry, and the leader's core appends one entry per disk sync anyway.
pub const MAX_IN_FLIGHT: usize = 1;
/// Forward calls from a follower to its leader at once. A call lasts until the leader has
/// queued its batch, one round trip; what queues here meanwhile goes in the next call. One
/// measured best (puts from 64 and 256 clients on 3 members): with 4 at once calls carried
/// 2.6 writes instead of 6, for 5-10% more CPU per put and no more throughput.
pub const MAX_FORWARDS: usize = 1;
/// Most requests one entry carries.
pub const MAX_BATCH: usize = 512;
/// The share of the writers of the entry just applied (and of those queued behind it) the
/// next entry waits for; see [`ProposalBatcher::linger`]. Waiting for every last one made
/// 40% of waits run out the clock for one or two stragglers (puts from 64 clients: 7/8 gave
/// 7% more throughput than 8/8, 3/4 the same as 7/8).
pub const RETURNING: (usize, usize) = (7, 8);
/// The longest a leader lingers before an entry, whatever the last entry took.
pub const MAX_LINGER: Duration = Duration::from_millis(10);

/// A committed and applied request's response and the index of the entry that carried it.
pub type Proposed = Result<(InternalResponse, u64), ServerError>;

/// A queued request.
pub struct Proposal {
    pub req: InternalRequest,
    /// Another member forwarded it here: it is proposed here or refused, never sent on, so
    /// two members that each think the other leads cannot pass it back and forth.
    pub forwarded: bool,
}

/// A queued proposal, when it was queued, and where its result goes (nowhere for a
/// request queued for another member, which learns the result from its own apply).
type Waiter = (Proposal, Instant, Option<oneshot::Sender<Proposed>>);

pub struct ProposalBatcher {
    queue: Mutex<Vec<Waiter>>,
    wake: Notify,
    in_flight: Arc<Semaphore>,
    forwards: Arc<Semaphore>,
    /// An entry's requests together stay within this many bytes (`--max-request-bytes`),
    /// unless one request alone is larger.
    max_bytes: usize,
    /// Observes how long each request waited for its entry.
    queued: Histogram,
}

impl ProposalBatcher {
    pub fn new(max_bytes: usize, queued: Histogram) -> Self {
        ProposalBatcher {
            queue: Mutex::default(),
            wake: Notify::new(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            max_bytes,
            queued,
        }
    }

    /// Whether `req` may share an entry with others: plain KV writes. Everything else
    /// (leases, compaction, auth, alarms, membership data) keeps an entry of its own.
    pub fn batchable(req: &InternalRequest) -> bool {
        use internal_request::Request as Rq;
        matches!(
            req.request,
            Some(Rq::Put(_) | Rq::DeleteRange(_) | Rq::Txn(_))
        )
    }

    /// Queues `p` for the next entry and waits for its result.
    pub async fn propose(&self, p: Proposal) -> Proposed {
        let (tx, rx) = oneshot::channel();
        self.push([(p, Some(tx))]);
        rx.await.unwrap_or(Err(ServerError::Stopped))
    }

    /// Queues requests for the next entry without waiting for their results.
    pub fn enqueue(&self, ps: impl IntoIterator<Item = Proposal>) {
        self.push(ps.into_iter().map(|p| (p, None)));
    }

    fn push(&self, items: impl IntoIterator<Item = (Proposal, Option<oneshot::Sender<Proposed>>)>) {
        let now = Instant::now();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(items.into_iter().map(|(p, tx)| (p, now, tx)));
        self.wake.notify_one();
    }

    /// The next entry's requests: the oldest queued ones that fit.
    fn take(&self) -> Vec<(Proposal, Option<oneshot::Sender<Proposed>>)> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0;
        let mut n = 0;
        for (p, _, _) in queue.iter() {
            let len = p.req.encoded_len();
            if n > 0 && (n == MAX_BATCH || bytes + len > self.max_bytes) {
                break;
            }
            bytes += len;
            n += 1;
        }
        let now = Instant::now();
        for (_, at, _) in &queue[..n] {
            self.queued.observe(now.duration_since(*at).as_secs_f64());
        }
        queue.drain(..n).map(|(p, _, tx)| (p, tx)).collect()
    }

    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Before the next of back-to-back entries: waits until the queue holds
    /// [`RETURNING`] of the writers of the entry just applied and of those queued behind it,
    /// or `within` has passed.
    async fn linger(&self, applied: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let target = ((applied + self.queued()) * RETURNING.0 / RETURNING.1).min(MAX_BATCH);
        while self.queued() < target {
            if tokio::time::timeout_at(deadline, self.wake.notified())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Proposes queued requests until `write` says the server is gone (`None`). `route`
    /// says where the next batch goes; `write` proposes it as one entry or forwards it to
    /// the leader in one call, and answers one result per request, in order. It holds the
    /// batch's slot ([`MAX_IN_FLIGHT`] or [`MAX_FORWARDS`]) for as long as it keeps the
    /// permit: a forwarded batch frees it once the leader has queued it.
    pub async fn run<L, R, F, Fut>(&self, route: R, write: F)
    where
        R: Fn() -> Route<L>,
        F: Fn(Route<L>, Vec<Proposal>, OwnedSemaphorePermit) -> Fut,
        Fut: Future<Output = Option<Vec<Proposed>>> + Send + 'static,
    {
        loop {
            self.wake.notified().await;
            // The entry proposed last in this busy spell: its requests and when it went out.
            let mut last: Option<(usize, tokio::time::Instant)> = None;
            loop {
                let to = route();
                let slots = match to {
                    Route::Here => &self.in_flight,
                    Route::Leader(_) => &self.forwards,
                };
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                if let (Route::Here, Some((applied, sent))) = (&to, last) {
                    self.linger(applied, sent.elapsed().min(MAX_LINGER)).await;
                }
                let batch = self.take();
                if batch.is_empty() {
                    break;
                }
                last =
                    matches!(to, Route::Here).then(|| (batch.len(), tokio::time::Instant::now()));
                let (reqs, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let written = write(to, reqs, permit);
                tokio::spawn(async move {
                    let results = written.await;
                    let Some(results) = results else {
                        for w in waiters.into_iter().flatten() {
                            let _ = w.send(Err(ServerError::Stopped));
                        }
                        return;
                    };
                    let mut results = results.into_iter();
                    for w in waiters {
                        let r = results.next().unwrap_or_else(|| {
                            Err(ServerError::Internal(
                                "an entry answered too few results".into(),
                            ))
                        });
                        if let Some(w) = w {
                            let _ = w.send(r);
                        }
                    }
                });
            }
        }
    }
}

/// Splits a batch bound for the leader into a slot per request and the requests to send
/// on: a request another member forwarded here is not sent on (so two members that each
/// think the other leads cannot pass it back and forth) and fails with `NotLeader`.
pub fn refuse_forwarded(batch: Vec<Proposal>) -> (Vec<Option<Proposed>>, Vec<InternalRequest>) {
    let mut slots = Vec::with_capacity(batch.len());
    let mut onward = Vec::with_capacity(batch.len());
    for p in batch {
        if p.forwarded {
            slots.push(Some(Err(ServerError::NotLeader)));
        } else {
            slots.push(None);
            onward.push(p.req);
        }
    }
    (slots, onward)
}

/// Fills the empty slots [`refuse_forwarded`] left with the leader's answers, in order.
pub fn merge(slots: Vec<Option<Proposed>>, answered: Vec<Proposed>) -> Vec<Proposed> {
    let mut answered = answered.into_iter();
    slots
        .into_iter()
        .map(|r| {
            r.or_else(|| answered.next())
                .unwrap_or_else(|| Err(ServerError::Internal("no result".into())))
        })
        .collect()
}

/// `n` results that each fail with `e`, a failed call's error: the same error for each
/// request, rebuilt from the wire so that its kind survives.
pub fn each_fails(e: &ServerError, n: usize) -> Vec<Proposed> {
    let (code, message) = (e.code() as i32, e.to_string());
    (0..n)
        .map(|_| Err(ServerError::from_wire(code, message.clone())))
        .collect()
}

/// Where a batch goes: into an entry of this member's log, or to leader `L`.
pub enum Route<L> {
    Here,
    Leader(L),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::etcdserverpb::PutRequest;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn put(key: &str) -> InternalRequest {
        InternalRequest {
            header: None,
            request: Some(internal_request::Request::Put(PutRequest {
                key: key.into(),
                value: vec![0; 100],
                ..Default::default()
            })),
        }
    }

    fn histogram() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("queued", "test")).unwrap()
    }

    fn local(req: InternalRequest) -> Proposal {
        Proposal {
            req,
            forwarded: false,
        }
    }

    fn key(r: &InternalRequest) -> String {
        match &r.request {
            Some(internal_request::Request::Put(p)) => String::from_utf8(p.key.clone()).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn what_may_share_an_entry() {
        use internal_request::Request as Rq;
        let cases: Vec<(Option<Rq>, bool)> = vec![
            (Some(Rq::Put(Default::default())), true),
            (Some(Rq::DeleteRange(Default::default())), true),
            (Some(Rq::Txn(Default::default())), true),
            (Some(Rq::Compaction(Default::default())), false),
            (Some(Rq::LeaseGrant(Default::default())), false),
            (Some(Rq::Auth(Default::default())), false),
            (None, false),
        ];
        for (request, want) in cases {
            let req = InternalRequest {
                header: None,
                request,
            };
            assert_eq!(ProposalBatcher::batchable(&req), want, "{req:?}");
        }
    }

    #[test]
    fn batches_are_bounded_by_bytes_but_never_empty() {
        let b = ProposalBatcher::new(250, histogram());
        for k in ["a", "b", "c"] {
            let (tx, _rx) = oneshot::channel();
            b.queue
                .lock()
                .unwrap()
                .push((local(put(k)), Instant::now(), Some(tx)));
        }
        // Two 100-byte values fit in 250 bytes, three do not.
        assert_eq!(b.take().len(), 2);
        assert_eq!(b.take().len(), 1);
        assert!(b.take().is_empty());
        let big = ProposalBatcher::new(10, histogram());
        let (tx, _rx) = oneshot::channel();
        big.queue
            .lock()
            .unwrap()
            .push((local(put("huge")), Instant::now(), Some(tx)));
        assert_eq!(
            big.take().len(),
            1,
            "a request larger than the bound goes alone"
        );
    }

    /// When each entry went out, and its size.
    type Sent = Arc<Mutex<Vec<(tokio::time::Instant, usize)>>>;

    /// A batcher whose entries each take `entry`, recording what it sends.
    fn timed_batcher(entry: std::time::Duration) -> (Arc<ProposalBatcher>, Sent) {
        let b = Arc::new(ProposalBatcher::new(1 << 20, histogram()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        {
            let (b, sent) = (b.clone(), sent.clone());
            tokio::spawn(async move {
                b.run(
                    || Route::<()>::Here,
                    |_, reqs, permit| {
                        sent.lock()
                            .unwrap()
                            .push((tokio::time::Instant::now(), reqs.len()));
                        async move {
                            tokio::time::sleep(entry).await;
                            drop(permit);
                            Some(
                                reqs.iter()
                                    .map(|_| Ok((InternalResponse::default(), 1)))
                                    .collect(),
                            )
                        }
                    },
                )
                .await
            });
        }
        (b, sent)
    }

    /// Writers that each come back 3 ms after their answer, in two groups a millisecond
    /// apart. Proposing at once after each entry, the groups would take turns, four writes an
    /// entry; lingering merges them into one.
    #[tokio::test(start_paused = true)]
    async fn writers_coming_back_join_one_entry_instead_of_taking_turns() {
        let ms = std::time::Duration::from_millis;
        let (b, sent) = timed_batcher(ms(10));
        let rounds = 6;
        let mut writers = Vec::new();
        for w in 0..8 {
            let b = b.clone();
            writers.push(tokio::spawn(async move {
                if w >= 4 {
                    tokio::time::sleep(ms(1)).await;
                }
                for i in 0..rounds {
                    b.propose(local(put(&format!("w{w}-{i}")))).await.unwrap();
                    tokio::time::sleep(ms(3)).await;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let sizes: Vec<usize> = sent.lock().unwrap().iter().map(|(_, n)| *n).collect();
        // The first group alone; then everyone, the first group's last write going with the
        // second's next-to-last; the second group's last write alone at the end.
        assert_eq!(sizes, [4, 8, 8, 8, 8, 8, 4]);
    }

    /// When the lingering gives up: after the last entry's own duration, at most
    /// [`MAX_LINGER`]; and an idle batcher proposes a lone request at once.
    #[tokio::test(start_paused = true)]
    async fn lingering_is_bounded_and_an_idle_leader_proposes_at_once() {
        let ms = std::time::Duration::from_millis;
        for (entry, linger) in [(ms(4), ms(4)), (ms(30), MAX_LINGER)] {
            let (b, sent) = timed_batcher(entry);
            let t0 = tokio::time::Instant::now();
            // Four writers that never come back, and one that queues behind them.
            let first: Vec<_> = (0..4)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move { b.propose(local(put(&format!("a{i}")))).await })
                })
                .collect();
            tokio::time::sleep(ms(1)).await;
            b.propose(local(put("late"))).await.unwrap();
            for t in first {
                t.await.unwrap().unwrap();
            }
            // Long after, alone.
            tokio::time::sleep(ms(100)).await;
            let alone = tokio::time::Instant::now();
            b.propose(local(put("alone"))).await.unwrap();
            let sent = sent.lock().unwrap().clone();
            let at: Vec<_> = sent.iter().map(|(t, n)| (*t - t0, *n)).collect();
            assert_eq!(
                at,
                vec![(ms(0), 4), (entry + linger, 1), (alone - t0, 1)],
                "entries of {entry:?}"
            );
        }
    }

    /// Concurrent proposals while entries are slow: every request answered with its own
    /// result, in order within each entry, and far fewer entries than requests.
    #[tokio::test]
    async fn concurrent_requests_share_entries_and_get_their_own_results() {
        let b = Arc::new(ProposalBatcher::new(1 << 20, histogram()));
        let entries = Arc::new(AtomicUsize::new(0));
        {
            let (b, entries) = (b.clone(), entries.clone());
            tokio::spawn(async move {
                b.run(
                    || Route::<()>::Here,
                    |_, reqs, permit| {
                        let index = entries.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                        async move {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            drop(permit);
                            Some(
                                reqs.iter()
                                    .map(|Proposal { req: r, .. }| {
                                        let mut resp = InternalResponse::default();
                                        resp.events.push(proto::mvccpb::Event {
                                            kv: Some(proto::mvccpb::KeyValue {
                                                key: key(r).into_bytes(),
                                                ..Default::default()
                                            }),
                                            ..Default::default()
                                        });
                                        Ok((resp, index))
                                    })
                                    .collect(),
                            )
                        }
                    },
                )
                .await
            });
        }
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.propose(local(put(&format!("k{i}")))).await) })
            })
            .collect();
        for t in tasks {
            let (i, res) = t.await.unwrap();
            let (resp, _) = res.unwrap();
            let k = &resp.events[0].kv.as_ref().unwrap().key;
            assert_eq!(
                k,
                format!("k{i}").as_bytes(),
                "request {i} got another's result"
            );
        }
        let n = entries.load(Ordering::SeqCst);
        assert!(n < 50, "200 concurrent requests took {n} entries");
    }

    /// Most batches on their way at once, with eight requests proposed 2 ms apart towards
    /// `route`, each batch's write lasting 21 ms and giving its slot back after `held`.
    async fn most_batches_at_once(route: Route<()>, held: std::time::Duration) -> usize {
        let ms = std::time::Duration::from_millis;
        let to_leader = matches!(route, Route::Leader(()));
        let b = Arc::new(ProposalBatcher::new(1 << 20, histogram()));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        {
            let (b, now, most) = (b.clone(), now.clone(), most.clone());
            tokio::spawn(async move {
                b.run(
                    move || {
                        if to_leader {
                            Route::Leader(())
                        } else {
                            Route::Here
                        }
                    },
                    |_, reqs, permit| {
                        let (now, most) = (now.clone(), most.clone());
                        async move {
                            let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(at_once, Ordering::SeqCst);
                            tokio::time::sleep(held).await;
                            drop(permit);
                            tokio::time::sleep(ms(21) - held).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            Some(
                                reqs.iter()
                                    .map(|_| Ok((InternalResponse::default(), 0)))
                                    .collect(),
                            )
                        }
                    },
                )
                .await
            });
        }
        // One request after another, each while the batches before it are still out.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                b.propose(local(put(&format!("k{i}")))).await
            }));
            tokio::time::sleep(ms(2)).await;
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    /// A forwarded batch's slot is free once its permit is dropped (the leader has queued
    /// it), though its results come later: batches keep flowing while earlier ones wait.
    #[tokio::test(start_paused = true)]
    async fn a_slot_is_held_by_the_permit_not_by_the_results() {
        let most =
            most_batches_at_once(Route::Leader(()), std::time::Duration::from_millis(1)).await;
        assert!(most > MAX_FORWARDS, "only {most} batches were out at once");
    }

    /// Requests queued for another member are proposed like the rest; nobody waits for them.
    #[tokio::test]
    async fn enqueued_requests_are_proposed_without_a_waiter() {
        let b = Arc::new(ProposalBatcher::new(1 << 20, histogram()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let b = b.clone();
            tokio::spawn(async move {
                b.run(
                    || Route::<()>::Here,
                    |_, reqs, _permit| {
                        let tx = tx.clone();
                        async move {
                            let n = reqs.len();
                            for p in &reqs {
                                tx.send((key(&p.req), p.forwarded)).unwrap();
                            }
                            Some(
                                (0..n)
                                    .map(|_| Ok((InternalResponse::default(), 1)))
                                    .collect(),
                            )
                        }
                    },
                )
                .await
            });
        }
        b.enqueue(["x", "y"].map(|k| Proposal {
            req: put(k),
            forwarded: true,
        }));
        let got = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        assert_eq!(got, [("x".to_string(), true), ("y".to_string(), true)]);
        b.propose(local(put("z"))).await.unwrap();
    }

    /// How many batches are on their way at once, by route: [`MAX_IN_FLIGHT`] entries on the
    /// leader, [`MAX_FORWARDS`] forward calls on a follower; every request still answered once.
    #[tokio::test(start_paused = true)]
    async fn batches_on_their_way_at_once_are_bounded_by_route() {
        let whole = std::time::Duration::from_millis(21);
        for (route, want) in [
            (Route::Here, MAX_IN_FLIGHT),
            (Route::Leader(()), MAX_FORWARDS),
        ] {
            assert_eq!(most_batches_at_once(route, whole).await, want);
        }
    }
}
