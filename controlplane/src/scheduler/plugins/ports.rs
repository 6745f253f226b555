//! NodePorts: a pod's host ports must be free on the node (same protocol and port, and
//! the host IPs overlap: equal, or either is the wildcard 0.0.0.0).

use k8s_openapi::api::core::v1::Pod;

use crate::scheduler::cache::NodeInfo;
use crate::scheduler::framework::{CycleState, FilterPlugin};

/// (protocol, host IP, port) of every container port with a hostPort.
pub fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = &pod.spec else { return vec![] };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&h| h > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, port))
        })
        .collect()
}

fn conflicts(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

pub struct NodePorts;

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<(), Vec<String>> {
        let wanted = host_ports(pod);
        if wanted.is_empty() {
            return Ok(());
        }
        let clash = node
            .pods
            .values()
            .flat_map(|p| host_ports(p))
            .any(|used| wanted.iter().any(|w| conflicts(w, &used)));
        if clash {
            Err(vec![
                "node(s) didn't have free ports for the requested pod ports".into(),
            ])
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::{info, node, pod};
    use k8s_openapi::api::core::v1::ContainerPort;

    fn with_port(name: &str, proto: &str, ip: &str, port: i32) -> Pod {
        let mut p = pod(name, "", "");
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: (!ip.is_empty()).then(|| ip.to_string()),
            protocol: Some(proto.into()),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn ports() {
        let busy = "node(s) didn't have free ports for the requested pod ports";
        let cases = [
            (with_port("p", "TCP", "", 8080), vec![], Ok(())),
            (
                with_port("p", "TCP", "", 8080),
                vec![with_port("a", "TCP", "", 8080)],
                Err(busy),
            ),
            (
                with_port("p", "UDP", "", 8080),
                vec![with_port("a", "TCP", "", 8080)],
                Ok(()),
            ),
            (
                with_port("p", "TCP", "", 8081),
                vec![with_port("a", "TCP", "", 8080)],
                Ok(()),
            ),
            (
                with_port("p", "TCP", "10.0.0.1", 8080),
                vec![with_port("a", "TCP", "10.0.0.2", 8080)],
                Ok(()),
            ),
            (
                with_port("p", "TCP", "10.0.0.1", 8080),
                vec![with_port("a", "TCP", "", 8080)],
                Err(busy),
            ),
            (
                pod("p", "", ""),
                vec![with_port("a", "TCP", "", 8080)],
                Ok(()),
            ),
        ];
        for (i, (p, bound, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                NodePorts.filter(&None, &p, &info(node("n", "1", "1Gi"), bound)),
                want.map_err(|m| vec![m.to_string()]),
                "case {i}"
            );
        }
    }
}
