//! etcd v3.4 wire types and gRPC services. Package names equal etcd's, so the service paths
//! (`/etcdserverpb.KV/Range`, ...) are the ones unmodified etcd clients call. The etcd
//! packages also implement serde's traits in etcd's gateway JSON form (see `build.rs`).

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod leasepb {
    tonic::include_proto!("leasepb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}
pub mod raftkvpb {
    tonic::include_proto!("raftkvpb");
}
