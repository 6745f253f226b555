//! The case language: what a differential case is (a named script of operations), the
//! operation types, and the small builder functions the case tables are written with.
//!
//! Everything here is plain data. Keys are relative to the case's own prefix
//! (`/<case-name>/`) unless built with [`abs`]; revisions are relative to the revision the
//! case started at ([`Rev::Rel`]) unless built with [`Rev::Abs`]; leases the server picks
//! are referred to by a handle name. Resolving all of that against one concrete server is
//! the executor's job, which is what lets one script run unchanged against both servers.

use std::time::Duration;

pub use etcd_client::{CompareOp, SortOrder, SortTarget, WatchFilterType};

/// One named script. Cases run in table order against both servers.
pub struct Case {
    pub name: String,
    pub ops: Vec<Op>,
}

/// Builds a case; the name also becomes the key prefix `/<name>/`, so it must be unique.
pub fn case(name: &str, ops: Vec<Op>) -> Case {
    Case {
        name: name.to_string(),
        ops,
    }
}

/// `ops![a, b, ...]` converts each builder into an [`Op`], so case tables can mix plain
/// request builders (`put(..)`, `get(..)`) with other operations without `.into()` noise.
#[macro_export]
macro_rules! ops {
    ($($op:expr),* $(,)?) => { vec![$($crate::model::Op::from($op)),*] };
}

/// A key: relative to the case prefix, or absolute (for empty-key and whole-keyspace cases).
#[derive(Clone, Debug)]
pub enum Key {
    Rel(String),
    Abs(Vec<u8>),
}

impl From<&str> for Key {
    fn from(k: &str) -> Key {
        Key::Rel(k.to_string())
    }
}

/// An absolute key, not prefixed with the case name.
pub fn abs(k: impl Into<Vec<u8>>) -> Key {
    Key::Abs(k.into())
}

/// The end of a key range, as encoded in etcd's `range_end`.
#[derive(Clone, Debug)]
pub enum End {
    /// `[key, end)`.
    Key(Key),
    /// Every key with `key` as a prefix (range_end = key with its last byte incremented).
    Prefix,
    /// `range_end = "\0"`: every key `>= key`.
    FromKey,
}

/// A revision argument.
#[derive(Clone, Copy, Debug)]
pub enum Rev {
    /// Relative to the store revision observed when the case started: `Rel(1)` is the
    /// revision of the case's first write.
    Rel(i64),
    /// Literal, for revisions that must not depend on the case position (0, far future).
    Abs(i64),
}

/// A lease argument: a handle bound by an earlier grant in the same case, or a literal ID.
#[derive(Clone, Debug)]
pub enum LeaseRef {
    Handle(&'static str),
    Id(i64),
}

impl From<&'static str> for LeaseRef {
    fn from(h: &'static str) -> LeaseRef {
        LeaseRef::Handle(h)
    }
}

impl From<i64> for LeaseRef {
    fn from(id: i64) -> LeaseRef {
        LeaseRef::Id(id)
    }
}

