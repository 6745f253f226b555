//! Lease cases: grant (server-chosen and requested IDs, TTL bounds), revoke, TimeToLive,
//! Leases, keep-alive, attaching and detaching keys — and, separately, expiry.
//!
//! Every lease in [`cases`] is either long-lived (3600 s, far beyond the run) or revoked
//! by its own case: a lease expiring in the middle of a later case would change that case's
//! revisions or lease listings depending on timing. Expiry is exercised only by
//! [`expiry_cases`], which run last.

use std::time::Duration;

use crate::model::*;
use crate::ops;

/// etcd rejects TTLs above this (`MaxLeaseTTL`, 9,000,000,000 s).
const MAX_LEASE_TTL: i64 = 9_000_000_000;

pub fn cases() -> Vec<Case> {
    vec![
        case("lease/grant", ops![grant("l", 3600), ttl("l"), revoke("l")]),
        case(
            "lease/grant-requested-id",
            ops![grant_id("l", 3600, 1001), ttl(1001), revoke(1001)],
        ),
        case(
            "lease/grant-duplicate-id",
            ops![
                grant_id("l", 3600, 1002),
                grant_id("again", 60, 1002),
                ttl(1002),
                revoke(1002)
            ],
        ),
        case(
            // etcd raises TTLs below its minimum (1.5 x election timeout, rounded up: 2 s
            // with default flags) to the minimum, and says so in the response.
            "lease/grant-min-ttl-rounding",
            ops![
                grant("one", 1),
                grant("zero", 0),
                grant("two", 2),
                grant("three", 3),
                revoke("one"),
                revoke("zero"),
                revoke("two"),
                revoke("three"),
            ],
        ),
        case(
            "lease/grant-negative-ttl",
            ops![grant("neg", -5), revoke("neg")],
        ),
        case(
            "lease/grant-ttl-bounds",
            ops![
                grant("max", MAX_LEASE_TTL),
                grant("over", MAX_LEASE_TTL + 1),
                revoke("max"),
            ],
        ),
        case(
            "lease/grant-negative-id",
            ops![grant_id("neg", 3600, -7), revoke(-7)],
        ),
        case(
            "lease/revoke-deletes-keys-in-one-revision",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                put("b", "2").lease("l"),
                put("c", "3"),
                revoke("l"),
                get("").prefix(),
                get("").prefix().rev(3),
            ],
        ),
        case(
            "lease/revoke-without-keys-keeps-revision",
            ops![grant("l", 3600), revoke("l"), get("a")],
        ),
        case("lease/revoke-unknown", ops![revoke(424_242), revoke(0)]),
        case(
            "lease/revoke-twice",
            ops![grant("l", 3600), revoke("l"), revoke("l")],
        ),
        case(
            "lease/ttl-with-keys",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                put("b", "1").lease("l"),
                put("c", "1").lease("l"),
                ttl_keys("l"),
                ttl("l"),
                revoke("l"),
            ],
        ),
        case("lease/ttl-unknown", ops![ttl(434_343), ttl_keys(434_343)]),
        case(
            "lease/ttl-after-revoke",
            ops![grant("l", 3600), revoke("l"), ttl_keys("l")],
        ),
        case(
            "lease/list",
            ops![
                grant("a", 3600),
                grant_id("b", 3600, 1003),
                // Lists every lease alive on the server, including other cases' long-lived
                // ones: the same set on both sides.
                Op::LeaseList,
                revoke("a"),
                revoke("b"),
                Op::LeaseList,
            ],
        ),
        case(
            "lease/keepalive",
            ops![grant("l", 3600), keep_alive("l"), ttl("l"), revoke("l")],
        ),
        case("lease/keepalive-unknown", ops![keep_alive(454_545)]),
        case(
            "lease/keepalive-after-revoke",
            ops![grant("l", 3600), revoke("l"), keep_alive("l")],
        ),
        case(
            "lease/reattach-to-other-lease",
            ops![
                grant("l1", 3600),
                grant("l2", 3600),
                put("a", "1").lease("l1"),
                put("a", "2").lease("l2"),
                ttl_keys("l1"),
                ttl_keys("l2"),
                revoke("l1"),
                get("a"),
                revoke("l2"),
                get("a"),
            ],
        ),
        case(
            "lease/put-without-lease-detaches",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                put("a", "2"),
                ttl_keys("l"),
                revoke("l"),
                get("a"),
            ],
        ),
        case(
            "lease/deleted-key-detaches",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                del("a"),
                ttl_keys("l"),
                revoke("l"),
                get("a").rev(2),
            ],
        ),
        case(
            "lease/put-with-revoked-lease",
            ops![
                grant("l", 3600),
                revoke("l"),
                put("a", "1").lease("l"),
                get("a")
            ],
        ),
        case(
            "lease/range-shows-lease",
            ops![
                grant("l", 3600),
                grant_id("r", 3600, 1004),
                put("a", "1").lease("l"),
                put("b", "1").lease("r"),
                get("").prefix(),
                revoke("l"),
                revoke("r"),
            ],
        ),
    ]
}

/// Leases that really expire. A TTL of 1 is raised to etcd's 2 s minimum; the delete events
/// are awaited on a watch (up to 10 s: etcd checks expiry every 500 ms and revokes through
/// raft), so the cases take about as long as the TTL.
pub fn expiry_cases() -> Vec<Case> {
    let expiry = Duration::from_secs(10);
    vec![
        case(
            "lease-expiry/keys-deleted",
            ops![
                // Watching (deletes only) before the grant: the expiry cannot be missed
                // however slow the puts are.
                watch_open("w", watch("").prefix().prev_kv().no_put()),
                grant("e", 1),
                put("a", "1").lease("e"),
                put("b", "2").lease("e"),
                put("c", "3"),
                recv_within("w", 2, expiry),
                get("").prefix(),
                ttl_keys("e"),
                put("d", "4").lease("e"),
            ],
        ),
        case(
            "lease-expiry/requested-id",
            ops![
                watch_open("w", watch("a").no_put()),
                grant_id("e", 2, 1005),
                put("a", "1").lease(1005),
                recv_within("w", 1, expiry),
                ttl(1005),
                revoke(1005),
            ],
        ),
    ]
}
