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

/// The latest snapshot: its metadata and the dump.
type Current = Arc<Mutex<Option<(SnapshotMeta<u64, MemberNode>, Vec<u8>)>>>;

/// The openraft-facing state machine; cheap to clone (clones share the store and snapshot).
#[derive(Clone)]
pub struct RaftStateMachine {
    sm: Arc<StateMachine>,
    current: Current,
}

impl RaftStateMachine {
    pub fn new(sm: Arc<StateMachine>) -> Self {
        Self {
            sm,
            current: Arc::default(),
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
        // Per entry: None for one request, Some(n) for a batch of n (unpacked into `batch`).
        let mut shape: Vec<Option<usize>> = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            let index = entry.log_id.index;
            let request = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(Request(InternalRequest {
                    request: Some(internal_request::Request::Batch(b)),
                    ..
                })) => {
                    shape.push(Some(b.requests.len()));
                    batch.extend(b.requests.into_iter().map(|r| (index, Some(r))));
                    continue;
                }
                EntryPayload::Normal(Request(r)) => Some(r),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    None
                }
            };
            shape.push(None);
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
        let results = tokio::task::spawn_blocking(move || sm.apply_batch(batch, &consensus))
            .await
            .map_err(|e| StorageIOError::apply(last, &io_error(e)))?
            .map_err(|e| StorageIOError::apply(last, &io_error(e)))?;
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