/// One step of a case. Every step produces one rendered line per server.
pub enum Op {
    Put(Put),
    Get(Get),
    Del(Del),
    Txn(Txn),
    Compact {
        rev: Rev,
        physical: bool,
    },
    /// Grants a lease and binds `handle` to its ID. `id == 0` lets the server choose; such
    /// IDs are masked in every rendering as `<handle>`.
    LeaseGrant {
        handle: &'static str,
        ttl: i64,
        id: i64,
    },
    LeaseRevoke(LeaseRef),
    LeaseTtl {
        lease: LeaseRef,
        keys: bool,
    },
    LeaseList,
    /// Opens a keep-alive stream, sends one renewal and renders its answer.
    LeaseKeepAlive(LeaseRef),
    /// Opens a new watch stream named `stream` whose first request is `watch`, and renders
    /// the server's answer to it (normally `created`).
    WatchOpen {
        stream: &'static str,
        watch: Watch,
    },
    /// Adds a watch to an open stream and renders everything up to its `created` answer.
    WatchAdd {
        stream: &'static str,
        watch: Watch,
    },
    /// Sends a cancel request (the answer, if any, is read by a later `WatchRecv`).
    WatchCancel {
        stream: &'static str,
        watch_id: i64,
    },
    /// Sends a progress request (the answer is read by a later `WatchRecv`).
    WatchProgress {
        stream: &'static str,
    },
    /// Reads until `items` events or control messages arrived on `stream`, or `within`.
    WatchRecv {
        stream: &'static str,
        items: usize,
        within: Duration,
    },
    /// Asserts that nothing arrives on `stream` for a short while.
    WatchQuiet {
        stream: &'static str,
    },
    /// Maintenance.Status, reduced to what is deterministic.
    Status,
    /// The store revision, absolute (everything else renders revisions relative to the
    /// case start, which would hide a constant offset such as a store starting at 0).
    AbsoluteRevision,
    /// Runs `etcdctl` (API v3) against the server; see [`Ctl`].
    Ctl(Ctl),
    /// Checks that a file written by an earlier step (e.g. `snapshot save`) is non-empty.
    FileNonEmpty(String),
    /// Starts `Election.Campaign` (or `Lock.Lock`) for contender `who` in the background:
    /// both block until the contender leads, so the answer is read by a later [`Op::Await`].
    Contend(Contend),
    /// Waits up to `within` for contender `who`'s pending Campaign or Lock and renders its
    /// answer, or `waiting` (leaving it pending) if it has none yet.
    Await {
        who: &'static str,
        within: Duration,
    },
    /// Cancels contender `who`'s pending Campaign or Lock (the client goes away) and gives
    /// the server [`CANCEL_SETTLE`] to clean up its key.
    Cancel {
        who: &'static str,
    },
    /// `Election.Proclaim` with the leader key contender `who` got from its Campaign.
    Proclaim {
        who: &'static str,
        value: Vec<u8>,
    },
    /// `Election.Resign` with contender `who`'s leader key.
    Resign {
        who: &'static str,
    },
    /// `Election.Leader`.
    Leader {
        name: Key,
    },
    /// Opens `Election.Observe` on `name` as stream `stream`.
    ObserveOpen {
        stream: &'static str,
        name: Key,
    },
    /// Reads `items` leader updates from an observe stream (or renders a timeout).
    ObserveRecv {
        stream: &'static str,
        items: usize,
        within: Duration,
    },
    /// `Lock.Unlock` of the key contender `who` got from its Lock.
    Unlock {
        who: &'static str,
    },
    /// A JSON gateway request; see [`Gateway`].
    Gateway(Gateway),
    /// `grpc.health.v1.Health/Check` for `service`.
    Health {
        service: &'static str,
    },
    /// Switches the session's gRPC client (used by every later gRPC step of the case,
    /// contenders included) to one authenticated as `user` (name, password), or back to the
    /// anonymous one. Renders the Authenticate outcome.
    Login {
        user: Option<(&'static str, &'static str)>,
    },
}

// ---------------------------------------------------------------------------------------
// v3election, v3lock, the gateway, health

/// How long a contender that should win at once may take; generous for a loaded machine.
pub const CONTEND_WITHIN: Duration = Duration::from_secs(5);
/// How long to confirm that a contender is (still) blocked.
pub const BLOCKED_FOR: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub enum ContendKind {
    Campaign { value: Vec<u8> },
    Lock,
}

/// A contender in an election or for a lock. Leases are requested IDs (see
/// [`crate::cases_elect`]) so contender keys, which embed the lease ID, are the same on both
/// servers.
#[derive(Clone, Debug)]
pub struct Contend {
    pub who: &'static str,
    pub name: Key,
    pub lease: LeaseRef,
    pub kind: ContendKind,
}

pub fn campaign(
    who: &'static str,
    name: &str,
    lease: impl Into<LeaseRef>,
    value: impl Into<Vec<u8>>,
) -> Op {
    Op::Contend(Contend {
        who,
        name: name.into(),
        lease: lease.into(),
        kind: ContendKind::Campaign {
            value: value.into(),
        },
    })
}

pub fn lock(who: &'static str, name: &str, lease: impl Into<LeaseRef>) -> Op {
    Op::Contend(Contend {
        who,
        name: name.into(),
        lease: lease.into(),
        kind: ContendKind::Lock,
    })
}

