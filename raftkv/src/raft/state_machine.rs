//! openraft's state machine: feeds committed log entries to [`crate::state_machine::StateMachine`]
//! and keeps what openraft must know about them (the last applied log id and the membership)
//! in the same RocksDB batch as the data, under the state machine's `meta` rows:
//!
//! | meta key          | value (bincode 2, standard)                      |
//! |-------------------|--------------------------------------------------|
//! | `raft_applied`    | `Option<openraft::LogId<u64>>`                   |
//! | `raft_membership` | `openraft::StoredMembership<u64, MemberNode>`    |
//!
//! A Raft snapshot is [`crate::mvcc::backend::Export::dump`] of the whole store, taken under
//! the state machine's read lock, so it is exactly the state after its `raft_applied` entry;
//! installing one replaces the store atomically. The latest snapshot is kept in memory: after
//! a restart openraft rebuilds one when the log has been purged and a peer needs it.
//!
//! A request whose header carries a term (a write a leader queued for another member) is
//! applied only from an entry of that term; in any other entry it is skipped, the same way
//! on every member. What each request produced, with the term of the entries it came in,
//! goes to an [`ApplyObserver`]: the member that proposed it through the leader answers its
//! client from there (etcd's `wait.Trigger` on apply).

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use prost::Message;
use proto::raftkvpb::{internal_request, InternalRequest};
use serde::de::DeserializeOwned;

use super::codec::{decode, encode};
use super::types::{MemberNode, Request, Response, TypeConfig};
use crate::error::ServerError;
use crate::state_machine::{ApplyResult, StateMachine};

const KEY_APPLIED: &[u8] = b"raft_applied";
const KEY_MEMBERSHIP: &[u8] = b"raft_membership";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn decode_opt<T: DeserializeOwned>(
    raw: &Option<Vec<u8>>,
) -> Result<Option<T>, bincode::error::DecodeError> {
    raw.as_deref().map(decode).transpose()
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// What an applied entry answers the proposer.
pub fn to_response(res: Option<ApplyResult>) -> Response {
    Response {
        result: res.map(|r| {
            r.map(|ok| ok.encode_to_vec())
                .map_err(|e| (e.code() as i32, e.to_string()))
        }),
        batch: Vec::new(),
    }
}

/// The inverse of [`to_response`], on the proposer's side.
pub fn from_response(resp: Response) -> Result<proto::raftkvpb::InternalResponse, ServerError> {
    match resp.result {
        Some(Ok(bytes)) => proto::raftkvpb::InternalResponse::decode(bytes.as_slice())
            .map_err(|e| ServerError::Internal(format!("undecodable apply result: {e}"))),
        Some(Err((code, message))) => Err(ServerError::from_wire(code, message)),
        None => Err(ServerError::Internal("entry carried no request".into())),
    }
}

/// Told what each applied request produced (etcd's `wait.Wait`), so the member whose client
/// sent it can answer without asking the leader.
pub trait ApplyObserver: Send + Sync + 'static {
    /// Entries up to a log entry of `term` are applied. `ids[i]` is the header id of the
    /// request that produced `results[i]` (0 for none); the observer takes the results it
    /// waits for and leaves the rest. `None` is no result: a blank entry, or a request skipped
    /// because it was stamped with another term than its entry's.
    fn applied(&self, term: u64, ids: &[u64], results: &mut [Option<ApplyResult>]);
    /// A snapshot replaced the store: what it contains is unknown request by request.
    fn snapshot_installed(&self);
}

/// No one waits for applied requests (tests, and openraft's storage suite).
pub struct NoObserver;

impl ApplyObserver for NoObserver {
    fn applied(&self, _: u64, _: &[u64], _: &mut [Option<ApplyResult>]) {}
    fn snapshot_installed(&self) {}
}

/// `req` as the entry of `term` applies it: skipped (`None`) when a leader stamped it with
/// another term. The id it answers to, 0 for none.
fn admit(req: InternalRequest, term: u64) -> (u64, Option<InternalRequest>) {
    let (id, stamped) = req.header.as_ref().map_or((0, 0), |h| (h.id, h.term));
    (id, (stamped == 0 || stamped == term).then_some(req))
}

/// The latest snapshot: its metadata and the dump.
type Current = Arc<Mutex<Option<(SnapshotMeta<u64, MemberNode>, Vec<u8>)>>>;

/// The openraft-facing state machine; cheap to clone (clones share the store and snapshot).
#[derive(Clone)]
pub struct RaftStateMachine {
    sm: Arc<StateMachine>,
    current: Current,
    observer: Arc<dyn ApplyObserver>,
}

impl RaftStateMachine {
    pub fn new(sm: Arc<StateMachine>, observer: Arc<dyn ApplyObserver>) -> Self {
        Self {
            sm,
            current: Arc::default(),
            observer,
        }
    }

