//! v3election, v3lock, JSON gateway and health cases.
//!
//! Contenders use leases with requested IDs (from 8001 up, unique in the run) because a
//! contender's key is `<name>/<lease ID in hex>`: with server-chosen IDs the keys, and so
//! the key order of every range, would differ between the servers. Every lease is revoked
//! by its case, except in [`expiry_cases`], where the holder's lease expires ("the holder
//! is killed": nothing renews its lease) and the next contender must take over.
//!
//! Blocking calls (Campaign, Lock) start in the background and are awaited later: `wins`
//! expects an answer promptly, `blocked` expects none within half a second. A contender is
//! always confirmed `blocked` before the next one starts, which also orders their keys'
//! create revisions the same way on both servers.
//!
//! Gateway requests with malformed JSON are not compared: the error text is Go's JSON
//! decoder's (status and code do match).

use std::time::Duration;

use crate::model::*;
use crate::ops;

pub fn cases() -> Vec<Case> {
    let mut cases = election_cases();
    cases.extend(lock_cases());
    cases.extend(gateway_cases());
    cases.push(case(
        // etcdctl 3.4's elect and lock run clientv3/concurrency client-side (plain KV, Lease
        // and Watch calls), not the v3election/v3lock services. Only forms that leave
        // nothing behind are run: a killed `etcdctl elect <name> <proposal>` or a blocked
        // `etcdctl lock` would leave a key whose 60 s session lease expires mid-run.
        "ctl/elect-and-lock",
        ops![
            grant_id("l", 3600, 8080),
            campaign("a", "e", 8080, "va"),
            wins("a"),
            ctl("elect -l {p}e").timeout(Duration::from_millis(1500)),
            ctl("lock {p}m echo locked"),
            get("").prefix(),
            resign("a"),
            revoke(8080),
        ],
    ));
    cases.push(case(
        "health/check",
        ops![health(""), health("etcdserverpb.KV")],
    ));
    cases
}

fn election_cases() -> Vec<Case> {
    vec![
        case(
            "elect/three-contenders",
            ops![
                grant_id("a", 3600, 8001),
                grant_id("b", 3600, 8002),
                grant_id("c", 3600, 8003),
                campaign("a", "e", 8001, "va"),
                wins("a"),
                campaign("b", "e", 8002, "vb"),
                blocked("b"),
                campaign("c", "e", 8003, "vc"),
                blocked("c"),
                leader("e"),
                get("e/").prefix(),
                proclaim("a", "va2"),
                leader("e"),
                // The leader's lease ends: the next by create revision leads.
                revoke(8001),
                wins("b"),
                blocked("c"),
                leader("e"),
                proclaim("a", "zombie"),
                resign("a"),
                resign("b"),
                wins("c"),
                leader("e"),
                resign("c"),
                leader("e"),
                revoke(8002),
                revoke(8003),
            ],
        ),
        case(
            // Campaigning again with the same lease finds the key and proclaims the new
            // value instead of queueing behind itself.
            "elect/campaign-again-same-lease",
            ops![
                grant_id("l", 3600, 8010),
                campaign("first", "e", 8010, "v1"),
                wins("first"),
                campaign("again", "e", 8010, "v2"),
                wins("again"),
                campaign("same", "e", 8010, "v2"),
                wins("same"),
                leader("e"),
                revoke(8010),
            ],
        ),
        case(
            "elect/observe",
            ops![
                grant_id("a", 3600, 8020),
                grant_id("b", 3600, 8021),
                campaign("a", "e", 8020, "va"),
                wins("a"),
                observe("o", "e"),
                observed("o", 1),
                proclaim("a", "va2"),
                observed("o", 1),
                campaign("b", "e", 8021, "vb"),
                blocked("b"),
                resign("a"),
                wins("b"),
                observed("o", 1),
                revoke(8020),
                revoke(8021),
            ],
        ),
        case(
            // A campaigner whose client goes away resigns (etcd: Resign on the cancelled
            // context), so the next one leads when the leader resigns.
            "elect/cancelled-campaign",
            ops![
                grant_id("a", 3600, 8022),
                grant_id("b", 3600, 8023),
                grant_id("c", 3600, 8024),
                campaign("a", "e", 8022, "va"),
                wins("a"),
                campaign("b", "e", 8023, "vb"),
                blocked("b"),
                campaign("c", "e", 8024, "vc"),
                blocked("c"),
                cancel("b"),
                get("e/").prefix().keys_only(),
                resign("a"),
                wins("c"),
                revoke(8022),
                revoke(8023),
                revoke(8024),
            ],
        ),
        case(
            "elect/errors",
            ops![
                leader("nobody"),
                campaign("x", "e", 999_999, "v"),
                wins("x"),
                leader("e"),
            ],
        ),
    ]
}

