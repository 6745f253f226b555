//! The one serde format of the Raft layer: bincode 2 with its "standard" configuration, used
//! for log entries and votes on disk, consensus state in the store's meta rows, and openraft
//! messages on the wire.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .expect("openraft and raftkv types always encode")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}
