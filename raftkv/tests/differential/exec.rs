//! Executes case scripts against one server: a [`Session`] owns the gRPC client, the open
//! watch streams and the lease bindings of one side, resolves the case language (relative
//! keys, revisions, lease handles) against that server, and renders every answer through
//! [`crate::render`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, DeleteOptions, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use futures::FutureExt;
use tempfile::TempDir;

use crate::ctl::{self, CtlEnv};
use crate::model::{
    Case, Cmp, CmpTarget, Contend, ContendKind, Del, End, Gateway, Get, Key, LeaseRef, Op, Put,
    Rev, Txn, TxnOp, Watch, CONTEND_WITHIN,
};
use crate::render::{self, fuzzy, Ctx};

/// Upper bound for any single operation; generous because `WatchRecv` may legitimately wait
/// for a lease to expire. A server that hits it is reported, not waited on forever.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// After this many timed-out operations the server is presumed hung and the remaining
/// operations fail immediately, keeping a broken subject from stretching the run by hours.
const MAX_TIMEOUTS: usize = 4;
/// How long `WatchQuiet` listens for unexpected messages.
const QUIET_FOR: Duration = Duration::from_millis(300);

/// The rendered outcome of one case on one server: one line per operation, plus a final
/// line with the revision the case ended at (relative to its start), which checks that
/// both servers advanced the global revision by the same amount.
pub struct CaseOutput {
    pub lines: Vec<String>,
    pub end: String,
}

/// Where a response sits: top-level, or inside a Txn response.
#[derive(Clone, Copy)]
pub enum Level {
    Top,
    InTxn,
}

/// One server's side of the differential run.
pub struct Session {
    /// The client the case's gRPC steps use: `anonymous`, or one logged in by [`Op::Login`].
    client: Client,
    anonymous: Client,
    /// The token of the case's last gateway Authenticate.
    gateway_token: Option<String>,
    endpoint: String,
    /// Scratch space for files the case writes (snapshots).
    scratch: TempDir,
    /// Lease handle (`case:handle`) -> ID on this server.
    leases: HashMap<String, i64>,
    /// Server-chosen lease ID -> masked name. Only these are masked.
    lease_names: HashMap<i64, String>,
    streams: HashMap<&'static str, WatchStream>,
    /// Campaigns and Locks still waiting for their answer, by contender.
    pending: HashMap<&'static str, tokio::task::JoinHandle<Result<Contended, etcd_client::Error>>>,
    /// Leader keys of contenders whose Campaign answered.
    leaders: HashMap<&'static str, etcd_client::LeaderKey>,
    /// Lock keys of contenders whose Lock answered.
    locks: HashMap<&'static str, Vec<u8>>,
    observers: HashMap<&'static str, etcd_client::ObserveStream>,
    http: reqwest::Client,
    case: String,
    prefix: String,
    base: i64,
    timeouts: usize,
}

impl Session {
    pub fn new(client: Client, endpoint: String) -> Session {
        Session {
            anonymous: client.clone(),
            client,
            gateway_token: None,
            endpoint,
            scratch: tempfile::tempdir().expect("creating a scratch dir for etcdctl output"),
            leases: HashMap::new(),
            lease_names: HashMap::new(),
            streams: HashMap::new(),
            pending: HashMap::new(),
            leaders: HashMap::new(),
            locks: HashMap::new(),
            observers: HashMap::new(),
            http: reqwest::Client::new(),
            case: String::new(),
            prefix: String::new(),
            base: 0,
            timeouts: 0,
        }
    }

