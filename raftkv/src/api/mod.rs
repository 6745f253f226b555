//! gRPC services with etcd's service paths (`/etcdserverpb.KV/Range`, ...). Each module turns
//! wire requests into reads of the state machine or proposals, and fills response headers.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod election;
pub mod health;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use proto::etcdserverpb::auth_server::AuthServer;
use proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use proto::v3electionpb::election_server::ElectionServer;
use proto::v3lockpb::lock_server::LockServer;
use tonic::service::Routes;

use crate::server::EtcdServer;

/// etcd accepts messages up to `--max-request-bytes` plus this much gRPC overhead.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// tonic's own bound on a decoded message, which only protects memory: the etcd limit is
/// checked by [`check_size`] so that the error is grpc-go's, which clients match on.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Refuses a request over etcd's gRPC receive limit with grpc-go's exact status.
pub(crate) fn check_size(
    server: &EtcdServer,
    msg: &impl prost::Message,
) -> Result<(), tonic::Status> {
    let limit = server.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let len = msg.encoded_len();
    if len > limit {
        return Err(tonic::Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {limit})"
        )));
    }
    Ok(())
}

/// All services, ready to be served. Must be called inside the Tokio runtime (the health
/// service starts its status task).
pub fn routes(server: Arc<EtcdServer>) -> Routes {
    let max_recv = DECODE_LIMIT;
    Routes::new(
        KvServer::new(kv::KvService(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        WatchServer::new(watch::WatchService(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService(server.clone())).max_decoding_message_size(max_recv),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService(server.clone()))
            .max_decoding_message_size(max_recv),
    )
    .add_service(
        AuthServer::new(auth::AuthService(server.clone())).max_decoding_message_size(max_recv),
    )
    .add_service(
        ElectionServer::new(election::ElectionService(server.clone()))
            .max_decoding_message_size(max_recv),
    )
    .add_service(
        LockServer::new(lock::LockService(server.clone())).max_decoding_message_size(max_recv),
    )
    .add_service(health::service(server))
}

/// Extracts the response variant a proposal of a given kind yields.
macro_rules! expect_response {
    ($resp:expr, $variant:ident) => {
        match $resp.response {
            Some(proto::raftkvpb::internal_response::Response::$variant(r)) => r,
            other => unreachable!("{} proposal answered with {other:?}", stringify!($variant)),
        }
    };
}
pub(crate) use expect_response;
