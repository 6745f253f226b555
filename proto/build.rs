//! Compiles the etcd v3.4 protos (copied from etcd v3.4.23, gogoproto and google.api
//! annotations stripped: neither changes the wire format) plus raftkv's internal protos.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/etcdserver/etcdserverpb/rpc.proto",
        "protos/mvcc/mvccpb/kv.proto",
        "protos/auth/authpb/auth.proto",
        "protos/lease/leasepb/lease.proto",
        "protos/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "protos/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "protos/raftkv/raftkvpb/internal.proto",
        "protos/raftkv/raftkvpb/raft.proto",
    ];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["protos"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