/// Expects contender `who` to lead (or fail) promptly.
pub fn wins(who: &'static str) -> Op {
    Op::Await {
        who,
        within: CONTEND_WITHIN,
    }
}

/// Expects contender `who` to be still waiting (renders `waiting` on both sides).
pub fn blocked(who: &'static str) -> Op {
    Op::Await {
        who,
        within: BLOCKED_FOR,
    }
}

pub fn wins_within(who: &'static str, within: Duration) -> Op {
    Op::Await { who, within }
}

/// How long a server may take to delete the key of a cancelled contender.
pub const CANCEL_SETTLE: Duration = Duration::from_millis(500);

pub fn cancel(who: &'static str) -> Op {
    Op::Cancel { who }
}

pub fn proclaim(who: &'static str, value: impl Into<Vec<u8>>) -> Op {
    Op::Proclaim {
        who,
        value: value.into(),
    }
}

pub fn resign(who: &'static str) -> Op {
    Op::Resign { who }
}

pub fn leader(name: &str) -> Op {
    Op::Leader { name: name.into() }
}

pub fn observe(stream: &'static str, name: &str) -> Op {
    Op::ObserveOpen {
        stream,
        name: name.into(),
    }
}

pub fn observed(stream: &'static str, items: usize) -> Op {
    Op::ObserveRecv {
        stream,
        items,
        within: CONTEND_WITHIN,
    }
}

pub fn unlock(who: &'static str) -> Op {
    Op::Unlock { who }
}

/// A POST to the JSON gateway at `path` (`/v3/...`). `body` is a template: `{k:NAME}` expands to the base64 of
/// the case-relative key NAME, `{lease:h}` to lease handle h's ID in decimal, `{rev+N}` to
/// the case-relative revision. The answer renders as its HTTP status and body, the body
/// with the masks of [`crate::render`] applied to the JSON fields they concern. Stream
/// paths read `lines` result lines (or what came within [`CONTEND_WITHIN`]).
///
/// The `token` of the last successful `/v3/auth/authenticate` answer in the case is kept
/// (and masked as `<token>`); with `authorized` the request sends it as the `Authorization`
/// header, as etcd's gateway clients do.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub path: &'static str,
    pub body: &'static str,
    pub lines: usize,
    pub authorized: bool,
}

pub fn http(path: &'static str, body: &'static str) -> Op {
    Op::Gateway(Gateway {
        path,
        body,
        lines: 0,
        authorized: false,
    })
}

/// [`http`] with the case's last gateway token in the `Authorization` header.
pub fn http_auth(path: &'static str, body: &'static str) -> Op {
    Op::Gateway(Gateway {
        path,
        body,
        lines: 0,
        authorized: true,
    })
}

pub fn http_stream(path: &'static str, body: &'static str, lines: usize) -> Op {
    Op::Gateway(Gateway {
        path,
        body,
        lines,
        authorized: false,
    })
}

/// Later gRPC steps run as `user` with `password`.
pub fn login(user: &'static str, password: &'static str) -> Op {
    Op::Login {
        user: Some((user, password)),
    }
}

/// Later gRPC steps run without a token again.
pub fn logout() -> Op {
    Op::Login { user: None }
}

pub fn health(service: &'static str) -> Op {
    Op::Health { service }
}

// ---------------------------------------------------------------------------------------
// KV requests