    fn snapshot(&self) -> Option<Snapshot<TypeConfig>> {
        let current = self.current.lock().expect("snapshot lock");
        current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, std::io::Error> {
        let raw = self.sm.backend().get_meta_raw(key).map_err(io_error)?;
        decode_opt(&raw).map_err(io_error)
    }
}

impl openraft::storage::RaftStateMachine<TypeConfig> for RaftStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, MemberNode>)> {
        let read = |e: std::io::Error| StorageIOError::read_state_machine(&e);
        let applied: Option<Option<LogId<u64>>> = self.read_meta(KEY_APPLIED).map_err(read)?;
        let membership: Option<StoredMembership<u64, MemberNode>> =
            self.read_meta(KEY_MEMBERSHIP).map_err(read)?;
        Ok((applied.flatten(), membership.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch: Vec<(u64, Option<InternalRequest>)> = Vec::new();
        // The header id of each request in `batch`, 0 for none.
        let mut ids: Vec<u64> = Vec::new();
        // Per entry: None for one request, Some(n) for a batch of n (unpacked into `batch`).
        let mut shape: Vec<Option<usize>> = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            let (index, term) = (entry.log_id.index, entry.log_id.leader_id.term);
            let (id, request) = match entry.payload {
                EntryPayload::Blank => (0, None),
                EntryPayload::Normal(Request(InternalRequest {
                    request: Some(internal_request::Request::Batch(b)),
                    ..
                })) => {
                    shape.push(Some(b.requests.len()));
                    for r in b.requests {
                        let (id, r) = admit(r, term);
                        ids.push(id);
                        batch.push((index, r));
                    }
                    continue;
                }
                EntryPayload::Normal(Request(r)) => admit(r, term),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    (0, None)
                }
            };
            shape.push(None);
            ids.push(id);
            batch.push((index, request));
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let mut consensus: Vec<(&[u8], Vec<u8>)> = vec![(KEY_APPLIED, encode(&Some(last)))];
        if let Some(m) = membership {
            consensus.push((KEY_MEMBERSHIP, encode(&m)));
        }
        let sm = self.sm.clone();
        let mut results = tokio::task::spawn_blocking(move || sm.apply_batch(batch, &consensus))
            .await
            .map_err(|e| StorageIOError::apply(last, &io_error(e)))?
            .map_err(|e| StorageIOError::apply(last, &io_error(e)))?;
        // Terms only grow along the log: the last entry's is the newest applied.
        self.observer
            .applied(last.leader_id.term, &ids, &mut results);
        let mut results = results.into_iter();
        let mut next = || to_response(results.next().flatten());
        Ok(shape
            .into_iter()
            .map(|n| match n {
                None => next(),
                Some(n) => Response {
                    result: None,
                    batch: (0..n).map(|_| next()).collect(),
                },
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let sm = self.sm.clone();
        let dump = data.clone();
        tokio::task::spawn_blocking(move || sm.install(&dump))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_error(e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_error(e)))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed a snapshot from the leader");
        self.observer.snapshot_installed();
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.snapshot())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RaftStateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let sm = self.sm.clone();
        let fail = |e: String| StorageIOError::write_snapshot(None, &io_error(e));
        let (data, meta) =
            tokio::task::spawn_blocking(move || sm.dump(&[KEY_APPLIED, KEY_MEMBERSHIP]))
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(e.to_string()))?;
        let last_log_id: Option<LogId<u64>> = decode_opt(&meta[0])
            .map_err(|e| fail(e.to_string()))?
            .flatten();
        let last_membership: StoredMembership<u64, MemberNode> = decode_opt(&meta[1])
            .map_err(|e| fail(e.to_string()))?
            .unwrap_or_default();
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built a snapshot");
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), data));
        Ok(self.snapshot().expect("just stored"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::mvcc::Backend;
    use openraft::storage::RaftStateMachine as _;
    use openraft::CommittedLeaderId;
    use proto::etcdserverpb::{PutRequest, RangeRequest};
    use proto::raftkvpb::{InternalBatch, RequestHeader};

    /// One call to the observer: the term, the ids, which had a result.
    type Told = (u64, Vec<u64>, Vec<bool>);

    #[derive(Default)]
    struct Record(Mutex<Vec<Told>>);

    impl ApplyObserver for Record {
        fn applied(&self, term: u64, ids: &[u64], results: &mut [Option<ApplyResult>]) {
            let had = results.iter().map(Option::is_some).collect();
            self.0.lock().unwrap().push((term, ids.to_vec(), had));
            // Take the first one, as a waiting member would.
            results[0].take();
        }
        fn snapshot_installed(&self) {}
    }

    fn put(key: &str, id: u64, term: u64) -> InternalRequest {
        InternalRequest {
            header: Some(RequestHeader {
                id,
                term,
                ..Default::default()
            }),
            request: Some(internal_request::Request::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn entry(term: u64, index: u64, req: InternalRequest) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Request(req)),
        }
    }

    /// A request a leader stamped with its term applies only from an entry of that term, on
    /// every member alike; unstamped ones apply from any. The observer sees every id, and
    /// what it takes is not answered to openraft.
    #[tokio::test]
    async fn a_request_stamped_with_another_term_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path()).unwrap();
        let sm = Arc::new(StateMachine::open(backend, 2, Arc::new(SystemClock)).unwrap());
        let record = Arc::new(Record::default());
        let mut rsm = RaftStateMachine::new(sm.clone(), record.clone());
        let batch = InternalRequest {
            header: None,
            request: Some(internal_request::Request::Batch(InternalBatch {
                requests: vec![put("a", 1, 2), put("b", 2, 1), put("c", 3, 0)],
            })),
        };
        let answered = rsm
            .apply(vec![entry(2, 1, batch), entry(3, 2, put("d", 4, 2))])
            .await
            .unwrap();
        assert_eq!(
            *record.0.lock().unwrap(),
            vec![(3, vec![1, 2, 3, 4], vec![true, false, true, false])]
        );
        let batch = &answered[0].batch;
        assert!(batch[0].result.is_none(), "taken by the observer");
        assert!(batch[1].result.is_none(), "skipped");
        assert!(matches!(batch[2].result, Some(Ok(_))));
        let keys: Vec<Vec<u8>> = sm
            .range(&RangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                ..Default::default()
            })
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(
            sm.read().mvcc.current_rev(),
            3,
            "skipped requests take no revision"
        );
    }
}
