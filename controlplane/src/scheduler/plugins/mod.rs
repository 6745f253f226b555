//! The Filter and Score plugins, one module per concern, and the default plugin set with
//! configurable score weights.

pub mod fit;
pub mod interpod;
pub mod node;
pub mod node_affinity;
pub mod ports;
pub mod spread;
pub mod taints;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::framework::Framework;

/// Score plugin weights by plugin name (kube-scheduler's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weights(pub BTreeMap<String, i64>);

impl Default for Weights {
    fn default() -> Self {
        Weights(
            [
                (fit::LEAST_ALLOCATED, 1),
                (fit::BALANCED_ALLOCATION, 1),
                (node_affinity::NAME, 1),
                (spread::NAME, 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeightsError {
    #[error("invalid score weight {0:?}: want Plugin=weight")]
    Syntax(String),
    #[error("unknown score plugin {0:?}")]
    UnknownPlugin(String),
}

impl std::str::FromStr for Weights {
    type Err = WeightsError;
    /// `NodeResourcesLeastAllocated=2,SelectorSpread=0`: overrides of the defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut w = Weights::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| WeightsError::Syntax(part.into()))?;
            let weight: i64 = weight
                .trim()
                .parse()
                .map_err(|_| WeightsError::Syntax(part.into()))?;
            let slot =
                w.0.get_mut(name.trim())
                    .ok_or_else(|| WeightsError::UnknownPlugin(name.into()))?;
            *slot = weight;
        }
        Ok(w)
    }
}

/// The default plugins, filters in kube-scheduler's order (cheap checks first).
pub fn default_framework(weights: &Weights) -> Framework {
    let w = |n: &str| weights.0.get(n).copied().unwrap_or(0);
    Framework {
        filters: vec![
            Box::new(node::NodeUnschedulable),
            Box::new(node::NodeReady),
            Box::new(node_affinity::NodeAffinity),
            Box::new(ports::NodePorts),
            Box::new(fit::NodeResourcesFit),
            Box::new(taints::TaintToleration),
            Box::new(interpod::InterPodAffinity),
        ],
        scores: vec![
            (Box::new(fit::LeastAllocated), w(fit::LEAST_ALLOCATED)),
            (
                Box::new(fit::BalancedAllocation),
                w(fit::BALANCED_ALLOCATION),
            ),
            (
                Box::new(node_affinity::NodeAffinity),
                w(node_affinity::NAME),
            ),
            (Box::new(spread::SelectorSpread), w(spread::NAME)),
        ],
    }
}

/// Whether `labels` satisfy a metav1 LabelSelector (an empty selector matches all).
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| get(k) != Some(v)) {
            return false;
        }
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn weights_parse() {
        let w: Weights = "NodeResourcesLeastAllocated=3, SelectorSpread=0"
            .parse()
            .unwrap();
        assert_eq!(w.0["NodeResourcesLeastAllocated"], 3);
        assert_eq!(w.0["SelectorSpread"], 0);
        assert_eq!(w.0["NodeAffinity"], 1);
        assert_eq!(
            "Nope=1".parse::<Weights>(),
            Err(WeightsError::UnknownPlugin("Nope".into()))
        );
        assert_eq!(
            "x".parse::<Weights>(),
            Err(WeightsError::Syntax("x".into()))
        );
    }

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "fe")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = |op: &str, vals: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(vals.iter().map(|s| s.to_string()).collect()),
            }]),
            ..Default::default()
        };
        let cases = [
            (LabelSelector::default(), true),
            (
                LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                true,
            ),
            (
                LabelSelector {
                    match_labels: Some([("app".to_string(), "db".to_string())].into()),
                    ..Default::default()
                },
                false,
            ),
            (req("In", &["web", "api"]), true),
            (req("NotIn", &["web"]), false),
            (req("Exists", &[]), true),
            (req("DoesNotExist", &[]), false),
            (req("Bogus", &[]), false),
        ];
        for (i, (sel, want)) in cases.into_iter().enumerate() {
            assert_eq!(selector_matches(&sel, Some(&labels)), want, "case {i}");
        }
    }
}
