//! The v3election service (`v3electionpb.Election`): etcd 3.4's election server, a thin
//! wrapper around the recipes in [`super::concurrency`].

use std::pin::Pin;

use futures::Stream;
use proto::v3electionpb::{
    election_server::Election, CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest,
    LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::concurrency::Recipes;

pub struct ElectionService(pub Recipes);

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let r = req.into_inner();
        let lease = self.0.session(r.lease).await?;
        let (header, key, rev) = self.0.campaign(&r.name, lease, &r.value).await?;
        Ok(Response::new(CampaignResponse {
            header,
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let r = req.into_inner();
        let leader = r.leader.unwrap_or_default();
        // etcd resumes the election in a session of the leader key's lease (a new lease if
        // that is 0), and that session's lease is what the value is written with.
        let lease = self.0.session(leader.lease).await?;
        let header = self
            .0
            .proclaim(&leader.key, leader.rev, lease, &r.value)
            .await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let (header, kv) = self.0.leader(&req.into_inner().name).await?;
        Ok(Response::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(16);
        let recipes = self.0.clone();
        tokio::spawn(async move { recipes.observe(&name, tx).await });
        let out = ReceiverStream::new(rx).map(|(header, kv)| {
            Ok(LeaderResponse {
                header,
                kv: Some(kv),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = req.into_inner().leader.unwrap_or_default();
        self.0.session(leader.lease).await?;
        let header = self.0.resign(&leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse { header }))
    }
}
