//! Normalized renderings: turns responses (and the operations that caused them) into
//! one-line strings that are equal for two correct servers, and compares two renderings.
//!
//! What is masked, and why (everything else is compared exactly):
//! - Header `cluster_id`, `member_id`, `raft_term`: identities and election counters differ
//!   between any two clusters. They are not printed, but in top-level responses a zero
//!   value is flagged (`zero:member_id`), since etcd always fills them there and clients
//!   (etcdctl, endpoint discovery) read them. Inside Txn responses etcd leaves them zero and
//!   nobody reads them, so there only the revision is rendered.
//! - Revisions are printed relative to the revision the case started at (`r+3`), with 0
//!   kept literal ("absent"). The start revision itself is checked separately by the
//!   executor (each case's revision delta is compared), so no absolute drift goes unnoticed,
//!   but one server bug does not turn every later case red.
//! - Lease IDs the server chose (`LeaseGrant` with ID 0) print as `<handle>`: etcd derives
//!   them from its member ID and the clock. The mapping is per server, so "the same lease"
//!   is still checked. Requested IDs print literally.
//! - Remaining lease TTLs depend on the wall clock: they print as `~N` and [`equivalent`]
//!   accepts a difference of at most 1 second.

use std::collections::HashMap;

use etcd_client::{Error, KeyValue, ResponseHeader};

use crate::exec::Level;
use crate::model::{
    Cmp, CmpTarget, Ctl, Del, End, Get, Key, LeaseRef, Op, Put, Rev, Txn, TxnOp, Watch,
};

/// What a rendering needs to know about one server: where the case started, and the
/// masked names of the lease IDs that server chose.
pub struct Ctx<'a> {
    pub base: i64,
    pub lease_names: &'a HashMap<i64, String>,
}

impl Ctx<'_> {
    pub fn rev(&self, rev: i64) -> String {
        if rev == 0 {
            "0".to_string()
        } else {
            format!("r{:+}", rev - self.base)
        }
    }

    pub fn lease(&self, id: i64) -> String {
        match self.lease_names.get(&id) {
            Some(name) => format!("<{name}>"),
            None => id.to_string(),
        }
    }

    pub fn header(&self, h: Option<&ResponseHeader>) -> String {
        let Some(h) = h else {
            return "hdr:none".to_string();
        };
        let mut zero = Vec::new();
        if h.cluster_id() == 0 {
            zero.push("cluster_id");
        }
        if h.member_id() == 0 {
            zero.push("member_id");
        }
        if h.raft_term() == 0 {
            zero.push("raft_term");
        }
        if zero.len() == 3 && h.revision() == 0 {
            // etcd answers some requests with an all-zero header (e.g. TimeToLive of an
            // unknown lease); say so compactly rather than listing every field.
            return "hdr{}".to_string();
        }
        if zero.is_empty() {
            format!("hdr{{{}}}", self.rev(h.revision()))
        } else {
            format!("hdr{{{} zero:{}}}", self.rev(h.revision()), zero.join(","))
        }
    }

    /// Like [`Ctx::header`], but for responses nested in a Txn response only the revision
    /// is rendered: etcd fills nothing else there, and no client reads those IDs.
    pub fn header_at(&self, h: Option<&ResponseHeader>, level: Level) -> String {
        match (level, h) {
            (Level::Top, _) => self.header(h),
            (Level::InTxn, Some(h)) => format!("hdr{{{}}}", self.rev(h.revision())),
            (Level::InTxn, None) => "hdr:none".to_string(),
        }
    }

    pub fn kv(&self, kv: &KeyValue) -> String {
        format!(
            "{{k={} v={} c={} m={} ver={} lease={}}}",
            bytes(kv.key()),
            bytes(kv.value()),
            self.rev(kv.create_revision()),
            self.rev(kv.mod_revision()),
            kv.version(),
            self.lease(kv.lease())
        )
    }

    pub fn kvs(&self, kvs: &[KeyValue]) -> String {
        let items: Vec<String> = kvs.iter().map(|kv| self.kv(kv)).collect();
        format!("[{}]", items.join(" "))
    }
}

