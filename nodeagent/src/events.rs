//! Kubernetes Events about pods, as the kubelet records them (`kubectl describe pod`
//! shows them): Pulled, Created, Started, Killing (Normal) and Failed, BackOff, Unhealthy
//! (Warning), with source `kubelet` on this node and the container as fieldPath.

use chrono::{DateTime, Utc};
use controlplane::client::Api;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// One event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
    /// The container it is about (`spec.containers{name}`), if any.
    pub container: Option<String>,
}

impl Record {
    pub fn normal(reason: &'static str, container: &str, message: impl Into<String>) -> Record {
        Record {
            warning: false,
            reason,
            message: message.into(),
            container: Some(container.to_string()),
        }
    }
    pub fn warning(reason: &'static str, container: &str, message: impl Into<String>) -> Record {
        Record {
            warning: true,
            ..Record::normal(reason, container, message)
        }
    }
}

/// The Event object for `r` about `pod`.
pub fn event(pod: &Pod, node: &str, r: &Record, now: DateTime<Utc>) -> Event {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let suffix: u64 = rand::random();
    let at = Time(DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now));
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{suffix:016x}")),
            namespace: pod.metadata.namespace.clone(),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            field_path: r
                .container
                .as_ref()
                .map(|c| format!("spec.containers{{{c}}}")),
            ..Default::default()
        },
        reason: Some(r.reason.into()),
        message: Some(r.message.clone()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node.into()),
        }),
        first_timestamp: Some(at.clone()),
        last_timestamp: Some(at),
        count: Some(1),
        type_: Some(if r.warning { "Warning" } else { "Normal" }.into()),
        ..Default::default()
    }
}

/// Records `r` about `pod`; a failure is only logged (events are best effort).
pub async fn record<C: Api>(api: &C, pod: &Pod, node: &str, r: Record, now: DateTime<Utc>) {
    let ev = event(pod, node, &r, now);
    if let Err(e) = api.create(pod.metadata.namespace.as_deref(), &ev).await {
        tracing::debug!(reason = r.reason, error = %e, "recording an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_fields() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let e = event(
            &pod,
            "n1",
            &Record::warning("BackOff", "main", "Back-off restarting failed container"),
            now,
        );
        assert!(e.metadata.name.as_deref().unwrap().starts_with("web."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{main}")
        );
        assert_eq!(e.involved_object.uid.as_deref(), Some("u1"));
        assert_eq!(e.source.unwrap().host.as_deref(), Some("n1"));
        let other = event(
            &pod,
            "n1",
            &Record::normal("Started", "main", "Started container main"),
            now,
        );
        assert_ne!(other.metadata.name, e.metadata.name);
        assert_eq!(other.type_.as_deref(), Some("Normal"));
    }
}
