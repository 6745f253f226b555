//! The Maintenance service: status, alarms, hashes, defragmentation and snapshots.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};
use proto::raftkvpb::internal_request::Request as Rq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::expect_response;
use crate::error::ServerError;
use crate::http::ETCD_VERSION;
use crate::server::authn::Credentials;
use crate::server::EtcdServer;

pub struct MaintenanceService(pub Arc<EtcdServer>);

/// Bytes per streamed snapshot chunk (etcd uses 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// Chunks read ahead of the client.
const SNAPSHOT_QUEUE: usize = 4;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

fn storage(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("raftkv: {e}"))
}

/// Reads the saved database chunk by chunk into the response stream, then sends the digest.
/// Stops early when the client goes away (the send fails); the temporary file goes with `saved`.
fn send_snapshot(
    saved: crate::snapshot::Saved,
    header: Option<ResponseHeader>,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let crate::snapshot::Saved {
        mut file,
        db_len,
        sha256,
    } = saved;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    let mut sent = 0u64;
    while sent < db_len {
        let n = (db_len - sent).min(SNAPSHOT_CHUNK as u64) as usize;
        let msg = file.read_exact(&mut buf[..n]).map_err(storage).map(|()| {
            sent += n as u64;
            SnapshotResponse {
                header,
                remaining_bytes: db_len - sent,
                blob: buf[..n].to_vec(),
            }
        });
        let failed = msg.is_err();
        if tx.blocking_send(msg).is_err() || failed {
            return;
        }
    }
    // A client that left after the last chunk does not care about the digest either.
    let _ = tx.blocking_send(Ok(SnapshotResponse {
        header,
        remaining_bytes: 0,
        blob: sha256.to_vec(),
    }));
}

impl MaintenanceService {
    /// etcd's `authMaintenanceServer`: defragment, hashes and snapshots need root. Its
    /// auth errors reach the client unconverted: code `Unknown`, the auth package's text.
    async fn admin_only<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let raw = |e: ServerError| match e {
            ServerError::Auth(a) => Status::unknown(a.raw_message()),
            other => other.into(),
        };
        let who = self.0.auth_info(&Credentials::of(req)).await.map_err(raw)?;
        self.0.check_admin(who.as_ref()).map_err(raw)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let mut resp = expect_response!(self.0.propose(Rq::Alarm(req.into_inner())).await?, Alarm);
        // etcd 3.4's Alarm is the one RPC whose header nobody fills: it has none.
        resp.header = None;
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
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin_only(&req).await?;
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
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin_only(&req).await?;
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
        self.admin_only(&req).await?;
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

    /// Streams the snapshot like etcd: the database in chunks, then its SHA-256 as a last
    /// message. The database is written to a temporary file first and read back chunk by chunk,
    /// so memory stays bounded whatever the store's size.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.admin_only(&req).await?;
        let server = self.0.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let backend = server.sm.backend();
            let tmp_dir = backend
                .path()
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            let id = &server.identity;
            let member = crate::snapshot::Member {
                id: id.member_id,
                name: &id.name,
                peer_urls: &id.peer_urls,
                client_urls: &id.client_urls,
            };
            crate::snapshot::save(backend, &member, &tmp_dir)
        })
        .await
        .map_err(storage)?
        .map_err(storage)?;
        let header = self.0.header(0);
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE);
        tokio::task::spawn_blocking(move || send_snapshot(saved, header, &tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.0.move_leader(req.into_inner().target_id).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.0.header(0),
        }))
    }
}