/// Printable bytes: quoted with escapes; long values as length + FNV-1a hash so equality is
/// still checked without flooding the report. `~` is escaped because it marks fuzzy numbers.
pub fn bytes(b: &[u8]) -> String {
    if b.len() > 64 {
        let hash = b.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &c| {
            (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3)
        });
        return format!("<{} bytes fnv={hash:016x}>", b.len());
    }
    let mut s = String::from("\"");
    for &c in b {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'~' => s.push_str("\\x7e"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    s
}

/// A wall-clock-dependent number, compared with a tolerance of 1 by [`equivalent`].
pub fn fuzzy(n: i64) -> String {
    format!("~{n}")
}

/// gRPC status errors render as code + message (both compared exactly); anything else as
/// the client library's description, which does not contain addresses for the errors
/// these cases provoke.
pub fn error(e: &Error) -> String {
    match e {
        Error::GRpcStatus(s) => format!("ERR {:?} {:?}", s.code(), s.message()),
        other => format!("ERR client: {other}"),
    }
}

/// Whether two renderings match: equal, except that fuzzy numbers (`~N`) at the same place
/// may differ by at most 1.
pub fn equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b'~' && b[j] == b'~' {
            let (x, ni) = number_at(a, i + 1);
            let (y, nj) = number_at(b, j + 1);
            match (x, y) {
                (Some(x), Some(y)) if (x - y).abs() <= 1 => {
                    i = ni;
                    j = nj;
                    continue;
                }
                _ => {}
            }
        }
        if a[i] != b[j] {
            return false;
        }
        i += 1;
        j += 1;
    }
    i == a.len() && j == b.len()
}

/// Parses an optionally negative decimal at `at`, returning it and the index after it.
fn number_at(s: &[u8], at: usize) -> (Option<i64>, usize) {
    let mut end = at;
    if end < s.len() && s[end] == b'-' {
        end += 1;
    }
    while end < s.len() && s[end].is_ascii_digit() {
        end += 1;
    }
    let n = std::str::from_utf8(&s[at..end])
        .ok()
        .and_then(|t| t.parse().ok());
    (n, end)
}

// ---------------------------------------------------------------------------------------
// Operation descriptions, for the report. Keys print relative to the case prefix.

pub fn describe(op: &Op) -> String {
    match op {
        Op::Put(p) => describe_put(p),
        Op::Get(g) => describe_get(g),
        Op::Del(d) => describe_del(d),
        Op::Txn(t) => describe_txn(t),
        Op::Compact { rev, physical } => {
            format!("compact {}{}", rev_arg(*rev), flag(*physical, " physical"))
        }
        Op::LeaseGrant { handle, ttl, id } => {
            format!("lease grant {handle} ttl={ttl} id={id}")
        }
        Op::LeaseRevoke(l) => format!("lease revoke {}", lease_arg(l)),
        Op::LeaseTtl { lease, keys } => {
            format!("lease ttl {}{}", lease_arg(lease), flag(*keys, " keys"))
        }
        Op::LeaseList => "lease list".to_string(),
        Op::LeaseKeepAlive(l) => format!("lease keepalive {}", lease_arg(l)),
        Op::WatchOpen { stream, watch } => {
            format!("watch open {stream}: {}", describe_watch(watch))
        }
        Op::WatchAdd { stream, watch } => format!("watch add {stream}: {}", describe_watch(watch)),
        Op::WatchCancel { stream, watch_id } => format!("watch cancel {stream} id={watch_id}"),
        Op::WatchProgress { stream } => format!("watch progress {stream}"),
        Op::WatchRecv {
            stream,
            items,
            within,
        } => format!("watch recv {stream} x{items} within {within:?}"),
        Op::WatchQuiet { stream } => format!("watch quiet {stream}"),
        Op::Status => "status".to_string(),
        Op::AbsoluteRevision => "absolute revision".to_string(),
        Op::Ctl(c) => describe_ctl(c),
        Op::FileNonEmpty(path) => format!("file non-empty {path}"),
        Op::Contend(c) => format!(
            "{} {} {:?} lease={:?}",
            match &c.kind {
                crate::model::ContendKind::Campaign { value } =>
                    format!("campaign value={}", bytes(value)),
                crate::model::ContendKind::Lock => "lock".to_string(),
            },
            c.who,
            c.name,
            c.lease
        ),
        Op::Await { who, within } => format!("await {who} within {within:?}"),
        Op::Proclaim { who, value } => format!("proclaim {who} value={}", bytes(value)),
        Op::Resign { who } => format!("resign {who}"),
        Op::Cancel { who } => format!("cancel {who}"),
        Op::Leader { name } => format!("leader {name:?}"),
        Op::ObserveOpen { stream, name } => format!("observe {stream} {name:?}"),
        Op::ObserveRecv {
            stream,
            items,
            within,
        } => format!("observe recv {stream} {items} within {within:?}"),
        Op::Unlock { who } => format!("unlock {who}"),
        Op::Gateway(g) => format!(
            "POST {} {}{}",
            g.path,
            g.body,
            flag(g.authorized, " (Authorization: token)")
        ),
        Op::Health { service } => format!("health check {service:?}"),
        Op::Login { user: Some((u, _)) } => format!("login as {u}"),
        Op::Login { user: None } => "logout".to_string(),
    }
}

