//! Auth over the v3election/v3lock services, the JSON gateway and gRPC health: the recipes
//! run as the caller, so a user without permission on the election or lock prefix is refused
//! (etcd's servers send their KV ops with the caller's token); the gateway serves the Auth
//! service and passes the `Authorization` header on as the token; health ignores auth.
//!
//! Like [`crate::cases_auth`], each case is self-contained (root is created again, which
//! the second time answers "user name already exists") and ends with auth disabled. Leases
//! are requested IDs 8101-8110, bound before auth is enabled and revoked after it is off.

use crate::model::*;
use crate::ops;

fn root(cmd: &str) -> Ctl {
    ctl(&format!("--user root:rootpw {cmd}"))
}

fn root_user() -> Vec<Op> {
    ops![
        ctl("user add root --new-user-password=rootpw"),
        ctl("user grant-role root root"),
    ]
}

pub fn cases() -> Vec<Case> {
    let mut elect = root_user();
    elect.extend(ops![
        grant_id("a", 3600, 8101),
        grant_id("b", 3600, 8102),
        grant_id("c", 3600, 8103),
        grant_id("d", 3600, 8104),
        ctl("user add el-nobody --new-user-password=pw"),
        ctl("user add el-user --new-user-password=pw"),
        ctl("role add el-role"),
        ctl("role grant-permission el-role readwrite {p}e/ --prefix"),
        ctl("role grant-permission el-role readwrite {p}m/ --prefix"),
        ctl("user grant-role el-user el-role"),
        ctl("auth enable"),
        // No token at all: the recipes' first op has no user.
        campaign("anon", "e", 8101, "v"),
        wins("anon"),
        login("el-nobody", "pw"),
        campaign("x", "e", 8101, "vx"),
        wins("x"),
        lock("y", "m", 8102),
        wins("y"),
        leader("e"),
        login("el-nobody", "wrong"),
        login("el-user", "pw"),
        campaign("a", "e", 8101, "va"),
        wins("a"),
        // No second, waiting campaign here: etcd 3.4 itself sometimes answers a waiting
        // campaign under auth with "user name is empty" (its wait runs partly without the
        // caller's token), so the reference is not deterministic there.
        leader("e"),
        proclaim("a", "va2"),
        resign("a"),
        lock("c", "m", 8103),
        wins("c"),
        // A waiter that goes away: etcd's cleanup runs without the caller's token, so under
        // auth it is refused and the key stays until its lease ends.
        lock("d", "m", 8104),
        blocked("d"),
        cancel("d"),
        root("get {p}m/ --prefix --keys-only"),
        unlock("c"),
        health(""),
        logout(),
        root("get {p} --prefix --keys-only"),
        root("auth disable"),
        revoke(8101),
        revoke(8102),
        revoke(8103),
        revoke(8104),
    ]);

    let mut gateway = root_user();
    gateway.extend(ops![
        ctl("user add gw-user --new-user-password=pw"),
        ctl("role add gw-role"),
        ctl("role grant-permission gw-role read {p}a"),
        ctl("user grant-role gw-user gw-role"),
        ctl("put {p}a 1"),
        http("/v3/auth/enable", "{}"),
        http("/v3/kv/range", r#"{"key":"{k:a}"}"#),
        http_auth("/v3/kv/range", r#"{"key":"{k:a}"}"#),
        http(
            "/v3/auth/authenticate",
            r#"{"name":"gw-user","password":"wrong"}"#
        ),
        http(
            "/v3/auth/authenticate",
            r#"{"name":"gw-user","password":"pw"}"#
        ),
        http_auth("/v3/kv/range", r#"{"key":"{k:a}"}"#),
        http_auth("/v3/kv/range", r#"{"key":"{k:b}"}"#),
        http_auth("/v3/kv/put", r#"{"key":"{k:a}","value":"Mg=="}"#),
        http_auth("/v3/auth/role/get", r#"{"role":"gw-role"}"#),
        http(
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"rootpw"}"#
        ),
        http_auth("/v3/auth/role/get", r#"{"role":"gw-role"}"#),
        http_auth("/v3/auth/user/get", r#"{"name":"gw-user"}"#),
        // Listings hold every case's users and roles: the same on both sides.
        http_auth("/v3/auth/user/list", "{}"),
        http_auth("/v3/auth/role/list", "{}"),
        http_auth(
            "/v3/auth/role/grant",
            r#"{"name":"gw-role","perm":{"permType":"READWRITE","key":"{k:a}"}}"#
        ),
        http_auth("/v3/auth/role/get", r#"{"role":"gw-role"}"#),
        http_auth(
            "/v3/auth/user/add",
            r#"{"name":"gw-user2","password":"pw2"}"#
        ),
        http_auth(
            "/v3/auth/user/grant",
            r#"{"user":"gw-user2","role":"gw-role"}"#
        ),
        http_auth(
            "/v3/auth/user/changepw",
            r#"{"name":"gw-user2","password":"pw3"}"#
        ),
        http(
            "/v3/auth/authenticate",
            r#"{"name":"gw-user2","password":"pw3"}"#
        ),
        http_auth("/v3/kv/put", r#"{"key":"{k:a}","value":"Mg=="}"#),
        http_auth("/v3/kv/range", r#"{"key":"{k:a}"}"#),
        http_auth("/v3/auth/disable", "{}"),
        http(
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"rootpw"}"#
        ),
        http_auth(
            "/v3/auth/role/revoke",
            r#"{"role":"gw-role","key":"{k:a}"}"#
        ),
        http_auth(
            "/v3/auth/user/revoke",
            r#"{"name":"gw-user2","role":"gw-role"}"#
        ),
        http_auth("/v3/auth/user/delete", r#"{"name":"gw-user2"}"#),
        http_auth("/v3/auth/role/add", r#"{"name":"gw-role2"}"#),
        http_auth("/v3/auth/role/delete", r#"{"role":"gw-role2"}"#),
        http_auth("/v3/auth/disable", "{}"),
        http("/v3/kv/range", r#"{"key":"{k:a}"}"#),
    ]);
    vec![
        case("auth-elect/recipes-run-as-the-caller", elect),
        case("auth-gateway/token-and-auth-service", gateway),
    ]
}