fn lock_cases() -> Vec<Case> {
    vec![
        case(
            "lock/three-contenders",
            ops![
                grant_id("a", 3600, 8030),
                grant_id("b", 3600, 8031),
                grant_id("c", 3600, 8032),
                lock("a", "m", 8030),
                wins("a"),
                lock("b", "m", 8031),
                blocked("b"),
                lock("c", "m", 8032),
                blocked("c"),
                get("m/").prefix(),
                unlock("a"),
                wins("b"),
                blocked("c"),
                // The holder's lease is revoked: its key goes, the last waiter holds the lock.
                revoke(8031),
                wins("c"),
                unlock("c"),
                get("m/").prefix(),
                revoke(8030),
                revoke(8032),
            ],
        ),
        case(
            // A waiter whose client goes away leaves no key behind (etcd unlocks on the
            // cancelled context); the holder is unaffected.
            "lock/cancelled-waiter",
            ops![
                grant_id("a", 3600, 8033),
                grant_id("b", 3600, 8034),
                lock("a", "m", 8033),
                wins("a"),
                lock("b", "m", 8034),
                blocked("b"),
                cancel("b"),
                get("m/").prefix(),
                unlock("a"),
                revoke(8033),
                revoke(8034),
            ],
        ),
        case(
            "lock/relock-same-lease",
            ops![
                grant_id("l", 3600, 8040),
                lock("first", "m", 8040),
                wins("first"),
                lock("again", "m", 8040),
                wins("again"),
                unlock("again"),
                unlock("first"),
                revoke(8040),
            ],
        ),
        case(
            "lock/errors",
            ops![unlock("nobody"), lock("x", "m", 999_998), wins("x")],
        ),
    ]
}