/// Masks a JSON gateway body for comparison, keeping its bytes otherwise: identity fields
/// (`cluster_id`, `member_id`, `raft_term`, and `leader`/`raftTerm`/`raftIndex`/
/// `raftAppliedIndex`/`dbSize*` of Status) become `*`, revisions (`revision`,
/// `create_revision`, `mod_revision`, `rev`, `compact_revision`) become case-relative, lease
/// IDs (`lease`, `ID`) are masked like in gRPC renderings, a remaining `TTL` is fuzzy and an
/// auth `token` (random) becomes `<token>`.
pub fn mask_json(body: &str, ctx: &Ctx<'_>) -> String {
    const IDENTITY: &[&str] = &[
        "cluster_id",
        "member_id",
        "raft_term",
        "leader",
        "raftTerm",
        "raftIndex",
        "raftAppliedIndex",
        "dbSize",
        "dbSizeInUse",
    ];
    const REVISIONS: &[&str] = &[
        "revision",
        "create_revision",
        "mod_revision",
        "rev",
        "compact_revision",
    ];
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    // Every masked field is a JSON string of digits: `"name":"123"`.
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        let tail = &after[end + 1..];
        out.push('"');
        out.push_str(name);
        out.push('"');
        rest = tail;
        let Some(value_start) = tail.strip_prefix(":\"") else {
            continue;
        };
        let Some(value_end) = value_start.find('"') else {
            continue;
        };
        if name == "token" {
            out.push_str(":\"<token>\"");
            rest = &value_start[value_end + 1..];
            continue;
        }
        // uint64 identities do not fit an i64.
        let Ok(n) = value_start[..value_end].parse::<i128>() else {
            continue;
        };
        let small = i64::try_from(n).ok();
        let masked = match small {
            _ if IDENTITY.contains(&name) => "*".to_string(),
            Some(n) if REVISIONS.contains(&name) => ctx.rev(n),
            Some(n) if name == "lease" || name == "ID" => ctx.lease(n),
            Some(n) if name == "TTL" => fuzzy(n),
            _ => continue,
        };
        out.push_str(&format!(":\"{masked}\""));
        rest = &value_start[value_end + 1..];
    }
    out.push_str(rest);
    out
}

fn flag(on: bool, text: &str) -> &str {
    if on {
        text
    } else {
        ""
    }
}

fn key_arg(k: &Key) -> String {
    match k {
        Key::Rel(k) => k.clone(),
        Key::Abs(k) => format!("abs:{}", bytes(k)),
    }
}

fn end_arg(end: &Option<End>) -> String {
    match end {
        None => String::new(),
        Some(End::Key(k)) => format!("..{}", key_arg(k)),
        Some(End::Prefix) => " prefix".to_string(),
        Some(End::FromKey) => " from-key".to_string(),
    }
}

fn rev_arg(r: Rev) -> String {
    match r {
        Rev::Rel(n) => format!("r{n:+}"),
        Rev::Abs(n) => n.to_string(),
    }
}

fn lease_arg(l: &LeaseRef) -> String {
    match l {
        LeaseRef::Handle(h) => format!("<{h}>"),
        LeaseRef::Id(id) => id.to_string(),
    }
}

fn describe_put(p: &Put) -> String {
    let mut s = format!("put {}={}", key_arg(&p.key), bytes(&p.value));
    if let Some(l) = &p.lease {
        s += &format!(" lease={}", lease_arg(l));
    }
    s += flag(p.prev_kv, " prev_kv");
    s += flag(p.ignore_value, " ignore_value");
    s += flag(p.ignore_lease, " ignore_lease");
    s
}

