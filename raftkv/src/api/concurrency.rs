//! etcd 3.4's `clientv3/concurrency` recipes (Session, Election, Mutex), run inside the
//! server for the v3election and v3lock services.
//!
//! etcd's own servers for those services are thin wrappers that drive the recipes through a
//! clientv3 client over an in-process gRPC connection. Here the same steps run directly on
//! [`EtcdServer`]'s request paths instead: every write is the exact Txn or DeleteRange the
//! recipe sends (proposed through Raft), every read a linearizable Range (read index) and every
//! wait a watcher on the local store. That keeps the revisions, keys and headers identical to
//! etcd's while avoiding a loopback connection with its own retries, deadlines and addressing
//! (the client URL may be TLS, or a wildcard address).
//!
//! Keys: an election or lock `name` owns the prefix `<name>/`; each contender writes
//! `<name>/<lease ID in lowercase hex>` (Go's `%x` of the signed ID) attached to its lease,
//! and the contender with the lowest create revision holds the election or lock. A waiter
//! watches only the key created just before its own ("waitDeletes"), so a release wakes one
//! waiter, not all of them.
//!
//! Auth: etcd passes the caller's context to that client, so every op is permission-checked
//! as the caller; [`Recipes`] holds the caller's credentials for the same effect (except in
//! cleanups, which etcd runs without them: see `Recipes::tokenless`).
//!
//! Errors: the recipes surface as plain Go errors through grpc-go, i.e. with code `Unknown`
//! and the message only, including the etcd errors the inner client received
//! ([`ConcurrencyError`] reproduces that).

use std::sync::Arc;

use proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use proto::mvccpb::{event::EventType, KeyValue};
use proto::raftkvpb::internal_request::Request as Rq;
use tokio::sync::mpsc;

use super::expect_response;
use crate::auth::{AuthInfo, Caller};
use crate::error::ServerError;
use crate::mvcc::watch::{WatchEvents, WatchSpec, WatcherKey};
use crate::mvcc::KeyRange;
use crate::server::authn::Credentials;
use crate::server::EtcdServer;
use crate::state_machine::validate;

