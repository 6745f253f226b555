//! InterPodAffinity (required terms): a pod with pod affinity must land in a topology
//! domain (nodes sharing the term's `topologyKey` label value) holding a matching pod;
//! with pod anti-affinity, in none that does; and no existing pod's anti-affinity may
//! reject it. The domains are computed once per pod in `pre_filter`.
//!
//! As in Kubernetes, a pod whose affinity matches no pod anywhere may still go anywhere
//! if it matches its own terms (the first replica of a group that wants to be together).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};

use super::selector_matches;
use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{CycleState, FilterPlugin};

/// Whether `term` (declared by a pod in `owner_ns`) selects `pod`.
fn term_selects(term: &PodAffinityTerm, owner_ns: Option<&str>, pod: &Pod) -> bool {
    let pod_ns = pod.metadata.namespace.as_deref();
    let ns_ok = match term.namespaces.as_deref() {
        Some(nss) if !nss.is_empty() => nss.iter().any(|n| Some(n.as_str()) == pod_ns),
        _ => pod_ns == owner_ns,
    };
    // A missing selector selects nothing.
    ns_ok
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, pod.metadata.labels.as_ref()))
}

fn affinity_terms(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn anti_affinity_terms(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn label<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a String> {
    node.node.metadata.labels.as_ref().and_then(|l| l.get(key))
}

type Domain = (String, String);

struct State {
    /// Domains an existing pod's anti-affinity keeps this pod out of.
    existing_anti: HashSet<Domain>,
    /// Domains this pod's anti-affinity keeps it out of.
    anti: HashSet<Domain>,
    /// Per affinity term: its topology key and the domains holding a matching pod.
    affinity: Vec<(String, HashSet<String>)>,
    /// No pod matches any affinity term, but the pod matches its own: go anywhere.
    affinity_waived: bool,
}

pub struct InterPodAffinity;

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &Pod, nodes: &[&NodeInfo]) -> CycleState {
        let (aff, anti) = (affinity_terms(pod), anti_affinity_terms(pod));
        let own_ns = pod.metadata.namespace.as_deref();
        let mut st = State {
            existing_anti: HashSet::new(),
            anti: HashSet::new(),
            affinity: aff
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            affinity_waived: false,
        };
        let mut relevant = !aff.is_empty() || !anti.is_empty();
        for node in nodes {
            for other in node.pods.values() {
                for t in anti_affinity_terms(other) {
                    relevant = true;
                    if term_selects(t, other.metadata.namespace.as_deref(), pod) {
                        if let Some(v) = label(node, &t.topology_key) {
                            st.existing_anti.insert((t.topology_key.clone(), v.clone()));
                        }
                    }
                }
                for t in anti {
                    if term_selects(t, own_ns, other) {
                        if let Some(v) = label(node, &t.topology_key) {
                            st.anti.insert((t.topology_key.clone(), v.clone()));
                        }
                    }
                }
                for (t, (key, domains)) in aff.iter().zip(st.affinity.iter_mut()) {
                    if term_selects(t, own_ns, other) {
                        if let Some(v) = label(node, key) {
                            domains.insert(v.clone());
                        }
                    }
                }
            }
        }
        st.affinity_waived = !aff.is_empty()
            && st.affinity.iter().all(|(_, d)| d.is_empty())
            && aff.iter().all(|t| term_selects(t, own_ns, pod));
        relevant.then(|| Box::new(st) as Box<dyn std::any::Any + Send + Sync>)
    }

    fn filter(&self, state: &CycleState, _pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let Some(st) = state.as_ref().and_then(|s| s.downcast_ref::<State>()) else {
            return Ok(());
        };
        let in_domain = |set: &HashSet<Domain>| set.iter().any(|(k, v)| label(node, k) == Some(v));
        if !st.affinity_waived
            && !st
                .affinity
                .iter()
                .all(|(key, domains)| label(node, key).is_some_and(|v| domains.contains(v)))
        {
            return Err(vec!["node(s) didn't match pod affinity rules".into()]);
        }
        if in_domain(&st.anti) {
            return Err(vec!["node(s) didn't match pod anti-affinity rules".into()]);
        }
        if in_domain(&st.existing_anti) {
            return Err(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into(),
            ]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod, pod_labels, with_labels};
    use k8s_openapi::api::core::v1::{Affinity, PodAffinity, PodAntiAffinity};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), app.to_string())].into()),
                ..Default::default()
            }),
            namespaces: None,
            topology_key: key.into(),
        }
    }

    fn with(p: Pod, aff: Vec<PodAffinityTerm>, anti: Vec<PodAffinityTerm>) -> Pod {
        let mut p = p;
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: (!aff.is_empty()).then(|| PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(aff),
                ..Default::default()
            }),
            pod_anti_affinity: (!anti.is_empty()).then(|| PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(anti),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    /// Nodes a1, a2 in zone a and b1 in zone b; `placed` says which pods are where.
    fn check(p: &Pod, placed: Vec<(&str, Pod)>) -> Vec<Result<(), Vec<String>>> {
        let nodes: Vec<NodeInfo> = [("a1", "a"), ("a2", "a"), ("b1", "b")]
            .iter()
            .map(|(name, zone)| {
                let pods = placed
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, p)| p.clone())
                    .collect();
                info(
                    with_labels(node(name, "1", "1Gi"), &[("zone", zone), ("host", name)]),
                    pods,
                )
            })
            .collect();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let st = InterPodAffinity.pre_filter(p, &refs);
        nodes
            .iter()
            .map(|n| InterPodAffinity.filter(&st, p, n))
            .collect()
    }

    #[test]
    fn table() {
        let web = || pod_labels(pod("w", "", ""), &[("app", "web")]);
        let db = || pod_labels(pod("d", "", ""), &[("app", "db")]);
        let ok = Ok(());
        let aff = Err(vec!["node(s) didn't match pod affinity rules".to_string()]);
        let anti = Err(vec![
            "node(s) didn't match pod anti-affinity rules".to_string()
        ]);
        let existing = Err(vec![
            "node(s) didn't satisfy existing pods anti-affinity rules".to_string(),
        ]);
        let cases = vec![
            (
                "no affinity",
                web(),
                vec![("a1", db())],
                vec![ok.clone(), ok.clone(), ok.clone()],
            ),
            (
                "affinity to db by zone",
                with(web(), vec![term("db", "zone")], vec![]),
                vec![("a1", db())],
                vec![ok.clone(), ok.clone(), aff.clone()],
            ),
            (
                "affinity to db by host",
                with(web(), vec![term("db", "host")], vec![]),
                vec![("a1", db())],
                vec![ok.clone(), aff.clone(), aff.clone()],
            ),
            (
                "affinity to nothing, not self",
                with(web(), vec![term("db", "zone")], vec![]),
                vec![],
                vec![aff.clone(), aff.clone(), aff.clone()],
            ),
            (
                "first of a group",
                with(web(), vec![term("web", "zone")], vec![]),
                vec![],
                vec![ok.clone(), ok.clone(), ok.clone()],
            ),
            (
                "anti-affinity by host",
                with(web(), vec![], vec![term("web", "host")]),
                vec![("a1", web())],
                vec![anti.clone(), ok.clone(), ok.clone()],
            ),
            (
                "anti-affinity by zone",
                with(web(), vec![], vec![term("web", "zone")]),
                vec![("a1", web())],
                vec![anti.clone(), anti.clone(), ok.clone()],
            ),
            (
                "existing pod's anti-affinity",
                web(),
                vec![("b1", with(db(), vec![], vec![term("web", "zone")]))],
                vec![ok.clone(), ok.clone(), existing.clone()],
            ),
        ];
        for (name, p, placed, want) in cases {
            assert_eq!(check(&p, placed), want, "{name}");
        }
    }
}