fn describe_get(g: &Get) -> String {
    let mut s = format!("get {}{}", key_arg(&g.key), end_arg(&g.end));
    if g.limit != 0 {
        s += &format!(" limit={}", g.limit);
    }
    if let Some(r) = g.rev {
        s += &format!(" rev={}", rev_arg(r));
    }
    if let Some((t, o)) = g.sort {
        s += &format!(" sort={t:?}/{o:?}");
    }
    s += flag(g.serializable, " serializable");
    s += flag(g.keys_only, " keys_only");
    s += flag(g.count_only, " count_only");
    for (name, r) in [
        ("min_mod", g.min_mod),
        ("max_mod", g.max_mod),
        ("min_create", g.min_create),
        ("max_create", g.max_create),
    ] {
        if let Some(r) = r {
            s += &format!(" {name}={}", rev_arg(r));
        }
    }
    s
}

fn describe_del(d: &Del) -> String {
    format!(
        "del {}{}{}",
        key_arg(&d.key),
        end_arg(&d.end),
        flag(d.prev_kv, " prev_kv")
    )
}

fn describe_cmp(c: &Cmp) -> String {
    let target = match &c.target {
        CmpTarget::Value(v) => format!("value {:?} {}", c.op, bytes(v)),
        CmpTarget::Version(n) => format!("version {:?} {n}", c.op),
        CmpTarget::Create(r) => format!("create {:?} {}", c.op, rev_arg(*r)),
        CmpTarget::Mod(r) => format!("mod {:?} {}", c.op, rev_arg(*r)),
        CmpTarget::Lease(l) => format!("lease {:?} {}", c.op, lease_arg(l)),
    };
    format!("{}{}: {target}", key_arg(&c.key), end_arg(&c.end))
}

fn describe_txn_ops(ops: &[TxnOp]) -> String {
    // Long op lists (the >128-op cases) are summarized.
    if ops.len() > 4 {
        return format!("<{} ops>", ops.len());
    }
    let items: Vec<String> = ops
        .iter()
        .map(|op| match op {
            TxnOp::Put(p) => describe_put(p),
            TxnOp::Get(g) => describe_get(g),
            TxnOp::Del(d) => describe_del(d),
            TxnOp::Txn(t) => describe_txn(t),
        })
        .collect();
    items.join("; ")
}

fn describe_txn(t: &Txn) -> String {
    let cmps = if t.compares.len() > 4 {
        format!("<{} compares>", t.compares.len())
    } else {
        t.compares
            .iter()
            .map(describe_cmp)
            .collect::<Vec<_>>()
            .join(" && ")
    };
    format!(
        "txn if [{cmps}] then [{}] else [{}]",
        describe_txn_ops(&t.success),
        describe_txn_ops(&t.failure)
    )
}

fn describe_watch(w: &Watch) -> String {
    let mut s = format!("{}{}", key_arg(&w.key), end_arg(&w.end));
    if let Some(r) = w.start {
        s += &format!(" start={}", rev_arg(r));
    }
    s += flag(w.prev_kv, " prev_kv");
    for f in &w.filters {
        s += &format!(" {f:?}");
    }
    s += flag(w.progress_notify, " progress_notify");
    if w.watch_id != 0 {
        s += &format!(" id={}", w.watch_id);
    }
    s
}

fn describe_ctl(c: &Ctl) -> String {
    let mut s = format!("etcdctl {}", c.args.join(" "));
    if let Some(input) = &c.stdin {
        s += &format!(" <<< {input:?}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzy_numbers_tolerate_one() {
        assert!(equivalent("ttl=~59 x", "ttl=~60 x"));
        assert!(equivalent("ttl=~-1", "ttl=~-1"));
        assert!(!equivalent("ttl=~58 x", "ttl=~60 x"));
        assert!(!equivalent("ttl=59", "ttl=60"));
        assert!(!equivalent("a", "ab"));
    }

    #[test]
    fn bytes_escape_and_summarize() {
        assert_eq!(bytes(b"a\"~\0"), "\"a\\\"\\x7e\\x00\"");
        assert!(bytes(&[b'x'; 100]).starts_with("<100 bytes fnv="));
    }
}
