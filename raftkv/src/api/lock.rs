//! The v3lock service (`v3lockpb.Lock`): etcd 3.4's lock server, a thin wrapper around the
//! mutex recipe in [`super::concurrency`]. Unlock deletes the key it is given, whoever holds it.

use proto::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use tonic::{Request, Response, Status};

use super::concurrency::Recipes;

pub struct LockService(pub Recipes);

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let r = req.into_inner();
        let lease = self.0.session(r.lease).await?;
        let (header, key) = self.0.lock(&r.name, lease).await?;
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let resp = self.0.delete(&req.into_inner().key).await?;
        Ok(Response::new(UnlockResponse {
            header: resp.header,
        }))
    }
}