fn gateway_cases() -> Vec<Case> {
    vec![
        case(
            "gateway/kv",
            ops![
                http("/v3/kv/put", r#"{"key":"{k:a}","value":"djE="}"#),
                http(
                    "/v3/kv/put",
                    r#"{"key":"{k:b}","value":"djI=","prev_kv":true}"#
                ),
                http("/v3/kv/range", r#"{"key":"{k:a}"}"#),
                http(
                    "/v3beta/kv/range",
                    r#"{"key":"{k:a}","rangeEnd":"{k:c}","limit":5}"#
                ),
                http(
                    "/v3/kv/range",
                    r#"{"key":"{k:a}","count_only":true,"unknown":1}"#
                ),
                http("/v3/kv/range", r#"{"key":"{k:a}","revision":"{rev+100}"}"#),
                http("/v3/kv/range", ""),
                http(
                    "/v3/kv/txn",
                    r#"{"compare":[{"target":"VALUE","key":"{k:a}","value":"djE="}],"success":[{"request_range":{"key":"{k:a}"}},{"requestPut":{"key":"{k:a}","value":"djM="}}],"failure":[]}"#
                ),
                http(
                    "/v3/kv/txn",
                    r#"{"compare":[{"target":"CREATE","key":"{k:a}","create_revision":"1"}],"failure":[{"request_delete_range":{"key":"{k:b}","prev_kv":true}}]}"#
                ),
                http(
                    "/v3/kv/deleterange",
                    r#"{"key":"{k:a}","range_end":"{k:z}"}"#
                ),
                http("/v3/kv/compaction", r#"{"revision":"{rev+100}"}"#),
                http("/v3/kv/nope", "{}"),
                http("/v3alpha/kv/range", "{}"),
            ],
        ),
        case(
            "gateway/lease",
            ops![
                http("/v3/lease/grant", r#"{"TTL":"3600","ID":"8060"}"#),
                http("/v3/lease/grant", r#"{"TTL":"3600","ID":"8060"}"#),
                http(
                    "/v3/kv/put",
                    r#"{"key":"{k:a}","value":"djE=","lease":"8060"}"#
                ),
                http("/v3/lease/timetolive", r#"{"ID":"8060","keys":true}"#),
                http("/v3/kv/lease/timetolive", r#"{"ID":"8061"}"#),
                http_stream("/v3/lease/keepalive", r#"{"ID":"8060"}"#, 1),
                http_stream("/v3/lease/keepalive", r#"{"ID":"8061"}"#, 1),
                http("/v3/lease/revoke", r#"{"ID":"8060"}"#),
                http("/v3/kv/lease/revoke", r#"{"ID":"8060"}"#),
                http("/v3/kv/range", r#"{"key":"{k:a}"}"#),
            ],
        ),
        case(
            "gateway/watch",
            ops![
                put("a", "1"),
                put("b", "1"),
                http_stream(
                    "/v3/watch",
                    r#"{"create_request":{"key":"{k:a}","start_revision":"{rev+1}"}}"#,
                    2
                ),
                http_stream(
                    "/v3/watch",
                    r#"{"create_request":{"key":"{k:b}","range_end":"{k:a}"}}"#,
                    1
                ),
                // Several requests in one body; no history, so only the two `created`
                // answers come, in a deterministic order.
                http_stream(
                    "/v3/watch",
                    r#"{"create_request":{"key":"{k:a}","prev_kv":true}} {"create_request":{"key":"{k:b}"}}"#,
                    2
                ),
            ],
        ),
        case(
            "gateway/election-and-lock",
            ops![
                http("/v3/lease/grant", r#"{"TTL":"3600","ID":"8070"}"#),
                http("/v3/election/leader", r#"{"name":"{k:e}"}"#),
                http(
                    "/v3/election/campaign",
                    r#"{"name":"{k:e}","lease":"8070","value":"djE="}"#
                ),
                http("/v3/election/leader", r#"{"name":"{k:e}"}"#),
                http_stream("/v3/election/observe", r#"{"name":"{k:e}"}"#, 1),
                http(
                    "/v3/election/proclaim",
                    r#"{"leader":{"name":"{k:e}","key":"{k:e/1f86}","rev":"{rev+1}","lease":"8070"},"value":"djI="}"#
                ),
                http(
                    "/v3/election/proclaim",
                    r#"{"leader":{"name":"{k:e}","key":"{k:e/1f86}","rev":"{rev+99}","lease":"8070"},"value":"djM="}"#
                ),
                http(
                    "/v3/election/resign",
                    r#"{"leader":{"name":"{k:e}","key":"{k:e/1f86}","rev":"{rev+1}","lease":"8070"}}"#
                ),
                http("/v3/lock/lock", r#"{"name":"{k:m}","lease":"8070"}"#),
                http("/v3/lock/unlock", r#"{"key":"{k:m/1f86}"}"#),
                http("/v3/lock/unlock", "{}"),
                http(
                    "/v3/election/campaign",
                    r#"{"name":"{k:e}","lease":"424242"}"#
                ),
                http("/v3/lease/revoke", r#"{"ID":"8070"}"#),
            ],
        ),
        case(
            "gateway/maintenance",
            ops![
                http("/v3/maintenance/status", "{}"),
                http("/v3/maintenance/alarm", "{}"),
                http("/v3/maintenance/transfer-leadership", "{}"),
                http("/v3/cluster/member/remove", r#"{"ID":"1"}"#),
            ],
        ),
    ]
}

/// Cases whose holder's lease really expires; they run with the other expiry cases, last.
pub fn expiry_cases() -> Vec<Case> {
    let expiry = Duration::from_secs(10);
    vec![
        case(
            "lock-expiry/killed-holder",
            ops![
                grant_id("holder", 2, 8050),
                grant_id("w1", 3600, 8051),
                grant_id("w2", 3600, 8052),
                lock("holder", "m", 8050),
                wins("holder"),
                lock("w1", "m", 8051),
                blocked("w1"),
                lock("w2", "m", 8052),
                blocked("w2"),
                wins_within("w1", expiry),
                blocked("w2"),
                get("m/").prefix(),
                unlock("w1"),
                wins("w2"),
                revoke(8051),
                revoke(8052),
            ],
        ),
        case(
            "elect-expiry/killed-leader",
            ops![
                grant_id("leader", 2, 8053),
                grant_id("next", 3600, 8054),
                campaign("leader", "e", 8053, "l"),
                wins("leader"),
                campaign("next", "e", 8054, "n"),
                blocked("next"),
                wins_within("next", expiry),
                leader("e"),
                revoke(8054),
            ],
        ),
    ]
}
