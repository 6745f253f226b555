//! Txn cases: every compare target with every result operator, range compares, nesting,
//! branch selection, isolation (compares see the state before the txn), and the request
//! validation errors (too many operations, duplicate keys, empty keys).

use crate::model::*;
use crate::{ops, tops};

use CompareOp::{Equal as Eq, Greater as Gt, Less as Lt, NotEqual as Ne};

/// etcd's default --max-txn-ops.
const MAX_TXN_OPS: usize = 128;

pub fn cases() -> Vec<Case> {
    let mut cases = compare_cases();
    cases.extend(structure_cases());
    cases.extend(validation_cases());
    cases
}

/// A txn whose branches are told apart by their response count (one read vs two), so the
/// rendering shows which branch ran, not only the `succeeded` flag.
fn probe(compares: Vec<Cmp>) -> Txn {
    txn(
        compares,
        tops![get("then")],
        tops![get("else"), get("else").count_only()],
    )
}

/// Four cases per compare target, one per operator, each with a true and a false compare.
fn compare_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (name, op)) in [("eq", Eq), ("ne", Ne), ("lt", Lt), ("gt", Gt)]
        .into_iter()
        .enumerate()
    {
        // Requested (so unmasked) lease IDs, unique per case.
        let lease_id = 0x7000 + i as i64;
        cases.push(case(
            &format!("txn/value-{name}"),
            ops![
                put("k", "m"),
                probe(vec![cmp_value("k", op, "m")]),
                probe(vec![cmp_value("k", op, "a")]),
                probe(vec![cmp_value("k", op, "z")]),
                // Byte-wise, not length-first: "m" vs "mm".
                probe(vec![cmp_value("k", op, "mm")]),
            ],
        ));
        cases.push(case(
            &format!("txn/version-{name}"),
            ops![
                put("k", "1"),
                put("k", "2"),
                probe(vec![cmp_version("k", op, 2)]),
                probe(vec![cmp_version("k", op, 1)]),
                probe(vec![cmp_version("k", op, 3)]),
                probe(vec![cmp_version("missing", op, 0)]),
            ],
        ));
        cases.push(case(
            &format!("txn/create-{name}"),
            ops![
                put("k", "1"),
                put("k", "2"),
                probe(vec![cmp_create("k", op, 1)]),
                probe(vec![cmp_create("k", op, 0)]),
                probe(vec![cmp_create("k", op, 2)]),
                probe(vec![cmp_create_abs("missing", op, 0)]),
            ],
        ));
        cases.push(case(
            &format!("txn/mod-{name}"),
            ops![
                put("k", "1"),
                put("k", "2"),
                probe(vec![cmp_mod("k", op, 2)]),
                probe(vec![cmp_mod("k", op, 1)]),
                probe(vec![cmp_mod("k", op, 3)]),
            ],
        ));
        cases.push(case(
            &format!("txn/lease-{name}"),
            ops![
                grant_id("l", 3600, lease_id),
                put("k", "1").lease("l"),
                put("plain", "1"),
                probe(vec![cmp_lease("k", op, lease_id)]),
                probe(vec![cmp_lease("k", op, 0)]),
                probe(vec![cmp_lease("plain", op, 0)]),
                probe(vec![cmp_lease("k", op, 1 << 50)]),
                revoke("l"),
            ],
        ));
    }
    cases.push(case(
        "txn/lease-compare-server-chosen-id",
        ops![
            grant("l", 3600),
            put("k", "1").lease("l"),
            probe(vec![cmp_lease("k", Eq, "l")]),
            revoke("l"),
            probe(vec![cmp_lease("k", Eq, "l")]),
        ],
    ));
    cases.push(case(
        "txn/compare-missing-key",
        ops![
            // A value compare on a missing key always fails, whatever the operator.
            probe(vec![cmp_value("missing", Eq, "")]),
            probe(vec![cmp_value("missing", Ne, "x")]),
            probe(vec![cmp_version("missing", Eq, 0)]),
            probe(vec![cmp_mod("missing", Lt, 1)]),
            probe(vec![cmp_lease("missing", Eq, 0)]),
        ],
    ));
    cases.push(case(
        "txn/compare-range",
        ops![
            put("r/a", "1"),
            put("r/b", "1"),
            put("r/c", "2"),
            probe(vec![cmp_value("r/", Eq, "1").prefix()]),
            probe(vec![cmp_value("r/a", Eq, "1").end("r/c")]),
            probe(vec![cmp_version("r/", Eq, 1).prefix()]),
            probe(vec![cmp_mod("r/", Gt, 0).prefix()]),
            probe(vec![cmp_create("r/", Lt, 3).prefix()]),
            // An empty range: no key to fail the compare.
            probe(vec![cmp_value("none/", Eq, "x").prefix()]),
        ],
    ));
    cases.push(case(
        "txn/multiple-compares",
        ops![
            put("a", "1"),
            put("b", "2"),
            probe(vec![cmp_value("a", Eq, "1"), cmp_value("b", Eq, "2")]),
            probe(vec![cmp_value("a", Eq, "1"), cmp_value("b", Eq, "3")]),
            probe(vec![cmp_version("a", Eq, 1), cmp_mod("b", Eq, 2)]),
        ],
    ));
    cases
}

