//! KV cases: Put, Range, DeleteRange and Compact, including their error paths.

use crate::model::*;
use crate::ops;

use SortOrder as O;
use SortTarget as T;

/// A value just over etcd's default --max-request-bytes (1.5 MiB), but under gRPC's
/// receive limit (max-request-bytes + 512 KiB), so etcdserver itself rejects it.
const TOO_LARGE_FOR_ETCDSERVER: usize = 1_600_000;
/// A value over etcd's gRPC receive limit (2 MiB), rejected by the gRPC layer.
const TOO_LARGE_FOR_GRPC: usize = 2_500_000;

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(put_cases());
    cases.extend(range_cases());
    cases.extend(sort_cases());
    cases.extend(delete_cases());
    cases.extend(compact_cases());
    cases
}

fn put_cases() -> Vec<Case> {
    vec![
        case("put/new-key", ops![put("a", "1"), get("a")]),
        case(
            "put/overwrite-bumps-version",
            ops![put("a", "1"), put("a", "2"), put("a", "3"), get("a")],
        ),
        case(
            "put/prev-kv",
            ops![put("a", "1").prev_kv(), put("a", "2").prev_kv(), get("a")],
        ),
        case("put/empty-value", ops![put("a", ""), get("a")]),
        case(
            "put/binary-value",
            ops![put("a", vec![0u8, 255, 1, b'\n']), get("a")],
        ),
        case(
            "put/binary-key",
            ops![
                put(abs(b"/put/binary-key/\xff\x00k".to_vec()), "v"),
                get(abs(b"/put/binary-key/".to_vec())).prefix(),
            ],
        ),
        case(
            "put/empty-key",
            ops![put(abs(""), "v"), put(abs(""), "").prev_kv()],
        ),
        case(
            "put/ignore-value",
            ops![
                put("a", "1"),
                put("a", "").ignore_value().prev_kv(),
                get("a")
            ],
        ),
        case(
            "put/ignore-value-with-value",
            ops![put("a", "1"), put("a", "2").ignore_value(), get("a")],
        ),
        case(
            "put/ignore-value-missing-key",
            ops![put("a", "").ignore_value(), get("a")],
        ),
        case(
            "put/ignore-lease-missing-key",
            ops![put("a", "v").ignore_lease(), get("a")],
        ),
        case(
            "put/ignore-lease-with-lease",
            ops![
                grant("l", 3600),
                put("a", "1"),
                put("a", "2").lease("l").ignore_lease(),
                get("a"),
                revoke("l"),
            ],
        ),
        case(
            "put/ignore-lease-keeps-lease",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                put("a", "2").ignore_lease().prev_kv(),
                get("a"),
                revoke("l"),
                get("a"),
            ],
        ),
        case(
            "put/ignore-value-and-lease",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                put("a", "").ignore_value().ignore_lease(),
                get("a"),
                revoke("l"),
            ],
        ),
        case(
            "put/unknown-lease",
            ops![put("a", "1").lease(7_777_777), get("a")],
        ),
        case(
            "put/prev-kv-after-delete",
            ops![put("a", "1"), del("a"), put("a", "2").prev_kv()],
        ),
        case(
            "put/large-value",
            ops![put("big", vec![b'x'; 1024 * 1024]), get("big")],
        ),
        case(
            "put/request-too-large",
            ops![
                put("big", vec![b'x'; TOO_LARGE_FOR_ETCDSERVER]),
                get("big").count_only()
            ],
        ),
        case(
            "put/message-too-large-for-grpc",
            ops![
                put("big", vec![b'x'; TOO_LARGE_FOR_GRPC]),
                get("big").count_only()
            ],
        ),
    ]
}

