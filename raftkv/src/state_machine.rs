//! The replicated state machine: the one place where the store changes. Every mutation is an
//! `InternalRequest` log entry applied by [`StateMachine::apply_batch`], in log order, and the
//! applied index is written in the same RocksDB batch as the changes it applied. Reads take the
//! shared lock through [`StateMachine::read`]. Request semantics follow etcd's
//! `etcdserver/apply.go`.

use std::collections::BTreeSet;
use std::mem;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use proto::etcdserverpb::{
    alarm_request::AlarmAction, compare, range_request, request_op, response_op, AlarmMember,
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use proto::mvccpb::{Event, KeyValue};
use proto::raftkvpb::{
    internal_request, internal_response, Empty, InternalRequest, InternalResponse,
};

use crate::auth::{tokens, AuthInfo, AuthStore, Caller, TokenStore};
use crate::clock::Clock;
use crate::error::ServerError;
use crate::lease::Lessor;
use crate::mvcc::backend::META_CONSISTENT_INDEX;
use crate::mvcc::watch::WatchHub;
use crate::mvcc::{
    Backend, BackendError, Batch, KeyRange, MvccError, MvccState, RangeOptions, RangeResult,
    WriteTxn,
};

/// Everything the lock protects.
pub struct State {
    pub mvcc: MvccState,
    pub lessor: Lessor,
    /// Active alarms as (member, alarm type).
    pub alarms: BTreeSet<(u64, i32)>,
    pub auth: AuthStore,
}

pub type ApplyResult = Result<InternalResponse, ServerError>;

/// A store dump and the meta values asked for alongside it: see [`StateMachine::dump`].
pub type Dump = (Vec<u8>, Vec<Option<Vec<u8>>>);

pub struct StateMachine {
    backend: Backend,
    state: RwLock<State>,
    hub: WatchHub,
    /// Kept to rebuild the lessor when a snapshot replaces the store.
    min_lease_ttl: i64,
    clock: Arc<dyn Clock>,
    /// Outlives snapshot installs: tokens are not part of the replicated state.
    tokens: Arc<TokenStore>,
}

/// A read-only view the request logic runs against: the committed store, or a write txn in
/// progress (which sees its own writes).
trait ReadView {
    /// Revision `checkRequestRange` compares against (etcd's `ReadView.Rev`).
    fn rev(&self) -> i64;
    fn first_rev(&self) -> i64;
    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError>;
}

struct StoreView<'a> {
    mvcc: &'a MvccState,
    backend: &'a Backend,
}

impl ReadView for StoreView<'_> {
    fn rev(&self) -> i64 {
        self.mvcc.current_rev()
    }
    fn first_rev(&self) -> i64 {
        self.mvcc.compact_rev()
    }
    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.mvcc.range(self.backend, range, opts)
    }
}

struct TxnView<'t, 'a> {
    txn: &'t WriteTxn<'a>,
    compact_rev: i64,
}