/// `concurrency.defaultSessionTTL`: the TTL of the lease a session grants when the request
/// names none (lease 0). The session is orphaned at once, as etcd's servers do, so nothing
/// renews that lease: it expires after this many seconds.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// Watch responses buffered per recipe watcher before it falls back to catching up.
const WATCH_BUFFER: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConcurrencyError {
    /// `concurrency.ErrElectionNotLeader`.
    #[error("election: not leader")]
    NotLeader,
    /// `concurrency.ErrElectionNoLeader`.
    #[error("election: no leader")]
    NoLeader,
    /// The recipe's watcher was closed under it (etcd: a compacted watch start revision).
    #[error("lost watcher waiting for delete")]
    LostWatcher,
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl From<ConcurrencyError> for tonic::Status {
    fn from(e: ConcurrencyError) -> Self {
        // clientv3 turns etcd's errors into plain Go errors, which grpc-go sends as Unknown.
        tonic::Status::unknown(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ConcurrencyError>;

/// Go's `fmt.Sprintf("%x", int64)`: lowercase hex, a minus sign for negative values.
pub fn go_hex(v: i64) -> String {
    if v < 0 {
        format!("-{:x}", v.unsigned_abs())
    } else {
        format!("{v:x}")
    }
}

/// The key of `lease`'s contender under `prefix` (which ends with `/`).
pub fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    [prefix, go_hex(lease).as_bytes()].concat()
}

/// `<name>/`, the prefix an election or mutex named `name` owns.
pub fn name_prefix(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// etcd's prefix range end (`clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn get_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn key_get(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// clientv3's `withTop(SortByCreateRevision, order)`: the prefix, sorted, limit 1.
fn top_by_create(prefix: &[u8], order: SortOrder) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// `WithFirstCreate()`: the oldest key under the prefix.
fn first_create(prefix: &[u8]) -> RangeRequest {
    top_by_create(prefix, SortOrder::Ascend)
}

/// The nth response of a Txn as a Range response (the recipes know their Txn's shape).
fn range_response(resp: &TxnResponse, n: usize) -> Option<&RangeResponse> {
    match resp.responses.get(n)?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}

/// The requests the recipes make for one caller, exactly as the KV and Lease services would
/// serve that caller's own requests.
///
/// etcd's recipe client carries the caller's gRPC context, so every KV op it sends is
/// permission-checked as the caller (token, or client certificate CN). The credentials are
/// resolved again for each op, as etcd's `AuthInfoFromCtx` is: a wait that outlives an auth
/// change sees the new permissions (or an invalidated token) on its next op.
#[derive(Clone)]
pub struct Recipes {
    server: Arc<EtcdServer>,
    creds: Credentials,
}

impl Recipes {
    pub fn new(server: Arc<EtcdServer>, creds: Credentials) -> Self {
        Self { server, creds }
    }

    fn server(&self) -> &EtcdServer {
        &self.server
    }

    /// The recipes as etcd's cleanups run them: through `client.Ctx()`, the context of the
    /// server's own in-process client, which carries no token or certificate. Under auth
    /// the cleanup is therefore refused ("user name is empty") and the key stays until its
    /// lease ends, as with etcd.
    fn tokenless(&self) -> Recipes {
        Recipes::new(self.server.clone(), Credentials::default())
    }

    async fn who(&self) -> Result<Option<AuthInfo>> {
        Ok(self.server.auth_info(&self.creds).await?)
    }

    async fn txn(&self, r: TxnRequest) -> Result<TxnResponse> {
        let who = self.who().await?;
        let s = self.server();
        validate::txn(&r, s.limits.max_txn_ops)?;
        let mut resp = expect_response!(s.propose_as(who.as_ref(), Rq::Txn(r)).await?, Txn);
        s.fill(&mut resp.header);
        Ok(resp)
    }

    /// A linearizable Range.
    async fn get(&self, r: RangeRequest) -> Result<RangeResponse> {
        let who = self.who().await?;
        let s = self.server();
        validate::range(&r)?;
        let mut resp = s.range(who.as_ref(), &r).await?;
        s.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse> {
        let s = self.server();
        let r = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        validate::delete(&r)?;
        let who = self.who().await?;
        let mut resp = expect_response!(
            s.propose_as(who.as_ref(), Rq::DeleteRange(r)).await?,
            DeleteRange
        );
        s.fill(&mut resp.header);
        Ok(resp)
    }

    /// `concurrency.NewSession(WithLease(lease))` followed by `Orphan()`: the given lease, or
    /// a new one of [`DEFAULT_SESSION_TTL`] when `lease` is 0 (no lease).
    pub async fn session(&self, lease: i64) -> Result<i64> {
        if lease != 0 {
            return Ok(lease);
        }
        let req = LeaseGrantRequest {
            ttl: DEFAULT_SESSION_TTL,
            id: super::lease::random_lease_id(),
        };
        let who = self.who().await?;
        let resp = expect_response!(
            self.server()
                .propose_as(who.as_ref(), Rq::LeaseGrant(req))
                .await?,
            LeaseGrant
        );
        Ok(resp.id)
    }

    /// Registers a watcher on the local store from `start_rev` (inclusive). Like a client's
    /// watch it needs read permission on the range; etcd cancels a refused watch, which the
    /// recipes see as a closed watch channel ([`ConcurrencyError::LostWatcher`]).
    async fn watch(&self, key: &[u8], range_end: &[u8], start_rev: i64) -> Result<RecipeWatch> {
        let who = self.who().await?;
        let caller = Caller::Client(who.unwrap_or_default());
        if self
            .server
            .sm
            .read()
            .auth
            .check(&caller, key, range_end, false)
            .is_err()
        {
            return Err(ConcurrencyError::LostWatcher);
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let spec = WatchSpec {
            watch_id: 0,
            range: KeyRange::new(key, range_end),
            start_rev,
            no_put: false,
            no_delete: false,
        };
        let s = &self.server;
        let (key, needs_sync) = {
            let st = s.sm.read();
            s.sm.hub().watch(st.mvcc.current_rev(), spec, tx)
        };
        if needs_sync {
            s.kick_watch_sync();
        }
        Ok(RecipeWatch {
            server: self.server.clone(),
            key,
            rx,
        })
    }

    /// `waitDelete`: returns once `key` is deleted at or after `rev`.
    async fn wait_delete(&self, key: &[u8], rev: i64) -> Result<()> {
        let mut w = self.watch(key, &[], rev).await?;
        loop {
            let batch = w.next().await?;
            if batch
                .events
                .iter()
                .any(|e| e.r#type == EventType::Delete as i32)
            {
                return Ok(());
            }
        }
    }

    /// `waitDeletes`: waits until no key under `prefix` has a create revision at or below
    /// `max_create_rev`, watching the newest such key each round. Returns the header of the
    /// final (empty) read.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_rev: i64,
    ) -> Result<Option<ResponseHeader>> {
        loop {
            let mut r = top_by_create(prefix, SortOrder::Descend);
            r.max_create_revision = max_create_rev;
            let resp = self.get(r).await?;
            let Some(last) = resp.kvs.first() else {
                return Ok(resp.header);
            };
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            self.wait_delete(&last.key, rev).await?;
        }
    }

    // ----------------------------------------------------------------------------------
    // Election

    /// `Election.Campaign`: joins the election under `lease`'s key and waits until every
    /// older contender is gone. Returns the Txn's header and the leader key's revision. If
    /// the caller goes away while waiting, the key is deleted (etcd resigns on a cancelled
    /// context), without a token (see [`Self::tokenless`]).
    pub async fn campaign(
        &self,
        name: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(Option<ResponseHeader>, Vec<u8>, i64)> {
        let prefix = name_prefix(name);
        let key = contender_key(&prefix, lease);
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(&key, 0)],
                success: vec![put_op(&key, value, lease)],
                failure: vec![get_op(key_get(&key))],
            })
            .await?;
        let mut rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if !resp.succeeded {
            let kv = range_response(&resp, 0)
                .and_then(|r| r.kvs.first())
                .ok_or(ConcurrencyError::NoLeader)?;
            rev = kv.create_revision;
            if kv.value != value {
                if let Err(e) = self.proclaim(&key, rev, lease, value).await {
                    let _ = self.resign(&key, rev).await;
                    return Err(e);
                }
            }
        }
        let cleanup = OnCancel::new(
            self.tokenless(),
            Cleanup::Resign {
                key: key.clone(),
                rev,
            },
        );
        let waited = self.wait_deletes(&prefix, rev - 1).await;
        // Any other failure leaves the key in place, as etcd's Campaign does.
        cleanup.disarm();
        waited?;
        Ok((resp.header, key, rev))
    }

    /// `Election.Proclaim` for a resumed election: rewrites the leader key's value if it is
    /// still the key created at `rev`.
    pub async fn proclaim(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<Option<ResponseHeader>> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(key, rev)],
                success: vec![put_op(key, value, lease)],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ConcurrencyError::NotLeader);
        }
        Ok(resp.header)
    }

    /// `Election.Resign` for a resumed election: deletes the key if it is still the one
    /// created at `rev` (and succeeds either way).
    pub async fn resign(&self, key: &[u8], rev: i64) -> Result<Option<ResponseHeader>> {
        let del = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )),
        };
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(key, rev)],
                success: vec![del],
                failure: vec![],
            })
            .await?;
        Ok(resp.header)
    }

    /// `Election.Leader`: the oldest contender.
    pub async fn leader(&self, name: &[u8]) -> Result<(Option<ResponseHeader>, KeyValue)> {
        let resp = self.get(first_create(&name_prefix(name))).await?;
        let kv = resp
            .kvs
            .into_iter()
            .next()
            .ok_or(ConcurrencyError::NoLeader)?;
        Ok((resp.header, kv))
    }

    /// `Election.Observe`: sends the leader, then every change of it, into `out` until the
    /// receiver goes away or a read fails (which ends the stream without an error, as etcd's
    /// closed channel does).
    pub async fn observe(
        &self,
        name: &[u8],
        out: mpsc::Sender<(Option<ResponseHeader>, KeyValue)>,
    ) {
        tokio::select! {
            _ = self.observe_loop(name, &out) => {}
            _ = out.closed() => {}
        }
    }

    async fn observe_loop(
        &self,
        name: &[u8],
        out: &mpsc::Sender<(Option<ResponseHeader>, KeyValue)>,
    ) -> Result<()> {
        let prefix = name_prefix(name);
        loop {
            let resp = self.get(first_create(&prefix)).await?;
            let resp_rev = resp.header.as_ref().map_or(0, |h| h.revision);
            let (header, kv) = match resp.kvs.into_iter().next() {
                Some(kv) => (resp.header, kv),
                None => {
                    // No leader yet: the first put under the prefix makes one.
                    let mut w = self.watch(&prefix, &prefix_end(&prefix), resp_rev).await?;
                    loop {
                        let batch = w.next().await?;
                        let put = batch
                            .events
                            .into_iter()
                            .find(|e| e.r#type == EventType::Put as i32)
                            .and_then(|e| e.kv);
                        if let Some(kv) = put {
                            // etcd reports the put's own revision, not the batch's.
                            break (self.server().header(kv.mod_revision), kv);
                        }
                    }
                }
            };
            let leader_rev = header.as_ref().map_or(0, |h| h.revision);
            let leader_key = kv.key.clone();
            if out.send((header, kv)).await.is_err() {
                return Ok(());
            }
            let mut w = self.watch(&leader_key, &[], leader_rev + 1).await?;
            'leader: loop {
                let batch = w.next().await?;
                let header = self.server().header(batch.revision);
                for ev in batch.events {
                    if ev.r#type == EventType::Delete as i32 {
                        break 'leader;
                    }
                    let Some(kv) = ev.kv else { continue };
                    if out.send((header, kv)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Mutex

    /// `Mutex.Lock`: queues `lease`'s key under `<name>/` and waits until it is the oldest.
    /// Returns the header (of the Txn when uncontended, else of the last wait read) and the
    /// key. If the caller goes away or the wait fails, the key is deleted, without a token
    /// (see [`Self::tokenless`]).
    pub async fn lock(&self, name: &[u8], lease: i64) -> Result<(Option<ResponseHeader>, Vec<u8>)> {
        let prefix = name_prefix(name);
        let key = contender_key(&prefix, lease);
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(&key, 0)],
                // The owner read completes the uncontended path in one request.
                success: vec![put_op(&key, b"", lease), get_op(first_create(&prefix))],
                failure: vec![get_op(key_get(&key)), get_op(first_create(&prefix))],
            })
            .await?;
        let mut my_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if !resp.succeeded {
            my_rev = range_response(&resp, 0)
                .and_then(|r| r.kvs.first())
                .map_or(my_rev, |kv| kv.create_revision);
        }
        let owner = range_response(&resp, 1).and_then(|r| r.kvs.first());
        if owner.is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok((resp.header, key));
        }
        let cleanup = OnCancel::new(self.tokenless(), Cleanup::Unlock { key: key.clone() });
        let waited = self.wait_deletes(&prefix, my_rev - 1).await;
        cleanup.disarm();
        match waited {
            Ok(header) => Ok((header, key)),
            Err(e) => {
                let _ = self.tokenless().delete(&key).await;
                Err(e)
            }
        }
    }
}

