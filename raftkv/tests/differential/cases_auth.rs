//! Auth cases, driven through etcdctl (`--user name:password` authenticates, then sends the
//! token with every request): enabling without a root user or role, wrong passwords,
//! permission checks on reads, writes, deletes, txns (both branches and compares), watches
//! and leases, role and permission changes taking effect, admin-only operations, user and
//! role listings, and disabling again.
//!
//! Auth state is global, so every case is self-contained: it (re)creates the root user
//! (the second time both servers answer "user name already exists"), uses user and role
//! names of its own, and ends with `auth disable` — the session probes revisions without a
//! token between cases.

use std::time::Duration;

use crate::model::*;
use crate::ops;

const WATCH_FOR: Duration = Duration::from_secs(2);

fn root(cmd: &str) -> Ctl {
    ctl(&format!("--user root:rootpw {cmd}"))
}

fn as_user(user: &str, cmd: &str) -> Ctl {
    ctl(&format!("--user {user} {cmd}"))
}

/// A root user with the root role, then auth on.
fn enable() -> Vec<Op> {
    ops![
        ctl("user add root --new-user-password=rootpw"),
        ctl("user grant-role root root"),
        ctl("auth enable"),
    ]
}

fn with(mut ops: Vec<Op>, more: Vec<Op>) -> Vec<Op> {
    ops.extend(more);
    ops
}

fn disable() -> Op {
    root("auth disable").into()
}

