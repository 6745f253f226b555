//! The endpoints controller: for each Service with a selector, an Endpoints object of the
//! same name listing the IPs of the selected pods (ready ones under `addresses`, the rest
//! under `notReadyAddresses`, unless `publishNotReadyAddresses`), with the service ports
//! resolved against each pod (a named `targetPort` is looked up in the pod's container
//! ports; pods without it are left out of that port's subset). Pods being deleted are not
//! endpoints. Endpoints of a deleted Service are deleted. Services without a selector are
//! left alone: their Endpoints are the user's.
//!
//! Any pod change in a namespace re-queues that namespace's Services: a pod whose labels
//! changed must leave the Services that selected it, and old labels are not in the event.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::podutil;
use super::runtime::{Action, Informer, Reconciler, Store, WorkQueue};
use crate::client::{key_of, Api, ClientError};
use crate::labels::map_selects;

pub struct EndpointsController<C: Api> {
    api: C,
    services: Arc<Store<Service>>,
    endpoints: Arc<Store<Endpoints>>,
    pods: Arc<Store<Pod>>,
}

/// The port a service port targets on `pod`, if the pod has it.
fn resolve_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn address(pod: &Pod, ip: &str) -> EndpointAddress {
    EndpointAddress {
        ip: ip.into(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        hostname: None,
    }
}

/// (name, port, protocol) of one resolved service port.
type PortKey = (String, i32, String);
/// Ready and not-ready addresses of one subset.
type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);

/// The subsets of `svc` over `pods`: pods grouped by the ports they resolve to, addresses
/// sorted by IP so an unchanged set compares equal.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<Vec<PortKey>, Addresses> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ports: Vec<PortKey> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = resolve_port(p.target_port.as_ref(), p.port, pod)?;
                Some((
                    p.name.clone().unwrap_or_default(),
                    port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let entry = groups.entry(ports).or_default();
        if podutil::is_ready(pod) || publish_not_ready {
            entry.0.push(address(pod, ip));
        } else {
            entry.1.push(address(pod, ip));
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

impl<C: Api> EndpointsController<C> {
    pub fn new(
        api: C,
        services: &Arc<Informer<Service>>,
        endpoints: &Arc<Informer<Endpoints>>,
        pods: &Arc<Informer<Pod>>,
        queue: &Arc<WorkQueue>,
    ) -> Self {
        let q = queue.clone();
        services.add_handler(move |c| q.add(key_of(&c.object().metadata)));
        let (q, svc_store) = (queue.clone(), services.store.clone());
        pods.add_handler(move |c| {
            let ns = c.object().metadata.namespace.as_deref().unwrap_or("");
            for svc in svc_store.list_ns(ns) {
                q.add(key_of(&svc.metadata));
            }
        });
        // An Endpoints object edited or deleted behind our back is rewritten.
        let q = queue.clone();
        endpoints.add_handler(move |c| q.add(key_of(&c.object().metadata)));
        EndpointsController {
            api,
            services: services.store.clone(),
            endpoints: endpoints.store.clone(),
            pods: pods.store.clone(),
        }
    }
}

impl<C: Api> Reconciler for EndpointsController<C> {
    async fn reconcile(&self, key: &str) -> Result<Action, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let existing = self.endpoints.get(key);
        let Some(svc) = self.services.get(key) else {
            if existing.is_some() {
                match self.api.delete::<Endpoints>(Some(ns), name).await {
                    Ok(()) => {
                        self.endpoints.remove(key);
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(Action::Done);
        };
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.is_empty() {
            return Ok(Action::Done);
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_ns(ns)
            .into_iter()
            .filter(|p| map_selects(&selector, p.metadata.labels.as_ref()))
            .collect();
        let subsets = subsets(&svc, &pods);
        let labels = svc.metadata.labels.clone();
        match existing {
            Some(ep)
                if ep.subsets.clone().unwrap_or_default() == subsets
                    && ep.metadata.labels == labels =>
            {
                Ok(Action::Done)
            }
            Some(ep) => {
                let mut next = (*ep).clone();
                next.subsets = Some(subsets);
                next.metadata.labels = labels;
                let updated = self.api.update(Some(ns), &next).await?;
                self.endpoints.apply(updated);
                Ok(Action::Done)
            }
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(ns.into()),
                        labels,
                        ..Default::default()
                    },
                    subsets: Some(subsets),
                };
                match self.api.create(Some(ns), &ep).await {
                    Ok(created) => {
                        self.endpoints.apply(created);
                        Ok(Action::Done)
                    }
                    // Created meanwhile (or the informer lags): compare on the next round.
                    Err(e) if e.is_already_exists() => {
                        Ok(Action::RequeueAfter(std::time::Duration::from_millis(200)))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };

    fn pod(name: &str, ip: &str, ready: bool, named_port: Option<(&str, i32)>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: named_port.map(|(n, p)| {
                        vec![ContainerPort {
                            name: Some(n.into()),
                            container_port: p,
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn svc(target: IntOrString) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    target_port: Some(target),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        a.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses_per_port_set() {
        let pods = [
            pod("b", "10.0.0.2", true, Some(("http", 8080))),
            pod("a", "10.0.0.1", true, Some(("http", 8080))),
            pod("c", "10.0.0.3", false, Some(("http", 8080))),
            pod("d", "10.0.0.4", true, Some(("http", 9090))),
            pod("e", "10.0.0.5", true, None),
        ];
        let s = subsets(&svc(IntOrString::String("http".into())), &pods);
        assert_eq!(s.len(), 2);
        let by_port: BTreeMap<i32, &EndpointSubset> = s
            .iter()
            .filter_map(|x| Some((x.ports.as_ref()?[0].port, x)))
            .collect();
        assert_eq!(ips(&by_port[&8080].addresses), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(ips(&by_port[&8080].not_ready_addresses), ["10.0.0.3"]);
        assert_eq!(ips(&by_port[&9090].addresses), ["10.0.0.4"]);
        // The pod without the named port is no endpoint of it.
        assert!(s.iter().all(|x| !ips(&x.addresses).contains(&"10.0.0.5")));

        let numeric = subsets(&svc(IntOrString::Int(8000)), &pods);
        assert_eq!(numeric.len(), 1);
        assert_eq!(numeric[0].ports.as_ref().unwrap()[0].port, 8000);
        assert_eq!(ips(&numeric[0].addresses).len(), 4);
    }
}