/// A watcher the recipes wait on; cancelled when dropped.
struct RecipeWatch {
    server: Arc<EtcdServer>,
    key: WatcherKey,
    rx: mpsc::Receiver<WatchEvents>,
}

impl RecipeWatch {
    async fn next(&mut self) -> Result<WatchEvents> {
        match self.rx.recv().await {
            Some(b) if b.compact_revision != 0 => Err(ServerError::Compacted.into()),
            Some(b) => Ok(b),
            None => Err(ConcurrencyError::LostWatcher),
        }
    }
}

impl Drop for RecipeWatch {
    fn drop(&mut self) {
        self.server.sm.hub().cancel(self.key);
    }
}

/// What to undo when a waiting recipe is abandoned.
enum Cleanup {
    Resign { key: Vec<u8>, rev: i64 },
    Unlock { key: Vec<u8> },
}

/// Runs a [`Cleanup`] in the background if dropped while armed: a gRPC handler is dropped
/// when its client cancels, which is where etcd's recipes see a cancelled context.
struct OnCancel {
    recipes: Recipes,
    cleanup: Option<Cleanup>,
}

impl OnCancel {
    fn new(recipes: Recipes, cleanup: Cleanup) -> Self {
        Self {
            recipes,
            cleanup: Some(cleanup),
        }
    }

