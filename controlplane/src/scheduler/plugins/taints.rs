//! TaintToleration: a node's NoSchedule/NoExecute taints must each be tolerated.

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};

use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{CycleState, FilterPlugin};

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn toleration_matches(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

pub fn tolerates(pod: &Pod, taint: &Taint) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| toleration_matches(t, taint)))
}

pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let taints = node.node.spec.as_ref().and_then(|s| s.taints.as_ref());
        let untolerated = taints
            .into_iter()
            .flatten()
            .find(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(pod, t));
        match untolerated {
            None => Ok(()),
            Some(t) => Err(vec![format!(
                "node(s) had taint {{{}: {}}}, that the pod didn't tolerate",
                t.key,
                t.value.as_deref().unwrap_or("")
            )]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod};

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Toleration {
            key: opt(key),
            operator: opt(op),
            value: opt(value),
            effect: opt(effect),
            ..Default::default()
        }
    }

    #[test]
    fn tolerations() {
        let gpu = taint("dedicated", "gpu", "NoSchedule");
        let cases = [
            (tol("dedicated", "Equal", "gpu", "NoSchedule"), true),
            (tol("dedicated", "", "gpu", ""), true),
            (tol("dedicated", "Equal", "cpu", ""), false),
            (tol("dedicated", "Exists", "", ""), true),
            (tol("", "Exists", "", ""), true),
            (tol("dedicated", "Exists", "", "NoExecute"), false),
            (tol("other", "Exists", "", ""), false),
            (tol("", "Equal", "", ""), false),
        ];
        for (i, (t, want)) in cases.into_iter().enumerate() {
            assert_eq!(toleration_matches(&t, &gpu), want, "case {i}");
        }
    }

    #[test]
    fn filter() {
        let tainted = |effect: &str| {
            let mut n = node("n", "1", "1Gi");
            n.spec.as_mut().unwrap().taints = Some(vec![taint("dedicated", "gpu", effect)]);
            n
        };
        let tolerant = {
            let mut p = pod("p", "", "");
            p.spec.as_mut().unwrap().tolerations = Some(vec![tol("dedicated", "Exists", "", "")]);
            p
        };
        let plain = pod("p", "", "");
        let msg = "node(s) had taint {dedicated: gpu}, that the pod didn't tolerate";
        let cases = [
            (&plain, tainted("NoSchedule"), Err(msg)),
            (&plain, tainted("NoExecute"), Err(msg)),
            (&plain, tainted("PreferNoSchedule"), Ok(())),
            (&tolerant, tainted("NoSchedule"), Ok(())),
            (&plain, node("n", "1", "1Gi"), Ok(())),
        ];
        for (i, (p, n, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                TaintToleration.filter(&None, p, &info(n, vec![])),
                want.map_err(|m| vec![m.to_string()]),
                "case {i}"
            );
        }
    }
}
