//! The Maintenance service: status, alarms, hashes, defragmentation and snapshots.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use proto::raftkvpb::internal_request::Request as Rq;
use tonic::{Request, Response, Status};

use super::expect_response;
use crate::error::ServerError;
use crate::http::ETCD_VERSION;
use crate::server::EtcdServer;

pub struct MaintenanceService(pub Arc<EtcdServer>);

/// Bytes per streamed snapshot chunk (etcd uses 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

fn storage(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("raftkv: {e}"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let mut resp = expect_response!(self.0.propose(Rq::Alarm(req.into_inner())).await?, Alarm);
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let errors: Vec<String> = {
            let st = self.0.sm.read();
            let errors = st
                .alarms
                .iter()
                .map(|&(m, a)| {
                    let name = AlarmType::try_from(a).map_or("UNKNOWN", |t| t.as_str_name());
                    // gogoproto's text form of an AlarmMember, as etcd prints it.
                    format!("memberID:{m} alarm:{name} ")
                })
                .collect();
            errors
        };
        let leader = self.0.leader();
        let mut errors = errors;
        if leader.is_none() {
            errors.insert(0, ServerError::NoLeader.to_string());
        }
        let (raft_index, applied) = self.0.raft_indexes();
        let backend = self.0.sm.backend();
        Ok(Response::new(StatusResponse {
            header: self.0.header(0),
            version: ETCD_VERSION.to_string(),
            db_size: backend.size() as i64,
            leader: leader.unwrap_or(0),
            raft_index,
            raft_term: self.0.term(),
            raft_applied_index: applied,
            errors,
            db_size_in_use: backend.size_in_use() as i64,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let server = self.0.clone();
        tokio::task::spawn_blocking(move || server.sm.backend().defragment())
            .await
            .map_err(storage)?
            .map_err(ServerError::from)?;
        Ok(Response::new(DefragmentResponse {
            header: self.0.header(0),
        }))
    }

    /// Digest of the whole key space at the current revision (our backend's bytes are not
    /// etcd's bbolt file, so unlike `HashKV` this value is ours alone).
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, rev, _) = {
            let st = self.0.sm.read();
            st.mvcc
                .hash_kv(self.0.sm.backend(), 0)
                .map_err(ServerError::from)?
        };
        Ok(Response::new(HashResponse {
            header: self.0.header(rev),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        let (hash, current, compact) = {
            let st = self.0.sm.read();
            st.mvcc
                .hash_kv(self.0.sm.backend(), rev)
                .map_err(ServerError::from)?
        };
        Ok(Response::new(HashKvResponse {
            header: self.0.header(current),
            hash,
            compact_revision: compact,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let server = self.0.clone();
        let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Status> {
            let parent = server
                .sm
                .backend()
                .path()
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            let tmp = tempfile::Builder::new()
                .prefix("snapshot-")
                .tempdir_in(parent)
                .map_err(storage)?;
            let dir = tmp.path().join("db");
            server.sm.backend().checkpoint(&dir).map_err(storage)?;
            crate::snapshot::pack(&dir).map_err(storage)
        })
        .await
        .map_err(storage)??;
        let header = self.0.header(0);
        let total = data.len();
        let chunks: Vec<Result<SnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK)
            .enumerate()
            .map(|(i, c)| {
                let sent = (i * SNAPSHOT_CHUNK + c.len()) as u64;
                Ok(SnapshotResponse {
                    header,
                    remaining_bytes: total as u64 - sent,
                    blob: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        // Leadership transfer to another member is not supported yet; moving it to the
        // current leader is a no-op, as in etcd.
        if Some(req.into_inner().target_id) != self.0.leader() {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.0.header(0),
        }))
    }
}
