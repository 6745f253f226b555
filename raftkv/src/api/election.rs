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

use std::sync::Arc;

use super::concurrency::Recipes;
use crate::server::authn::Credentials;
use crate::server::EtcdServer;

pub struct ElectionService(pub Arc<EtcdServer>);

impl ElectionService {
    /// The recipes as the request's sender, whose permissions every step is checked against.
    fn recipes<T>(&self, req: &Request<T>) -> Recipes {
        Recipes::new(self.0.clone(), Credentials::of(req))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let recipes = self.recipes(&req);
        let r = req.into_inner();
        let lease = recipes.session(r.lease).await?;
        let (header, key, rev) = recipes.campaign(&r.name, lease, &r.value).await?;
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
        let recipes = self.recipes(&req);
        let r = req.into_inner();
        let leader = r.leader.unwrap_or_default();
        // etcd resumes the election in a session of the leader key's lease (a new lease if
        // that is 0), and that session's lease is what the value is written with.
        let lease = recipes.session(leader.lease).await?;
        let header = recipes
            .proclaim(&leader.key, leader.rev, lease, &r.value)
            .await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let recipes = self.recipes(&req);
        let (header, kv) = recipes.leader(&req.into_inner().name).await?;
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
        let recipes = self.recipes(&req);
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(16);
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
        let recipes = self.recipes(&req);
        let leader = req.into_inner().leader.unwrap_or_default();
        recipes.session(leader.lease).await?;
        let header = recipes.resign(&leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse { header }))
    }
}
