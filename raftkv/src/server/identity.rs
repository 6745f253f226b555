//! Who the members are: `--initial-cluster` parsing, and member and cluster IDs derived as
//! etcd derives them (a hash of the sorted peer URLs and the cluster token, so every member
//! computes the same IDs from the same flags). IDs are persisted on first start and read back
//! afterwards, so a restart with different flags keeps its identity.

use sha1_smol::Sha1;

use crate::mvcc::backend::{META_CLUSTER_ID, META_MEMBER_ID};
use crate::mvcc::{Backend, BackendError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid --initial-cluster entry {0:?}: expected name=url")]
    BadEntry(String),
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    NotInCluster(String),
    #[error(transparent)]
    Storage(#[from] BackendError),
}

/// `--initial-cluster`: member names and peer URLs, in flag order. A name may repeat to give
/// one member several URLs, as etcd allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialCluster {
    pub members: Vec<(String, Vec<String>)>,
}

impl InitialCluster {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| IdentityError::BadEntry(entry.to_string()))?;
            if name.is_empty() || url.is_empty() {
                return Err(IdentityError::BadEntry(entry.to_string()));
            }
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        Ok(Self { members })
    }

    /// Member IDs with names and peer URLs.
    pub fn ids(&self, token: &str) -> Vec<(u64, String, Vec<String>)> {
        self.members
            .iter()
            .map(|(n, urls)| (member_id(urls, token), n.clone(), urls.clone()))
            .collect()
    }
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    u64::from_be_bytes(h.digest().bytes()[..8].try_into().expect("8 bytes"))
}

/// etcd's `computeMemberId` without the time component (used only when adding members).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    hash64(&[sorted.join("").as_bytes(), token.as_bytes()])
}

/// etcd's `genID`: a hash of the sorted member IDs.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort();
    let mut bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    bytes.extend_from_slice(token.as_bytes());
    hash64(&[&bytes])
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// `--initial-cluster-token`: part of every member ID, so `member add` needs it too.
    pub token: String,
}

impl Identity {
    /// This member's identity: persisted IDs if any, else derived from the initial cluster.
    /// A member joining a running cluster passes the cluster ID it learned from a peer.
    pub fn resolve(
        backend: &Backend,
        name: &str,
        cluster: &InitialCluster,
        client_urls: Vec<String>,
        token: &str,
        joined_cluster_id: Option<u64>,
    ) -> Result<Self, IdentityError> {
        let ids = cluster.ids(token);
        let (derived_id, _, peer_urls) = ids
            .iter()
            .find(|(_, n, _)| n == name)
            .cloned()
            .ok_or_else(|| IdentityError::NotInCluster(name.to_string()))?;
        let member_id = match backend.get_meta_u64(META_MEMBER_ID)? {
            Some(id) => id,
            None => {
                backend.put_meta_u64_now(META_MEMBER_ID, derived_id)?;
                derived_id
            }
        };
        let cluster_id = match backend.get_meta_u64(META_CLUSTER_ID)? {
            Some(id) => id,
            None => {
                let all: Vec<u64> = ids.iter().map(|(id, _, _)| *id).collect();
                let id = joined_cluster_id.unwrap_or_else(|| cluster_id(&all, token));
                backend.put_meta_u64_now(META_CLUSTER_ID, id)?;
                id
            }
        };
        Ok(Self {
            name: name.to_string(),
            member_id,
            cluster_id,
            peer_urls,
            client_urls,
            token: token.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_initial_cluster() {
        let c = InitialCluster::parse("a=http://1:2380,b=http://2:2380,a=http://1b:2380").unwrap();
        assert_eq!(
            c.members,
            vec![
                (
                    "a".to_string(),
                    vec!["http://1:2380".to_string(), "http://1b:2380".to_string()]
                ),
                ("b".to_string(), vec!["http://2:2380".to_string()]),
            ]
        );
        for bad in ["a", "=http://x", "a="] {
            assert!(InitialCluster::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_stable_and_order_independent() {
        let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            member_id(&urls(&["b", "a"]), "t"),
            member_id(&urls(&["a", "b"]), "t")
        );
        assert_ne!(
            member_id(&urls(&["a"]), "t"),
            member_id(&urls(&["a"]), "u"),
            "the token matters"
        );
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
        let c = InitialCluster::parse("x=http://a,y=http://b").unwrap();
        let ids: Vec<u64> = c.ids("t").iter().map(|(id, _, _)| *id).collect();
        assert_ne!(ids[0], ids[1]);
    }
}