fn structure_cases() -> Vec<Case> {
    vec![
        case("txn/empty", ops![txn(vec![], vec![], vec![])]),
        case(
            "txn/empty-failure-branch",
            ops![txn(
                vec![cmp_version("a", Eq, 5)],
                tops![put("a", "1")],
                vec![]
            )],
        ),
        case(
            "txn/success-branch-writes",
            ops![
                put("a", "1"),
                txn(
                    vec![cmp_value("a", Eq, "1")],
                    tops![put("a", "2").prev_kv(), put("b", "1"), get("").prefix()],
                    tops![put("c", "1")],
                ),
                get("").prefix(),
            ],
        ),
        case(
            "txn/failure-branch-writes",
            ops![
                put("a", "1"),
                txn(
                    vec![cmp_value("a", Eq, "0")],
                    tops![put("b", "1")],
                    tops![
                        put("c", "1").prev_kv(),
                        del("a").prev_kv(),
                        get("").prefix()
                    ],
                ),
                get("").prefix(),
            ],
        ),
        case(
            "txn/compares-see-state-before",
            ops![
                put("a", "1"),
                txn(
                    vec![cmp_value("a", Eq, "1")],
                    tops![put("a", "2"), get("a")],
                    tops![put("a", "x")],
                ),
                probe(vec![cmp_value("a", Eq, "1")]),
                probe(vec![cmp_value("a", Eq, "2")]),
            ],
        ),
        case(
            "txn/one-revision-for-all-writes",
            ops![
                put("c", "1"),
                txn(
                    vec![],
                    tops![put("a", "1"), put("b", "1"), del("c"), get("").prefix()],
                    vec![],
                ),
                get("").prefix(),
            ],
        ),
        case(
            "txn/read-only-keeps-revision",
            ops![
                put("a", "1"),
                txn(
                    vec![],
                    tops![get("a"), get("").prefix().count_only()],
                    vec![]
                ),
            ],
        ),
        case(
            "txn/delete-missing-keeps-revision",
            ops![
                put("a", "1"),
                txn(vec![], tops![del("zz"), get("a")], vec![])
            ],
        ),
        case(
            "txn/put-then-delete-same-txn-disallowed",
            ops![txn(vec![], tops![put("a", "1"), del("a")], vec![])],
        ),
        case(
            "txn/get-at-revision",
            ops![
                put("a", "1"),
                put("a", "2"),
                txn(vec![], tops![get("a").rev(1), get("a")], vec![]),
                txn(vec![], tops![get("a").rev(10)], vec![]),
            ],
        ),
        case(
            "txn/get-at-compacted-revision",
            ops![
                put("a", "1"),
                put("a", "2"),
                compact(2),
                txn(vec![], tops![get("a").rev(1)], vec![]),
            ],
        ),
        case(
            "txn/nested",
            ops![
                put("a", "1"),
                txn(
                    vec![cmp_value("a", Eq, "1")],
                    tops![
                        put("b", "1"),
                        txn(
                            vec![cmp_value("b", Eq, "1")],
                            tops![put("c", "1")],
                            tops![put("d", "1")],
                        ),
                    ],
                    vec![],
                ),
                get("").prefix(),
            ],
        ),
        case(
            "txn/nested-failure-branch",
            ops![
                put("a", "1"),
                txn(
                    vec![cmp_value("a", Eq, "nope")],
                    vec![],
                    tops![txn(
                        vec![cmp_version("a", Eq, 1)],
                        tops![
                            put("x", "1"),
                            txn(vec![], tops![get("a"), put("y", "1")], vec![])
                        ],
                        vec![],
                    )],
                ),
                get("").prefix(),
            ],
        ),
        case(
            "txn/prev-kv-in-ops",
            ops![
                put("a", "1"),
                put("b", "1"),
                txn(
                    vec![],
                    tops![
                        put("a", "2").prev_kv(),
                        del("b").prev_kv(),
                        del("c").prev_kv()
                    ],
                    vec![],
                ),
            ],
        ),
        case(
            "txn/lease-in-ops",
            ops![
                grant("l", 3600),
                txn(vec![], tops![put("a", "1").lease("l"), get("a")], vec![]),
                ttl_keys("l"),
                revoke("l"),
                get("a"),
            ],
        ),
        case(
            "txn/ignore-value-in-ops",
            ops![
                put("a", "1"),
                txn(vec![], tops![put("a", "").ignore_value(), get("a")], vec![]),
                txn(vec![], tops![put("missing", "").ignore_value()], vec![]),
            ],
        ),
    ]
}

