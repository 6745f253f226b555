//! The server half of the peer transport: the `raftkvpb.Raft` gRPC service. openraft's RPCs
//! go straight to the local `Raft`; the client-facing calls (Forward, ReadIndex, LeaseRenew)
//! go to a [`PeerHandler`], which the server implements, so this module knows nothing of it.

use std::sync::Arc;

use openraft::Raft;
use proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use proto::raftkvpb::raft_server;
use proto::raftkvpb::{
    forward_response, ForwardError, ForwardResponse, InternalRequest, InternalResponse,
    RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::types::TypeConfig;
use crate::error::ServerError;

/// What a member does for its peers besides Raft itself.
#[tonic::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    fn raft(&self) -> &Raft<TypeConfig>;
    /// Proposes a write forwarded by another member; fails if this member does not lead.
    /// Returns the result with the log index of the entry.
    async fn forwarded_write(
        &self,
        req: InternalRequest,
    ) -> Result<(InternalResponse, u64), ServerError>;
    /// Confirms leadership and returns the index a linearizable read must wait for.
    async fn read_index(&self) -> Result<u64, ServerError>;
    async fn lease_renew(
        &self,
        req: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, ServerError>;
    /// A lease's TTL as the leader, which owns lease deadlines, sees it.
    async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ServerError>;
}

pub struct PeerService<H>(pub Arc<H>);

fn decode<T: DeserializeOwned>(p: RaftPayload) -> Result<T, Status> {
    bincode::serde::decode_from_slice(&p.data, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Response<RaftPayload> {
    let data = bincode::serde::encode_to_vec(v, bincode::config::standard())
        .expect("openraft types always encode");
    Response::new(RaftPayload { data })
}

#[tonic::async_trait]
impl<H: PeerHandler> raft_server::Raft for PeerService<H> {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.into_inner())?;
        Ok(encode(&self.0.raft().append_entries(rpc).await))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.into_inner())?;
        Ok(encode(&self.0.raft().vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.into_inner())?;
        Ok(encode(&self.0.raft().install_snapshot(rpc).await))
    }

    async fn forward(
        &self,
        req: Request<InternalRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let (result, index) = match self.0.forwarded_write(req.into_inner()).await {
            Ok((r, index)) => (forward_response::Result::Response(r), index),
            Err(e) => (
                forward_response::Result::Error(ForwardError {
                    code: e.code() as i32,
                    message: e.to_string(),
                }),
                0,
            ),
        };
        Ok(Response::new(ForwardResponse {
            result: Some(result),
            index,
        }))
    }

    async fn read_index(
        &self,
        _: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let index = self.0.read_index().await?;
        Ok(Response::new(ReadIndexResponse { index }))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        Ok(Response::new(self.0.lease_renew(req.into_inner()).await?))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(
            self.0.lease_time_to_live(req.into_inner()).await?,
        ))
    }
}