impl ReadView for TxnView<'_, '_> {
    fn rev(&self) -> i64 {
        self.txn.begin_rev()
    }
    fn first_rev(&self) -> i64 {
        self.compact_rev
    }
    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.txn.range(range, opts)
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl StateMachine {
    /// Opens the store and restores the index, leases and alarms from it.
    pub fn open(
        backend: Backend,
        min_lease_ttl: i64,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        let tokens = Arc::new(TokenStore::new(tokens::DEFAULT_TTL, clock.clone()));
        let state = Self::load(&backend, min_lease_ttl, &clock, &tokens)?;
        Ok(Self {
            backend,
            state: RwLock::new(state),
            hub: WatchHub::default(),
            min_lease_ttl,
            clock,
            tokens,
        })
    }

    /// Rebuilds everything held in memory from what the backend stores.
    fn load(
        backend: &Backend,
        min_lease_ttl: i64,
        clock: &Arc<dyn Clock>,
        tokens: &Arc<TokenStore>,
    ) -> Result<State, ServerError> {
        let restored = MvccState::restore(backend)?;
        let mut lessor = Lessor::new(min_lease_ttl, clock.clone());
        lessor.restore(backend.leases()?, restored.key_leases);
        Ok(State {
            mvcc: restored.state,
            lessor,
            alarms: backend.alarms()?.into_iter().collect(),
            auth: AuthStore::load(backend.auth()?, tokens.clone()),
        })
    }

    /// The whole store as one consistent dump (a Raft snapshot), with the values of the
    /// given meta rows as of the same moment (the consensus state the dump covers).
    pub fn dump(&self, meta_keys: &[&[u8]]) -> Result<Dump, BackendError> {
        // The read lock keeps an apply from being half visible in the RocksDB snapshot.
        let _st = self.read();
        // Applies are written without fsync because the Raft log holds them; a snapshot
        // lets openraft purge that log, so what it covers must be durable here first.
        self.backend.sync()?;
        let export = self.backend.export();
        let meta = meta_keys
            .iter()
            .map(|k| export.meta(k))
            .collect::<Result<_, _>>()?;
        Ok((export.dump()?, meta))
    }

    /// Replaces the whole store with a dump (a Raft snapshot being installed) and reloads
    /// memory from it. Watchers catch up from the new store, as if they had fallen behind.
    pub fn install(&self, dump: &[u8]) -> Result<(), ServerError> {
        let mut st = self.write();
        self.backend.replace_all(dump)?;
        *st = Self::load(&self.backend, self.min_lease_ttl, &self.clock, &self.tokens)?;
        self.hub.resync_all();
        Ok(())
    }

    /// The simple-token table (`--auth-token-ttl` sets its TTL).
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .expect("state lock poisoned: an apply panicked")
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .expect("state lock poisoned: an apply panicked")
    }

    /// Serves a Range outside the log (etcd's read path), as `who` (`None`: no token).
    pub fn range_as(
        &self,
        who: Option<&AuthInfo>,
        req: &RangeRequest,
    ) -> Result<RangeResponse, ServerError> {
        let caller = Caller::Client(who.cloned().unwrap_or_default());
        // One lock for the check and the read: no auth change can fall between them.
        let st = self.read();
        st.auth.check(&caller, &req.key, &req.range_end, false)?;
        let view = StoreView {
            mvcc: &st.mvcc,
            backend: &self.backend,
        };
        let resp = range(&view, req);
        st.auth.check_read_revision(who)?;
        Ok(resp?)
    }

    /// Serves a Range outside the log for the server itself: no permission check.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ServerError> {
        let st = self.read();
        let view = StoreView {
            mvcc: &st.mvcc,
            backend: &self.backend,
        };
        Ok(range(&view, req)?)
    }

    /// Serves a read-only Txn outside the log, as `who` (`None`: no token).
    pub fn read_txn(
        &self,
        who: Option<&AuthInfo>,
        rt: &TxnRequest,
    ) -> Result<TxnResponse, ServerError> {
        let st = self.read();
        check_txn_auth(
            &st.auth,
            &Caller::Client(who.cloned().unwrap_or_default()),
            rt,
        )?;
        let view = StoreView {
            mvcc: &st.mvcc,
            backend: &self.backend,
        };
        let path = compare_to_path(&view, rt);
        check_requests(rt, &path, &mut 0, &mut |op| check_range(&view, op))?;
        let mut exec = ReadOnly(&view);
        let resp = apply_txn(&mut exec, rt, &path, &mut 0);
        st.auth.check_read_revision(who)?;
        let mut resp = resp?;
        resp.header = header(view.rev());
        Ok(resp)
    }

    /// Applies log entries in order, as one RocksDB batch. An entry is `(log index, request)`;
    /// entries that carry no request (consensus bookkeeping) only advance the applied index
    /// and answer `None`. `consensus` is opaque state of the consensus layer (for openraft:
    /// the last applied log id and membership) written in the same batch, so the store and
    /// what consensus believes was applied can never disagree after a crash.
    ///
    /// The batch is not fsynced: the log it came from is, and a restart replays the entries
    /// after the last applied index. The outer error is a storage failure: memory may then be
    /// ahead of the disk, so the caller must stop serving.
    pub fn apply_batch(
        &self,
        entries: Vec<(u64, Option<InternalRequest>)>,
        consensus: &[(&[u8], Vec<u8>)],
    ) -> Result<Vec<Option<ApplyResult>>, BackendError> {
        let mut st = self.write();
        let mut batch = Batch::default();
        let mut results = Vec::with_capacity(entries.len());
        let mut notifications: Vec<(i64, Vec<Event>)> = Vec::new();
        for (index, req) in entries {
            let Some(req) = req else {
                batch.put_meta_u64(META_CONSISTENT_INDEX, index);
                results.push(None);
                continue;
            };
            let is_compaction =
                matches!(req.request, Some(internal_request::Request::Compaction(_)));
            if is_compaction && !batch.is_empty() {
                // Compaction scans stored rows: earlier entries of the group must be there.
                self.backend.write(mem::take(&mut batch), false)?;
            }
            let mut events = Vec::new();
            let res = apply_one(&mut st, &self.backend, &mut batch, index, req, &mut events);
            if let Err(ServerError::Storage(e)) = res {
                return Err(e);
            }
            if let Some(rev) = events
                .first()
                .and_then(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision)
            {
                notifications.push((rev, events));
            }
            batch.put_meta_u64(META_CONSISTENT_INDEX, index);
            results.push(Some(res));
        }
        for (key, value) in consensus {
            batch.put_meta_raw(key, value.clone());
        }
        self.backend.write(batch, false)?;
        for (rev, events) in &notifications {
            self.hub.notify(*rev, events);
        }
        Ok(results)
    }
}

