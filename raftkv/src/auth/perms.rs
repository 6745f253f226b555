//! The key ranges a user may read or write: the union of the permissions of all its roles,
//! checked as etcd's `range_perm_cache.go` does. A permission is a single key (empty range
//! end), a range `[key, range_end)`, or everything from `key` on (range end `"\0"`); a
//! single-key request is permitted when some interval holds the key, a range request when
//! the union of the intervals covers the whole range.

use proto::authpb::{permission::Type as PermType, Role};

/// A half-open interval of keys; `end: None` reaches past every key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// etcd's reading of a (key, range_end) pair: empty end = the point `key`, "\0" = open.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut e = key.to_vec();
                e.push(0);
                Some(e)
            }
            [0] => None,
            e => Some(e.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn contains_key(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && self.end.as_deref().is_none_or(|e| key < e)
    }
}

/// The read and write intervals of one user.
#[derive(Debug, Default, Clone)]
pub struct UserPerms {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl UserPerms {
    /// Merges the permissions of `roles` (missing roles are skipped, as etcd does).
    pub fn of<'a>(roles: impl IntoIterator<Item = &'a Role>) -> UserPerms {
        let mut p = UserPerms::default();
        for role in roles {
            for perm in &role.key_permission {
                let ivl = Interval::of(&perm.key, &perm.range_end);
                match PermType::try_from(perm.perm_type) {
                    Ok(PermType::Read) => p.read.push(ivl),
                    Ok(PermType::Write) => p.write.push(ivl),
                    Ok(PermType::Readwrite) => {
                        p.read.push(ivl.clone());
                        p.write.push(ivl);
                    }
                    Err(_) => {}
                }
            }
        }
        p.read.sort_by(|a, b| a.begin.cmp(&b.begin));
        p.write.sort_by(|a, b| a.begin.cmp(&b.begin));
        p
    }

    /// Whether a request on `key` (with `range_end` as in a RangeRequest) is permitted.
    pub fn permits(&self, key: &[u8], range_end: &[u8], write: bool) -> bool {
        let ivls = if write { &self.write } else { &self.read };
        if range_end.is_empty() {
            return ivls.iter().any(|i| i.contains_key(key));
        }
        covers(ivls, &Interval::of(key, range_end))
    }
}

/// etcd's `IntervalTree.Contains`: the intervals that intersect `want` (sorted by begin)
/// must chain without a gap and together span all of it. Done literally, so that odd
/// requests (a range end before its key) are judged as etcd judges them.
fn covers(ivls: &[Interval], want: &Interval) -> bool {
    // `None` ends are +infinity.
    let lt = |a: &[u8], b: &Option<Vec<u8>>| b.as_deref().is_none_or(|b| a < b);
    let mut begin: Option<&[u8]> = None;
    let mut reach: Option<Vec<u8>> = None;
    for ivl in ivls {
        if !(lt(&ivl.begin, &want.end) && lt(&want.begin, &ivl.end)) {
            continue;
        }
        match &reach {
            None if begin.is_none() => {
                begin = Some(&ivl.begin);
                reach = ivl.end.clone();
            }
            // Already open-ended: nothing can extend it, nor leave a gap.
            None => {}
            Some(r) => {
                if r.as_slice() < ivl.begin.as_slice() {
                    return false;
                }
                if ivl.end.as_ref().is_none_or(|e| e > r) {
                    reach = ivl.end.clone();
                }
            }
        }
    }
    let Some(begin) = begin else {
        return false;
    };
    let reaches_end = match (&reach, &want.end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(r), Some(e)) => r >= e,
    };
    reaches_end && begin <= want.begin.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::authpb::Permission;

    fn role(perms: &[(&str, &str, PermType)]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(k, e, t)| Permission {
                    perm_type: *t as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn checks_like_etcds_range_perm_cache() {
        use PermType::*;
        let r = role(&[
            ("a", "", Read),
            ("b", "d", Readwrite),
            ("d", "f", Read),
            ("x", "\0", Write),
        ]);
        let p = UserPerms::of([&r]);
        // (key, range_end, write, permitted)
        let cases = [
            ("a", "", false, true),
            ("a", "", true, false),
            ("a0", "", false, false),
            ("a", "b", false, false), // only the point "a", not (a, b)
            ("b", "", true, true),
            ("c", "", true, true),
            ("d", "", true, false),
            ("b", "f", false, true), // [b,d) + [d,f) are contiguous
            ("b", "f", true, false),
            ("b", "g", false, false),
            ("c", "e", false, true),
            ("x", "", true, true),
            ("zzz", "", true, true),
            ("x", "\0", true, true),
            ("w", "\0", true, false),
            ("y", "z", true, true),
            ("y", "z", false, false),
        ];
        for (k, e, w, want) in cases {
            assert_eq!(
                p.permits(k.as_bytes(), e.as_bytes(), w),
                want,
                "{k:?} {e:?} w={w}"
            );
        }
    }

    #[test]
    fn everything_from_the_empty_key() {
        let p = UserPerms::of([&role(&[("", "\0", PermType::Read)])]);
        assert!(p.permits(b"", b"\0", false));
        assert!(p.permits(b"anything", b"", false));
        assert!(!p.permits(b"anything", b"", true));
    }
}
