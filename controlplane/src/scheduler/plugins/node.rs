//! NodeUnschedulable (`spec.unschedulable` unless tolerated) and NodeReady (the Ready
//! condition must be True).

use k8s_openapi::api::core::v1::{Pod, Taint};

use super::taints::tolerates;
use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{CycleState, FilterPlugin};

pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let unschedulable = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if unschedulable && !tolerates(pod, &taint) {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
        Ok(())
    }
}

pub struct NodeReady;

impl FilterPlugin for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }
    fn filter(&self, _: &CycleState, _pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let ready = node
            .node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            Ok(())
        } else {
            Err(vec!["node(s) were not ready".into()])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod};
    use k8s_openapi::api::core::v1::{Node, Toleration};

    #[test]
    fn unschedulable_and_ready() {
        let cordoned = {
            let mut n = node("n", "1", "1Gi");
            n.spec.as_mut().unwrap().unschedulable = Some(true);
            n
        };
        let not_ready = {
            let mut n = node("n", "1", "1Gi");
            n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
            n
        };
        let no_conditions = {
            let mut n = node("n", "1", "1Gi");
            n.status.as_mut().unwrap().conditions = None;
            n
        };
        let tolerant = {
            let mut p = pod("p", "", "");
            p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
                key: Some("node.kubernetes.io/unschedulable".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]);
            p
        };
        let plain = pod("p", "", "");
        type Case<'a> = (&'a dyn FilterPlugin, &'a Pod, Node, Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            (&NodeUnschedulable, &plain, node("n", "1", "1Gi"), Ok(())),
            (
                &NodeUnschedulable,
                &plain,
                cordoned.clone(),
                Err("node(s) were unschedulable"),
            ),
            (&NodeUnschedulable, &tolerant, cordoned, Ok(())),
            (&NodeReady, &plain, node("n", "1", "1Gi"), Ok(())),
            (&NodeReady, &plain, not_ready, Err("node(s) were not ready")),
            (
                &NodeReady,
                &plain,
                no_conditions,
                Err("node(s) were not ready"),
            ),
        ];
        for (i, (plugin, p, n, want)) in cases.into_iter().enumerate() {
            let got = plugin.filter(&None, p, &info(n, vec![]));
            assert_eq!(
                got,
                want.map_err(|r| vec![r.to_string()]),
                "case {i} ({})",
                plugin.name()
            );
        }
    }
}