    pub async fn run_case(&mut self, case: &Case) -> CaseOutput {
        self.case = case.name.clone();
        self.prefix = format!("/{}/", case.name);
        let base = self.current_revision().await;
        // Without a start revision relative renderings are meaningless; they still render
        // (against 0) so the report shows what the server answered.
        self.base = base.unwrap_or(0);
        let mut lines = Vec::with_capacity(case.ops.len());
        for op in &case.ops {
            lines.push(self.run_op(op).await);
        }
        // Watch streams never outlive their case: closing them here keeps one case's
        // watchers from seeing the next case's writes.
        self.streams.clear();
        // Contenders still waiting are cancelled (the servers drop their keys) before the
        // end revision is read, so the cleanup's delete is not attributed to the next case.
        let cancelled = !self.pending.is_empty();
        for (_, p) in self.pending.drain() {
            p.abort();
        }
        if cancelled {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.leaders.clear();
        self.locks.clear();
        self.observers.clear();
        self.client = self.anonymous.clone();
        self.gateway_token = None;
        let end = match (base, self.current_revision().await) {
            (Some(_), Some(end)) => format!("case ended at {}", self.ctx().rev(end)),
            _ => "revision probe failed".to_string(),
        };
        CaseOutput { lines, end }
    }

    /// Runs one operation with a time limit, turning a client-library panic (e.g. on a
    /// malformed response) into a rendered failure instead of aborting the whole run.
    async fn run_op(&mut self, op: &Op) -> String {
        if self.timeouts >= MAX_TIMEOUTS {
            return "SKIPPED: server stopped answering".to_string();
        }
        let fut = AssertUnwindSafe(self.exec(op)).catch_unwind();
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(rendering)) => rendering,
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("PANIC in client: {msg}")
            }
            Err(_) => {
                self.timeouts += 1;
                format!("TIMEOUT: no answer within {OP_TIMEOUT:?}")
            }
        }
    }

    /// The store revision, read with a Range on a key no case uses.
    async fn current_revision(&mut self) -> Option<i64> {
        if self.timeouts >= MAX_TIMEOUTS {
            return None;
        }
        let probe = self.client.get("/__differential_rev_probe__", None);
        match tokio::time::timeout(OP_TIMEOUT, probe).await {
            Ok(Ok(r)) => r.header().map(|h| h.revision()),
            Ok(Err(_)) => None,
            Err(_) => {
                self.timeouts += 1;
                None
            }
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            base: self.base,
            lease_names: &self.lease_names,
        }
    }

    fn key(&self, k: &Key) -> Vec<u8> {
        match k {
            Key::Rel(k) => format!("{}{k}", self.prefix).into_bytes(),
            Key::Abs(k) => k.clone(),
        }
    }

    fn range_end(&self, key: &[u8], end: &Option<End>) -> Option<Vec<u8>> {
        match end {
            None => None,
            Some(End::Key(k)) => Some(self.key(k)),
            Some(End::Prefix) => Some(prefix_end(key)),
            Some(End::FromKey) => Some(vec![0]),
        }
    }

    fn rev(&self, r: Rev) -> i64 {
        match r {
            Rev::Rel(n) => self.base + n,
            Rev::Abs(n) => n,
        }
    }

    fn lease_handle(&self, handle: &str) -> String {
        format!("{}:{handle}", self.case)
    }

    /// The ID a lease argument stands for on this server. An unbound handle (its grant
    /// failed) resolves to -1, which no server accepts, so the failure stays visible.
    fn lease(&self, l: &LeaseRef) -> i64 {
        match l {
            LeaseRef::Id(id) => *id,
            LeaseRef::Handle(h) => *self.leases.get(&self.lease_handle(h)).unwrap_or(&-1),
        }
    }

    /// Records a lease the server granted; `masked` when the server chose the ID.
    fn bind_lease(&mut self, handle: &str, id: i64, masked: bool) {
        let name = self.lease_handle(handle);
        if masked {
            self.lease_names.insert(id, name.clone());
        }
        self.leases.insert(name, id);
    }

    async fn exec(&mut self, op: &Op) -> String {
        match op {
            Op::Put(p) => self.put(p).await,
            Op::Get(g) => self.get(g).await,
            Op::Del(d) => self.del(d).await,
            Op::Txn(t) => {
                let txn = self.build_txn(t);
                match self.client.txn(txn).await {
                    Ok(r) => self.render_txn(&r, Level::Top),
                    Err(e) => render::error(&e),
                }
            }
            Op::Compact { rev, physical } => {
                let opts = physical.then(|| CompactionOptions::new().with_physical());
                match self.client.compact(self.rev(*rev), opts).await {
                    Ok(r) => format!("compact {}", self.ctx().header(r.header())),
                    Err(e) => render::error(&e),
                }
            }
            Op::LeaseGrant { handle, ttl, id } => {
                let opts = LeaseGrantOptions::new().with_id(*id);
                match self.client.lease_grant(*ttl, Some(opts)).await {
                    Ok(r) => {
                        self.bind_lease(handle, r.id(), *id == 0);
                        let ctx = self.ctx();
                        format!(
                            "grant {} id={} ttl={} error={:?}",
                            ctx.header(r.header()),
                            ctx.lease(r.id()),
                            r.ttl(),
                            r.error()
                        )
                    }
                    Err(e) => render::error(&e),
                }
            }
            Op::LeaseRevoke(l) => match self.client.lease_revoke(self.lease(l)).await {
                Ok(r) => format!("revoke {}", self.ctx().header(r.header())),
                Err(e) => render::error(&e),
            },
            Op::LeaseTtl { lease, keys } => {
                let opts = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
                match self
                    .client
                    .lease_time_to_live(self.lease(lease), opts)
                    .await
                {
                    Ok(r) => {
                        let ctx = self.ctx();
                        // Attached keys come from a Go map in etcd: order is random.
                        let mut keys: Vec<String> =
                            r.keys().iter().map(|k| render::bytes(k)).collect();
                        keys.sort();
                        format!(
                            "ttl {} id={} ttl={} granted={} keys=[{}]",
                            ctx.header(r.header()),
                            ctx.lease(r.id()),
                            fuzzy(r.ttl()),
                            r.granted_ttl(),
                            keys.join(" ")
                        )
                    }
                    Err(e) => render::error(&e),
                }
            }
            Op::LeaseList => match self.client.leases().await {
                Ok(r) => {
                    let ctx = self.ctx();
                    // etcd lists leases from a Go map: order is random.
                    let mut ids: Vec<String> =
                        r.leases().iter().map(|l| ctx.lease(l.id())).collect();
                    ids.sort();
                    format!("leases {} [{}]", ctx.header(r.header()), ids.join(" "))
                }
                Err(e) => render::error(&e),
            },
            Op::LeaseKeepAlive(l) => self.keep_alive(self.lease(l)).await,
            Op::WatchOpen { stream, watch } => {
                let (key, opts) = self.watch_options(watch);
                match self.client.watch(key, Some(opts)).await {
                    Ok(ws) => {
                        self.streams.insert(stream, ws);
                        self.recv_until_created(stream).await
                    }
                    Err(e) => render::error(&e),
                }
            }
            Op::WatchAdd { stream, watch } => {
                let (key, opts) = self.watch_options(watch);
                let Some(ws) = self.streams.get_mut(stream) else {
                    return format!("no open watch stream {stream}");
                };
                match ws.watch(key, Some(opts)).await {
                    Ok(()) => self.recv_until_created(stream).await,
                    Err(e) => render::error(&e),
                }
            }
            Op::WatchCancel { stream, watch_id } => match self.streams.get_mut(stream) {
                Some(ws) => match ws.cancel(*watch_id).await {
                    Ok(()) => "cancel sent".to_string(),
                    Err(e) => render::error(&e),
                },
                None => format!("no open watch stream {stream}"),
            },
            Op::WatchProgress { stream } => match self.streams.get_mut(stream) {
                Some(ws) => match ws.request_progress().await {
                    Ok(()) => "progress request sent".to_string(),
                    Err(e) => render::error(&e),
                },
                None => format!("no open watch stream {stream}"),
            },
            Op::WatchRecv {
                stream,
                items,
                within,
            } => self.recv(stream, *items, *within).await,
            Op::WatchQuiet { stream } => {
                let got = self.recv(stream, 1, QUIET_FOR).await;
                if got.starts_with("TIMEOUT(got 0") {
                    "quiet".to_string()
                } else {
                    format!("UNEXPECTED: {got}")
                }
            }
            Op::Status => self.status().await,
            Op::AbsoluteRevision => {
                match self.client.get("/__differential_rev_probe__", None).await {
                    Ok(r) => format!("revision {}", r.header().map_or(0, |h| h.revision())),
                    Err(e) => render::error(&e),
                }
            }
            Op::Ctl(c) => {
                let env = CtlEnv {
                    endpoint: self.endpoint.clone(),
                    prefix: self.prefix.clone(),
                    base: self.base,
                    dir: self.scratch.path().to_path_buf(),
                    leases: self
                        .leases
                        .iter()
                        .filter_map(|(name, id)| {
                            let handle = name.strip_prefix(&format!("{}:", self.case))?;
                            Some((handle.to_string(), *id))
                        })
                        .collect(),
                };
                let out = ctl::run(&env, c).await;
                if let (Some(handle), Some(id)) = (c.capture_lease, out.granted_lease) {
                    self.bind_lease(handle, id, true);
                }
                // Render after binding, so the ID just granted is masked as its handle.
                ctl::render(&env, &self.lease_names, c, &out)
            }
            Op::Contend(c) => self.contend(c),
            Op::Await { who, within } => self.await_contender(who, *within).await,
            Op::Cancel { who } => match self.pending.remove(who) {
                Some(task) => {
                    task.abort();
                    tokio::time::sleep(crate::model::CANCEL_SETTLE).await;
                    "cancelled".to_string()
                }
                None => format!("{who} is not contending"),
            },
            Op::Proclaim { who, value } => {
                let leader = self.leaders.get(who).cloned().unwrap_or_default();
                let opts = etcd_client::ProclaimOptions::new().with_leader(leader);
                match self.client.proclaim(value.clone(), Some(opts)).await {
                    Ok(r) => format!("proclaim {}", self.ctx().header(r.header())),
                    Err(e) => render::error(&e),
                }
            }
            Op::Resign { who } => {
                let leader = self.leaders.get(who).cloned().unwrap_or_default();
                let opts = etcd_client::ResignOptions::new().with_leader(leader);
                match self.client.resign(Some(opts)).await {
                    Ok(r) => format!("resign {}", self.ctx().header(r.header())),
                    Err(e) => render::error(&e),
                }
            }
            Op::Leader { name } => match self.client.leader(self.key(name)).await {
                Ok(r) => {
                    let ctx = self.ctx();
                    let kv = r.kv().map_or("none".to_string(), |kv| ctx.kv(kv));
                    format!("leader {} {kv}", ctx.header(r.header()))
                }
                Err(e) => render::error(&e),
            },
            Op::ObserveOpen { stream, name } => match self.client.observe(self.key(name)).await {
                Ok(s) => {
                    self.observers.insert(stream, s);
                    "observing".to_string()
                }
                Err(e) => render::error(&e),
            },
            Op::ObserveRecv {
                stream,
                items,
                within,
            } => self.observe_recv(stream, *items, *within).await,
            Op::Unlock { who } => {
                let key = self.locks.get(who).cloned().unwrap_or_default();
                match self.client.unlock(key).await {
                    Ok(r) => format!("unlock {}", self.ctx().header(r.header())),
                    Err(e) => render::error(&e),
                }
            }
            Op::Gateway(g) => self.gateway(g).await,
            Op::Health { service } => self.health(service).await,
            Op::Login { user } => self.login(*user).await,
            Op::FileNonEmpty(path) => {
                let path = path.replace("{dir}", &self.scratch.path().to_string_lossy());
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() > 0 => "file non-empty".to_string(),
                    Ok(_) => "file EMPTY".to_string(),
                    Err(e) => format!("file missing: {}", e.kind()),
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // KV

    fn put_request(&self, p: &Put) -> (Vec<u8>, Vec<u8>, PutOptions) {
        let mut opts = PutOptions::new();
        if let Some(l) = &p.lease {
            opts = opts.with_lease(self.lease(l));
        }
        if p.prev_kv {
            opts = opts.with_prev_key();
        }
        if p.ignore_value {
            opts = opts.with_ignore_value();
        }
        if p.ignore_lease {
            opts = opts.with_ignore_lease();
        }
        (self.key(&p.key), p.value.clone(), opts)
    }

    async fn put(&mut self, p: &Put) -> String {
        let (key, value, opts) = self.put_request(p);
        match self.client.put(key, value, Some(opts)).await {
            Ok(r) => self.render_put(&r, Level::Top),
            Err(e) => render::error(&e),
        }
    }

    fn render_put(&self, r: &etcd_client::PutResponse, level: Level) -> String {
        let ctx = self.ctx();
        let prev = r.prev_key().map_or("none".to_string(), |kv| ctx.kv(kv));
        format!("put {} prev={prev}", ctx.header_at(r.header(), level))
    }

    fn get_request(&self, g: &Get) -> (Vec<u8>, GetOptions) {
        let key = self.key(&g.key);
        let mut opts = GetOptions::new();
        // Explicit ends are sent verbatim (not through with_prefix/with_from_key), so the
        // request carries exactly the range the case describes, including empty keys.
        if let Some(end) = self.range_end(&key, &g.end) {
            opts = opts.with_range(end);
        }
        if g.limit != 0 {
            opts = opts.with_limit(g.limit);
        }
        if let Some(r) = g.rev {
            opts = opts.with_revision(self.rev(r));
        }
        if let Some((target, order)) = g.sort {
            opts = opts.with_sort(target, order);
        }
        if g.serializable {
            opts = opts.with_serializable();
        }
        if g.keys_only {
            opts = opts.with_keys_only();
        }
        if g.count_only {
            opts = opts.with_count_only();
        }
        if let Some(r) = g.min_mod {
            opts = opts.with_min_mod_revision(self.rev(r));
        }
        if let Some(r) = g.max_mod {
            opts = opts.with_max_mod_revision(self.rev(r));
        }
        if let Some(r) = g.min_create {
            opts = opts.with_min_create_revision(self.rev(r));
        }
        if let Some(r) = g.max_create {
            opts = opts.with_max_create_revision(self.rev(r));
        }
        (key, opts)
    }

    async fn get(&mut self, g: &Get) -> String {
        let (key, opts) = self.get_request(g);
        match self.client.get(key, Some(opts)).await {
            Ok(r) => self.render_get(&r, Level::Top),
            Err(e) => render::error(&e),
        }
    }

    fn render_get(&self, r: &etcd_client::GetResponse, level: Level) -> String {
        let ctx = self.ctx();
        format!(
            "range {} count={} more={} kvs={}",
            ctx.header_at(r.header(), level),
            r.count(),
            r.more(),
            ctx.kvs(r.kvs())
        )
    }

    fn del_request(&self, d: &Del) -> (Vec<u8>, DeleteOptions) {
        let key = self.key(&d.key);
        let mut opts = DeleteOptions::new();
        if let Some(end) = self.range_end(&key, &d.end) {
            opts = opts.with_range(end);
        }
        if d.prev_kv {
            opts = opts.with_prev_key();
        }
        (key, opts)
    }

    async fn del(&mut self, d: &Del) -> String {
        let (key, opts) = self.del_request(d);
        match self.client.delete(key, Some(opts)).await {
            Ok(r) => self.render_del(&r, Level::Top),
            Err(e) => render::error(&e),
        }
    }

    fn render_del(&self, r: &etcd_client::DeleteResponse, level: Level) -> String {
        let ctx = self.ctx();
        format!(
            "del {} deleted={} prev={}",
            ctx.header_at(r.header(), level),
            r.deleted(),
            ctx.kvs(r.prev_kvs())
        )
    }

    fn build_txn(&self, t: &Txn) -> etcd_client::Txn {
        let compares: Vec<Compare> = t.compares.iter().map(|c| self.compare(c)).collect();
        let ops = |list: &[TxnOp]| -> Vec<etcd_client::TxnOp> {
            list.iter()
                .map(|op| match op {
                    TxnOp::Put(p) => {
                        let (k, v, o) = self.put_request(p);
                        etcd_client::TxnOp::put(k, v, Some(o))
                    }
                    TxnOp::Get(g) => {
                        let (k, o) = self.get_request(g);
                        etcd_client::TxnOp::get(k, Some(o))
                    }
                    TxnOp::Del(d) => {
                        let (k, o) = self.del_request(d);
                        etcd_client::TxnOp::delete(k, Some(o))
                    }
                    TxnOp::Txn(inner) => etcd_client::TxnOp::txn(self.build_txn(inner)),
                })
                .collect()
        };
        etcd_client::Txn::new()
            .when(compares)
            .and_then(ops(&t.success))
            .or_else(ops(&t.failure))
    }

    fn compare(&self, c: &Cmp) -> Compare {
        let key = self.key(&c.key);
        let end = self.range_end(&key, &c.end);
        let cmp = match &c.target {
            CmpTarget::Value(v) => Compare::value(key, c.op, v.clone()),
            CmpTarget::Version(n) => Compare::version(key, c.op, *n),
            CmpTarget::Create(r) => Compare::create_revision(key, c.op, self.rev(*r)),
            CmpTarget::Mod(r) => Compare::mod_revision(key, c.op, self.rev(*r)),
            CmpTarget::Lease(l) => Compare::lease(key, c.op, self.lease(l)),
        };
        match end {
            Some(end) => cmp.with_range(end),
            None => cmp,
        }
    }

    fn render_txn(&self, r: &etcd_client::TxnResponse, level: Level) -> String {
        let parts: Vec<String> = r
            .op_responses()
            .iter()
            .map(|resp| match resp {
                TxnOpResponse::Put(p) => self.render_put(p, Level::InTxn),
                TxnOpResponse::Get(g) => self.render_get(g, Level::InTxn),
                TxnOpResponse::Delete(d) => self.render_del(d, Level::InTxn),
                TxnOpResponse::Txn(t) => self.render_txn(t, Level::InTxn),
            })
            .collect();
        format!(
            "txn {} succeeded={} [{}]",
            self.ctx().header_at(r.header(), level),
            r.succeeded(),
            parts.join("; ")
        )
    }

    // -----------------------------------------------------------------------------------
    // Leases and maintenance

    /// etcd-client's keep-alive consumes the server's first answer (and turns TTL <= 0 into
    /// a client error), so one more renewal is sent and its answer rendered.
    async fn keep_alive(&mut self, id: i64) -> String {
        let (mut keeper, mut stream) = match self.client.lease_keep_alive(id).await {
            Ok(pair) => pair,
            Err(e) => return render::error(&e),
        };
        if let Err(e) = keeper.keep_alive().await {
            return render::error(&e);
        }
        match stream.message().await {
            Ok(Some(r)) => {
                let ctx = self.ctx();
                format!(
                    "keepalive {} id={} ttl={}",
                    ctx.header(r.header()),
                    ctx.lease(r.id()),
                    r.ttl()
                )
            }
            Ok(None) => "keepalive stream closed".to_string(),
            Err(e) => render::error(&e),
        }
    }

    /// Status reduced to invariants: IDs, raft indexes and sizes are implementation- and
    /// history-specific, so only their relationships are rendered; the version is compared
    /// up to the minor release (`3.4.*`), since any 3.4 patch level is API-identical.
    async fn status(&mut self) -> String {
        match self.client.status().await {
            Ok(s) => {
                let ctx = self.ctx();
                let version = match s.version().strip_prefix("3.4.") {
                    Some(_) => "3.4.*".to_string(),
                    None => format!("{:?}", s.version()),
                };
                let member = s.header().map_or(0, |h| h.member_id());
                format!(
                    "status {} version={version} leader_is_self={} db_size>0={} \
                     raft_index>0={} applied<=index={} errors={:?} learner={}",
                    ctx.header(s.header()),
                    s.leader() == member && member != 0,
                    s.db_size() > 0,
                    s.raft_index() > 0,
                    s.raft_applied_index() <= s.raft_index(),
                    s.errors(),
                    s.is_learner()
                )
            }
            Err(e) => render::error(&e),
        }
    }

    // -----------------------------------------------------------------------------------
    // v3election, v3lock, the JSON gateway, health

    fn contend(&mut self, c: &Contend) -> String {
        if self.pending.contains_key(c.who) {
            return format!("{} is already contending", c.who);
        }
        let mut client = self.client.clone();
        let name = self.key(&c.name);
        let lease = self.lease(&c.lease);
        let kind = c.kind.clone();
        let task = tokio::spawn(async move {
            match kind {
                ContendKind::Campaign { value } => client
                    .campaign(name, value, lease)
                    .await
                    .map(Contended::Campaign),
                ContendKind::Lock => {
                    let opts = etcd_client::LockOptions::new().with_lease(lease);
                    client.lock(name, Some(opts)).await.map(Contended::Lock)
                }
            }
        });
        self.pending.insert(c.who, task);
        "started".to_string()
    }

    async fn await_contender(&mut self, who: &'static str, within: Duration) -> String {
        let Some(task) = self.pending.get_mut(who) else {
            return format!("{who} is not contending");
        };
        let res = match tokio::time::timeout(within, task).await {
            Err(_) => return "waiting".to_string(),
            Ok(res) => res,
        };
        self.pending.remove(who);
        let ctx = self.ctx();
        match res {
            Err(e) => format!("contender task failed: {e}"),
            Ok(Err(e)) => render::error(&e),
            Ok(Ok(Contended::Campaign(r))) => {
                let leader = r.leader().cloned().unwrap_or_default();
                let s = format!(
                    "elected {} leader{{name={} key={} rev={} lease={}}}",
                    ctx.header(r.header()),
                    render::bytes(leader.name()),
                    render::bytes(leader.key()),
                    ctx.rev(leader.rev()),
                    ctx.lease(leader.lease())
                );
                self.leaders.insert(who, leader);
                s
            }
            Ok(Ok(Contended::Lock(r))) => {
                let s = format!(
                    "locked {} key={}",
                    ctx.header(r.header()),
                    render::bytes(r.key())
                );
                self.locks.insert(who, r.key().to_vec());
                s
            }
        }
    }

    async fn observe_recv(
        &mut self,
        stream: &'static str,
        items: usize,
        within: Duration,
    ) -> String {
        let mut parts = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while parts.len() < items {
            let Some(s) = self.observers.get_mut(stream) else {
                return format!("no open observe stream {stream}");
            };
            match tokio::time::timeout_at(deadline, s.message()).await {
                Ok(Ok(Some(r))) => {
                    let ctx = self.ctx();
                    let kv = r.kv().map_or("none".to_string(), |kv| ctx.kv(kv));
                    parts.push(format!("leader {} {kv}", ctx.header(r.header())));
                }
                Ok(Ok(None)) => {
                    parts.push("stream closed".to_string());
                    break;
                }
                Ok(Err(e)) => {
                    parts.push(render::error(&e));
                    break;
                }
                Err(_) => {
                    parts.push(format!("TIMEOUT(got {} of {items})", parts.len()));
                    break;
                }
            }
        }
        parts.join(" | ")
    }

    /// Expands a [`Gateway`] body template (see there).
    fn gateway_body(&self, template: &str) -> String {
        use base64::Engine;
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            // JSON's own braces pass through; placeholders start with a known word.
            let after = &rest[open + 1..];
            let close = after.find('}');
            let Some(close) =
                close.filter(|_| ["k:", "lease:", "rev"].iter().any(|p| after.starts_with(p)))
            else {
                out.push_str(&rest[..=open]);
                rest = after;
                continue;
            };
            let close = close + 1;
            let name = &rest[open + 1..open + close];
            let value = if let Some(k) = name.strip_prefix("k:") {
                Some(
                    base64::engine::general_purpose::STANDARD
                        .encode(self.key(&Key::Rel(k.to_string()))),
                )
            } else if let Some(h) = name.strip_prefix("lease:") {
                let id = self.leases.get(&self.lease_handle(h)).copied();
                Some(id.unwrap_or(-1).to_string())
            } else if let Some(n) = name.strip_prefix("rev") {
                n.parse::<i64>().ok().map(|n| (self.base + n).to_string())
            } else {
                None
            };
            match value {
                Some(v) => {
                    out.push_str(&rest[..open]);
                    out.push_str(&v);
                }
                None => out.push_str(&rest[..=open + close]),
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }

    async fn gateway(&mut self, g: &Gateway) -> String {
        let url = format!("{}{}", self.endpoint, g.path);
        let mut req = self.http.post(url).body(self.gateway_body(g.body));
        if g.authorized {
            // No token yet sends none, which the servers refuse alike.
            if let Some(token) = &self.gateway_token {
                req = req.header(reqwest::header::AUTHORIZATION, token);
            }
        }
        let resp = req.send();
        let mut resp = match tokio::time::timeout(CONTEND_WITHIN, resp).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return format!("HTTP error: {e}"),
            Err(_) => return "TIMEOUT waiting for the HTTP answer".to_string(),
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let mut body = Vec::new();
        let deadline = tokio::time::Instant::now() + CONTEND_WITHIN;
        loop {
            // Streams never end by themselves: read until the expected lines arrived.
            if g.lines > 0 && body.iter().filter(|&&b| b == b'\n').count() >= g.lines {
                break;
            }
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(c))) => body.extend_from_slice(&c),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    body.extend_from_slice(format!("<body error: {e}>").as_bytes());
                    break;
                }
                Err(_) => {
                    body.extend_from_slice(b"<TIMEOUT>");
                    break;
                }
            }
        }
        if g.path.ends_with("/auth/authenticate") && status == 200 {
            self.gateway_token = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("token")?.as_str().map(str::to_string));
        }
        // Stream lines stay on the rendering's one line.
        let body = String::from_utf8_lossy(&body)
            .trim_end()
            .replace('\n', "\\n");
        format!(
            "{status} {content_type} {}",
            render::mask_json(&body, &self.ctx())
        )
    }

    async fn login(&mut self, user: Option<(&str, &str)>) -> String {
        let Some((name, password)) = user else {
            self.client = self.anonymous.clone();
            return "anonymous".to_string();
        };
        let opts = etcd_client::ConnectOptions::new().with_user(name, password);
        match Client::connect([self.endpoint.as_str()], Some(opts)).await {
            Ok(c) => {
                self.client = c;
                format!("logged in as {name}")
            }
            Err(e) => render::error(&e),
        }
    }

    async fn health(&mut self, service: &str) -> String {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let channel = match tonic::transport::Endpoint::from_shared(self.endpoint.clone()) {
            Ok(e) => e.connect_lazy(),
            Err(e) => return format!("bad endpoint: {e}"),
        };
        let req = HealthCheckRequest {
            service: service.to_string(),
        };
        let mut client = HealthClient::new(channel);
        let check = client.check(req);
        match tokio::time::timeout(CONTEND_WITHIN, check).await {
            Ok(Ok(r)) => format!("health {:?}", r.into_inner().status()),
            Ok(Err(s)) => format!("ERR {:?} {:?}", s.code(), s.message()),
            Err(_) => "TIMEOUT".to_string(),
        }
    }

    // -----------------------------------------------------------------------------------
    // Watches

    fn watch_options(&self, w: &Watch) -> (Vec<u8>, WatchOptions) {
        let key = self.key(&w.key);
        let mut opts = WatchOptions::new();
        if let Some(end) = self.range_end(&key, &w.end) {
            opts = opts.with_range(end);
        }
        if let Some(r) = w.start {
            opts = opts.with_start_revision(self.rev(r));
        }
        if w.prev_kv {
            opts = opts.with_prev_key();
        }
        if !w.filters.is_empty() {
            opts = opts.with_filters(w.filters.clone());
        }
        if w.progress_notify {
            opts = opts.with_progress_notify();
        }
        if w.watch_id != 0 {
            opts = opts.with_watch_id(w.watch_id);
        }
        (key, opts)
    }

    /// Reads messages until one announces a created watch (rendering everything read).
    async fn recv_until_created(&mut self, stream: &'static str) -> String {
        let mut parts: Vec<(i64, String)> = Vec::new();
        let deadline = tokio::time::Instant::now() + crate::model::RECV_WITHIN;
        loop {
            let Some(ws) = self.streams.get_mut(stream) else {
                return format!("no open watch stream {stream}");
            };
            match tokio::time::timeout_at(deadline, ws.message()).await {
                Ok(Ok(Some(msg))) => {
                    parts.extend(self.render_watch_message(&msg));
                    if msg.created() {
                        break;
                    }
                }
                Ok(Ok(None)) => {
                    parts.push((i64::MAX, "stream closed".to_string()));
                    break;
                }
                Ok(Err(e)) => {
                    parts.push((i64::MAX, render::error(&e)));
                    break;
                }
                Err(_) => {
                    parts.push((i64::MAX, "TIMEOUT waiting for created".to_string()));
                    break;
                }
            }
        }
        join_items(parts)
    }

    /// Reads until `items` items arrived: every event is one item, and so is every message
    /// without events (created, canceled, progress). Event batching is not rendered (see
    /// [`Session::render_watch_message`]).
    async fn recv(&mut self, stream: &'static str, items: usize, within: Duration) -> String {
        let mut parts: Vec<(i64, String)> = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while parts.len() < items {
            let Some(ws) = self.streams.get_mut(stream) else {
                return format!("no open watch stream {stream}");
            };
            match tokio::time::timeout_at(deadline, ws.message()).await {
                Ok(Ok(Some(msg))) => parts.extend(self.render_watch_message(&msg)),
                Ok(Ok(None)) => {
                    parts.push((i64::MAX, "stream closed".to_string()));
                    break;
                }
                Ok(Err(e)) => {
                    parts.push((i64::MAX, render::error(&e)));
                    break;
                }
                Err(_) => {
                    let got = parts.len();
                    parts.insert(0, (i64::MIN, format!("TIMEOUT(got {got} of {items})")));
                    break;
                }
            }
        }
        join_items(parts)
    }

    /// Renders one watch response as items. Events render one per item, prefixed with their
    /// watch ID; how etcd groups events into messages depends on its 100 ms sync loop, so
    /// boundaries and the header of event messages are not rendered, except that a header
    /// revision below an event it carries is flagged (clients resume from it).
    fn render_watch_message(&self, msg: &WatchResponse) -> Vec<(i64, String)> {
        let ctx = self.ctx();
        let id = msg.watch_id();
        if msg.events().is_empty() || msg.created() || msg.canceled() {
            let mut s = if msg.created() {
                format!("created id={id} {}", ctx.header(msg.header()))
            } else if msg.canceled() {
                format!("canceled id={id} {}", ctx.header(msg.header()))
            } else {
                format!("progress id={id} {}", ctx.header(msg.header()))
            };
            if msg.canceled() && msg.created() {
                s += " canceled";
            }
            if msg.compact_revision() != 0 {
                s += &format!(" compact_revision={}", ctx.rev(msg.compact_revision()));
            }
            if !msg.cancel_reason().is_empty() {
                s += &format!(" reason={:?}", msg.cancel_reason());
            }
            if !msg.events().is_empty() {
                s += " WITH EVENTS";
            }
            let mut items = vec![(id, s)];
            items.extend(self.render_events(msg));
            return items;
        }
        let mut items = self.render_events(msg);
        let header_rev = msg.header().map_or(0, |h| h.revision());
        let max_ev = msg
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max()
            .unwrap_or(0);
        if header_rev < max_ev {
            items.push((
                id,
                format!(
                    "BAD HEADER: revision {} below event revision {}",
                    ctx.rev(header_rev),
                    ctx.rev(max_ev)
                ),
            ));
        }
        items
    }

    fn render_events(&self, msg: &WatchResponse) -> Vec<(i64, String)> {
        let ctx = self.ctx();
        msg.events()
            .iter()
            .map(|ev| {
                let kind = match ev.event_type() {
                    EventType::Put => "PUT",
                    EventType::Delete => "DELETE",
                };
                let kv = ev.kv().map_or("none".to_string(), |kv| ctx.kv(kv));
                let prev = ev.prev_kv().map_or("none".to_string(), |kv| ctx.kv(kv));
                let id = msg.watch_id();
                (id, format!("ev id={id} {kind} {kv} prev={prev}"))
            })
            .collect()
    }
}

/// What a contender's Campaign or Lock answered.
pub enum Contended {
    Campaign(etcd_client::CampaignResponse),
    Lock(etcd_client::LockResponse),
}

/// Joins rendered watch items in a canonical order: stably sorted by watch ID. Each
/// watcher's own items keep their order, but how etcd interleaves different watchers on one
/// stream (even for the same revision) follows Go map iteration, so that is masked.
fn join_items(mut items: Vec<(i64, String)>) -> String {
    items.sort_by_key(|(id, _)| *id);
    items
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// etcd's prefix end: the key with its last byte below 0xff incremented and the rest
/// dropped; "\0" (everything) when there is no such byte (empty or all-0xff keys).
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
