//! The Auth service (all 16 RPCs of etcd 3.4). As in etcd 3.4, every RPC — reads included —
//! goes through the log, so it is ordered with the changes it may observe and checked for
//! admin rights at apply. Passwords are hashed before proposing (see `server::authn`).

use std::sync::Arc;

use proto::etcdserverpb::{auth_server::Auth, *};
use proto::raftkvpb::{auth_request::Request as Q, auth_response::Response as A};
use tonic::{Request, Response, Status};

use crate::auth::AuthInfo;
use crate::error::ServerError;
use crate::server::authn::Credentials;
use crate::server::EtcdServer;

pub struct AuthService(pub Arc<EtcdServer>);

impl AuthService {
    async fn who<T>(&self, req: &Request<T>) -> Result<Option<AuthInfo>, Status> {
        Ok(self.0.auth_info(&Credentials::of(req)).await?)
    }

    /// Proposes `q` as `who` and picks the expected answer out of the result.
    async fn run<T>(
        &self,
        who: Option<AuthInfo>,
        q: Q,
        pick: fn(A) -> Option<T>,
    ) -> Result<T, Status> {
        let resp = self.0.propose_auth(who.as_ref(), q).await?;
        pick(resp).ok_or_else(|| ServerError::Internal("mismatched auth response".into()).into())
    }
}

/// One RPC: resolve the caller, propose, pick the answer, fill the header.
macro_rules! rpc {
    ($self:ident, $req:ident, $variant:ident) => {{
        let who = $self.who(&$req).await?;
        let r = $req.into_inner();
        let mut resp = $self
            .run(who, Q::$variant(r), |a| match a {
                A::$variant(x) => Some(x),
                _ => None,
            })
            .await?;
        $self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        rpc!(self, req, Enable)
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        rpc!(self, req, Disable)
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let mut resp = self.0.authenticate(r.name, r.password).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let who = self.who(&req).await?;
        let mut r = req.into_inner();
        if !r.options.as_ref().is_some_and(|o| o.no_password) {
            r.password = self.0.hash_password(r.password).await?;
        }
        let mut resp = self
            .run(who, Q::UserAdd(r), |a| match a {
                A::UserAdd(x) => Some(x),
                _ => None,
            })
            .await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        rpc!(self, req, UserGet)
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        rpc!(self, req, UserList)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        rpc!(self, req, UserDelete)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let who = self.who(&req).await?;
        let mut r = req.into_inner();
        r.password = self.0.hash_password(r.password).await?;
        let mut resp = self
            .run(who, Q::UserChangePassword(r), |a| match a {
                A::UserChangePassword(x) => Some(x),
                _ => None,
            })
            .await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        rpc!(self, req, UserGrantRole)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        rpc!(self, req, UserRevokeRole)
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        rpc!(self, req, RoleAdd)
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        rpc!(self, req, RoleGet)
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        rpc!(self, req, RoleList)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        rpc!(self, req, RoleDelete)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        rpc!(self, req, RoleGrantPermission)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        rpc!(self, req, RoleRevokePermission)
    }
}
