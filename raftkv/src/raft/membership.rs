//! Membership changes as etcd's Cluster service asks for them (add, add as learner, promote,
//! remove, update peer URLs), checked the way etcd checks them and carried out with openraft's
//! membership API. Runs on the leader; other members forward a [`Change`] over the peer
//! transport.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft};
use serde::{Deserialize, Serialize};

use super::types::{MemberNode, TypeConfig};
use crate::error::ServerError;

/// How far behind the leader's log a learner may be and still be promoted (etcd's
/// `readyPercent` check, in entries rather than a percentage).
const PROMOTE_MAX_LAG: u64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Add {
        id: u64,
        node: MemberNode,
        learner: bool,
    },
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, MemberNode>>) -> ServerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ServerError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ServerError::Internal(e.to_string())
        }
        RaftError::Fatal(_) => ServerError::Stopped,
    }
}

/// Checks `change` against the current membership and applies it; call on the leader.
pub async fn apply(raft: &Raft<TypeConfig>, change: Change) -> Result<(), ServerError> {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let is_voter = |id: &u64| membership.voter_ids().any(|v| v == *id);
    let exists = |id: &u64| membership.get_node(id).is_some();
    match change {
        Change::Add { id, node, learner } => {
            // Peer URLs first: IDs derive from them, so a reused URL is what the user did.
            if membership
                .nodes()
                .any(|(_, n)| n.peer_urls.iter().any(|u| node.peer_urls.contains(u)))
            {
                return Err(ServerError::PeerUrlExists);
            }
            if exists(&id) {
                return Err(ServerError::MemberExists);
            }
            // Not blocking: the new member usually starts only after it has been added.
            raft.add_learner(id, node, false)
                .await
                .map_err(write_error)?;
            if !learner {
                let ids = BTreeSet::from([id]);
                raft.change_membership(ChangeMembers::AddVoterIds(ids), true)
                    .await
                    .map_err(write_error)?;
            }
        }
        Change::Promote { id } => {
            if !exists(&id) {
                return Err(ServerError::MemberNotFound);
            }
            if is_voter(&id) {
                return Err(ServerError::MemberNotLearner);
            }
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index);
            if metrics.last_log_index.unwrap_or(0).saturating_sub(matched) > PROMOTE_MAX_LAG {
                return Err(ServerError::LearnerNotReady);
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
                .map_err(write_error)?;
        }
        Change::Remove { id } => {
            if !exists(&id) {
                return Err(ServerError::MemberNotFound);
            }
            let ids = BTreeSet::from([id]);
            let change = if is_voter(&id) {
                ChangeMembers::RemoveVoters(ids)
            } else {
                ChangeMembers::RemoveNodes(ids)
            };
            // retain = false: a removed voter is not kept as a learner.
            raft.change_membership(change, false)
                .await
                .map_err(write_error)?;
        }
        Change::Update { id, peer_urls } => {
            let Some(node) = membership.get_node(&id) else {
                return Err(ServerError::MemberNotFound);
            };
            let node = MemberNode {
                peer_urls,
                ..node.clone()
            };
            raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true)
                .await
                .map_err(write_error)?;
        }
    }
    Ok(())
}
