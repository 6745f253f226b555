//! The Cluster service: the member list comes from the Raft membership plus the attributes
//! each member published; membership changes go to the leader (see `raft::membership`).

use std::sync::Arc;

use proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::raft::membership::Change;
use crate::raft::MemberNode;
use crate::server::authn::Credentials;
use crate::server::{identity, EtcdServer, MemberInfo};

pub struct ClusterService(pub Arc<EtcdServer>);

impl From<MemberInfo> for Member {
    fn from(m: MemberInfo) -> Self {
        Member {
            id: m.id,
            name: m.name,
            peer_ur_ls: m.peer_urls,
            client_ur_ls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

impl ClusterService {
    /// etcd's cluster server header: identity and term, no revision (it reads no store).
    fn header(&self) -> Option<proto::etcdserverpb::ResponseHeader> {
        let mut h = self.0.header(0);
        if let Some(h) = h.as_mut() {
            h.revision = 0;
        }
        h
    }

    fn members(&self) -> Result<Vec<Member>, ServerError> {
        Ok(self.0.members()?.into_iter().map(Member::from).collect())
    }
}

/// etcd refuses peer URLs that are not `http(s)://host:port`.
fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            rest.is_some_and(|hp| {
                let hp = hp.trim_end_matches('/');
                hp.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            })
        })
}

impl ClusterService {
    /// etcd's `checkMembershipOperationPermission`: membership changes need the root role.
    async fn admin_only<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let who = self.0.auth_info(&Credentials::of(req)).await?;
        Ok(self.0.check_admin(who.as_ref())?)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        if !valid_peer_urls(&req.get_ref().peer_ur_ls) {
            return Err(Status::invalid_argument(
                "etcdserver: given member URLs are invalid",
            ));
        }
        // After the URL check, as etcd's `AddMember` checks permission.
        self.admin_only(&req).await?;
        let r = req.into_inner();
        // The same derivation the new member makes from its own flags when it starts.
        let id = identity::member_id(&r.peer_ur_ls, &self.0.identity.token);
        let node = MemberNode {
            name: String::new(),
            peer_urls: r.peer_ur_ls.clone(),
        };
        self.0
            .change_membership(Change::Add {
                id,
                node,
                learner: r.is_learner,
            })
            .await?;
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.members()?,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin_only(&req).await?;
        let id = req.into_inner().id;
        self.0.change_membership(Change::Remove { id }).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members()?,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin_only(&req).await?;
        let r = req.into_inner();
        if !valid_peer_urls(&r.peer_ur_ls) {
            return Err(Status::invalid_argument(
                "etcdserver: given member URLs are invalid",
            ));
        }
        self.0
            .change_membership(Change::Update {
                id: r.id,
                peer_urls: r.peer_ur_ls,
            })
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members()?,
        }))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members()?,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin_only(&req).await?;
        let id = req.into_inner().id;
        self.0.change_membership(Change::Promote { id }).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_url_validation() {
        let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: &[(&[&str], bool)] = &[
            (&["http://127.0.0.1:2380"], true),
            (&["https://a.example:2380/", "http://b:1"], true),
            (&[], false),
            (&["127.0.0.1:2380"], false),
            (&["http://127.0.0.1"], false),
            (&["http://:2380"], false),
            (&["http://h:notaport"], false),
        ];
        for (u, ok) in cases {
            assert_eq!(valid_peer_urls(&urls(u)), *ok, "{u:?}");
        }
    }
}
