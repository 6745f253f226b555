//! MVCC revisions and their byte encoding, which is also the key of every row in the `kv`
//! column family.
//!
//! Layout (identical to etcd's `mvcc/revision.go`, so the `HashKV` digest matches etcd's):
//!
//! ```text
//! 0        8   9        17  [18]
//! | main BE | _ | sub BE | t |
//! ```
//!
//! `main` is the store revision a write was applied at and `sub` the index of the change inside
//! that revision (a txn touching three keys writes subs 0, 1, 2). Both are big-endian so byte
//! order equals revision order and RocksDB iterates history in time order. A trailing `t`
//! marks a tombstone: the row records a deletion of the key it carries.

use std::fmt;

/// Length of an encoded revision without the tombstone mark.
pub const REV_BYTES_LEN: usize = 17;
/// Length of an encoded tombstone revision.
pub const MARKED_REV_BYTES_LEN: usize = REV_BYTES_LEN + 1;
const TOMBSTONE_MARK: u8 = b't';

/// A point in the store's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// The bytes of a row key in the `kv` column family could not be read as a revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid revision key of {0} bytes")]
pub struct InvalidRevision(pub usize);

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// Encodes the revision; `tombstone` appends the deletion mark.
    pub fn to_bytes(self, tombstone: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(MARKED_REV_BYTES_LEN);
        b.extend_from_slice(&self.main.to_be_bytes());
        b.push(b'_');
        b.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            b.push(TOMBSTONE_MARK);
        }
        b
    }

    /// Decodes a row key; returns the revision and whether it is a tombstone.
    pub fn from_bytes(b: &[u8]) -> Result<(Self, bool), InvalidRevision> {
        let tombstone = match b.len() {
            REV_BYTES_LEN => false,
            MARKED_REV_BYTES_LEN if b[REV_BYTES_LEN] == TOMBSTONE_MARK => true,
            n => return Err(InvalidRevision(n)),
        };
        if b[8] != b'_' {
            return Err(InvalidRevision(b.len()));
        }
        let main = i64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(b[9..17].try_into().expect("8 bytes"));
        Ok((Self { main, sub }, tombstone))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_orders_like_revisions() {
        let cases = [
            (Revision::new(1, 0), false),
            (Revision::new(1, 1), true),
            (Revision::new(256, 3), false),
            (Revision::new(i64::MAX, 0), true),
        ];
        for (rev, tomb) in cases {
            let b = rev.to_bytes(tomb);
            assert_eq!(b.len(), if tomb { 18 } else { 17 });
            assert_eq!(Revision::from_bytes(&b), Ok((rev, tomb)));
        }
        let mut encoded: Vec<_> = cases.iter().map(|(r, _)| r.to_bytes(false)).collect();
        encoded.sort();
        let decoded: Vec<_> = encoded
            .iter()
            .map(|b| Revision::from_bytes(b).unwrap().0)
            .collect();
        let mut expected: Vec<_> = cases.iter().map(|(r, _)| *r).collect();
        expected.sort();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            &b""[..],
            b"12345678_1234567",
            b"12345678_12345678x",
            b"12345678x12345678",
        ] {
            assert!(Revision::from_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
