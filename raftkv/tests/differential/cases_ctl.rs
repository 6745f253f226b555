//! etcdctl cases: the same server features driven through the real `etcdctl` (API v3),
//! comparing its stdout, stderr and exit status — what scripts and operators see.
//! Templates (`{p}`, `{rev+N}`, `{lease:h}`, `{dir}`) are described on [`Ctl`].

use std::time::Duration;

use crate::model::*;
use crate::ops;

/// How long `etcdctl watch` may run: it never exits by itself, and history replay arrives
/// within milliseconds.
const WATCH_FOR: Duration = Duration::from_secs(2);

fn abc() -> Vec<Op> {
    ops![
        ctl("put {p}a 1"),
        ctl("put {p}b 22"),
        ctl("put {p}c 333"),
        ctl("put {p}a 1x"),
    ]
}

fn with(mut setup: Vec<Op>, more: Vec<Op>) -> Vec<Op> {
    setup.extend(more);
    setup
}

pub fn cases() -> Vec<Case> {
    let mut cases = kv_cases();
    cases.extend(txn_watch_cases());
    cases.extend(lease_cases());
    cases.extend(maintenance_cases());
    cases
}

fn kv_cases() -> Vec<Case> {
    vec![
        case("ctl/put-get", ops![ctl("put {p}a hello"), ctl("get {p}a")]),
        case("ctl/get-missing", ops![ctl("get {p}nothing")]),
        case("ctl/get-prefix", with(abc(), ops![ctl("get {p} --prefix")])),
        case(
            "ctl/get-range",
            with(abc(), ops![ctl("get {p}a {p}c"), ctl("get {p}c {p}a")]),
        ),
        case(
            "ctl/get-from-key",
            with(
                abc(),
                ops![ctl("get {p}b --from-key --limit=2 --keys-only")],
            ),
        ),
        case(
            "ctl/get-limit",
            with(
                abc(),
                ops![
                    ctl("get {p} --prefix --limit=2"),
                    ctl("get {p} --prefix --limit=2 -w json")
                ],
            ),
        ),
        case(
            "ctl/get-order",
            with(
                abc(),
                ops![
                    ctl("get {p} --prefix --order=DESCEND"),
                    ctl("get {p} --prefix --order=ASCEND"),
                ],
            ),
        ),
        case(
            "ctl/get-sort-by",
            with(
                abc(),
                ops![
                    ctl("get {p} --prefix --sort-by=VERSION --order=DESCEND"),
                    ctl("get {p} --prefix --sort-by=CREATE --order=DESCEND"),
                    ctl("get {p} --prefix --sort-by=MODIFY --order=ASCEND"),
                    ctl("get {p} --prefix --sort-by=VALUE --order=DESCEND"),
                    ctl("get {p} --prefix --sort-by=KEY --order=DESCEND"),
                ],
            ),
        ),
        case(
            "ctl/get-keys-only",
            with(abc(), ops![ctl("get {p} --prefix --keys-only")]),
        ),
        case(
            "ctl/get-print-value-only",
            with(abc(), ops![ctl("get {p} --prefix --print-value-only")]),
        ),
        case(
            "ctl/get-keys-only-json",
            with(abc(), ops![ctl("get {p} --prefix --keys-only -w json")]),
        ),
        case(
            "ctl/get-rev",
            with(
                abc(),
                ops![
                    ctl("get {p}a --rev={rev+1}"),
                    ctl("get {p} --prefix --rev={rev+2}")
                ],
            ),
        ),
        case(
            "ctl/get-future-rev",
            with(abc(), ops![ctl("get {p}a --rev={rev+100}")]),
        ),
        case(
            "ctl/get-json",
            with(abc(), ops![ctl("get {p} --prefix -w json")]),
        ),
        case(
            "ctl/get-fields",
            with(abc(), ops![ctl("get {p}a -w fields")]),
        ),
        case(
            "ctl/get-consistency-serializable",
            with(abc(), ops![ctl("get {p}a --consistency=s")]),
        ),
        case(
            "ctl/put-prev-kv",
            ops![ctl("put {p}a 1 --prev-kv"), ctl("put {p}a 2 --prev-kv")],
        ),
        case(
            "ctl/put-ignore-value",
            ops![
                ctl("put {p}a 1"),
                ctl("put {p}a --ignore-value"),
                ctl("get {p}a -w json"),
                ctl("put {p}missing --ignore-value"),
            ],
        ),
        case("ctl/put-json", ops![ctl("put {p}a 1 -w json")]),
        case("ctl/put-empty-key", ops![ctl_args(&["put", "", "v"])]),
        case(
            "ctl/put-value-from-stdin",
            ops![
                ctl("put {p}a").stdin("from stdin"),
                ctl("get {p}a --print-value-only")
            ],
        ),
        case(
            "ctl/del",
            ops![ctl("put {p}a 1"), ctl("del {p}a"), ctl("get {p}a")],
        ),
        case("ctl/del-missing", ops![ctl("del {p}a")]),
        case(
            "ctl/del-prefix-prev-kv",
            with(abc(), ops![ctl("del {p} --prefix --prev-kv")]),
        ),
        case(
            "ctl/del-range-json",
            with(abc(), ops![ctl("del {p}a {p}c --prev-kv -w json")]),
        ),
    ]
}