/// Applies one entry. Request errors leave no trace: every check runs before any write.
fn apply_one(
    st: &mut State,
    backend: &Backend,
    batch: &mut Batch,
    index: u64,
    req: InternalRequest,
    events: &mut Vec<Event>,
) -> ApplyResult {
    use internal_request::Request as Rq;
    use internal_response::Response as Rs;
    let no_space = st
        .alarms
        .iter()
        .any(|&(_, a)| a == AlarmType::Nospace as i32);
    let caller = Caller::from_header(req.header.as_ref());
    let Some(request) = req.request else {
        return Ok(InternalResponse {
            response: Some(Rs::Empty(Empty {})),
            events: Vec::new(),
        });
    };
    let State {
        mvcc,
        lessor,
        alarms,
        auth,
    } = st;
    let response = match request {
        Rq::Put(p) => {
            auth.check(&caller, &p.key, &[], true)?;
            check_lease_puts(auth, lessor, &caller, p.lease)?;
            if p.prev_kv {
                auth.check(&caller, &p.key, &[], false)?;
            }
            if no_space {
                return Err(ServerError::NoSpace);
            }
            if p.lease != 0 && !lessor.exists(p.lease) {
                return Err(ServerError::LeaseNotFound);
            }
            let mut txn = WriteTxn::begin(mvcc, backend, batch);
            let resp = put(&mut txn, lessor, &p);
            *events = txn.end();
            Rs::Put(resp?)
        }
        Rq::DeleteRange(d) => {
            auth.check(&caller, &d.key, &d.range_end, true)?;
            if d.prev_kv {
                auth.check(&caller, &d.key, &d.range_end, false)?;
            }
            let mut txn = WriteTxn::begin(mvcc, backend, batch);
            let resp = delete_range(&mut txn, lessor, &d);
            *events = txn.end();
            Rs::DeleteRange(resp?)
        }
        Rq::Txn(t) => {
            check_txn_auth(auth, &caller, &t)?;
            if no_space && !is_txn_readonly(&t) {
                return Err(ServerError::NoSpace);
            }
            let compact_rev = mvcc.compact_rev();
            let mut txn = WriteTxn::begin(mvcc, backend, batch);
            let resp = write_txn(&mut txn, compact_rev, lessor, &t);
            *events = txn.end();
            Rs::Txn(resp?)
        }
        Rq::Compaction(c) => Rs::Compaction(compact(mvcc, backend, batch, &c)?),
        Rq::LeaseGrant(g) => {
            if no_space {
                return Err(ServerError::NoSpace);
            }
            let record = lessor.grant(g.id, g.ttl)?;
            batch.put_lease(&record);
            Rs::LeaseGrant(LeaseGrantResponse {
                header: header(mvcc.current_rev()),
                id: record.id,
                ttl: record.ttl,
                error: String::new(),
            })
        }
        Rq::LeaseRevoke(LeaseRevokeRequest { id }) => {
            check_lease_puts(auth, lessor, &caller, id)?;
            let keys = lessor.revoke(id)?;
            let mut txn = WriteTxn::begin(mvcc, backend, batch);
            for k in &keys {
                txn.delete_range(&KeyRange::single(k));
            }
            *events = txn.end();
            batch.delete_lease(id);
            Rs::LeaseRevoke(LeaseRevokeResponse {
                header: header(mvcc.current_rev()),
            })
        }
        Rq::LeaseCheckpoint(cp) => {
            for c in cp.checkpoints {
                if let Some(record) = lessor.checkpoint(c.id, c.remaining_ttl) {
                    batch.put_lease(&record);
                }
            }
            Rs::Empty(Empty {})
        }
        Rq::Alarm(a) => Rs::Alarm(alarm(alarms, batch, &a, mvcc.current_rev())),
        Rq::Publish(attrs) => {
            batch.put_member_attrs(&attrs);
            Rs::Empty(Empty {})
        }
        Rq::Auth(a) => {
            let Some(a) = a.request else {
                return Err(ServerError::Internal("empty auth request".into()));
            };
            Rs::Auth(auth.apply(&caller, a, index, batch)?)
        }
        // The Raft layer unpacks batches before they get here (`raft::state_machine`).
        Rq::Batch(_) => return Err(ServerError::Internal("nested request batch".into())),
    };
    Ok(InternalResponse {
        response: Some(response),
        events: Vec::new(),
    })
}

