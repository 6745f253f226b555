//! The client half of the peer transport: openraft's network (AppendEntries, Vote and
//! InstallSnapshot over the `raftkvpb.Raft` gRPC service) and the calls a member makes to its
//! leader on a client's behalf (Forward, Propose, ReadIndex, LeaseRenew). Connections are
//! made lazily and kept per peer URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use proto::raftkvpb::raft_client::RaftClient;
use proto::raftkvpb::{
    forward_response, CampaignRequest, ClusterInfoRequest, InternalBatch, InternalRequest,
    InternalResponse, RaftPayload, ReadIndexRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::codec::{decode, encode};
use super::membership::Change;
use super::types::{MemberNode, TypeConfig};
use crate::error::ServerError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// gRPC channels to peers, by peer URL; shared by openraft's clients and the server.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How `https://` peer URLs are dialed (`--peer-trusted-ca-file`, `--peer-cert-file`).
    tls: Option<ClientTlsConfig>,
}

impl Peers {
    /// Peers dialed with `tls` when their URL is `https://`.
    pub fn with_tls(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            channels: Default::default(),
            tls,
        }
    }

    /// A client for the member's first peer URL (connects on first use).
    pub fn client(&self, node: &MemberNode) -> Result<RaftClient<Channel>, ServerError> {
        let url = node.peer_urls.first().ok_or_else(|| {
            ServerError::Internal(format!("member {} has no peer URL", node.name))
        })?;
        let mut channels = self.channels.lock().expect("peer channel lock");
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let bad = |e: tonic::transport::Error| {
                    ServerError::Internal(format!("bad peer URL {url:?}: {e}"))
                };
                let mut endpoint = Endpoint::from_shared(url.clone()).map_err(bad)?;
                if url.starts_with("https://") {
                    let tls = self.tls.clone().unwrap_or_default();
                    endpoint = endpoint.tls_config(tls).map_err(bad)?;
                }
                let c = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(url.clone(), c.clone());
                c
            }
        };
        // Raft messages can carry many entries; the peer enforces its own limit.
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// Hands writes to the leader in one call. The outer error is the call's (the leader
    /// is gone or no longer leads: nothing was proposed); inside, one result per request, in
    /// order, each with the log index of the entry that carried it.
    pub async fn forward(
        &self,
        leader: &MemberNode,
        requests: Vec<InternalRequest>,
        timeout: Duration,
    ) -> Result<Vec<Result<(InternalResponse, u64), ServerError>>, ServerError> {
        let n = requests.len();
        let mut client = self.client(leader)?;
        let mut request = tonic::Request::new(InternalBatch { requests });
        request.set_timeout(timeout);
        let resp = client
            .forward(request)
            .await
            .map_err(status_error)?
            .into_inner();
        if resp.results.len() != n {
            return Err(ServerError::Internal(format!(
                "the leader answered {} results to {n} forwarded writes",
                resp.results.len()
            )));
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(forward_response::Result::Response(resp)) => Ok((resp, r.index)),
                Some(forward_response::Result::Error(e)) => {
                    Err(ServerError::from_wire(e.code, e.message))
                }
                None => Err(ServerError::Internal("empty forward response".into())),
            })
            .collect())
    }

    /// Hands KV writes to the leader to queue for its next entry (`raftkv.Raft/Propose`):
    /// the term it stamped them with. An error means the leader did not queue them, except
    /// [`ServerError::LeaderFail`] and [`ServerError::Timeout`], after which it may have.
    pub async fn propose(
        &self,
        leader: &MemberNode,
        requests: Vec<InternalRequest>,
        timeout: Duration,
    ) -> Result<u64, ServerError> {
        let mut client = self.client(leader)?;
        let mut request = tonic::Request::new(InternalBatch { requests });
        request.set_timeout(timeout);
        Ok(client
            .propose(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .term)
    }

    /// Asks the leader for a read index.
    pub async fn read_index(
        &self,
        leader: &MemberNode,
        timeout: Duration,
    ) -> Result<u64, ServerError> {
        let mut client = self.client(leader)?;
        let mut request = tonic::Request::new(ReadIndexRequest {});
        request.set_timeout(timeout);
        Ok(client
            .read_index(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .index)
    }

    pub async fn lease_renew(
        &self,
        leader: &MemberNode,
        id: i64,
        timeout: Duration,
    ) -> Result<LeaseKeepAliveResponse, ServerError> {
        let mut client = self.client(leader)?;
        let mut request = tonic::Request::new(LeaseKeepAliveRequest { id });
        request.set_timeout(timeout);
        Ok(client
            .lease_renew(request)
            .await
            .map_err(status_error)?
            .into_inner())
    }
}

impl Peers {
    pub async fn lease_time_to_live(
        &self,
        leader: &MemberNode,
        req: LeaseTimeToLiveRequest,
        timeout: Duration,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        let mut client = self.client(leader)?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(timeout);
        Ok(client
            .lease_time_to_live(request)
            .await
            .map_err(status_error)?
            .into_inner())
    }
}

impl Peers {
    /// Has the leader carry out a membership change.
    pub async fn change_membership(
        &self,
        leader: &MemberNode,
        change: &Change,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let mut client = self.client(leader)?;
        let mut request = tonic::Request::new(RaftPayload {
            data: encode(change),
        });
        request.set_timeout(timeout);
        let reply = client
            .change_membership(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let result: Result<(), (i32, String)> = decode(&reply.data)
            .map_err(|e| ServerError::Internal(format!("undecodable membership reply: {e}")))?;
        result.map_err(|(code, message)| ServerError::from_wire(code, message))
    }

    /// Asks a member to campaign for leadership after `after` (MoveLeader).
    pub async fn campaign(
        &self,
        node: &MemberNode,
        after: Duration,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let mut client = self.client(node)?;
        let mut request = tonic::Request::new(CampaignRequest {
            after_ms: after.as_millis() as u64,
        });
        request.set_timeout(timeout);
        client.campaign(request).await.map_err(status_error)?;
        Ok(())
    }

    /// The cluster ID a running member reports (for a member joining an existing cluster).
    pub async fn cluster_id(
        &self,
        peer: &MemberNode,
        timeout: Duration,
    ) -> Result<u64, ServerError> {
        let mut client = self.client(peer)?;
        let mut request = tonic::Request::new(ClusterInfoRequest {});
        request.set_timeout(timeout);
        Ok(client
            .cluster_info(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .cluster_id)
    }
}

/// A failed call to a peer, as the client of this member should see it.
fn status_error(s: tonic::Status) -> ServerError {
    match s.code() {
        // Connecting failed: the request never left this member.
        tonic::Code::Unavailable => ServerError::Unreachable,
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ServerError::Timeout,
        // Made by our own transport rather than sent by the peer: the connection broke
        // while the call was in flight (typically the leader died). Passing tonic's
        // `Unknown: transport error` on would give the client neither etcd's code nor a
        // message it knows.
        _ if from_transport(&s) => ServerError::LeaderFail,
        code => ServerError::from_wire(code as i32, s.message().to_string()),
    }
}

/// Whether `s` was produced locally from a transport failure (statuses a peer sends carry
/// no source).
fn from_transport(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// openraft's network factory.
#[derive(Clone, Default)]
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerConnection {
    target: u64,
    node: MemberNode,
    peers: Peers,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, MemberNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .client(&self.node)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data: encode(req) });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            // Not reachable now: openraft backs off before trying this peer again.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&s)),
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let result: Result<Resp, RaftError<u64, E>> = decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MemberNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
