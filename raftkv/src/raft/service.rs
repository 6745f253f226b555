//! The server half of the peer transport: the `raftkvpb.Raft` gRPC service. openraft's RPCs
//! go straight to the local `Raft`; the client-facing calls (Forward, Propose, ReadIndex,
//! LeaseRenew) go to a [`PeerHandler`], which the server implements, so this module knows
//! nothing of it.

use std::sync::Arc;

use openraft::Raft;
use proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use proto::raftkvpb::raft_server;
use proto::raftkvpb::{
    forward_response, CampaignRequest, CampaignResponse, ClusterInfoRequest, ClusterInfoResponse,
    ForwardBatchResponse, ForwardError, ForwardResponse, InternalBatch, InternalRequest,
    InternalResponse, ProposeResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::codec;
use super::membership::Change;
use super::types::TypeConfig;
use crate::error::ServerError;

/// What a member does for its peers besides Raft itself.
#[tonic::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    fn raft(&self) -> &Raft<TypeConfig>;
    /// Proposes writes forwarded by another member: one result per request, in order, each
    /// with the log index of its entry. A request fails if this member does not lead; it is
    /// never sent on.
    async fn forwarded_writes(
        &self,
        reqs: Vec<InternalRequest>,
    ) -> Vec<Result<(InternalResponse, u64), ServerError>>;
    /// Queues writes another member forwarded for this leader's next entry, each stamped
    /// with this leader's term, which it returns; fails if this member does not lead.
    fn queue_forwarded(&self, reqs: Vec<InternalRequest>) -> Result<u64, ServerError>;
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
    /// Carries out a membership change; fails if this member does not lead.
    async fn change_membership(&self, change: Change) -> Result<(), ServerError>;
    fn cluster_id(&self) -> u64;
    /// Campaigns for leadership after `after` (MoveLeader's transferee).
    fn campaign(&self, after: std::time::Duration);
}

pub struct PeerService<H>(pub Arc<H>);

/// Decodes an openraft message from the wire.
fn unpack<T: DeserializeOwned>(p: RaftPayload) -> Result<T, Status> {
    codec::decode(&p.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

/// Encodes a reply for the wire.
fn pack<T: Serialize>(v: &T) -> Response<RaftPayload> {
    Response::new(RaftPayload {
        data: codec::encode(v),
    })
}

#[tonic::async_trait]
impl<H: PeerHandler> raft_server::Raft for PeerService<H> {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = unpack(req.into_inner())?;
        Ok(pack(&self.0.raft().append_entries(rpc).await))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = unpack(req.into_inner())?;
        Ok(pack(&self.0.raft().vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = unpack(req.into_inner())?;
        Ok(pack(&self.0.raft().install_snapshot(rpc).await))
    }

    async fn forward(
        &self,
        req: Request<InternalBatch>,
    ) -> Result<Response<ForwardBatchResponse>, Status> {
        let results = self
            .0
            .forwarded_writes(req.into_inner().requests)
            .await
            .into_iter()
            .map(|r| {
                let (result, index) = match r {
                    Ok((r, index)) => (forward_response::Result::Response(r), index),
                    Err(e) => (
                        forward_response::Result::Error(ForwardError {
                            code: e.code() as i32,
                            message: e.to_string(),
                        }),
                        0,
                    ),
                };
                ForwardResponse {
                    result: Some(result),
                    index,
                }
            })
            .collect();
        Ok(Response::new(ForwardBatchResponse { results }))
    }

    async fn propose(
        &self,
        req: Request<InternalBatch>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let term = self.0.queue_forwarded(req.into_inner().requests)?;
        Ok(Response::new(ProposeResponse { term }))
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

    async fn change_membership(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let change: Change = unpack(req.into_inner())?;
        let result = self
            .0
            .change_membership(change)
            .await
            .map_err(|e| (e.code() as i32, e.to_string()));
        Ok(pack(&result))
    }

    async fn cluster_info(
        &self,
        _: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.0.cluster_id(),
        }))
    }

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let after = std::time::Duration::from_millis(req.into_inner().after_ms);
        self.0.campaign(after);
        Ok(Response::new(CampaignResponse {}))
    }
}