fn puts(n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::Put(put(format!("k{i}").as_str(), "v")))
        .collect()
}

fn validation_cases() -> Vec<Case> {
    vec![
        case(
            "txn/max-ops-allowed",
            ops![
                txn(vec![], puts(MAX_TXN_OPS), vec![]),
                get("").prefix().count_only()
            ],
        ),
        case(
            "txn/too-many-success-ops",
            ops![
                txn(vec![], puts(MAX_TXN_OPS + 1), vec![]),
                get("").prefix().count_only()
            ],
        ),
        case(
            "txn/too-many-failure-ops",
            ops![txn(vec![], vec![], puts(MAX_TXN_OPS + 1))],
        ),
        case(
            "txn/too-many-compares",
            ops![txn(
                (0..=MAX_TXN_OPS)
                    .map(|i| cmp_version(format!("k{i}").as_str(), Eq, 0))
                    .collect(),
                vec![],
                vec![],
            )],
        ),
        case(
            "txn/too-many-ops-nested",
            ops![txn(
                vec![],
                {
                    // The outer level uses 100 of the budget; the nested txn gets what is
                    // left (28), so its 29 ops are one too many.
                    let mut ops = puts(100);
                    ops.push(TxnOp::Txn(txn(
                        vec![],
                        (0..29)
                            .map(|i| TxnOp::Put(put(format!("n{i}").as_str(), "v")))
                            .collect(),
                        vec![],
                    )));
                    ops
                },
                vec![],
            )],
        ),
        case(
            "txn/duplicate-put",
            ops![
                txn(vec![], tops![put("a", "1"), put("a", "2")], vec![]),
                get("a")
            ],
        ),
        case(
            "txn/duplicate-put-in-deleted-range",
            ops![txn(vec![], tops![del("a").end("c"), put("b", "1")], vec![])],
        ),
        case(
            "txn/duplicate-delete-overlap-allowed",
            ops![
                put("a", "1"),
                txn(vec![], tops![del("a").end("c"), del("b").end("d")], vec![]),
            ],
        ),
        case(
            "txn/put-and-get-same-key-allowed",
            ops![txn(
                vec![],
                tops![get("a"), put("a", "1"), get("a")],
                vec![]
            )],
        ),
        case(
            "txn/same-key-in-both-branches-allowed",
            ops![txn(
                vec![cmp_version("a", Eq, 0)],
                tops![put("a", "then")],
                tops![put("a", "else")],
            )],
        ),
        case(
            "txn/duplicate-across-nesting",
            ops![txn(
                vec![],
                tops![put("a", "1"), txn(vec![], tops![put("a", "2")], vec![])],
                vec![],
            )],
        ),
        case(
            "txn/duplicate-in-sibling-nested-branches-allowed",
            ops![txn(
                vec![],
                tops![txn(
                    vec![cmp_version("a", Eq, 0)],
                    tops![put("a", "1")],
                    tops![put("a", "2")],
                )],
                vec![],
            )],
        ),
        case(
            "txn/empty-key-in-op",
            ops![
                txn(vec![], tops![put(abs(""), "1")], vec![]),
                txn(vec![], tops![get(abs(""))], vec![]),
                txn(vec![], tops![del(abs(""))], vec![]),
            ],
        ),
        case(
            "txn/empty-key-in-compare",
            ops![txn(vec![cmp_version(abs(""), Eq, 0)], vec![], vec![])],
        ),
        case(
            "txn/unknown-lease-in-op",
            ops![
                txn(vec![], tops![put("a", "1").lease(8_888_888)], vec![]),
                get("a")
            ],
        ),
        case(
            "txn/ignore-value-with-value-in-op",
            ops![
                put("a", "1"),
                txn(vec![], tops![put("a", "2").ignore_value()], vec![])
            ],
        ),
    ]
}
