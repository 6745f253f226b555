//! SelectorSpread: replicas of the same owner (the pod's controller ownerReference, in
//! the same namespace) go to the nodes with the fewest of them.

use k8s_openapi::api::core::v1::Pod;

use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{normalize_to_max, CycleState, ScorePlugin};

pub const NAME: &str = "SelectorSpread";

/// The uid of the pod's controlling owner.
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

pub struct SelectorSpread;

impl ScorePlugin for SelectorSpread {
    fn name(&self) -> &'static str {
        NAME
    }
    fn score(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        let Some(uid) = controller_uid(pod) else {
            return 0;
        };
        node.pods
            .values()
            .filter(|p| {
                p.metadata.namespace == pod.metadata.namespace && controller_uid(p) == Some(uid)
            })
            .count() as i64
    }
    /// Fewer siblings is better; with no siblings anywhere every node scores 100.
    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned(name: &str, uid: &str) -> Pod {
        let mut p = pod(name, "", "");
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn spreads_by_owner() {
        let nodes = [
            info(
                node("a", "1", "1Gi"),
                vec![owned("x1", "rs1"), owned("x2", "rs1")],
            ),
            info(
                node("b", "1", "1Gi"),
                vec![owned("y1", "rs1"), owned("z1", "rs2")],
            ),
            info(node("c", "1", "1Gi"), vec![owned("z2", "rs2")]),
        ];
        // (pod, raw scores, normalized)
        let cases = [
            (owned("new", "rs1"), vec![2, 1, 0], vec![0, 50, 100]),
            (owned("new", "rs2"), vec![0, 1, 1], vec![100, 0, 0]),
            (owned("new", "rs3"), vec![0, 0, 0], vec![100, 100, 100]),
            (pod("new", "", ""), vec![0, 0, 0], vec![100, 100, 100]),
        ];
        for (i, (p, raw, norm)) in cases.into_iter().enumerate() {
            let mut s: Vec<i64> = nodes
                .iter()
                .map(|n| SelectorSpread.score(&None, &p, n))
                .collect();
            assert_eq!(s, raw, "case {i}");
            SelectorSpread.normalize(&mut s);
            assert_eq!(s, norm, "case {i}");
        }
    }
}