fn range_cases() -> Vec<Case> {
    let abcde = || {
        ops![
            put("a", "1"),
            put("b", "2"),
            put("c", "3"),
            put("d", "4"),
            put("e", "5")
        ]
    };
    let with = |mut setup: Vec<Op>, more: Vec<Op>| {
        setup.extend(more);
        setup
    };
    vec![
        case("range/missing-key", ops![get("a"), get("a").prefix()]),
        case(
            "range/explicit-end",
            with(
                abcde(),
                ops![get("a").end("c"), get("b").end("bb"), get("b").end("z")],
            ),
        ),
        case(
            "range/end-not-after-key",
            with(abcde(), ops![get("c").end("a"), get("b").end("b")]),
        ),
        case(
            "range/prefix",
            ops![
                put("p/1", "x"),
                put("p/2", "y"),
                put("p", "z"),
                put("q", "w"),
                get("p/").prefix(),
                get("p").prefix(),
            ],
        ),
        case(
            "range/prefix-ff",
            ops![
                put(abs(b"/range/prefix-ff/\xff".to_vec()), "1"),
                put(abs(b"/range/prefix-ff/\xff\xff".to_vec()), "2"),
                get(abs(b"/range/prefix-ff/\xff".to_vec())).prefix(),
            ],
        ),
        case(
            "range/from-key",
            with(
                abcde(),
                ops![
                    get("c").and_after().limit(4),
                    get("c").and_after().count_only()
                ],
            ),
        ),
        case(
            "range/all-keys",
            ops![
                put("a", "1"),
                get(abs(vec![0u8])).and_after().count_only(),
                get(abs(vec![0u8])).and_after().keys_only().limit(2),
            ],
        ),
        case(
            "range/limit",
            with(
                abcde(),
                ops![
                    get("a").prefix().limit(2),
                    get("a").end("z").limit(2),
                    get("").prefix().limit(2),
                ],
            ),
        ),
        case(
            "range/limit-boundaries",
            with(
                abcde(),
                ops![
                    get("").prefix().limit(5),
                    get("").prefix().limit(6),
                    get("").prefix().limit(4),
                    get("").prefix().limit(-1),
                ],
            ),
        ),
        case(
            "range/at-revision",
            ops![
                put("a", "1"),
                put("a", "2"),
                put("b", "3"),
                get("a").rev(1),
                get("a").rev(2),
                get("").prefix().rev(2),
                get("").prefix().rev(3),
                get("b").rev(2),
            ],
        ),
        case(
            "range/at-revision-after-delete",
            ops![
                put("a", "1"),
                del("a"),
                get("a"),
                get("a").rev(1),
                get("a").rev(2)
            ],
        ),
        case(
            "range/revision-zero-is-latest",
            ops![put("a", "1"), put("a", "2"), get("a").rev_abs(0)],
        ),
        case(
            "range/future-revision",
            ops![
                put("a", "1"),
                get("a").rev(2),
                get("a").rev_abs(1 << 40),
                get("a").rev(1)
            ],
        ),
        case(
            "range/negative-revision",
            ops![put("a", "1"), get("a").rev_abs(-1)],
        ),
        case(
            "range/serializable",
            ops![
                put("a", "1"),
                get("a").serializable(),
                get("a").serializable().rev(1)
            ],
        ),
        case(
            "range/keys-only",
            with(
                abcde(),
                ops![get("").prefix().keys_only(), get("c").keys_only().limit(1)],
            ),
        ),
        case(
            "range/count-only",
            with(
                abcde(),
                ops![
                    get("").prefix().count_only(),
                    get("a").count_only(),
                    get("zz").count_only(),
                ],
            ),
        ),
        case(
            "range/count-only-with-limit",
            with(abcde(), ops![get("").prefix().count_only().limit(2)]),
        ),
        case(
            "range/keys-only-and-count-only",
            with(abcde(), ops![get("").prefix().keys_only().count_only()]),
        ),
        case("range/mod-revision-filters", {
            let mut o = abcde();
            o.extend(ops![
                put("b", "2x"),
                put("d", "4x"),
                get("").prefix().min_mod(5),
                get("").prefix().max_mod(2),
                get("").prefix().min_mod(2).max_mod(6),
                get("").prefix().min_mod(100),
            ]);
            o
        }),
        case("range/create-revision-filters", {
            let mut o = abcde();
            o.extend(ops![
                put("a", "1x"),
                get("").prefix().min_create(3),
                get("").prefix().max_create(2),
                get("").prefix().min_create(2).max_create(4),
            ]);
            o
        }),
        case("range/filters-with-limit", {
            let mut o = abcde();
            o.extend(ops![
                put("a", "1x"),
                get("").prefix().min_mod(2).limit(2),
                get("").prefix().max_create(3).limit(1),
            ]);
            o
        }),
        case("range/filters-with-count-only", {
            let mut o = abcde();
            o.extend(ops![get("").prefix().min_mod(3).count_only()]);
            o
        }),
        case(
            "range/empty-key",
            ops![
                get(abs("")),
                get(abs("")).end("z"),
                get(abs("")).count_only()
            ],
        ),
        case("range/history-of-prefix", {
            ops![
                put("a", "1"),
                put("b", "1"),
                put("a", "2"),
                del("b"),
                put("c", "1"),
                get("").prefix().rev(1),
                get("").prefix().rev(2),
                get("").prefix().rev(3),
                get("").prefix().rev(4),
                get("").prefix().rev(5),
            ]
        }),
    ]
}

