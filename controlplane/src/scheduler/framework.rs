//! The scheduling framework, shaped like Kubernetes': for one pod, every Filter plugin
//! runs on every node (a node fails at its first failing plugin, with that plugin's
//! reasons), the feasible nodes are scored by every Score plugin (each normalised to
//! 0..=100, then weighted and summed) and the best node wins, ties broken at random so
//! equal nodes share the load. An unschedulable pod gets the per-reason node counts in
//! kube-scheduler's words: "0/3 nodes are available: 3 Insufficient cpu."

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use super::cache::NodeInfo;

/// What a plugin computed once per pod for all nodes (e.g. inter-pod topology domains).
pub type CycleState = Option<Box<dyn Any + Send + Sync>>;

pub trait FilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// Work shared by all nodes' checks for this pod.
    fn pre_filter(&self, _pod: &Pod, _nodes: &[&NodeInfo]) -> CycleState {
        None
    }
    /// `Err(reasons)` if the pod cannot go to `node`.
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>>;
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_score(&self, _pod: &Pod, _nodes: &[&NodeInfo]) -> CycleState {
        None
    }
    /// A raw score; [`ScorePlugin::normalize`] maps the set to 0..=100.
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> i64;
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Why a pod fits nowhere: per reason, how many nodes gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        // kube-scheduler sorts the "<count> <reason>" strings themselves.
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.num_nodes,
            parts.join(", ")
        )
    }
}

impl std::error::Error for FitError {}

/// Scales raw scores so the highest is 100 (all zero stays zero); `reverse` makes the
/// lowest raw score the best.
pub fn normalize_to_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = match (max, reverse) {
            (0, false) => 0,
            (0, true) => 100,
            (m, false) => *s * 100 / m,
            (m, true) => (m - *s) * 100 / m,
        };
    }
}

pub struct Framework {
    pub filters: Vec<Box<dyn FilterPlugin>>,
    pub scores: Vec<(Box<dyn ScorePlugin>, i64)>,
}

impl Framework {
    /// Picks a node for `pod` among `nodes`.
    pub fn schedule(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Result<String, FitError> {
        let states: Vec<CycleState> = self
            .filters
            .iter()
            .map(|f| f.pre_filter(pod, nodes))
            .collect();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        for node in nodes {
            let failed = self
                .filters
                .iter()
                .zip(&states)
                .find_map(|(f, st)| f.filter(st, pod, node).err());
            match failed {
                None => feasible.push(node),
                Some(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            return Err(FitError {
                num_nodes: nodes.len(),
                reasons,
            });
        }
        if feasible.len() == 1 {
            return Ok(feasible[0].name().to_string());
        }
        let mut total = vec![0i64; feasible.len()];
        for (plugin, weight) in &self.scores {
            if *weight == 0 {
                continue;
            }
            let st = plugin.pre_score(pod, &feasible);
            let mut s: Vec<i64> = feasible.iter().map(|n| plugin.score(&st, pod, n)).collect();
            plugin.normalize(&mut s);
            for (t, s) in total.iter_mut().zip(s) {
                *t += s * weight;
            }
        }
        let best = total.iter().copied().max().unwrap_or(0);
        let top: Vec<usize> = (0..feasible.len()).filter(|&i| total[i] == best).collect();
        let pick = top[rand::random_range(0..top.len())];
        Ok(feasible[pick].name().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_error_messages() {
        // (nodes, reasons with their node counts, message)
        type Case<'a> = (usize, Vec<(&'a str, usize)>, &'a str);
        let cases: Vec<Case> = vec![
            (3, vec![("Insufficient cpu", 3)], "0/3 nodes are available: 3 Insufficient cpu."),
            (
                3,
                vec![("Insufficient cpu", 2), ("Insufficient memory", 1)],
                "0/3 nodes are available: 1 Insufficient memory, 2 Insufficient cpu.",
            ),
            (
                5,
                vec![
                    ("node(s) didn't match node selector", 2),
                    ("node(s) had taint {dedicated: gpu}, that the pod didn't tolerate", 2),
                    ("node(s) were unschedulable", 1),
                ],
                "0/5 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match node selector, 2 node(s) had taint {dedicated: gpu}, that the pod didn't tolerate.",
            ),
            (0, vec![], "no nodes available to schedule pods"),
        ];
        for (n, reasons, want) in cases {
            let e = FitError {
                num_nodes: n,
                reasons: reasons
                    .into_iter()
                    .map(|(r, c)| (r.to_string(), c))
                    .collect(),
            };
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn normalization() {
        let cases: Vec<(Vec<i64>, bool, Vec<i64>)> = vec![
            (vec![0, 5, 10], false, vec![0, 50, 100]),
            (vec![0, 5, 10], true, vec![100, 50, 0]),
            (vec![0, 0], false, vec![0, 0]),
            (vec![0, 0], true, vec![100, 100]),
        ];
        for (mut s, rev, want) in cases {
            normalize_to_max(&mut s, rev);
            assert_eq!(s, want);
        }
    }
}
