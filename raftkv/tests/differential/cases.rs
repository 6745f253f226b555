//! The case table: every group in the order it runs. Order matters only in two ways:
//! revisions are global, so both servers must see the same sequence (they do: one table),
//! and cases whose leases really expire run last (see `cases_lease`).

use crate::model::*;
use crate::ops;
use crate::{
    cases_auth, cases_auth_elect, cases_ctl, cases_elect, cases_kv, cases_lease, cases_txn,
    cases_watch,
};

pub fn all() -> Vec<Case> {
    // A fresh etcd starts at revision 1; both stores must agree before any write.
    let mut cases = vec![case("revision/initial", ops![Op::AbsoluteRevision])];
    cases.extend(cases_kv::cases());
    cases.extend(cases_txn::cases());
    cases.extend(cases_watch::cases());
    cases.extend(cases_lease::cases());
    cases.extend(maintenance_cases());
    cases.extend(cases_ctl::cases());
    cases.extend(cases_auth::cases());
    cases.extend(cases_elect::cases());
    cases.extend(cases_auth_elect::cases());
    cases.extend(cases_lease::expiry_cases());
    cases.extend(cases_elect::expiry_cases());
    cases.push(case("revision/final", ops![Op::AbsoluteRevision]));
    cases
}

fn maintenance_cases() -> Vec<Case> {
    vec![
        case("status/basic", ops![Op::Status]),
        case(
            "status/after-writes",
            ops![put("a", "1"), Op::Status, del("a"), Op::Status],
        ),
    ]
}