    fn disarm(mut self) {
        self.cleanup = None;
    }
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let recipes = self.recipes.clone();
        tokio::spawn(async move {
            let res = match &cleanup {
                Cleanup::Resign { key, rev } => recipes.resign(key, *rev).await.map(|_| ()),
                Cleanup::Unlock { key } => recipes.delete(key).await.map(|_| ()),
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "cleaning up an abandoned election/lock wait failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_gos_hex_of_the_lease() {
        // (name, lease, key)
        let cases: &[(&[u8], i64, &[u8])] = &[
            (b"el", 0x694d5f3c1e2b7a10, b"el/694d5f3c1e2b7a10"),
            (b"el", 1, b"el/1"),
            (b"", 255, b"/ff"),
            (b"a/b", -2, b"a/b/-2"),
        ];
        for &(name, lease, key) in cases {
            assert_eq!(contender_key(&name_prefix(name), lease), key);
        }
    }

    #[test]
    fn prefix_ends_match_clientv3() {
        let cases: &[(&[u8], &[u8])] = &[(b"el/", b"el0"), (b"a\xff", b"b"), (b"\xff", b"\0")];
        for &(p, end) in cases {
            assert_eq!(prefix_end(p), end);
        }
    }

    #[test]
    fn errors_are_unknown_with_etcds_text() {
        let cases = [
            (ConcurrencyError::NotLeader, "election: not leader"),
            (ConcurrencyError::NoLeader, "election: no leader"),
            (
                ConcurrencyError::Server(ServerError::LeaseNotFound),
                "etcdserver: requested lease not found",
            ),
        ];
        for (e, msg) in cases {
            let s = tonic::Status::from(e);
            assert_eq!((s.code(), s.message()), (tonic::Code::Unknown, msg));
        }
    }
}