/// etcd's `checkLeasePuts`: whoever attaches a key to a lease, or revokes it, must be
/// allowed to write every key already attached to it.
fn check_lease_puts(
    auth: &AuthStore,
    lessor: &Lessor,
    caller: &Caller,
    lease: i64,
) -> Result<(), ServerError> {
    if lease == 0 || !auth.is_enabled() {
        return Ok(());
    }
    if let Some(info) = lessor.info(lease, true) {
        for key in &info.keys {
            auth.check(caller, key, &[], true)?;
        }
    }
    Ok(())
}

/// etcd's `checkTxnAuth`: read permission on every compare, and on every op of both
/// branches the permission it needs, whichever branch runs. Unlike etcd 3.4, nested txns
/// are checked too (3.4 lets their ops through unchecked).
fn check_txn_auth(auth: &AuthStore, caller: &Caller, rt: &TxnRequest) -> Result<(), ServerError> {
    if !auth.is_enabled() {
        return Ok(());
    }
    for c in &rt.compare {
        auth.check(caller, &c.key, &c.range_end, false)?;
    }
    for op in rt.success.iter().chain(&rt.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                auth.check(caller, &r.key, &r.range_end, false)?
            }
            Some(request_op::Request::RequestPut(p)) => auth.check(caller, &p.key, &[], true)?,
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    auth.check(caller, &d.key, &d.range_end, false)?;
                }
                auth.check(caller, &d.key, &d.range_end, true)?
            }
            Some(request_op::Request::RequestTxn(t)) => check_txn_auth(auth, caller, t)?,
            None => {}
        }
    }
    Ok(())
}