fn txn_watch_cases() -> Vec<Case> {
    vec![
        case(
            "ctl/txn-success",
            ops![
                ctl("put {p}a 1"),
                ctl("txn --interactive=false").stdin(
                    "value(\"{p}a\") = \"1\"\n\nput {p}a 2\nget {p}a\n\nput {p}b x\n\n"
                ),
                ctl("get {p} --prefix"),
            ],
        ),
        case(
            "ctl/txn-failure",
            ops![
                ctl("put {p}a 1"),
                ctl("txn --interactive=false").stdin(
                    "value(\"{p}a\") = \"9\"\nmod(\"{p}a\") > \"0\"\n\nput {p}a 2\n\ndel {p}a\nput {p}b x\n\n"
                ),
                ctl("get {p} --prefix"),
            ],
        ),
        case(
            "ctl/txn-json",
            ops![
                ctl("put {p}a 1"),
                ctl("txn --interactive=false -w json")
                    .stdin("ver(\"{p}a\") = \"1\"\n\nput {p}a 2 --prev-kv\nget {p}a\n\n\n"),
            ],
        ),
        case(
            "ctl/txn-too-many-ops",
            ops![ctl("txn --interactive=false").stdin(&{
                let mut s = String::from("\n");
                for i in 0..129 {
                    s += &format!("put {{p}}k{i} v\n");
                }
                s + "\n\n"
            })],
        ),
        case(
            "ctl/watch-rev",
            ops![
                ctl("put {p}a 1"),
                ctl("put {p}a 2"),
                ctl("del {p}a"),
                ctl("watch {p}a --rev={rev+1}").timeout(WATCH_FOR),
            ],
        ),
        case(
            "ctl/watch-prefix-prev-kv",
            with(
                abc(),
                ops![ctl("watch {p} --prefix --prev-kv --rev={rev+1}").timeout(WATCH_FOR)],
            ),
        ),
        case(
            "ctl/watch-json",
            with(
                abc(),
                ops![ctl("watch {p} --prefix --rev={rev+2} -w json").timeout(WATCH_FOR)],
            ),
        ),
        case(
            "ctl/watch-compacted",
            with(
                abc(),
                ops![
                    ctl("compaction {rev+3}"),
                    ctl("watch {p}a --rev={rev+1}").timeout(WATCH_FOR),
                ],
            ),
        ),
    ]
}

fn lease_cases() -> Vec<Case> {
    vec![
        case(
            "ctl/lease-grant-revoke",
            ops![
                ctl("lease grant 3600").capture_lease("l"),
                ctl("put {p}a 1 --lease={lease:l}"),
                ctl("put {p}b 1 --lease={lease:l}"),
                ctl("lease timetolive {lease:l} --keys"),
                ctl("lease revoke {lease:l}"),
                ctl("get {p} --prefix"),
                ctl("lease timetolive {lease:l}"),
            ],
        ),
        case(
            "ctl/lease-grant-json",
            ops![
                ctl("lease grant 3600 -w json").capture_lease("l"),
                ctl("lease timetolive {lease:l} -w json"),
                ctl("lease revoke {lease:l} -w json"),
            ],
        ),
        case(
            "ctl/lease-grant-min-ttl",
            ops![
                ctl("lease grant 1").capture_lease("l"),
                ctl("lease revoke {lease:l}")
            ],
        ),
        case(
            "ctl/lease-list",
            ops![
                ctl("lease grant 3600").capture_lease("l"),
                // Every live lease on the server, in Go-map order: sorted before comparing.
                ctl("lease list").sort_stdout(),
                ctl("lease list -w json"),
                ctl("lease revoke {lease:l}"),
            ],
        ),
        case(
            "ctl/lease-keep-alive-once",
            ops![
                ctl("lease grant 3600").capture_lease("l"),
                ctl("lease keep-alive --once {lease:l}"),
                ctl("lease revoke {lease:l}"),
                ctl("lease keep-alive --once {lease:l}"),
            ],
        ),
        case(
            "ctl/lease-revoke-unknown",
            ops![ctl("lease revoke 123abc"), ctl("lease timetolive 123abc")],
        ),
        case(
            "ctl/put-unknown-lease",
            ops![ctl("put {p}a 1 --lease=123abd")],
        ),
    ]
}

fn maintenance_cases() -> Vec<Case> {
    vec![
        case(
            "ctl/compaction",
            with(
                abc(),
                ops![
                    ctl("compaction {rev+3}"),
                    ctl("get {p}a --rev={rev+1}"),
                    ctl("get {p}a --rev={rev+3}"),
                    ctl("compaction {rev+2}"),
                    ctl("compaction {rev+100}"),
                ],
            ),
        ),
        case(
            "ctl/compaction-physical",
            with(abc(), ops![ctl("compaction --physical {rev+4}")]),
        ),
        case(
            "ctl/endpoint-status",
            with(abc(), ops![ctl("endpoint status -w json")]),
        ),
        case("ctl/endpoint-health", ops![ctl("endpoint health -w json")]),
        case(
            "ctl/endpoint-hashkv",
            with(abc(), ops![ctl("endpoint hashkv -w json")]),
        ),
        case(
            "ctl/snapshot-save",
            with(
                abc(),
                ops![
                    ctl("snapshot save {dir}/snap.db"),
                    Op::FileNonEmpty("{dir}/snap.db".to_string()),
                    // Both files are etcd backends, but what status reports covers the whole
                    // shared server (every earlier case) and each server's raft index and
                    // member identity: only that etcdctl reads it is checked here. Revision
                    // and key counts after one history are compared in tests/snapshot.rs.
                    ctl("snapshot status {dir}/snap.db -w json").exit_only(),
                ],
            ),
        ),
    ]
}