pub fn cases() -> Vec<Case> {
    vec![
        case(
            "auth/enable-needs-root",
            ops![
                ctl("auth enable"),
                ctl("user add root --new-user-password=rootpw"),
                ctl("auth enable"),
                ctl("role get root"),
                ctl("user grant-role root root"),
                ctl("user get root"),
                ctl("auth enable"),
                ctl("auth enable"),
                ctl("get {p}a"),
                ctl("put {p}a 1"),
                root("put {p}a 1"),
                root("get {p}a"),
                ctl("--user root:wrong get {p}a"),
                ctl("--user nobody:x get {p}a"),
                ctl("auth disable"),
                root("auth disable"),
                ctl("auth disable"),
                ctl("get {p}a"),
                ctl("--user root:rootpw get {p}a"),
            ],
        ),
        case(
            "auth/users-and-roles",
            ops![
                ctl("user add u-list --new-user-password=pw"),
                ctl("user add u-list --new-user-password=pw"),
                ctl_args(&["user", "add", "", "--new-user-password=pw"]),
                ctl("role add r-list1"),
                ctl("role add r-list2"),
                ctl("role add r-list1"),
                ctl_args(&["role", "add", ""]),
                ctl("role grant-permission r-list1 read {p}a"),
                ctl("role grant-permission r-list1 readwrite {p}b --prefix"),
                ctl("role grant-permission r-list1 write {p}c {p}d"),
                ctl("role grant-permission r-list1 read {p}z --from-key"),
                ctl("role grant-permission r-list1 write {p}a"),
                ctl("role grant-permission nosuch read {p}a"),
                ctl("role get r-list1"),
                ctl("role get r-list1 -w json"),
                ctl("role get nosuch"),
                ctl("user grant-role u-list r-list1"),
                ctl("user grant-role u-list r-list2"),
                ctl("user grant-role u-list r-list1"),
                ctl("user grant-role u-list nosuch"),
                ctl("user grant-role nosuch r-list1"),
                ctl("user get u-list"),
                ctl("user get u-list --detail"),
                ctl("user get nosuch"),
                ctl("user revoke-role u-list r-list2"),
                ctl("user revoke-role u-list r-list2"),
                ctl("user revoke-role nosuch r-list2"),
                ctl("role revoke-permission r-list1 {p}a"),
                ctl("role revoke-permission r-list1 {p}a"),
                ctl("role revoke-permission r-list1 {p}c {p}d"),
                ctl("role revoke-permission nosuch {p}c"),
                ctl("role get r-list1"),
                ctl("role delete r-list1"),
                ctl("role delete r-list1"),
                ctl("user get u-list"),
                ctl("user passwd u-list --new-user-password=pw2"),
                ctl("user passwd nosuch --new-user-password=pw2"),
                ctl("user delete u-list"),
                ctl("user delete u-list"),
                ctl("role delete r-list2"),
            ],
        ),
        case(
            "auth/permissions",
            with(
                enable(),
                ops![
                    root("put {p}a 1"),
                    root("put {p}b/1 2"),
                    root("put {p}z 3"),
                    root("user add u-perm --new-user-password=pw"),
                    root("role add r-perm"),
                    root("role grant-permission r-perm read {p}a"),
                    root("role grant-permission r-perm readwrite {p}b/ --prefix"),
                    root("role grant-permission r-perm write {p}c {p}d"),
                    root("role grant-permission r-perm read {p}y --from-key"),
                    root("user grant-role u-perm r-perm"),
                    as_user("u-perm:wrong", "get {p}a"),
                    as_user("u-perm:pw", "get {p}a"),
                    as_user("u-perm:pw", "put {p}a x"),
                    as_user("u-perm:pw", "get {p}a {p}b"),
                    as_user("u-perm:pw", "get {p}b/ --prefix"),
                    as_user("u-perm:pw", "put {p}b/2 x"),
                    as_user("u-perm:pw", "put {p}b/2 y --prev-kv"),
                    as_user("u-perm:pw", "put {p}c1 x"),
                    as_user("u-perm:pw", "put {p}c1 x --prev-kv"),
                    as_user("u-perm:pw", "get {p}c1"),
                    as_user("u-perm:pw", "get {p}z"),
                    as_user("u-perm:pw", "get {p}y --from-key"),
                    as_user("u-perm:pw", "get {p}x --from-key"),
                    as_user("u-perm:pw", "get {p}b0 {p}a"),
                    as_user("u-perm:pw", "del {p}b/2"),
                    as_user("u-perm:pw", "del {p}b/ --prefix --prev-kv"),
                    as_user("u-perm:pw", "del {p}a"),
                    as_user("u-perm:pw", "del {p}c1 --prev-kv"),
                    as_user("u-perm:pw", "del {p}c1"),
                    as_user("u-perm:pw", "compaction 1"),
                    as_user("u-perm:pw", "endpoint hashkv"),
                    as_user("u-perm:pw", "defrag"),
                    ctl("endpoint hashkv"),
                    ctl("member remove 1234"),
                    as_user("u-perm:pw", "member remove 1234"),
                    as_user(
                        "u-perm:pw",
                        "member update 1234 --peer-urls=http://127.0.0.1:1"
                    ),
                    root("member remove 1234"),
                    as_user("u-perm:pw", "member list -w json").exit_only(),
                    as_user("u-perm:pw", "user list"),
                    as_user("u-perm:pw", "user get u-perm"),
                    as_user("u-perm:pw", "user get root"),
                    as_user("u-perm:pw", "role get r-perm"),
                    as_user("u-perm:pw", "role get root"),
                    as_user("u-perm:pw", "role list"),
                    as_user("u-perm:pw", "user add u-other --new-user-password=x"),
                    as_user("u-perm:pw", "auth disable"),
                    root("user delete root"),
                    root("user revoke-role root root"),
                    root("role delete root"),
                    root("user delete u-perm"),
                    root("role delete r-perm"),
                    disable(),
                ],
            ),
        ),
        case(
            "auth/txn",
            with(
                enable(),
                ops![
                    root("put {p}a 1"),
                    root("user add u-txn --new-user-password=pw"),
                    root("role add r-txn"),
                    root("role grant-permission r-txn readwrite {p}a"),
                    root("role grant-permission r-txn read {p}r"),
                    root("user grant-role u-txn r-txn"),
                    as_user("u-txn:pw", "txn --interactive=false")
                        .stdin("value(\"{p}a\") = \"1\"\n\nput {p}a 2\n\nget {p}a\n\n"),
                    // The failure branch does not run, yet it is checked.
                    as_user("u-txn:pw", "txn --interactive=false")
                        .stdin("value(\"{p}a\") = \"2\"\n\nput {p}a 3\n\nput {p}w x\n\n"),
                    // A compare on a key the user cannot read.
                    as_user("u-txn:pw", "txn --interactive=false")
                        .stdin("value(\"{p}w\") = \"2\"\n\nput {p}a 3\n\n\n"),
                    as_user("u-txn:pw", "txn --interactive=false")
                        .stdin("value(\"{p}a\") = \"2\"\n\nget {p}r\n\nget {p}a\n\n"),
                    as_user("u-txn:pw", "txn --interactive=false")
                        .stdin("\n\nget {p}r\nput {p}r x\n\n\n"),
                    root("get {p} --prefix"),
                    root("user delete u-txn"),
                    root("role delete r-txn"),
                    disable(),
                ],
            ),
        ),
        case(
            "auth/changes-take-effect",
            with(
                enable(),
                ops![
                    root("put {p}k v"),
                    root("user add u-chg --new-user-password=pw"),
                    root("role add r-chg"),
                    as_user("u-chg:pw", "get {p}k"),
                    root("user grant-role u-chg r-chg"),
                    as_user("u-chg:pw", "get {p}k"),
                    root("role grant-permission r-chg read {p}k"),
                    as_user("u-chg:pw", "get {p}k"),
                    as_user("u-chg:pw", "put {p}k w"),
                    root("role grant-permission r-chg readwrite {p}k"),
                    as_user("u-chg:pw", "put {p}k w"),
                    root("role revoke-permission r-chg {p}k"),
                    as_user("u-chg:pw", "get {p}k"),
                    root("role grant-permission r-chg read {p}k"),
                    root("user revoke-role u-chg r-chg"),
                    as_user("u-chg:pw", "get {p}k"),
                    root("user grant-role u-chg r-chg"),
                    root("role delete r-chg"),
                    as_user("u-chg:pw", "get {p}k"),
                    root("user get u-chg"),
                    root("user passwd u-chg --new-user-password=pw2"),
                    as_user("u-chg:pw", "get {p}k"),
                    root("user grant-role u-chg root"),
                    as_user("u-chg:pw2", "get {p}k"),
                    root("user delete u-chg"),
                    as_user("u-chg:pw2", "get {p}k"),
                    disable(),
                ],
            ),
        ),
        case(
            "auth/watch-and-lease",
            with(
                enable(),
                ops![
                    root("user add u-watch --new-user-password=pw"),
                    root("role add r-watch"),
                    root("role grant-permission r-watch readwrite {p}ok --prefix"),
                    root("user grant-role u-watch r-watch"),
                    root("put {p}ok1 a"),
                    root("put {p}no1 b"),
                    as_user("u-watch:pw", "watch {p}no1 --rev=1").timeout(WATCH_FOR),
                    as_user("u-watch:pw", "watch {p} --prefix --rev=1").timeout(WATCH_FOR),
                    as_user("u-watch:pw", "watch {p}ok --prefix --rev={rev+1}").timeout(WATCH_FOR),
                    ctl("watch {p}ok1 --rev=1").timeout(WATCH_FOR),
                    root("lease grant 100").capture_lease("l"),
                    root("put {p}no2 x --lease={lease:l}"),
                    as_user("u-watch:pw", "put {p}ok2 y --lease={lease:l}"),
                    as_user("u-watch:pw", "lease revoke {lease:l}"),
                    root("lease revoke {lease:l}"),
                    as_user("u-watch:pw", "lease grant 100").capture_lease("m"),
                    as_user("u-watch:pw", "put {p}ok2 y --lease={lease:m}"),
                    as_user("u-watch:pw", "lease revoke {lease:m}"),
                    root("get {p} --prefix --keys-only"),
                    root("user delete u-watch"),
                    root("role delete r-watch"),
                    disable(),
                ],
            ),
        ),
    ]
}
