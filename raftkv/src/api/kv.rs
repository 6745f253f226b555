//! The KV service: reads are served from the local state machine, writes are proposed.

use std::sync::Arc;

use proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use proto::raftkvpb::internal_request::Request as Rq;
use tonic::{Request, Response, Status};

use super::{check_size, expect_response};
use crate::server::authn::Credentials;
use crate::server::EtcdServer;
use crate::state_machine::{is_txn_readonly, validate};

pub struct KvService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_size(&self.0, &r)?;
        validate::range(&r)?;
        let mut resp = self.0.range(who.as_ref(), &r).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_size(&self.0, &r)?;
        validate::put(&r)?;
        let mut resp = expect_response!(self.0.propose_as(who.as_ref(), Rq::Put(r)).await?, Put);
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_size(&self.0, &r)?;
        validate::delete(&r)?;
        let mut resp = expect_response!(
            self.0.propose_as(who.as_ref(), Rq::DeleteRange(r)).await?,
            DeleteRange
        );
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let r = req.into_inner();
        check_size(&self.0, &r)?;
        validate::txn(&r, self.0.limits.max_txn_ops)?;
        let mut resp = if is_txn_readonly(&r) {
            self.0.read_txn(who.as_ref(), &r).await?
        } else {
            expect_response!(self.0.propose_as(who.as_ref(), Rq::Txn(r)).await?, Txn)
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Compaction is always physical here: it finishes before the response.
        let who = self.0.auth_info(&Credentials::of(&req)).await?;
        let mut resp = expect_response!(
            self.0
                .propose_as(who.as_ref(), Rq::Compaction(req.into_inner()))
                .await?,
            Compaction
        );
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