#[derive(Clone, Debug)]
pub struct Put {
    pub key: Key,
    pub value: Vec<u8>,
    pub lease: Option<LeaseRef>,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

pub fn put(key: impl Into<Key>, value: impl Into<Vec<u8>>) -> Put {
    Put {
        key: key.into(),
        value: value.into(),
        lease: None,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    }
}

impl Put {
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub fn lease(mut self, lease: impl Into<LeaseRef>) -> Self {
        self.lease = Some(lease.into());
        self
    }
    pub fn ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }
    pub fn ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Get {
    pub key: Key,
    pub end: Option<End>,
    pub limit: i64,
    pub rev: Option<Rev>,
    pub sort: Option<(SortTarget, SortOrder)>,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod: Option<Rev>,
    pub max_mod: Option<Rev>,
    pub min_create: Option<Rev>,
    pub max_create: Option<Rev>,
}

pub fn get(key: impl Into<Key>) -> Get {
    Get {
        key: key.into(),
        end: None,
        limit: 0,
        rev: None,
        sort: None,
        serializable: false,
        keys_only: false,
        count_only: false,
        min_mod: None,
        max_mod: None,
        min_create: None,
        max_create: None,
    }
}

impl Get {
    pub fn end(mut self, end: impl Into<Key>) -> Self {
        self.end = Some(End::Key(end.into()));
        self
    }
    pub fn prefix(mut self) -> Self {
        self.end = Some(End::Prefix);
        self
    }
    /// `range_end = "\0"`: the key and everything after it (etcd's "from key").
    pub fn and_after(mut self) -> Self {
        self.end = Some(End::FromKey);
        self
    }
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
    /// Reads at case-relative revision `rel` (see [`Rev::Rel`]).
    pub fn rev(mut self, rel: i64) -> Self {
        self.rev = Some(Rev::Rel(rel));
        self
    }
    pub fn rev_abs(mut self, rev: i64) -> Self {
        self.rev = Some(Rev::Abs(rev));
        self
    }
    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = Some((target, order));
        self
    }
    pub fn serializable(mut self) -> Self {
        self.serializable = true;
        self
    }
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
    pub fn min_mod(mut self, rel: i64) -> Self {
        self.min_mod = Some(Rev::Rel(rel));
        self
    }
    pub fn max_mod(mut self, rel: i64) -> Self {
        self.max_mod = Some(Rev::Rel(rel));
        self
    }
    pub fn min_create(mut self, rel: i64) -> Self {
        self.min_create = Some(Rev::Rel(rel));
        self
    }
    pub fn max_create(mut self, rel: i64) -> Self {
        self.max_create = Some(Rev::Rel(rel));
        self
    }
}

#[derive(Clone, Debug)]
pub struct Del {
    pub key: Key,
    pub end: Option<End>,
    pub prev_kv: bool,
}

pub fn del(key: impl Into<Key>) -> Del {
    Del {
        key: key.into(),
        end: None,
        prev_kv: false,
    }
}

