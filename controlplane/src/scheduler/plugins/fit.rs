//! NodeResourcesFit (CPU, memory and pod count requested vs. allocatable minus what the
//! node's bound and assumed pods request) and the two resource scores,
//! NodeResourcesLeastAllocated and NodeResourcesBalancedAllocation.
//!
//! A node without a `pods` allocatable is not limited in pod count. Scores use the
//! non-zero requests ([`Resources::nonzero`]).

use k8s_openapi::api::core::v1::Pod;

use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{CycleState, FilterPlugin, ScorePlugin};
use crate::scheduler::resources::Resources;

pub const LEAST_ALLOCATED: &str = "NodeResourcesLeastAllocated";
pub const BALANCED_ALLOCATION: &str = "NodeResourcesBalancedAllocation";

pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let want = Resources::of_pod(pod);
        let (alloc, used) = (&node.allocatable, &node.requested);
        let mut reasons = Vec::new();
        if alloc.pods > 0 && used.pods + 1 > alloc.pods {
            reasons.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && want.milli_cpu > alloc.milli_cpu - used.milli_cpu {
            reasons.push("Insufficient cpu".to_string());
        }
        if want.memory > 0 && want.memory > alloc.memory - used.memory {
            reasons.push("Insufficient memory".to_string());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// (cpu, memory) the node would have requested with `pod` on it, with non-zero defaults.
fn requested_with(pod: &Pod, node: &NodeInfo) -> (i64, i64) {
    let p = Resources::of_pod(pod).nonzero();
    (
        node.nonzero_requested.milli_cpu + p.milli_cpu,
        node.nonzero_requested.memory + p.memory,
    )
}

pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        LEAST_ALLOCATED
    }
    fn score(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        let (c, m) = requested_with(pod, node);
        let free = |req: i64, cap: i64| {
            if cap == 0 || req > cap {
                0
            } else {
                (cap - req) * 100 / cap
            }
        };
        (free(c, node.allocatable.milli_cpu) + free(m, node.allocatable.memory)) / 2
    }
}

pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        BALANCED_ALLOCATION
    }
    fn score(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        let (c, m) = requested_with(pod, node);
        let frac = |req: i64, cap: i64| {
            if cap == 0 {
                1.0
            } else {
                req as f64 / cap as f64
            }
        };
        let (fc, fm) = (
            frac(c, node.allocatable.milli_cpu),
            frac(m, node.allocatable.memory),
        );
        if fc >= 1.0 || fm >= 1.0 {
            return 0;
        }
        ((1.0 - (fc - fm).abs()) * 100.0) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod};

    #[test]
    fn fit() {
        let full_pods = {
            let mut n = node("n", "4", "4Gi");
            n.status
                .as_mut()
                .unwrap()
                .allocatable
                .as_mut()
                .unwrap()
                .insert(
                    "pods".into(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
                );
            n
        };
        let cases: Vec<(Pod, k8s_openapi::api::core::v1::Node, Vec<Pod>, Vec<&str>)> = vec![
            (pod("p", "1", "1Gi"), node("n", "2", "2Gi"), vec![], vec![]),
            (
                pod("p", "1", "1Gi"),
                node("n", "2", "2Gi"),
                vec![pod("a", "1", "1Gi")],
                vec![],
            ),
            (
                pod("p", "1", "1Gi"),
                node("n", "2", "2Gi"),
                vec![pod("a", "1500m", "")],
                vec!["Insufficient cpu"],
            ),
            (
                pod("p", "1", "1Gi"),
                node("n", "2", "2Gi"),
                vec![pod("a", "", "1500Mi")],
                vec!["Insufficient memory"],
            ),
            (
                pod("p", "3", "3Gi"),
                node("n", "2", "2Gi"),
                vec![],
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            (pod("p", "", ""), node("n", "0", "0"), vec![], vec![]),
            (
                pod("p", "", ""),
                full_pods,
                vec![pod("a", "", "")],
                vec!["Too many pods"],
            ),
        ];
        for (i, (p, n, bound, want)) in cases.into_iter().enumerate() {
            let got = NodeResourcesFit.filter(&None, &p, &info(n, bound));
            let want = if want.is_empty() {
                Ok(())
            } else {
                Err(want.into_iter().map(String::from).collect())
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn scores() {
        // (pod, node, bound, least allocated, balanced)
        let cases: Vec<(Pod, Vec<Pod>, i64, i64)> = vec![
            (pod("p", "1", "1Gi"), vec![], 75, 100),
            (pod("p", "1", "1Gi"), vec![pod("a", "2", "1Gi")], 37, 75),
            (pod("p", "2", "4Gi"), vec![pod("a", "2", "")], 0, 0),
            (
                pod("p", "", ""),
                vec![],
                (3900 * 100 / 4000 + 3896 * 100 / 4096) / 2,
                97,
            ),
        ];
        for (i, (p, bound, least, balanced)) in cases.into_iter().enumerate() {
            let n = info(node("n", "4", "4Gi"), bound);
            assert_eq!(
                LeastAllocated.score(&None, &p, &n),
                least,
                "least, case {i}"
            );
            assert_eq!(
                BalancedAllocation.score(&None, &p, &n),
                balanced,
                "balanced, case {i}"
            );
        }
    }
}
