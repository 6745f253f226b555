//! Who this member is: its name, URLs and the member, cluster and term numbers every response
//! header carries. IDs are derived as etcd derives them (a hash of the peer URLs and cluster
//! token), persisted on first start, and read back afterwards.

use sha1_smol::Sha1;

use crate::mvcc::backend::{META_CLUSTER_ID, META_MEMBER_ID, META_TERM};
use crate::mvcc::{Backend, BackendError};

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    /// Bumped at every start, like a single-member Raft that elects itself.
    pub term: u64,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

fn id_from(parts: &[&str]) -> u64 {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let d = h.digest().bytes();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

impl Identity {
    /// Loads the persisted identity or creates it, and starts a new term.
    pub fn load_or_create(
        backend: &Backend,
        name: &str,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        token: &str,
    ) -> Result<Self, BackendError> {
        let member_id = match backend.get_meta_u64(META_MEMBER_ID)? {
            Some(id) => id,
            None => {
                let mut sorted = peer_urls.clone();
                sorted.sort();
                let id = id_from(&[&sorted.join(""), token]);
                backend.put_meta_u64_now(META_MEMBER_ID, id)?;
                id
            }
        };
        let cluster_id = match backend.get_meta_u64(META_CLUSTER_ID)? {
            Some(id) => id,
            None => {
                let id = id_from(&[&member_id.to_string(), token]);
                backend.put_meta_u64_now(META_CLUSTER_ID, id)?;
                id
            }
        };
        // A fresh single-member etcd reports term 2 after electing itself.
        let term = backend.get_meta_u64(META_TERM)?.map_or(2, |t| t + 1);
        backend.put_meta_u64_now(META_TERM, term)?;
        Ok(Self {
            name: name.to_string(),
            member_id,
            cluster_id,
            term,
            peer_urls,
            client_urls,
        })
    }
}
