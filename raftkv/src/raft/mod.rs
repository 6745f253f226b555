//! Consensus with openraft: the type configuration, and the storage openraft drives. The Raft
//! log lives in its own RocksDB instance, separate from the state machine's store, so
//! consensus and MVCC storage share no keys and no locks.

pub mod codec;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use types::{MemberNode, Request, Response, TypeConfig};

/// openraft's storage conformance suite, run against our log store and state machine on
/// fresh RocksDB directories.
#[cfg(test)]
mod suite {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::state_machine::{NoObserver, RaftStateMachine};
    use super::{LogStore, TypeConfig};
    use crate::clock::SystemClock;
    use crate::mvcc::Backend;
    use crate::state_machine::StateMachine;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, RaftStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, RaftStateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = LogStore::open(&dir.path().join("raft"), true, Default::default())
                .expect("open log");
            let backend = Backend::open(&dir.path().join("kv")).expect("open store");
            let sm =
                StateMachine::open(backend, 2, Arc::new(SystemClock)).expect("open state machine");
            Ok((
                dir,
                log,
                RaftStateMachine::new(Arc::new(sm), Arc::new(NoObserver)),
            ))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft's storage suite passes");
    }
}
