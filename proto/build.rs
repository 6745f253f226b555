//! Compiles the etcd v3.4 protos (copied from etcd v3.4.23, gogoproto and google.api
//! annotations stripped: neither changes the wire format) plus raftkv's internal protos.
//!
//! The etcd packages also get serde impls (pbjson) for the JSON gateway. They follow the
//! protobuf JSON mapping as grpc-gateway's default marshaler (`jsonpb` with `OrigName`) emits
//! it in etcd 3.4: field names exactly as declared in the .proto (`cluster_id`, `TTL`,
//! `dbSize`), 64-bit integers as strings, bytes as standard base64, enums by name, default
//! values omitted; unknown fields are ignored when parsing, as jsonpb does.

use std::path::PathBuf;

/// Packages whose messages the JSON gateway speaks.
const JSON_PACKAGES: &[&str] = &[
    ".etcdserverpb",
    ".mvccpb",
    ".authpb",
    ".v3electionpb",
    ".v3lockpb",
];

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
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["protos"])?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(JSON_PACKAGES)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
