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

pub use crate::labels::selector_matches;

#[cfg(test)]
mod tests {
    use super::*;

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
}
