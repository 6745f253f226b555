//! The Lease service. Grants and revocations are proposed; keep-alives renew the local
//! deadline only, as etcd's leader does.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use proto::raftkvpb::internal_request::Request as Rq;
use tonic::{Request, Response, Status, Streaming};

use super::expect_response;
use crate::server::authn::Credentials;
use crate::server::EtcdServer;

pub struct LeaseService(pub Arc<EtcdServer>);

/// An ID for a lease whose grant names none: positive and non-zero, like etcd's request ID
/// generator.
pub(crate) fn random_lease_id() -> i64 {
    loop {
        let id = (rand::random::<u64>() >> 1) as i64;
        if id != 0 {
            return id;
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let mut r = req.into_inner();
        if r.id == 0 {
            r.id = random_lease_id();
        }
        let mut resp = expect_response!(
            self.0.propose_as(who.as_ref(), Rq::LeaseGrant(r)).await?,
            LeaseGrant
        );
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let mut resp = expect_response!(
            self.0
                .propose_as(who.as_ref(), Rq::LeaseRevoke(req.into_inner()))
                .await?,
            LeaseRevoke
        );
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let server = self.0.clone();
        let out = req.into_inner().then(move |r| {
            let server = server.clone();
            async move { Ok(server.lease_keep_alive(r?.id).await?) }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let resp = self.0.lease_time_to_live(req.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .0
            .sm
            .read()
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.0.header(0),
            leases,
        }))
    }
}
