//! Leases: the lessor owns which leases exist, their TTLs and deadlines, and which keys each
//! lease holds (etcd's `lease` package). Deleting the keys of a revoked lease is the state
//! machine's job; the lessor only says which they are.

pub mod lessor;

pub use lessor::{LeaseError, LeaseInfo, Lessor, MAX_LEASE_TTL};
