//! Multi-version concurrency control storage, modelled on etcd's `mvcc` package: revisions,
//! the key index, the RocksDB backend and the store that ties them together, plus the
//! watchable layer that streams its changes.

pub mod backend;
pub mod key_index;
pub mod revision;
pub mod store;
pub mod watch;

pub use backend::{Backend, BackendError, Batch};
pub use key_index::{KeyRange, RangeEnd};
pub use revision::Revision;
pub use store::{MvccError, MvccState, RangeOptions, RangeResult, WriteTxn};
