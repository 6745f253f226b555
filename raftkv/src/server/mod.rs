//! The server core: turns client requests into proposals, runs the apply loop that commits
//! them (group commit: one fsync for every proposal that queued up meanwhile), and the
//! background loops that expire leases and catch up watchers. Transports (gRPC, HTTP) sit on
//! top in `api` and `http`; consensus replaces [`Proposer`] without touching either.

pub mod identity;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use proto::etcdserverpb::{LeaseRevokeRequest, ResponseHeader};
use proto::raftkvpb::{internal_request, InternalRequest, InternalResponse, RequestHeader};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::state_machine::{ApplyResult, StateMachine};

pub use identity::Identity;

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            watch_progress_interval: Duration::from_secs(600),
        }
    }
}

/// Most proposals committed by one fsync.
const MAX_GROUP: usize = 512;

struct Proposal {
    req: InternalRequest,
    done: oneshot::Sender<ApplyResult>,
}

/// The single-member log: proposals are applied in arrival order. Issue 4 puts openraft here.
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the apply thread. A storage failure stops the process: memory may be ahead of
    /// disk, and only a restart from disk is safe.
    fn start(sm: Arc<StateMachine>, metrics: Arc<Metrics>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Proposal>(4096);
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || {
                let mut index = sm.read().applied_index;
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(p) => group.push(p),
                            Err(_) => break,
                        }
                    }
                    let (entries, waiters): (Vec<_>, Vec<_>) = group
                        .into_iter()
                        .map(|p| {
                            index += 1;
                            ((index, p.req), p.done)
                        })
                        .unzip();
                    let n = entries.len();
                    let timer = metrics.apply_duration.start_timer();
                    match sm.apply_batch(entries) {
                        Ok(results) => {
                            timer.observe_duration();
                            metrics.proposals_applied.inc_by(n as u64);
                            for (res, w) in results.into_iter().zip(waiters) {
                                if res.is_err() {
                                    metrics.proposals_failed.inc();
                                }
                                let _ = w.send(res);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "storage failure while applying; stopping");
                            std::process::exit(1);
                        }
                    }
                }
            })
            .expect("spawn apply thread");
        Self { tx }
    }
}

pub struct EtcdServer {
    pub sm: Arc<StateMachine>,
    pub identity: Identity,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    proposer: Proposer,
    next_request_id: AtomicU64,
    watch_sync: Notify,
}

impl EtcdServer {
    pub fn new(sm: StateMachine, identity: Identity, limits: Limits) -> Arc<Self> {
        let sm = Arc::new(sm);
        let metrics = Arc::new(Metrics::new());
        let proposer = Proposer::start(sm.clone(), metrics.clone());
        Arc::new(Self {
            sm,
            identity,
            limits,
            metrics,
            proposer,
            next_request_id: AtomicU64::new(1),
            watch_sync: Notify::new(),
        })
    }

    /// Starts the lessor and watcher-sync loops; they end with the runtime.
    pub fn spawn_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.expire_leases().await });
        let me = self.clone();
        tokio::spawn(async move { me.sync_watchers().await });
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
            raft_term: self.identity.term,
        })
    }

    /// Fills the member fields of a header the state machine returned.
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = self.header(rev);
    }

    /// Commits `request` through the log and waits for its result.
    pub async fn propose(
        &self,
        request: internal_request::Request,
    ) -> Result<InternalResponse, ServerError> {
        let req = InternalRequest {
            header: Some(RequestHeader {
                id: self.next_request_id.fetch_add(1, Ordering::Relaxed),
            }),
            request: Some(request),
        };
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        if self.over_quota(&req) {
            return Err(ServerError::NoSpace);
        }
        let (done, wait) = oneshot::channel();
        self.proposer
            .tx
            .send(Proposal { req, done })
            .await
            .map_err(|_| ServerError::Stopped)?;
        wait.await.map_err(|_| ServerError::Stopped)?
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
            || self.sm.backend().size() + req.encoded_len() as u64
                <= self.limits.quota_backend_bytes
        {
            return false;
        }
        let member_id = self.identity.member_id;
        let activate = proto::etcdserverpb::AlarmRequest {
            action: proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id,
            alarm: proto::etcdserverpb::AlarmType::Nospace as i32,
        };
        let (done, _wait) = oneshot::channel();
        let req = InternalRequest {
            header: None,
            request: Some(R::Alarm(activate)),
        };
        let _ = self.proposer.tx.try_send(Proposal { req, done });
        true
    }

    async fn expire_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let expired = self.sm.read().lessor.take_expired(1000);
            for id in expired {
                tracing::debug!(lease = id, "lease expired; revoking");
                match self
                    .propose(internal_request::Request::LeaseRevoke(LeaseRevokeRequest {
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
