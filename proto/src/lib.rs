//! etcd v3.4 wire types and gRPC services. Package names equal etcd's, so the service paths
//! (`/etcdserverpb.KV/Range`, ...) are the ones unmodified etcd clients call.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod leasepb {
    tonic::include_proto!("leasepb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod raftkvpb {
    tonic::include_proto!("raftkvpb");
}
