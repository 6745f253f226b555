//! The openraft type configuration: what a log entry carries and who the members are.

use std::fmt;

use prost::Message;
use proto::raftkvpb::InternalRequest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A member as the Raft membership knows it (the ID is the Raft node ID). Client URLs are not
/// here: every member bootstraps the same membership, so it can hold only what all of them
/// know up front; each member publishes its client URLs through the log once it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// A log entry's application payload: one state machine request. It is (de)serialized as the
/// protobuf bytes of the request, so its on-disk and on-wire form is the `raftkvpb` schema
/// whatever serde format carries the surrounding openraft entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request(pub InternalRequest);

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Request;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("protobuf bytes of a raftkvpb.InternalRequest")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Request, E> {
                InternalRequest::decode(v).map(Request).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Request, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// What applying an entry answers, as openraft hands it back to the proposer: the encoded
/// `raftkvpb.InternalResponse`, or the gRPC code and etcd message of a request that failed;
/// `None` for entries that carry no request. An `InternalBatch` entry answers in `batch`,
/// one response per request, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub result: Option<Result<Vec<u8>, (i32, String)>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<Response>,
}

openraft::declare_raft_types!(
    /// raftkv's Raft: u64 member IDs (etcd's), entries carrying one request each.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

#[cfg(test)]
mod tests {
    use super::*;
    use proto::etcdserverpb::PutRequest;
    use proto::raftkvpb::internal_request;

    #[test]
    fn request_round_trips_through_bincode_as_protobuf_bytes() {
        let req = Request(InternalRequest {
            header: None,
            request: Some(internal_request::Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![0, 255],
                ..Default::default()
            })),
        });
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&req, cfg).unwrap();
        // A length prefix, then exactly the protobuf encoding.
        assert!(bytes.ends_with(&req.0.encode_to_vec()));
        let (back, _): (Request, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, req);
        assert!(
            bincode::serde::decode_from_slice::<Request, _>(&[3, 0xff, 0xff, 0xff], cfg).is_err(),
            "bad protobuf is an error"
        );
    }
}
