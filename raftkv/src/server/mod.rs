//! The server core: starts consensus on the store, turns client requests into proposals
//! (forwarded to the leader when this member does not lead), makes linearizable reads wait
//! for the leader's read index, and runs the background loops: lease expiry (leader only),
//! watcher catch-up and publishing this member's client URLs. Transports (gRPC, HTTP) sit on
//! top in `api` and `http`.

pub mod authn;
pub mod identity;
pub mod propose;
pub mod read_index;
pub mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{Raft, ServerState, SnapshotPolicy};
use prost::Message;
use proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use proto::raftkvpb::{
    internal_request, InternalRequest, InternalResponse, MemberAttributes, RequestHeader,
};
use tokio::sync::Notify;

use crate::auth::{AuthInfo, TokenProvider};
use crate::clock::Clock;
use crate::error::ServerError;
use crate::lease::LeaseError;
use crate::metrics::Metrics;
use crate::mvcc::Backend;
use crate::raft::membership::{self, Change};
use crate::raft::network::{Network, Peers};
use crate::raft::service::PeerHandler;
use crate::raft::state_machine::{from_response, RaftStateMachine};
use crate::raft::{LogStore, MemberNode, Request, TypeConfig};
use crate::state_machine::StateMachine;

pub use identity::{Identity, InitialCluster};

/// Limits and tunables, named after etcd's flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// Interval of progress notifications to watchers that asked for them.
    pub watch_progress_interval: Duration,
    /// Test only: linearizable reads skip the read index (see `--experimental-unsafe-stale-reads`).
    pub unsafe_stale_reads: bool,
    /// Test only: the Raft log is not fsynced (see `--experimental-unsafe-no-fsync`).
    pub unsafe_no_fsync: bool,
    /// `--bcrypt-cost`: the cost of the password hashes this member makes.
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a request without a token runs as its client certificate's CN.
    pub client_cert_auth: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            watch_progress_interval: Duration::from_secs(600),
            unsafe_stale_reads: false,
            unsafe_no_fsync: false,
            bcrypt_cost: bcrypt::DEFAULT_COST,
            client_cert_auth: false,
        }
    }
}