fn alarm(
    alarms: &mut BTreeSet<(u64, i32)>,
    batch: &mut Batch,
    a: &AlarmRequest,
    rev: i64,
) -> AlarmResponse {
    let member = |&(m, a): &(u64, i32)| AlarmMember {
        member_id: m,
        alarm: a,
    };
    let alarm_type = a.alarm;
    let matching = |set: &BTreeSet<(u64, i32)>| -> Vec<AlarmMember> {
        set.iter()
            .filter(|&&(_, t)| alarm_type == AlarmType::None as i32 || t == alarm_type)
            .map(member)
            .collect()
    };
    let alarms_out = match AlarmAction::try_from(a.action) {
        Ok(AlarmAction::Activate) if alarm_type != AlarmType::None as i32 => {
            if alarms.insert((a.member_id, alarm_type)) {
                batch.put_alarm(a.member_id, alarm_type);
                vec![member(&(a.member_id, alarm_type))]
            } else {
                Vec::new()
            }
        }
        Ok(AlarmAction::Deactivate) => {
            if alarms.remove(&(a.member_id, alarm_type)) {
                batch.delete_alarm(a.member_id, alarm_type);
                vec![member(&(a.member_id, alarm_type))]
            } else {
                Vec::new()
            }
        }
        Ok(AlarmAction::Get) => matching(alarms),
        _ => Vec::new(),
    };
    AlarmResponse {
        header: header(rev),
        alarms: alarms_out,
    }
}

fn compact(
    mvcc: &mut MvccState,
    backend: &Backend,
    batch: &mut Batch,
    c: &CompactionRequest,
) -> Result<CompactionResponse, ServerError> {
    if c.revision <= mvcc.compact_rev() {
        return Err(ServerError::Compacted);
    }
    if c.revision > mvcc.current_rev() {
        return Err(ServerError::FutureRev);
    }
    mvcc.compact(backend, batch, c.revision)?;
    Ok(CompactionResponse {
        header: header(mvcc.current_rev()),
    })
}

/// etcd's `applierV3backend.Range`.
fn range(view: &dyn ReadView, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
    use range_request::{SortOrder, SortTarget};
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting and filtering need every row; otherwise fetch one extra to learn `more`.
    let limit = if sort_order != SortOrder::None || filtered {
        0
    } else if r.limit > 0 {
        r.limit + 1
    } else {
        r.limit
    };
    let rr = view.range(
        &KeyRange::new(&r.key, &r.range_end),
        RangeOptions {
            limit,
            rev: r.revision,
            count_only: r.count_only,
        },
    )?;
    let mut kvs = rr.kvs;
    kvs.retain(|kv| {
        !(r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision
            || r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision
            || r.max_create_revision != 0 && kv.create_revision > r.max_create_revision
            || r.min_create_revision != 0 && kv.create_revision < r.min_create_revision)
    });
    let order = if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        // Rows come sorted by key; any other target sorts ascending by default.
        SortOrder::Ascend
    } else {
        sort_order
    };
    if order != SortOrder::None {
        let key = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Vec::new()),
                SortTarget::Create => (kv.create_revision, Vec::new()),
                SortTarget::Mod => (kv.mod_revision, Vec::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match order {
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key(kv))),
            _ => kvs.sort_by_key(key),
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count,
    })
}

