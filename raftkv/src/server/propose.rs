//! Batching of proposals. openraft 0.9's core writes one client request per log append and
//! waits for that append's fsync before it takes the next, so a leader would commit at most
//! one request per disk sync. Concurrent KV writes (put, delete range, txn) therefore share
//! one log entry: a request waits here while [`MAX_IN_FLIGHT`] entry is on its way
//! through the log, and the next entry carries everything that queued meanwhile (an
//! `InternalBatch`, applied request by request, each with its own revision). An idle leader
//! proposes a lone request at once, as it is, so batching adds no latency; under load the
//! entries grow with the queue, as etcd's raft groups a `Ready`'s entries into one sync.

use std::future::Future;
use std::sync::{Arc, Mutex};

use prost::Message;
use proto::raftkvpb::{internal_request, InternalRequest, InternalResponse};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::error::ServerError;

/// Entries of batched requests on their way through the log at once. One measured best
/// (`bench compare`, 3 members, puts from 64 and 256 clients: 7.5k and 13.9k/s, against
/// 6.9k and 13.4k/s with 2 and 5.2k and 9.1k/s with 4): the longer requests wait, the more
/// share an entry, and the leader's core appends one entry per disk sync anyway.
pub const MAX_IN_FLIGHT: usize = 1;
/// Most requests one entry carries.
pub const MAX_BATCH: usize = 512;

/// A committed and applied request's response and the index of the entry that carried it.
pub type Proposed = Result<(InternalResponse, u64), ServerError>;

type Waiter = (InternalRequest, oneshot::Sender<Proposed>);

pub struct ProposalBatcher {
    queue: Mutex<Vec<Waiter>>,
    wake: Notify,
    in_flight: Arc<Semaphore>,
    /// An entry's requests together stay within this many bytes (`--max-request-bytes`),
    /// unless one request alone is larger.
    max_bytes: usize,
}

impl ProposalBatcher {
    pub fn new(max_bytes: usize) -> Self {
        ProposalBatcher {
            queue: Mutex::default(),
            wake: Notify::new(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            max_bytes,
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

    /// Queues `req` for the next entry and waits for its result.
    pub async fn propose(&self, req: InternalRequest) -> Proposed {
        let (tx, rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((req, tx));
        self.wake.notify_one();
        rx.await.unwrap_or(Err(ServerError::Stopped))
    }

    /// The next entry's requests: the oldest queued ones that fit.
    fn take(&self) -> Vec<Waiter> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0;
        let mut n = 0;
        for (req, _) in queue.iter() {
            let len = req.encoded_len();
            if n > 0 && (n == MAX_BATCH || bytes + len > self.max_bytes) {
                break;
            }
            bytes += len;
            n += 1;
        }
        queue.drain(..n).collect()
    }

    /// Proposes queued requests until `write` says the server is gone (`None`). `write`
    /// proposes one entry of the given requests and answers one result per request, in
    /// order.
    pub async fn run<F, Fut>(&self, write: F)
    where
        F: Fn(Vec<InternalRequest>) -> Fut,
        Fut: Future<Output = Option<Vec<Proposed>>> + Send + 'static,
    {
        loop {
            self.wake.notified().await;
            loop {
                let permit = self
                    .in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let batch = self.take();
                if batch.is_empty() {
                    break;
                }
                let (reqs, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let written = write(reqs);
                tokio::spawn(async move {
                    let results = written.await;
                    drop(permit);
                    let Some(results) = results else {
                        for w in waiters {
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
                        let _ = w.send(r);
                    }
                });
            }
        }
    }
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
        let b = ProposalBatcher::new(250);
        for k in ["a", "b", "c"] {
            let (tx, _rx) = oneshot::channel();
            b.queue.lock().unwrap().push((put(k), tx));
        }
        // Two 100-byte values fit in 250 bytes, three do not.
        assert_eq!(b.take().len(), 2);
        assert_eq!(b.take().len(), 1);
        assert!(b.take().is_empty());
        let big = ProposalBatcher::new(10);
        let (tx, _rx) = oneshot::channel();
        big.queue.lock().unwrap().push((put("huge"), tx));
        assert_eq!(
            big.take().len(),
            1,
            "a request larger than the bound goes alone"
        );
    }

    /// Concurrent proposals while entries are slow: every request answered with its own
    /// result, in order within each entry, and far fewer entries than requests.
    #[tokio::test]
    async fn concurrent_requests_share_entries_and_get_their_own_results() {
        let b = Arc::new(ProposalBatcher::new(1 << 20));
        let entries = Arc::new(AtomicUsize::new(0));
        {
            let (b, entries) = (b.clone(), entries.clone());
            tokio::spawn(async move {
                b.run(|reqs| {
                    let index = entries.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                    async move {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        Some(
                            reqs.iter()
                                .map(|r| {
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
                })
                .await
            });
        }
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.propose(put(&format!("k{i}"))).await) })
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
}
