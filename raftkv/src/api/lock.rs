//! The v3lock service (`v3lockpb.Lock`): etcd 3.4's lock server, a thin wrapper around the
//! mutex recipe in [`super::concurrency`]. Unlock deletes the key it is given, whoever holds it.

use proto::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::concurrency::Recipes;
use crate::server::authn::Credentials;
use crate::server::EtcdServer;

pub struct LockService(pub Arc<EtcdServer>);

impl LockService {
    /// The recipes as the request's sender, whose permissions every step is checked against.
    fn recipes<T>(&self, req: &Request<T>) -> Recipes {
        Recipes::new(self.0.clone(), Credentials::of(req))
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let recipes = self.recipes(&req);
        let r = req.into_inner();
        let lease = recipes.session(r.lease).await?;
        let (header, key) = recipes.lock(&r.name, lease).await?;
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let recipes = self.recipes(&req);
        let resp = recipes.delete(&req.into_inner().key).await?;
        Ok(Response::new(UnlockResponse {
            header: resp.header,
        }))
    }
}
