//! NodeAffinity: `spec.nodeSelector` and required node affinity as a filter; preferred
//! node affinity (sum of matching terms' weights, scaled to 0..=100) as a score.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod};

use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{normalize_to_max, CycleState, FilterPlugin, ScorePlugin};

pub const NAME: &str = "NodeAffinity";

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (
            value.and_then(|v| num(v)),
            values.first().and_then(|v| num(v)),
        ) {
            (Some(have), Some(bound)) => {
                if r.operator == "Gt" {
                    have > bound
                } else {
                    have < bound
                }
            }
            _ => false,
        },
        _ => false,
    }
}

/// A term matches if all its expressions and fields do; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key))))
        && fields.iter().all(|r| {
            let value =
                (r.key == "metadata.name").then(|| node.metadata.name.clone().unwrap_or_default());
            requirement_matches(r, value.as_ref())
        })
}

fn selector_matches(sel: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

pub struct NodeAffinity;

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let Some(spec) = &pod.spec else { return Ok(()) };
        let selector_ok = spec
            .node_selector
            .as_ref()
            .is_none_or(|s| selector_matches(s, &node.node));
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        let affinity_ok = required.is_none_or(|r| {
            r.node_selector_terms
                .iter()
                .any(|t| term_matches(t, &node.node))
        });
        if selector_ok && affinity_ok {
            Ok(())
        } else {
            Err(vec!["node(s) didn't match node selector".into()])
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
    fn score(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        let preferred = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        preferred
            .into_iter()
            .flatten()
            .filter(|t| term_matches(&t.preference, &node.node))
            .map(|t| t.weight as i64)
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod, with_labels};
    use k8s_openapi::api::core::v1::{Affinity, NodeSelector, PreferredSchedulingTerm};

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn term(exprs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        }
    }

    #[test]
    fn terms() {
        let n = with_labels(node("n1", "1", "1Gi"), &[("zone", "a"), ("cores", "8")]);
        let cases = [
            (term(vec![req("zone", "In", &["a", "b"])]), true),
            (term(vec![req("zone", "NotIn", &["a"])]), false),
            (term(vec![req("ssd", "NotIn", &["true"])]), true),
            (term(vec![req("zone", "Exists", &[])]), true),
            (term(vec![req("zone", "DoesNotExist", &[])]), false),
            (term(vec![req("cores", "Gt", &["4"])]), true),
            (term(vec![req("cores", "Lt", &["4"])]), false),
            (term(vec![req("zone", "Gt", &["4"])]), false),
            (
                term(vec![req("zone", "In", &["a"]), req("cores", "In", &["4"])]),
                false,
            ),
            (term(vec![]), false),
            (
                NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
                },
                true,
            ),
            (
                NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![req("metadata.name", "In", &["n2"])]),
                },
                false,
            ),
        ];
        for (i, (t, want)) in cases.into_iter().enumerate() {
            assert_eq!(term_matches(&t, &n), want, "case {i}");
        }
    }

    #[test]
    fn filter_and_score() {
        let with_affinity = |required: Option<Vec<NodeSelectorTerm>>,
                             preferred: Vec<(i32, NodeSelectorTerm)>| {
            let mut p = pod("p", "", "");
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                node_affinity: Some(k8s_openapi::api::core::v1::NodeAffinity {
                    required_during_scheduling_ignored_during_execution: required.map(|ts| {
                        NodeSelector {
                            node_selector_terms: ts,
                        }
                    }),
                    preferred_during_scheduling_ignored_during_execution: Some(
                        preferred
                            .into_iter()
                            .map(|(weight, preference)| PreferredSchedulingTerm {
                                weight,
                                preference,
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            });
            p
        };
        let with_selector = |k: &str, v: &str| {
            let mut p = pod("p", "", "");
            p.spec.as_mut().unwrap().node_selector = Some([(k.to_string(), v.to_string())].into());
            p
        };
        let a = info(with_labels(node("a", "1", "1Gi"), &[("zone", "a")]), vec![]);
        let b = info(with_labels(node("b", "1", "1Gi"), &[("zone", "b")]), vec![]);
        let miss = Err(vec!["node(s) didn't match node selector".to_string()]);
        let cases = [
            (pod("p", "", ""), Ok(()), Ok(())),
            (with_selector("zone", "a"), Ok(()), miss.clone()),
            (with_selector("disk", "ssd"), miss.clone(), miss.clone()),
            (
                with_affinity(Some(vec![term(vec![req("zone", "In", &["b"])])]), vec![]),
                miss.clone(),
                Ok(()),
            ),
            (
                with_affinity(
                    Some(vec![
                        term(vec![req("zone", "In", &["x"])]),
                        term(vec![req("zone", "Exists", &[])]),
                    ]),
                    vec![],
                ),
                Ok(()),
                Ok(()),
            ),
        ];
        for (i, (p, want_a, want_b)) in cases.into_iter().enumerate() {
            assert_eq!(
                FilterPlugin::filter(&NodeAffinity, &None, &p, &a),
                want_a,
                "case {i} on a"
            );
            assert_eq!(
                FilterPlugin::filter(&NodeAffinity, &None, &p, &b),
                want_b,
                "case {i} on b"
            );
        }
        let p = with_affinity(
            None,
            vec![
                (10, term(vec![req("zone", "In", &["b"])])),
                (5, term(vec![req("zone", "Exists", &[])])),
            ],
        );
        let mut scores = vec![
            NodeAffinity.score(&None, &p, &a),
            NodeAffinity.score(&None, &p, &b),
        ];
        assert_eq!(scores, vec![5, 15]);
        ScorePlugin::normalize(&NodeAffinity, &mut scores);
        assert_eq!(scores, vec![33, 100]);
    }
}