/// etcd's `applierV3backend.Put` on a txn; the lease was checked by the caller.
fn put(
    txn: &mut WriteTxn,
    lessor: &mut Lessor,
    p: &PutRequest,
) -> Result<PutResponse, ServerError> {
    let needs_prev = p.ignore_value || p.ignore_lease || p.prev_kv;
    let prev = if needs_prev {
        txn.range(&KeyRange::single(&p.key), RangeOptions::default())?
            .kvs
            .into_iter()
            .next()
    } else {
        None
    };
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(ServerError::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value.clone(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    txn.put(&p.key, &value, lease);
    lessor.set_key_lease(&p.key, lease);
    Ok(PutResponse {
        header: header(txn.begin_rev() + 1),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

fn delete_range(
    txn: &mut WriteTxn,
    lessor: &mut Lessor,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ServerError> {
    let range = KeyRange::new(&d.key, &d.range_end);
    let prev_kvs = if d.prev_kv {
        txn.range(&range, RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let deleted = txn.delete_range(&range);
    for k in &deleted {
        lessor.set_key_lease(k, 0);
    }
    Ok(DeleteRangeResponse {
        header: header(txn.read_rev()),
        deleted: deleted.len() as i64,
        prev_kvs,
    })
}

pub fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
            Some(request_op::Request::RequestTxn(t)) => is_txn_readonly(t),
            _ => true,
        })
}

fn write_txn(
    txn: &mut WriteTxn,
    compact_rev: i64,
    lessor: &mut Lessor,
    rt: &TxnRequest,
) -> Result<TxnResponse, ServerError> {
    let path = {
        let view = TxnView { txn, compact_rev };
        let path = compare_to_path(&view, rt);
        if !is_txn_readonly(rt) {
            check_requests(rt, &path, &mut 0, &mut |op| check_put(&view, lessor, op))?;
        }
        check_requests(rt, &path, &mut 0, &mut |op| check_range(&view, op))?;
        path
    };
    let mut exec = Writer {
        txn,
        lessor,
        compact_rev,
    };
    let mut resp = apply_txn(&mut exec, rt, &path, &mut 0)?;
    resp.header = header(exec.txn.read_rev());
    Ok(resp)
}

/// The compare outcome of the txn and of every nested txn on the taken branches, depth first,
/// all evaluated against the state before the txn.
fn compare_to_path(view: &dyn ReadView, rt: &TxnRequest) -> Vec<bool> {
    let mut path = Vec::new();
    fn walk(view: &dyn ReadView, rt: &TxnRequest, path: &mut Vec<bool>) {
        let ok = rt.compare.iter().all(|c| apply_compare(view, c));
        path.push(ok);
        for op in if ok { &rt.success } else { &rt.failure } {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                walk(view, t, path);
            }
        }
    }
    walk(view, rt, &mut path);
    path
}

fn apply_compare(view: &dyn ReadView, c: &Compare) -> bool {
    let Ok(rr) = view.range(
        &KeyRange::new(&c.key, &c.range_end),
        RangeOptions::default(),
    ) else {
        return false;
    };
    if rr.kvs.is_empty() {
        if c.target == compare::CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    use std::cmp::Ordering;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let ord = match (target, &c.target_union) {
        (CompareTarget::Value, tu) => {
            let v: &[u8] = match tu {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        (t, tu) => {
            let want = match (t, tu) {
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(r)))
                | (CompareTarget::Mod, Some(TargetUnion::ModRevision(r)))
                | (CompareTarget::Version, Some(TargetUnion::Version(r)))
                | (CompareTarget::Lease, Some(TargetUnion::Lease(r))) => *r,
                _ => 0,
            };
            let have = match t {
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Lease => kv.lease,
                _ => kv.version,
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Runs `check` over the leaf ops of the branches `path` selects.
fn check_requests(
    rt: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    check: &mut dyn FnMut(&RequestOp) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let ok = path[*pos];
    *pos += 1;
    for op in if ok { &rt.success } else { &rt.failure } {
        match &op.request {
            Some(request_op::Request::RequestTxn(t)) => check_requests(t, path, pos, check)?,
            _ => check(op)?,
        }
    }
    Ok(())
}

fn check_put(view: &dyn ReadView, lessor: &Lessor, op: &RequestOp) -> Result<(), ServerError> {
    let Some(request_op::Request::RequestPut(p)) = &op.request else {
        return Ok(());
    };
    if p.ignore_value || p.ignore_lease {
        let rr = view.range(&KeyRange::single(&p.key), RangeOptions::default())?;
        if rr.kvs.is_empty() {
            return Err(ServerError::KeyNotFound);
        }
    }
    if p.lease != 0 && !lessor.exists(p.lease) {
        return Err(ServerError::LeaseNotFound);
    }
    Ok(())
}

fn check_range(view: &dyn ReadView, op: &RequestOp) -> Result<(), ServerError> {
    let Some(request_op::Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    match r.revision {
        0 => Ok(()),
        rev if rev > view.rev() => Err(ServerError::FutureRev),
        rev if rev < view.first_rev() => Err(ServerError::Compacted),
        _ => Ok(()),
    }
}

/// What a txn's ops run against.
trait TxnExec {
    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, ServerError>;
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, ServerError>;
    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ServerError>;
}

struct ReadOnly<'v, 'a>(&'v StoreView<'a>);

impl TxnExec for ReadOnly<'_, '_> {
    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
        Ok(range(self.0, r)?)
    }
    fn put(&mut self, _: &PutRequest) -> Result<PutResponse, ServerError> {
        unreachable!("read-only txns hold no puts")
    }
    fn delete_range(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ServerError> {
        unreachable!("read-only txns hold no deletes")
    }
}

struct Writer<'t, 'a, 'l> {
    txn: &'t mut WriteTxn<'a>,
    lessor: &'l mut Lessor,
    compact_rev: i64,
}

impl TxnExec for Writer<'_, '_, '_> {
    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
        Ok(range(
            &TxnView {
                txn: self.txn,
                compact_rev: self.compact_rev,
            },
            r,
        )?)
    }
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, ServerError> {
        put(self.txn, self.lessor, p)
    }
    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ServerError> {
        delete_range(self.txn, self.lessor, d)
    }
}

fn apply_txn(
    exec: &mut dyn TxnExec,
    rt: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, ServerError> {
    use request_op::Request as Op;
    use response_op::Response as R;
    let succeeded = path[*pos];
    *pos += 1;
    let ops = if succeeded { &rt.success } else { &rt.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Op::RequestRange(r)) => Some(R::ResponseRange(exec.range(r)?)),
            Some(Op::RequestPut(p)) => Some(R::ResponsePut(exec.put(p)?)),
            Some(Op::RequestDeleteRange(d)) => Some(R::ResponseDeleteRange(exec.delete_range(d)?)),
            Some(Op::RequestTxn(t)) => {
                let mut inner = apply_txn(exec, t, path, pos)?;
                // Nested txn responses carry an empty header, as etcd's do.
                inner.header = Some(ResponseHeader::default());
                Some(R::ResponseTxn(inner))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// Request validation done before proposing (etcd's `v3rpc/key.go`).
pub mod validate {
    use super::*;
    use std::collections::HashSet;

    pub fn range(r: &RangeRequest) -> Result<(), ServerError> {
        if r.key.is_empty() {
            return Err(ServerError::EmptyKey);
        }
        Ok(())
    }

    pub fn put(r: &PutRequest) -> Result<(), ServerError> {
        if r.key.is_empty() {
            return Err(ServerError::EmptyKey);
        }
        if r.ignore_value && !r.value.is_empty() {
            return Err(ServerError::ValueProvided);
        }
        if r.ignore_lease && r.lease != 0 {
            return Err(ServerError::LeaseProvided);
        }
        Ok(())
    }

    pub fn delete(r: &DeleteRangeRequest) -> Result<(), ServerError> {
        if r.key.is_empty() {
            return Err(ServerError::EmptyKey);
        }
        Ok(())
    }

    pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
        txn_ops(r, max_ops)?;
        intervals(&r.success)?;
        intervals(&r.failure)?;
        Ok(())
    }

    fn txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
        let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
        if opc > max_ops {
            return Err(ServerError::TooManyOps);
        }
        if r.compare.iter().any(|c| c.key.is_empty()) {
            return Err(ServerError::EmptyKey);
        }
        for op in r.success.iter().chain(&r.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(x)) => range(x)?,
                Some(request_op::Request::RequestPut(x)) => put(x)?,
                Some(request_op::Request::RequestDeleteRange(x)) => delete(x)?,
                Some(request_op::Request::RequestTxn(t)) => txn_ops(t, max_ops - opc)?,
                None => return Err(ServerError::KeyNotFound),
            }
        }
        Ok(())
    }

    /// A delete interval: `[key, end)` or the single point `key` when `end` is empty.
    #[derive(Clone)]
    struct Del {
        key: Vec<u8>,
        end: Vec<u8>,
    }

    impl Del {
        /// etcd treats the interval as plain strings, so a from-key delete (`end` = "\0")
        /// intersects no put, and that is kept here.
        fn contains(&self, k: &[u8]) -> bool {
            if self.end.is_empty() {
                k == self.key.as_slice()
            } else {
                k >= self.key.as_slice() && k < self.end.as_slice()
            }
        }
    }

    /// etcd's `checkIntervals`: no key may be put twice, or put and deleted, on one path.
    fn intervals(reqs: &[RequestOp]) -> Result<(), ServerError> {
        check_intervals(reqs).map(|_| ())
    }

    fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Del>), ServerError> {
        let mut dels: Vec<Del> = reqs
            .iter()
            .filter_map(|r| match &r.request {
                Some(request_op::Request::RequestDeleteRange(d)) => Some(Del {
                    key: d.key.clone(),
                    end: d.range_end.clone(),
                }),
                _ => None,
            })
            .collect();
        let hits = |dels: &[Del], k: &[u8]| dels.iter().any(|d| d.contains(k));
        let mut puts: HashSet<Vec<u8>> = HashSet::new();
        for r in reqs {
            let Some(request_op::Request::RequestTxn(t)) = &r.request else {
                continue;
            };
            let (puts_then, dels_then) = check_intervals(&t.success)?;
            let (puts_else, dels_else) = check_intervals(&t.failure)?;
            for k in &puts_then {
                if puts.contains(k) || hits(&dels, k) {
                    return Err(ServerError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            for k in &puts_else {
                if puts.contains(k) && !puts_then.contains(k) || hits(&dels, k) {
                    return Err(ServerError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            dels.extend(dels_then);
            dels.extend(dels_else);
        }
        for r in reqs {
            let Some(request_op::Request::RequestPut(p)) = &r.request else {
                continue;
            };
            if puts.contains(&p.key) || hits(&dels, &p.key) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
        Ok((puts, dels))
    }
}

#[cfg(test)]
mod tests {
    use proto::etcdserverpb::{AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest};
    use proto::raftkvpb::{auth_request, AuthRequest, RequestHeader};

    use super::*;
    use crate::auth::AuthError;
    use crate::clock::SystemClock;

    fn entry(header: RequestHeader, request: internal_request::Request) -> InternalRequest {
        InternalRequest {
            header: Some(header),
            request: Some(request),
        }
    }

    fn auth(q: auth_request::Request) -> InternalRequest {
        let header = RequestHeader {
            internal: true,
            ..Default::default()
        };
        entry(
            header,
            internal_request::Request::Auth(AuthRequest { request: Some(q) }),
        )
    }

    fn put_as(username: &str, auth_revision: u64) -> InternalRequest {
        let header = RequestHeader {
            username: username.into(),
            auth_revision,
            ..Default::default()
        };
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        entry(header, internal_request::Request::Put(put))
    }

    /// The auth revision a request was checked at travels in the log entry, so every member
    /// refuses the same stale requests at apply, whatever it knew when it proposed.
    #[test]
    fn apply_refuses_requests_from_an_older_auth_revision() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(Backend::open(dir.path()).unwrap(), 2, Arc::new(SystemClock))
            .unwrap();
        let add = |name: &str| {
            auth(auth_request::Request::UserAdd(AuthUserAddRequest {
                name: name.into(),
                password: "hash".into(),
                options: None,
            }))
        };
        let setup = vec![
            (1, Some(add("root"))),
            (
                2,
                Some(auth(auth_request::Request::UserGrantRole(
                    AuthUserGrantRoleRequest {
                        user: "root".into(),
                        role: "root".into(),
                    },
                ))),
            ),
            (
                3,
                Some(auth(auth_request::Request::Enable(AuthEnableRequest {}))),
            ),
        ];
        for r in sm.apply_batch(setup, &[]).unwrap() {
            r.unwrap().unwrap();
        }
        let checked_at = sm.read().auth.revision();
        let results = sm
            .apply_batch(
                vec![
                    (4, Some(add("bob"))),
                    (5, Some(put_as("root", checked_at))),
                    (6, Some(put_as("root", checked_at + 1))),
                    (7, Some(put_as("", 0))),
                ],
                &[],
            )
            .unwrap();
        let outcome: Vec<Option<String>> = results
            .into_iter()
            .map(|r| r.unwrap().err().map(|e| e.to_string()))
            .collect();
        assert_eq!(
            outcome,
            [
                None,
                Some(AuthError::OldRevision.to_string()),
                None,
                Some(AuthError::UserEmpty.to_string()),
            ]
        );
    }
}