/// Everything needed to start a member.
pub struct Options {
    pub identity: Identity,
    pub initial_cluster: InitialCluster,
    /// `--initial-cluster-state new`: bootstrap the cluster if this member has no log yet.
    pub new_cluster: bool,
    pub token: String,
    pub raft_dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub min_lease_ttl: i64,
    /// `--snapshot-count`: applied entries between Raft snapshots (which let the log be purged).
    pub snapshot_count: u64,
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
    /// `--auth-token`: the tokens Authenticate hands out.
    pub token_provider: TokenProvider,
    /// How to dial `https://` peers (see [`crate::tls`]).
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the raft log: {0}")]
    Log(#[from] rocksdb::Error),
    #[error("raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A member as `MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has published them.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

pub struct EtcdServer {
    pub sm: Arc<StateMachine>,
    pub identity: Identity,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub raft: Raft<TypeConfig>,
    /// `--auth-token` (see [`authn`]).
    token_provider: TokenProvider,
    peers: Peers,
    request_timeout: Duration,
    /// `--election-timeout`, for leadership transfer.
    election_timeout: Duration,
    request_ids: wait::RequestIds,
    /// Writes handed to the leader wait here to be applied by this member.
    waits: Arc<wait::Waits>,
    watch_sync: Notify,
    /// The term in which this member, as leader, last restarted the lease deadlines (0 =
    /// never); see [`EtcdServer::lead_leases`]. A mutex, not an atomic: a renewal in a new
    /// term must wait until the restart is done.
    lease_term: std::sync::Mutex<u64>,
    /// Linearizable reads wait here for a shared read index.
    reads: Arc<read_index::ReadBatcher>,
    /// KV writes wait here for a shared log entry.
    proposals: Arc<propose::ProposalBatcher>,
}

/// Waits between attempts while no leader is known.
const LEADER_POLL: Duration = Duration::from_millis(50);

impl EtcdServer {
    /// Opens the store and the log, starts Raft and bootstraps a new cluster if asked to.
    pub async fn start(opts: Options, backend: Backend) -> Result<Arc<Self>, StartError> {
        let sm = Arc::new(StateMachine::open(
            backend,
            opts.min_lease_ttl,
            opts.clock.clone(),
        )?);
        let metrics = Arc::new(Metrics::new());
        let log = LogStore::open(
            &opts.raft_dir,
            !opts.limits.unsafe_no_fsync,
            metrics.log.clone(),
        )?;
        let election_ms = opts.election_timeout.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: opts.token.clone(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            // openraft's follower campaigns only after its leader lease (= max) plus its own
            // timeout (drawn once from [min, max)) without hearing from the leader, and backs
            // off another 2 * max after losing to a longer log (a flag that can also linger
            // from the previous election). With etcd's flag E as [E/2, E) that is 1.5-2 s
            // before the first campaign and up to ~4 s when the lagging follower tries first.
            // [2E/5, 3E/5) makes a follower wait [E, 1.2E) — never sooner than etcd's would —
            // and bounds the back-off case by ~2.4E.
            election_timeout_min: election_ms * 2 / 5,
            election_timeout_max: election_ms * 3 / 5,
            // etcd's --snapshot-count; like etcd, keep some entries after a snapshot so a
            // briefly lagging member catches up from the log instead of a whole snapshot.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_count),
            max_in_snapshot_log_to_keep: opts.snapshot_count.min(5000),
            ..Default::default()
        }
        .validate()?;
        let network = Network {
            peers: Peers::with_tls(opts.peer_tls.clone()),
        };
        let waits = Arc::new(wait::Waits::default());
        let peers = network.peers.clone();
        let raft = Raft::new(
            opts.identity.member_id,
            Arc::new(config),
            network,
            log,
            RaftStateMachine::new(sm.clone(), waits.clone()),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        if opts.new_cluster
            && !raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?
        {
            // Every member bootstraps the same membership from the same flags.
            let members: BTreeMap<u64, MemberNode> = opts
                .initial_cluster
                .ids(&opts.token)
                .into_iter()
                .map(|(id, name, peer_urls)| (id, MemberNode { name, peer_urls }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(StartError::Raft(e.to_string())),
            }
        }
        let proposals = propose::ProposalBatcher::new(
            opts.limits.max_request_bytes,
            metrics.proposal_stage.with_label_values(&["queued"]),
        );
        let request_ids = wait::RequestIds::new(opts.identity.member_id, opts.clock.wall());
        let server = Arc::new(Self {
            sm,
            identity: opts.identity,
            limits: opts.limits,
            metrics,
            raft,
            token_provider: opts.token_provider,
            peers,
            request_timeout: Duration::from_secs(5) + 2 * opts.election_timeout,
            election_timeout: opts.election_timeout,
            request_ids,
            waits,
            watch_sync: Notify::new(),
            lease_term: std::sync::Mutex::new(0),
            reads: Arc::default(),
            proposals: Arc::new(proposals),
        });
        // The read loop holds the server only while a round runs, so dropping the server
        // ends it.
        let (reads, weak) = (server.reads.clone(), Arc::downgrade(&server));
        tokio::spawn(async move {
            reads
                .run(|| {
                    let server = weak.upgrade();
                    async move { Some(server?.fetch_read_index().await) }
                })
                .await
        });
        let (proposals, weak) = (server.proposals.clone(), Arc::downgrade(&server));
        tokio::spawn(async move {
            proposals
                .run(
                    || weak.upgrade().map_or(propose::Route::Here, |s| s.route()),
                    |route, reqs, permit| {
                        let server = weak.upgrade();
                        async move {
                            let server = server?;
                            Some(match route {
                                propose::Route::Leader(leader) => {
                                    server.propose_through(leader, reqs, permit).await
                                }
                                here => server.write_batch(here, reqs).await,
                            })
                        }
                    },
                )
                .await
        });
        Ok(server)
    }

    /// Starts the background loops; they end with the runtime.
    pub fn spawn_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.expire_leases().await });
        let me = self.clone();
        tokio::spawn(async move { me.sync_watchers().await });
        let me = self.clone();
        tokio::spawn(async move { me.publish().await });
    }

    fn raft_metrics(&self) -> openraft::RaftMetrics<u64, MemberNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn leader_node(&self) -> Option<(u64, MemberNode)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Where this member's writes go: to the leader when that is another member, into the
    /// local log otherwise (whose Raft answers `NotLeader` while no leader is known).
    fn route(&self) -> propose::Route<MemberNode> {
        match self.leader_node() {
            Some((id, node)) if id != self.identity.member_id => propose::Route::Leader(node),
            _ => propose::Route::Here,
        }
    }

    /// (last log index, last applied index), for Status.
    pub fn raft_indexes(&self) -> (u64, u64) {
        let m = self.raft_metrics();
        (
            m.last_log_index.unwrap_or(0),
            m.last_applied.map_or(0, |l| l.index),
        )
    }

    /// Members as etcd lists them.
    pub fn members(&self) -> Result<Vec<MemberInfo>, ServerError> {
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let attrs = self.sm.backend().member_attrs()?;
        Ok(membership
            .nodes()
            .map(|(id, node)| {
                let published = attrs.iter().find(|a| a.id == *id);
                MemberInfo {
                    id: *id,
                    // A member added by `member add` has no name until it starts and publishes.
                    name: published.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect())
    }

    /// A response header as of `revision` (0 = the current revision).
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let revision = if revision == 0 {
            self.sm.read().mvcc.current_rev()
        } else {
            revision
        };
        Some(ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: self.term(),
        })
    }

    /// Fills the member fields of a header the state machine returned.
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = self.header(rev);
    }

    /// Commits `request` through the log and waits for its result. It runs as a client
    /// that sent no token: with auth enabled, anything needing a permission is refused.
    pub async fn propose(
        &self,
        request: internal_request::Request,
    ) -> Result<InternalResponse, ServerError> {
        self.propose_with(self.request_header(None, false), request)
            .await
    }

    /// [`Self::propose`] as the server itself, with every right (etcd's `WithRoot`).
    pub async fn propose_internal(
        &self,
        request: internal_request::Request,
    ) -> Result<InternalResponse, ServerError> {
        self.propose_with(self.request_header(None, true), request)
            .await
    }

    fn request_header(&self, who: Option<&AuthInfo>, internal: bool) -> RequestHeader {
        let who = who.cloned().unwrap_or_default();
        RequestHeader {
            id: self.request_ids.next(),
            username: who.username,
            auth_revision: who.revision,
            internal,
            term: 0,
        }
    }

    async fn propose_with(
        &self,
        header: RequestHeader,
        request: internal_request::Request,
    ) -> Result<InternalResponse, ServerError> {
        let req = InternalRequest {
            header: Some(header),
            request: Some(request),
        };
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        if self.over_quota(&req) {
            return Err(ServerError::NoSpace);
        }
        let timer = self.metrics.apply_duration.start_timer();
        let res = self.replicate(req).await;
        timer.observe_duration();
        self.metrics.proposals_applied.inc();
        if res.is_err() {
            self.metrics.proposals_failed.inc();
        }
        res
    }

    /// Writes through the local Raft, or through the leader's when this member does not lead.
    async fn replicate(&self, mut req: InternalRequest) -> Result<InternalResponse, ServerError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut first = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServerError::Timeout);
            }
            if !std::mem::take(&mut first) {
                // A new id for each attempt: a dropped one may still reach the log, skipped
                // there for its stamp, and must not be taken for this one ([`wait`]).
                if let Some(h) = req.header.as_mut() {
                    h.id = self.request_ids.next();
                }
            }
            // Bounded: a leader cut off from its quorum would wait for the commit forever,
            // where etcd answers "request timed out" (the entry may still commit later).
            let write = tokio::time::timeout(left, self.write(req.clone()));
            let Ok(written) = write.await else {
                return Err(ServerError::Timeout);
            };
            match written {
                // Answer once the entry is applied here too, as etcd does: after a write
                // forwarded to the leader, a client reading from this member (serializable, or
                // a watch opened after the answer) then sees its own write.
                Ok((resp, index)) => {
                    if self.applied_index() < index {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let _timer = self.stage_timer("catch_up");
                        self.raft
                            .wait(Some(left))
                            .applied_index_at_least(Some(index), "forwarded write")
                            .await
                            .map_err(|_| ServerError::Timeout)?;
                    }
                    return Ok(resp);
                }
                // No leader yet, or it moved on or died between our look and its answer:
                // one is elected within the deadline, ask again. Nothing was proposed.
                Err(ServerError::NotLeader | ServerError::Unreachable) => {
                    tokio::time::sleep(LEADER_POLL).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Observes the time until it is dropped as `stage` of [`Metrics::proposal_stage`].
    fn stage_timer(&self, stage: &str) -> prometheus::HistogramTimer {
        self.metrics
            .proposal_stage
            .with_label_values(&[stage])
            .start_timer()
    }

    /// Counts a batch of `writes` on `path` (`entry` or `forward`) in
    /// [`Metrics::proposal_batch`] and times it as that stage of [`Metrics::proposal_stage`].
    fn batch_timer(&self, path: &str, writes: usize) -> prometheus::HistogramTimer {
        self.metrics
            .proposal_batch
            .with_label_values(&[path])
            .observe(writes as f64);
        self.stage_timer(path)
    }

    fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Proposes a client's `req`, in a shared entry if it may ([`propose`]), through the
    /// leader when this member does not lead.
    async fn write(&self, req: InternalRequest) -> propose::Proposed {
        self.submit(propose::Proposal {
            req,
            forwarded: false,
        })
        .await
    }

    async fn submit(&self, proposal: propose::Proposal) -> propose::Proposed {
        if propose::ProposalBatcher::batchable(&proposal.req) {
            self.proposals.propose(proposal).await
        } else {
            let mut one = self.write_batch(self.route(), vec![proposal]).await;
            one.pop()
                .unwrap_or_else(|| Err(ServerError::Internal("no result".into())))
        }
    }

    /// Proposes `batch` as one entry, or forwards it to the leader in one call ([`Self::route`])
    /// and waits for the leader's answers ([`propose::refuse_forwarded`] says what is not sent
    /// on).
    async fn write_batch(
        &self,
        route: propose::Route<MemberNode>,
        batch: Vec<propose::Proposal>,
    ) -> Vec<propose::Proposed> {
        let leader = match route {
            propose::Route::Leader(node) => node,
            propose::Route::Here => {
                let _timer = self.batch_timer("entry", batch.len());
                return self
                    .write_entry(batch.into_iter().map(|p| p.req).collect())
                    .await;
            }
        };
        let (refused, onward) = propose::refuse_forwarded(batch);
        let n = onward.len();
        let answered = if n == 0 {
            Vec::new()
        } else {
            let _timer = self.batch_timer("forward", n);
            match self
                .peers
                .forward(&leader, onward, self.request_timeout)
                .await
            {
                Ok(answered) => answered,
                Err(e) => propose::each_fails(&e, n),
            }
        };
        propose::merge(refused, answered)
    }

    /// Hands queued KV writes to `leader` to put in its next entry, then answers each from
    /// this member's own apply of it ([`wait`]); the batch's forward slot (`permit`) is free
    /// again as soon as the leader has queued them. A request another member forwarded here
    /// is not sent on: it fails with `NotLeader`, and that member learns it was dropped.
    async fn propose_through(
        &self,
        leader: MemberNode,
        batch: Vec<propose::Proposal>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Vec<propose::Proposed> {
        let (refused, onward) = propose::refuse_forwarded(batch);
        let ids: Vec<u64> = onward
            .iter()
            .map(|r| r.header.as_ref().map_or(0, |h| h.id))
            .collect();
        let waiting: Vec<_> = ids.iter().map(|id| self.waits.register(*id)).collect();
        let sent = if onward.is_empty() {
            Ok(0)
        } else {
            let _timer = self.batch_timer("forward", onward.len());
            self.peers
                .propose(&leader, onward, self.request_timeout)
                .await
        };
        drop(permit);
        let answered = match sent {
            Ok(term) => {
                for id in &ids {
                    self.waits.queued(*id, term);
                }
                let _timer = self.stage_timer("follower_apply");
                let deadline = tokio::time::Instant::now() + self.request_timeout;
                let mut answered = Vec::with_capacity(ids.len());
                for (id, rx) in ids.iter().zip(waiting) {
                    match tokio::time::timeout_at(deadline, wait::wait(rx)).await {
                        // Applied here already: nothing left to catch up with.
                        Ok(outcome) => answered.push(outcome.map(|r| (r, 0))),
                        Err(_) => {
                            self.waits.cancel(*id);
                            answered.push(Err(ServerError::Timeout));
                        }
                    }
                }
                answered
            }
            Err(e) => {
                for id in &ids {
                    self.waits.cancel(*id);
                }
                propose::each_fails(&e, ids.len())
            }
        };
        propose::merge(refused, answered)
    }

    /// Proposes one entry carrying `reqs` (as it is if it is one, as an `InternalBatch`
    /// otherwise) and waits until it is applied: one result per request, in order.
    async fn write_entry(&self, mut reqs: Vec<InternalRequest>) -> Vec<propose::Proposed> {
        let n = reqs.len();
        let entry = match reqs.pop() {
            Some(only) if reqs.is_empty() => only,
            last => {
                reqs.extend(last);
                InternalRequest {
                    header: None,
                    request: Some(internal_request::Request::Batch(
                        proto::raftkvpb::InternalBatch { requests: reqs },
                    )),
                }
            }
        };
        match self.raft.client_write(Request(entry)).await {
            Ok(resp) => {
                let index = resp.log_id.index;
                if n == 1 {
                    vec![from_response(resp.data).map(|r| (r, index))]
                } else {
                    resp.data
                        .batch
                        .into_iter()
                        .map(|r| from_response(r).map(|r| (r, index)))
                        .collect()
                }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                (0..n).map(|_| Err(ServerError::NotLeader)).collect()
            }
            Err(RaftError::APIError(e)) => (0..n)
                .map(|_| Err(ServerError::Internal(e.to_string())))
                .collect(),
            Err(RaftError::Fatal(_)) => (0..n).map(|_| Err(ServerError::Stopped)).collect(),
        }
    }

    /// Blocks until this member has applied everything committed before the call (etcd's
    /// linearizable read: the leader confirms it still leads, followers ask the leader),
    /// sharing one read index with the reads waiting at the same time ([`read_index`]).
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        if self.limits.unsafe_stale_reads {
            return Ok(());
        }
        let index = self.reads.read_index().await?;
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| ServerError::Timeout)
    }

    /// One read index: the leader's commit index once it has confirmed it still leads (and
    /// applied up to it), or, on a follower, the leader's answer.
    async fn fetch_read_index(&self) -> Result<u64, ServerError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServerError::Timeout);
            }
            match self.raft.ensure_linearizable().await {
                Ok(log_id) => return Ok(log_id.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                    match self.leader_node() {
                        Some((id, node)) if id != self.identity.member_id => {
                            match self.peers.read_index(&node, left).await {
                                Ok(index) => return Ok(index),
                                // A read index is safe to ask for again, whatever
                                // happened to the first request.
                                Err(
                                    ServerError::NotLeader
                                    | ServerError::Unreachable
                                    | ServerError::LeaderFail,
                                ) => tokio::time::sleep(LEADER_POLL).await,
                                Err(e) => return Err(e),
                            }
                        }
                        _ => tokio::time::sleep(LEADER_POLL).await,
                    }
                }
                // Leading without a quorum (partitioned): wait for it or for a new leader.
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    tokio::time::sleep(LEADER_POLL).await
                }
                Err(RaftError::Fatal(_)) => return Err(ServerError::Stopped),
            }
        }
    }

    /// Range: linearizable unless the request asks for a serializable read.
    pub async fn range(
        &self,
        who: Option<&AuthInfo>,
        r: &RangeRequest,
    ) -> Result<RangeResponse, ServerError> {
        if !r.serializable {
            self.read_barrier().await?;
        }
        self.sm.range_as(who, r)
    }

    /// A read-only txn: linearizable unless every range in it is serializable.
    pub async fn read_txn(
        &self,
        who: Option<&AuthInfo>,
        t: &TxnRequest,
    ) -> Result<TxnResponse, ServerError> {
        if !is_txn_serializable(t) {
            self.read_barrier().await?;
        }
        self.sm.read_txn(who, t)
    }

    /// Renews a lease on the leader (forwarding when this member does not lead).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, ServerError> {
        self.on_lease_leader(
            || self.renew_locally(id),
            |node, left| async move { self.peers.lease_renew(&node, id, left).await },
        )
        .await
    }

    /// etcd's MoveLeader, on the leader: pauses heartbeats so the followers' leader lease
    /// (openraft's `election_timeout_max`, 3/5 of `--election-timeout`) lapses, has the
    /// transferee campaign right then (before any other follower's election timer, which
    /// needs a full timeout), and waits to see it lead. Heartbeats resume either way.
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let m = self.raft_metrics();
        if m.state != ServerState::Leader {
            return Err(ServerError::NotLeader);
        }
        if target == self.identity.member_id {
            return Ok(());
        }
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == target);
        let node = match membership.get_node(&target) {
            Some(node) if is_voter => node.clone(),
            _ => return Err(ServerError::BadLeaderTransferee),
        };
        let lease = self.election_timeout * 3 / 5 + Duration::from_millis(50);
        self.raft.runtime_config().heartbeat(false);
        let moved = async {
            self.peers
                .campaign(&node, lease, self.election_timeout)
                .await?;
            self.raft
                .wait(Some(lease + 2 * self.election_timeout))
                .metrics(|m| m.current_leader == Some(target), "leadership transfer")
                .await
                .map_err(|_| ServerError::Timeout)
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        moved.map(|_| ())
    }

    /// Carries out a membership change on the leader, wherever it is.
    pub async fn change_membership(&self, change: Change) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServerError::Timeout);
            }
            let res = match self.leader_node() {
                Some((id, _)) if id == self.identity.member_id => {
                    membership::apply(&self.raft, change.clone()).await
                }
                Some((_, node)) => self.peers.change_membership(&node, &change, left).await,
                None => Err(ServerError::NoLeader),
            };
            match res {
                Err(ServerError::NotLeader | ServerError::NoLeader | ServerError::Unreachable) => {
                    tokio::time::sleep(LEADER_POLL).await
                }
                other => return other,
            }
        }
    }

    /// A lease's remaining TTL, as the leader (which owns the deadlines) sees it.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        self.on_lease_leader(
            || Ok(self.time_to_live_locally(&req)),
            |node, left| async move { self.peers.lease_time_to_live(&node, req, left).await },
        )
        .await
    }

    /// Runs a lease request where the deadlines live: `local` if this member leads, else
    /// `remote` on the leader. While no leader is known, or the one known is gone, it waits
    /// for the next (as etcd's followers do) up to the request timeout: a follower's own
    /// deadlines were never renewed, so answering from them would report live leases as
    /// expired (TTL 0), and a client told that stops renewing its lease.
    async fn on_lease_leader<T, F>(
        &self,
        local: impl Fn() -> Result<T, ServerError>,
        remote: impl Fn(MemberNode, Duration) -> F,
    ) -> Result<T, ServerError>
    where
        F: std::future::Future<Output = Result<T, ServerError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            if self.lead_leases() {
                return local();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServerError::Timeout);
            }
            match self.leader_node() {
                Some((id, node)) if id != self.identity.member_id => {
                    match remote(node, left).await {
                        // Renewals and TTL queries are safe to repeat.
                        Err(
                            ServerError::NotLeader
                            | ServerError::Unreachable
                            | ServerError::LeaderFail,
                        ) => tokio::time::sleep(LEADER_POLL).await,
                        other => return other,
                    }
                }
                _ => tokio::time::sleep(LEADER_POLL).await,
            }
        }
    }

    /// Whether this member leads. The first call in each term of leadership restarts every
    /// lease deadline (etcd's `Promote`) before anything renews, reads or expires a lease:
    /// until then the deadlines are the ones this member kept as a follower, which nothing
    /// renewed, so live leases would look expired.
    fn lead_leases(&self) -> bool {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            return false;
        }
        let mut promoted = self.lease_term.lock().expect("lease term lock");
        if *promoted != term {
            self.sm.read().lessor.promote();
            *promoted = term;
        }
        true
    }

    fn time_to_live_locally(&self, r: &LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
        let info = self.sm.read().lessor.info(r.id, r.keys);
        match info {
            Some(i) => LeaseTimeToLiveResponse {
                header: self.header(0),
                id: r.id,
                ttl: i.remaining_secs,
                granted_ttl: i.granted_ttl,
                keys: i.keys,
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header: self.header(0),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }
    }

    fn renew_locally(&self, id: i64) -> Result<LeaseKeepAliveResponse, ServerError> {
        let ttl = match self.sm.read().lessor.renew(id) {
            Ok(ttl) => ttl,
            Err(LeaseError::NotFound) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(LeaseKeepAliveResponse {
            header: self.header(0),
            id,
            ttl,
        })
    }

    /// etcd's backend quota: a write that would grow the store past the quota raises the
    /// NOSPACE alarm and is refused.
    fn over_quota(&self, req: &InternalRequest) -> bool {
        use internal_request::Request as R;
        let grows = match &req.request {
            Some(R::Put(_)) | Some(R::LeaseGrant(_)) => true,
            Some(R::Txn(t)) => !crate::state_machine::is_txn_readonly(t),
            _ => false,
        };
        if !grows
            || self.sm.backend().size_at_last_write() + req.encoded_len() as u64
                <= self.limits.quota_backend_bytes
        {
            return false;
        }
        let activate = proto::etcdserverpb::AlarmRequest {
            action: proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.identity.member_id,
            alarm: proto::etcdserverpb::AlarmType::Nospace as i32,
        };
        let raft = self.raft.clone();
        let req = InternalRequest {
            header: None,
            request: Some(R::Alarm(activate)),
        };
        // Best effort: on a follower this fails and the next write over quota tries again.
        tokio::spawn(async move { raft.client_write(Request(req)).await });
        true
    }

    /// The leader revokes expired leases through the log; a member that becomes leader first
    /// restarts every deadline, since it cannot know when the old leader last renewed them.
    async fn expire_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if !self.lead_leases() {
                continue;
            }
            let expired = self.sm.read().lessor.take_expired(1000);
            for id in expired {
                tracing::debug!(lease = id, "lease expired; revoking");
                match self
                    .propose_internal(internal_request::Request::LeaseRevoke(LeaseRevokeRequest {
                        id,
                    }))
                    .await
                {
                    Ok(_) | Err(ServerError::LeaseNotFound) => self.metrics.leases_expired.inc(),
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed")
                    }
                }
            }
        }
    }

    /// Publishes this member's name and client URLs through the log (etcd's `publish`).
    async fn publish(self: Arc<Self>) {
        let attrs = MemberAttributes {
            id: self.identity.member_id,
            name: self.identity.name.clone(),
            client_urls: self.identity.client_urls.clone(),
        };
        loop {
            let current = self
                .sm
                .backend()
                .member_attrs()
                .ok()
                .and_then(|v| v.into_iter().find(|a| a.id == attrs.id));
            if current.as_ref() == Some(&attrs) {
                return;
            }
            match self
                .propose_internal(internal_request::Request::Publish(attrs.clone()))
                .await
            {
                Ok(_) => tracing::info!(name = %attrs.name, "published member attributes"),
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Asks the sync loop to run now (a watcher that starts in the past was added).
    pub fn kick_watch_sync(&self) {
        self.watch_sync.notify_one();
    }

    async fn sync_watchers(self: Arc<Self>) {
        loop {
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.watch_sync.notified()).await;
            let me = self.clone();
            let behind = tokio::task::spawn_blocking(move || {
                let st = me.sm.read();
                me.sm.hub().sync(&st.mvcc, me.sm.backend())
            })
            .await;
            match behind {
                Ok(Ok(n)) if n > 0 => self.watch_sync.notify_one(),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "watch sync failed"),
                Err(e) => tracing::error!(error = %e, "watch sync task failed"),
            }
        }
    }
}

