//! The PodStatus the agent writes, from the containers' views: phase, the Initialized,
//! Ready, ContainersReady and PodScheduled conditions (each keeping its
//! lastTransitionTime while its status holds), IPs, start time and QoS class.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::status::ContainerView;

pub struct Input<'a> {
    pub pod: &'a Pod,
    pub phase: &'a str,
    pub initialized: bool,
    pub init: &'a [ContainerView],
    pub app: &'a [ContainerView],
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub start_time: Time,
    pub now: DateTime<Utc>,
}

pub fn build(i: &Input) -> PodStatus {
    let old = i.pod.status.clone().unwrap_or_default();
    let now = Time(DateTime::from_timestamp(i.now.timestamp(), 0).unwrap_or(i.now));
    let ready = !i.app.is_empty() && i.app.iter().all(|c| c.ready) && i.phase == "Running";
    let bool_s = |b: bool| if b { "True" } else { "False" }.to_string();
    let cond = |ty: &str, status: String, reason: Option<&str>| {
        let prev = old
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == ty));
        let since = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        PodCondition {
            type_: ty.into(),
            status,
            reason: reason.map(String::from),
            last_transition_time: since,
            ..Default::default()
        }
    };
    let not_ready = (!ready).then_some("ContainersNotReady");
    let conditions = vec![
        cond(
            "Initialized",
            bool_s(i.initialized),
            (!i.initialized).then_some("ContainersNotInitialized"),
        ),
        cond("Ready", bool_s(ready), not_ready),
        cond("ContainersReady", bool_s(ready), not_ready),
        cond("PodScheduled", "True".into(), None),
    ];
    PodStatus {
        phase: Some(i.phase.into()),
        conditions: Some(conditions),
        host_ip: Some(i.host_ip.into()),
        pod_ip: Some(i.pod_ip.into()),
        pod_ips: Some(vec![PodIP {
            ip: Some(i.pod_ip.into()),
        }]),
        start_time: Some(i.start_time.clone()),
        qos_class: old
            .qos_class
            .clone()
            .or_else(|| Some(qos_class(i.pod).into())),
        container_statuses: Some(i.app.iter().map(ContainerView::to_status).collect()),
        init_container_statuses: (!i.init.is_empty())
            .then(|| i.init.iter().map(ContainerView::to_status).collect()),
        ..Default::default()
    }
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = pod.spec.clone().unwrap_or_default();
    let all: Vec<Container> = spec
        .containers
        .into_iter()
        .chain(spec.init_containers.unwrap_or_default())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        let lim = r.limits.unwrap_or_default();
        let req = r.requests.unwrap_or_default();
        any |= !lim.is_empty() || !req.is_empty();
        for k in ["cpu", "memory"] {
            match (lim.get(k), req.get(k)) {
                (Some(l), Some(q)) if l == q => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Current;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod_with(resources: &[(Option<&str>, Option<&str>)]) -> Pod {
        let q = |v: Option<&str>| {
            v.map(|v| {
                [
                    ("cpu".to_string(), Quantity(v.into())),
                    ("memory".to_string(), Quantity("64Mi".into())),
                ]
                .into()
            })
        };
        Pod {
            spec: Some(PodSpec {
                containers: resources
                    .iter()
                    .map(|(l, r)| Container {
                        resources: Some(ResourceRequirements {
                            limits: q(*l),
                            requests: q(*r),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn qos_classes() {
        // (limits, requests) of each container
        type Containers<'a> = &'a [(Option<&'a str>, Option<&'a str>)];
        let cases: [(Containers, &str); 5] = [
            (&[(None, None)], "BestEffort"),
            (&[(Some("1"), None)], "Guaranteed"),
            (&[(Some("1"), Some("1"))], "Guaranteed"),
            (&[(Some("1"), Some("500m"))], "Burstable"),
            (&[(Some("1"), Some("1")), (None, None)], "Burstable"),
        ];
        for (containers, want) in cases {
            assert_eq!(qos_class(&pod_with(containers)), want, "{containers:?}");
        }
    }

    #[test]
    fn ready_conditions_and_transition_times() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let view = |ready: bool| ContainerView {
            name: "c".into(),
            image: "busybox".into(),
            current: Current::Running { started_at: t(0) },
            last: None,
            restart_count: 0,
            ready,
            started: Some(true),
            container_id: None,
        };
        let mut pod = pod_with(&[(None, None)]);
        let input = |pod: &Pod, app: &[ContainerView], now| {
            build(&Input {
                pod,
                phase: "Running",
                initialized: true,
                init: &[],
                app,
                host_ip: "10.0.0.1",
                pod_ip: "10.0.0.1",
                start_time: Time(t(0)),
                now,
            })
        };
        let cond = |s: &PodStatus, ty: &str| {
            let c = s
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == ty)
                .unwrap()
                .clone();
            (c.status, c.last_transition_time.unwrap().0)
        };
        let s1 = input(&pod, &[view(false)], t(1));
        assert_eq!(cond(&s1, "Ready"), ("False".to_string(), t(1)));
        assert_eq!(s1.qos_class.as_deref(), Some("BestEffort"));
        pod.status = Some(s1);
        // Still not ready later: the transition time stays.
        let s2 = input(&pod, &[view(false)], t(5));
        assert_eq!(cond(&s2, "Ready"), ("False".to_string(), t(1)));
        pod.status = Some(s2);
        let s3 = input(&pod, &[view(true)], t(9));
        assert_eq!(cond(&s3, "Ready"), ("True".to_string(), t(9)));
        assert_eq!(cond(&s3, "ContainersReady"), ("True".to_string(), t(9)));
        assert_eq!(cond(&s3, "Initialized"), ("True".to_string(), t(1)));
    }
}