impl Del {
    pub fn end(mut self, end: impl Into<Key>) -> Self {
        self.end = Some(End::Key(end.into()));
        self
    }
    pub fn prefix(mut self) -> Self {
        self.end = Some(End::Prefix);
        self
    }
    /// `range_end = "\0"`: the key and everything after it (etcd's "from key").
    pub fn and_after(mut self) -> Self {
        self.end = Some(End::FromKey);
        self
    }
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

pub fn compact(rel: i64) -> Op {
    Op::Compact {
        rev: Rev::Rel(rel),
        physical: false,
    }
}

pub fn compact_physical(rel: i64) -> Op {
    Op::Compact {
        rev: Rev::Rel(rel),
        physical: true,
    }
}

pub fn compact_abs(rev: i64) -> Op {
    Op::Compact {
        rev: Rev::Abs(rev),
        physical: false,
    }
}

// ---------------------------------------------------------------------------------------
// Transactions

#[derive(Clone, Debug)]
pub struct Txn {
    pub compares: Vec<Cmp>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// A transaction: `txn(compares, success, failure)`.
pub fn txn(compares: Vec<Cmp>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Txn {
    Txn {
        compares,
        success,
        failure,
    }
}

#[derive(Clone, Debug)]
pub enum TxnOp {
    Put(Put),
    Get(Get),
    Del(Del),
    Txn(Txn),
}

impl From<Put> for TxnOp {
    fn from(p: Put) -> TxnOp {
        TxnOp::Put(p)
    }
}
impl From<Get> for TxnOp {
    fn from(g: Get) -> TxnOp {
        TxnOp::Get(g)
    }
}
impl From<Del> for TxnOp {
    fn from(d: Del) -> TxnOp {
        TxnOp::Del(d)
    }
}
impl From<Txn> for TxnOp {
    fn from(t: Txn) -> TxnOp {
        TxnOp::Txn(t)
    }
}

/// `tops![..]`: a list of transaction operations from request builders.
#[macro_export]
macro_rules! tops {
    ($($op:expr),* $(,)?) => { vec![$($crate::model::TxnOp::from($op)),*] };
}

#[derive(Clone, Debug)]
pub enum CmpTarget {
    Value(Vec<u8>),
    Version(i64),
    Create(Rev),
    Mod(Rev),
    Lease(LeaseRef),
}

#[derive(Clone, Debug)]
pub struct Cmp {
    pub key: Key,
    pub end: Option<End>,
    pub op: CompareOp,
    pub target: CmpTarget,
}

impl Cmp {
    /// Compares every key in `[key, end)` (etcd 3.4 range compares).
    pub fn end(mut self, end: impl Into<Key>) -> Self {
        self.end = Some(End::Key(end.into()));
        self
    }
    pub fn prefix(mut self) -> Self {
        self.end = Some(End::Prefix);
        self
    }
}

fn cmp(key: impl Into<Key>, op: CompareOp, target: CmpTarget) -> Cmp {
    Cmp {
        key: key.into(),
        end: None,
        op,
        target,
    }
}

pub fn cmp_value(key: impl Into<Key>, op: CompareOp, value: impl Into<Vec<u8>>) -> Cmp {
    cmp(key, op, CmpTarget::Value(value.into()))
}
pub fn cmp_version(key: impl Into<Key>, op: CompareOp, version: i64) -> Cmp {
    cmp(key, op, CmpTarget::Version(version))
}
/// Compares the create revision with case-relative revision `rel`.
pub fn cmp_create(key: impl Into<Key>, op: CompareOp, rel: i64) -> Cmp {
    cmp(key, op, CmpTarget::Create(Rev::Rel(rel)))
}
/// Compares the create revision with a literal revision (0 = "key does not exist").
pub fn cmp_create_abs(key: impl Into<Key>, op: CompareOp, rev: i64) -> Cmp {
    cmp(key, op, CmpTarget::Create(Rev::Abs(rev)))
}
pub fn cmp_mod(key: impl Into<Key>, op: CompareOp, rel: i64) -> Cmp {
    cmp(key, op, CmpTarget::Mod(Rev::Rel(rel)))
}
pub fn cmp_lease(key: impl Into<Key>, op: CompareOp, lease: impl Into<LeaseRef>) -> Cmp {
    cmp(key, op, CmpTarget::Lease(lease.into()))
}

impl From<Put> for Op {
    fn from(p: Put) -> Op {
        Op::Put(p)
    }
}
impl From<Get> for Op {
    fn from(g: Get) -> Op {
        Op::Get(g)
    }
}
impl From<Del> for Op {
    fn from(d: Del) -> Op {
        Op::Del(d)
    }
}
impl From<Txn> for Op {
    fn from(t: Txn) -> Op {
        Op::Txn(t)
    }
}
impl From<Ctl> for Op {
    fn from(c: Ctl) -> Op {
        Op::Ctl(c)
    }
}

// ---------------------------------------------------------------------------------------
// Leases

pub fn grant(handle: &'static str, ttl: i64) -> Op {
    Op::LeaseGrant { handle, ttl, id: 0 }
}
pub fn grant_id(handle: &'static str, ttl: i64, id: i64) -> Op {
    Op::LeaseGrant { handle, ttl, id }
}
pub fn revoke(lease: impl Into<LeaseRef>) -> Op {
    Op::LeaseRevoke(lease.into())
}
pub fn ttl(lease: impl Into<LeaseRef>) -> Op {
    Op::LeaseTtl {
        lease: lease.into(),
        keys: false,
    }
}
pub fn ttl_keys(lease: impl Into<LeaseRef>) -> Op {
    Op::LeaseTtl {
        lease: lease.into(),
        keys: true,
    }
}
pub fn keep_alive(lease: impl Into<LeaseRef>) -> Op {
    Op::LeaseKeepAlive(lease.into())
}

// ---------------------------------------------------------------------------------------
// Watches

#[derive(Clone, Debug)]
pub struct Watch {
    pub key: Key,
    pub end: Option<End>,
    pub start: Option<Rev>,
    pub prev_kv: bool,
    pub filters: Vec<WatchFilterType>,
    pub progress_notify: bool,
    pub watch_id: i64,
}

pub fn watch(key: impl Into<Key>) -> Watch {
    Watch {
        key: key.into(),
        end: None,
        start: None,
        prev_kv: false,
        filters: Vec::new(),
        progress_notify: false,
        watch_id: 0,
    }
}

impl Watch {
    pub fn end(mut self, end: impl Into<Key>) -> Self {
        self.end = Some(End::Key(end.into()));
        self
    }
    pub fn prefix(mut self) -> Self {
        self.end = Some(End::Prefix);
        self
    }
    /// `range_end = "\0"`: the key and everything after it (etcd's "from key").
    pub fn and_after(mut self) -> Self {
        self.end = Some(End::FromKey);
        self
    }
    /// Replays history from case-relative revision `rel`.
    pub fn start(mut self, rel: i64) -> Self {
        self.start = Some(Rev::Rel(rel));
        self
    }
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub fn no_put(mut self) -> Self {
        self.filters.push(WatchFilterType::NoPut);
        self
    }
    pub fn no_delete(mut self) -> Self {
        self.filters.push(WatchFilterType::NoDelete);
        self
    }
    pub fn progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Asks for a specific watch ID instead of letting the server assign one.
    pub fn id(mut self, watch_id: i64) -> Self {
        self.watch_id = watch_id;
        self
    }
}

/// How long a [`recv`] waits by default: generous, since a correct server answers in
/// milliseconds and only a missing answer runs into it.
pub const RECV_WITHIN: Duration = Duration::from_secs(5);

pub fn watch_open(stream: &'static str, watch: Watch) -> Op {
    Op::WatchOpen { stream, watch }
}
pub fn watch_add(stream: &'static str, watch: Watch) -> Op {
    Op::WatchAdd { stream, watch }
}
pub fn watch_cancel(stream: &'static str, watch_id: i64) -> Op {
    Op::WatchCancel { stream, watch_id }
}
pub fn watch_progress(stream: &'static str) -> Op {
    Op::WatchProgress { stream }
}
/// Reads `items` events/control messages from `stream`.
pub fn recv(stream: &'static str, items: usize) -> Op {
    Op::WatchRecv {
        stream,
        items,
        within: RECV_WITHIN,
    }
}
pub fn recv_within(stream: &'static str, items: usize, within: Duration) -> Op {
    Op::WatchRecv {
        stream,
        items,
        within,
    }
}
pub fn quiet(stream: &'static str) -> Op {
    Op::WatchQuiet { stream }
}

// ---------------------------------------------------------------------------------------
// etcdctl

/// An `etcdctl` invocation. Arguments and stdin are templates:
/// `{p}` is the case key prefix, `{rev+N}`/`{rev-N}` a case-relative revision,
/// `{lease:h}` the hex ID bound to lease handle `h`, `{dir}` a scratch directory private to
/// the server's session. `--endpoints` is added by the executor.
#[derive(Clone, Debug)]
pub struct Ctl {
    pub args: Vec<String>,
    pub stdin: Option<String>,
    /// Kill the command after this long (for `watch`, which never exits by itself).
    pub timeout: Option<Duration>,
    /// Bind this lease handle to the ID printed by `lease grant`.
    pub capture_lease: Option<&'static str>,
    /// Sort stdout lines: for listings etcd produces by iterating a Go map.
    pub sort_stdout: bool,
    /// Render only the exit status (for output that is inherently implementation-specific,
    /// like `snapshot status`).
    pub exit_only: bool,
}

/// `ctl("get {p}a --prefix")`: arguments split on whitespace (use [`ctl_args`] when an
/// argument contains spaces).
pub fn ctl(cmdline: &str) -> Ctl {
    ctl_args(&cmdline.split_whitespace().collect::<Vec<_>>())
}

pub fn ctl_args(args: &[&str]) -> Ctl {
    Ctl {
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: None,
        timeout: None,
        capture_lease: None,
        sort_stdout: false,
        exit_only: false,
    }
}

impl Ctl {
    pub fn stdin(mut self, input: &str) -> Self {
        self.stdin = Some(input.to_string());
        self
    }
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
    pub fn capture_lease(mut self, handle: &'static str) -> Self {
        self.capture_lease = Some(handle);
        self
    }
    pub fn sort_stdout(mut self) -> Self {
        self.sort_stdout = true;
        self
    }
    pub fn exit_only(mut self) -> Self {
        self.exit_only = true;
        self
    }
}
