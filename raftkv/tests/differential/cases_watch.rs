//! Watch cases over the bidirectional Watch stream: key, range and prefix watches, history
//! replay from a start revision, prev_kv, filters, several watches per stream and the IDs
//! etcd assigns them, cancel, progress requests, and watches on compacted revisions.
//!
//! A watch is always created (and its `created` answer read) before the writes it should
//! see, so which events it receives never depends on timing.

use crate::model::*;
use crate::{ops, tops};

pub fn cases() -> Vec<Case> {
    vec![
        case(
            "watch/key",
            ops![
                watch_open("w", watch("a")),
                put("b", "ignored"),
                put("a", "1"),
                put("a", "2"),
                recv("w", 2),
                quiet("w"),
            ],
        ),
        case(
            // etcd's default progress interval is 10 minutes: the flag must be accepted and
            // change nothing else within a case.
            "watch/progress-notify-flag",
            ops![
                watch_open("w", watch("a").progress_notify()),
                put("a", "1"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/prefix",
            ops![
                watch_open("w", watch("p/").prefix()),
                put("p/1", "1"),
                put("q", "1"),
                put("p/2", "2"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/range",
            ops![
                watch_open("w", watch("b").end("d")),
                put("a", "1"),
                put("b", "1"),
                put("c", "1"),
                put("d", "1"),
                put("bz", "1"),
                recv("w", 3),
            ],
        ),
        case(
            // Sorts after every other case's keys, so the from-key watch only sees its own.
            "zzz/watch-from-key",
            ops![
                put("a", "0"),
                watch_open("w", watch("b").and_after()),
                put("a", "1"),
                put("b", "1"),
                put("c", "1"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/empty-key-from-key-is-everything",
            ops![
                watch_open("w", watch(abs("")).and_after()),
                put("a", "1"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/delete-events",
            ops![
                put("a", "1"),
                watch_open("w", watch("a")),
                del("a"),
                del("a"),
                put("a", "2"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/prev-kv",
            ops![
                put("a", "1"),
                watch_open("w", watch("a").prev_kv()),
                put("a", "2"),
                del("a"),
                put("a", "3"),
                recv("w", 3),
            ],
        ),
        case(
            "watch/filter-noput",
            ops![
                watch_open("w", watch("").prefix().no_put()),
                put("a", "1"),
                del("a"),
                recv("w", 1),
                quiet("w"),
            ],
        ),
        case(
            "watch/filter-nodelete",
            ops![
                watch_open("w", watch("").prefix().no_delete()),
                put("a", "1"),
                del("a"),
                put("b", "1"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/filter-both",
            ops![
                watch_open("w", watch("").prefix().no_put().no_delete()),
                put("a", "1"),
                del("a"),
                quiet("w"),
            ],
        ),
        case(
            "watch/history-replay",
            ops![
                put("a", "1"),
                put("b", "1"),
                put("a", "2"),
                del("b"),
                watch_open("w", watch("").prefix().start(2)),
                recv("w", 3),
                put("c", "1"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/history-replay-prev-kv",
            ops![
                put("a", "1"),
                put("a", "2"),
                del("a"),
                watch_open("w", watch("a").prev_kv().start(1)),
                recv("w", 3),
            ],
        ),
        case(
            "watch/start-revision-in-future",
            ops![
                watch_open("w", watch("a").start(3)),
                put("a", "1"),
                put("a", "2"),
                put("a", "3"),
                put("a", "4"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/txn-events",
            ops![
                put("c", "0"),
                watch_open("w", watch("").prefix().prev_kv()),
                txn(
                    vec![],
                    tops![put("a", "1"), put("b", "1"), del("c")],
                    vec![]
                ),
                recv("w", 3),
            ],
        ),
        case(
            "watch/delete-range-events",
            ops![
                put("a", "1"),
                put("b", "1"),
                put("c", "1"),
                watch_open("w", watch("").prefix()),
                del("").prefix(),
                recv("w", 3),
            ],
        ),
        case(
            "watch/version-resets-in-events",
            ops![
                put("a", "1"),
                put("a", "2"),
                watch_open("w", watch("a")),
                del("a"),
                put("a", "3"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/several-on-one-stream",
            ops![
                watch_open("w", watch("a")),
                watch_add("w", watch("b")),
                watch_add("w", watch("").prefix()),
                put("a", "1"),
                recv("w", 2),
                put("b", "1"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/requested-ids",
            ops![
                // Auto-assigned IDs skip IDs already taken on the stream.
                watch_open("w", watch("a").id(1)),
                watch_add("w", watch("a")),
                watch_add("w", watch("a")),
                watch_add("w", watch("a").id(10)),
                watch_add("w", watch("a")),
            ],
        ),
        case(
            "watch/duplicate-requested-id",
            ops![
                watch_open("w", watch("a").id(5)),
                watch_add("w", watch("b").id(5)),
                put("b", "1"),
                put("a", "1"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/ids-per-stream",
            ops![
                watch_open("w1", watch("a")),
                watch_add("w1", watch("a")),
                watch_open("w2", watch("a")),
                put("a", "1"),
                recv("w1", 2),
                recv("w2", 1),
            ],
        ),
        case(
            "watch/cancel",
            ops![
                watch_open("w", watch("a")),
                watch_add("w", watch("b")),
                watch_cancel("w", 0),
                recv("w", 1),
                put("a", "1"),
                put("b", "1"),
                recv("w", 1),
                quiet("w"),
            ],
        ),
        case(
            "watch/cancel-unknown-id",
            ops![
                watch_open("w", watch("a")),
                watch_cancel("w", 42),
                quiet("w"),
                put("a", "1"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/progress-request",
            ops![
                put("a", "1"),
                watch_open("w", watch("a")),
                watch_progress("w"),
                recv("w", 1),
                put("a", "2"),
                recv("w", 1),
                watch_progress("w"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/compacted-start-revision",
            ops![
                put("a", "1"),
                put("a", "2"),
                put("a", "3"),
                compact(2),
                watch_open("w", watch("a").start(1)),
                recv("w", 1),
                put("a", "4"),
                quiet("w"),
            ],
        ),
        case(
            "watch/start-at-compaction-revision",
            ops![
                put("a", "1"),
                put("a", "2"),
                compact(2),
                watch_open("w", watch("a").start(2)),
                recv("w", 1),
            ],
        ),
        case(
            "watch/compacted-one-of-several",
            ops![
                put("a", "1"),
                put("a", "2"),
                compact(2),
                watch_open("w", watch("a")),
                watch_add("w", watch("a").start(1)),
                recv("w", 1),
                put("a", "3"),
                recv("w", 1),
            ],
        ),
        case(
            "watch/lease-revoke-deletes",
            ops![
                grant("l", 3600),
                put("a", "1").lease("l"),
                put("b", "1").lease("l"),
                watch_open("w", watch("").prefix().prev_kv()),
                revoke("l"),
                recv("w", 2),
            ],
        ),
        case(
            "watch/large-value",
            ops![
                watch_open("w", watch("a")),
                put("a", vec![b'v'; 512 * 1024]),
                recv("w", 1),
            ],
        ),
    ]
}