/// etcd's `isTxnSerializable`: every range in the txn (all branches) asks for a serializable read.
fn is_txn_serializable(t: &TxnRequest) -> bool {
    use proto::etcdserverpb::request_op::Request as Op;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(r)) => r.serializable,
            Some(Op::RequestTxn(t)) => is_txn_serializable(t),
            _ => true,
        })
}

#[tonic::async_trait]
impl PeerHandler for EtcdServer {
    fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// A follower's writes: batched with this leader's own.
    async fn forwarded_writes(&self, reqs: Vec<InternalRequest>) -> Vec<propose::Proposed> {
        futures::future::join_all(reqs.into_iter().map(|req| {
            self.submit(propose::Proposal {
                req,
                forwarded: true,
            })
        }))
        .await
    }

    /// A follower's KV writes: queued with this leader's own, stamped with this term.
    fn queue_forwarded(&self, reqs: Vec<InternalRequest>) -> Result<u64, ServerError> {
        let term = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                return Err(ServerError::NotLeader);
            }
            m.current_term
        };
        if let Some(r) = reqs
            .iter()
            .find(|r| !propose::ProposalBatcher::batchable(r))
        {
            return Err(ServerError::Internal(format!(
                "only KV writes are queued for another member, not {:?}",
                r.request
            )));
        }
        self.proposals.enqueue(reqs.into_iter().map(|mut req| {
            req.header.get_or_insert_with(Default::default).term = term;
            propose::Proposal {
                req,
                forwarded: true,
            }
        }));
        Ok(term)
    }

    /// A follower's read: batched with this leader's own reads.
    async fn read_index(&self) -> Result<u64, ServerError> {
        if self.leader() != Some(self.identity.member_id) {
            return Err(ServerError::NotLeader);
        }
        self.reads.read_index().await
    }

    async fn lease_renew(
        &self,
        req: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, ServerError> {
        if !self.lead_leases() {
            return Err(ServerError::NotLeader);
        }
        self.renew_locally(req.id)
    }

    async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        if !self.lead_leases() {
            return Err(ServerError::NotLeader);
        }
        Ok(self.time_to_live_locally(&req))
    }

    async fn change_membership(&self, change: Change) -> Result<(), ServerError> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Err(ServerError::NotLeader);
        }
        membership::apply(&self.raft, change).await
    }

    fn cluster_id(&self) -> u64 {
        self.identity.cluster_id
    }

    fn campaign(&self, after: Duration) {
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaigning for a leadership transfer failed");
            }
        });
    }
}