/// Every sort target with every order. The keys are built so that every target orders
/// them differently from key order and no two keys tie on any target, since etcd's Go
/// sort is not stable and a tie order would be an etcd implementation detail:
/// key a<b<c, create b<c<a, version a(1)<c(2)<b(3), mod a<c<b, value b<a<c.
fn sort_cases() -> Vec<Case> {
    let setup = || {
        ops![
            put("b", "b1"),
            put("c", "c1"),
            put("a", "2"),
            put("b", "b2"),
            put("c", "3"),
            put("b", "1"),
        ]
    };
    let mut cases = Vec::new();
    for target in [T::Key, T::Version, T::Create, T::Mod, T::Value] {
        for order in [O::None, O::Ascend, O::Descend] {
            let name = format!(
                "range/sort-{}-{}",
                format!("{target:?}").to_lowercase(),
                format!("{order:?}").to_lowercase()
            );
            let mut ops = setup();
            ops.extend(ops![
                get("").prefix().sort(target, order),
                get("").prefix().sort(target, order).limit(2),
                get("").prefix().sort(target, order).keys_only(),
            ]);
            cases.push(case(&name, ops));
        }
    }
    cases.push(case(
        // etcd quirk: with order None and a non-key target it still sorts ascending, but
        // it does not fetch the whole range first as it does for an explicit order: it
        // takes the first limit+1 keys in key order, sorts those and truncates.
        "range/sort-order-none-sorts-after-limit",
        ops![
            put("e", "1"),
            put("d", "1"),
            put("c", "1"),
            put("b", "1"),
            put("a", "1"),
            get("").prefix().sort(T::Mod, O::None).limit(2),
            get("").prefix().sort(T::Mod, O::Ascend).limit(2),
            get("").prefix().sort(T::Create, O::None).limit(4),
        ],
    ));
    cases.push(case("range/sort-with-revision", {
        let mut ops = setup();
        ops.extend(ops![get("").prefix().sort(T::Version, O::Descend).rev(4)]);
        ops
    }));
    cases
}

fn delete_cases() -> Vec<Case> {
    vec![
        case("del/single", ops![put("a", "1"), del("a"), get("a")]),
        case(
            "del/missing-key-keeps-revision",
            ops![del("a"), del("").prefix(), put("b", "1"), del("a")],
        ),
        case(
            "del/prev-kv",
            ops![
                put("a", "1"),
                put("a", "2"),
                del("a").prev_kv(),
                del("a").prev_kv()
            ],
        ),
        case(
            "del/range",
            ops![
                put("a", "1"),
                put("b", "2"),
                put("c", "3"),
                put("d", "4"),
                del("a").end("c").prev_kv(),
                get("").prefix(),
            ],
        ),
        case(
            "del/prefix",
            ops![
                put("x/1", "1"),
                put("x/2", "2"),
                put("y", "3"),
                del("x/").prefix().prev_kv(),
                get("").prefix(),
            ],
        ),
        case(
            // The name sorts after every other case's keys, so from-key only reaches this
            // case's own keys.
            "zzz/del-from-key",
            ops![
                put("a", "1"),
                put("b", "2"),
                put("c", "3"),
                del("b").and_after().prev_kv(),
                get("").prefix(),
            ],
        ),
        case("del/empty-key", ops![del(abs("")), del(abs("")).end("z")]),
        case(
            "del/version-resets",
            ops![
                put("a", "1"),
                put("a", "2"),
                del("a"),
                put("a", "3"),
                get("a"),
                get("a").rev(2),
            ],
        ),
        case(
            "del/one-revision-for-range",
            ops![
                put("a", "1"),
                put("b", "2"),
                put("c", "3"),
                del("").prefix(),
                get("").prefix().rev(3),
                get("").prefix().rev(4),
            ],
        ),
        case(
            "del/end-not-after-key",
            ops![
                put("a", "1"),
                put("b", "2"),
                del("b").end("a"),
                get("").prefix()
            ],
        ),
    ]
}

fn compact_cases() -> Vec<Case> {
    vec![
        case(
            "compact/basic",
            ops![
                put("a", "1"),
                put("a", "2"),
                put("a", "3"),
                compact(2),
                get("a").rev(1),
                get("a").rev(2),
                get("a"),
            ],
        ),
        case(
            "compact/future-revision",
            ops![put("a", "1"), compact(5), compact_abs(1 << 40), get("a")],
        ),
        case(
            "compact/twice",
            ops![
                put("a", "1"),
                put("a", "2"),
                compact(1),
                compact(1),
                compact(0)
            ],
        ),
        case(
            "compact/current-revision",
            ops![put("a", "1"), compact(1), get("a"), get("a").rev(1)],
        ),
        case(
            "compact/physical",
            ops![
                put("a", "1"),
                put("a", "2"),
                compact_physical(1),
                get("a").rev(1),
                get("a"),
            ],
        ),
        case(
            "compact/deleted-key-history",
            ops![
                put("a", "1"),
                del("a"),
                put("b", "1"),
                compact(2),
                get("a").rev(1),
                get("a").rev(2),
                get("").prefix(),
            ],
        ),
        case(
            "compact/zero-and-negative",
            ops![put("a", "1"), compact_abs(0), compact_abs(-1)],
        ),
        case(
            "compact/range-filters-after-compaction",
            ops![
                put("a", "1"),
                put("b", "1"),
                put("a", "2"),
                compact(2),
                get("").prefix().min_mod(1),
                get("").prefix().rev(2),
            ],
        ),
    ]
}
