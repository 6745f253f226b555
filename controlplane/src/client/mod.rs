//! A small typed Kubernetes API client for the control plane's own components (scheduler,
//! controllers, node agent): the [`Api`] trait with get/list/create/update/merge-patch/
//! delete/bind/watch over the k8s-openapi 1.20 types, its HTTP(S)+JSON implementation
//! ([`http::HttpClient`], configured from the kubeconfig the API server writes), an
//! in-memory fake for unit tests ([`fake::FakeApi`]) and a list-then-watch loop that
//! resumes from the last resourceVersion and relists on 410 ([`watcher`]).
//!
//! Why not the `kube` crate: the kube releases that match k8s-openapi 0.17 (the last one
//! with Kubernetes 1.20 types, which kubectl 1.20 and our API server speak) are built on
//! hyper 0.14 / rustls 0.20, a second HTTP and TLS stack beside the hyper 1 / rustls 0.23
//! the API server uses; the verbs needed here are a few hundred lines.

pub mod fake;
pub mod http;
pub mod kubeconfig;
pub mod watcher;

use std::future::Future;

use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Binding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, WatchEvent};
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The API objects the client handles: k8s-openapi resources with standard metadata.
pub trait Object:
    Resource
    + Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
}

impl<T> Object for T where
    T: Resource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static
{
}

/// What went wrong talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a `Status` failure (HTTP code, reason, message).
    #[error("{message} ({code} {reason})")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("decoding the response: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, reason, .. } if reason == "AlreadyExists")
    }
    /// The watch window has moved past the requested resourceVersion: relist.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }
    pub fn api(code: u16, reason: &str, message: impl Into<String>) -> ClientError {
        ClientError::Api {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Selectors and limits of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Server-side watch timeout; the watcher reconnects when it ends.
    pub timeout_seconds: Option<u32>,
}

/// How `delete_with` treats the object's dependents (metav1.DeletionPropagation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the object now; the garbage collector deletes dependents afterwards.
    Background,
    /// Keep the object (finalizer `foregroundDeletion`) until its blocking dependents are gone.
    Foreground,
    /// Keep the object (finalizer `orphan`) until the dependents' owner references are removed.
    Orphan,
}

impl Propagation {
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Background => "Background",
            Propagation::Foreground => "Foreground",
            Propagation::Orphan => "Orphan",
        }
    }
}

/// `DeleteOptions` of `delete_with`.
#[derive(Clone, Debug, Default)]
pub struct DeleteParams {
    pub propagation: Option<Propagation>,
    /// Delete only if the object still has this uid (it was not deleted and recreated).
    pub precondition_uid: Option<String>,
    pub grace_period_seconds: Option<i64>,
}

impl DeleteParams {
    /// The DeleteOptions body the API server reads.
    pub fn to_body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(p) = self.propagation {
            body["propagationPolicy"] = p.as_str().into();
        }
        if let Some(uid) = &self.precondition_uid {
            body["preconditions"] = serde_json::json!({ "uid": uid });
        }
        if let Some(g) = self.grace_period_seconds {
            body["gracePeriodSeconds"] = g.into();
        }
        body
    }
}

/// One page of a list: the items and the collection's resourceVersion to watch from.
#[derive(Clone, Debug)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    pub resource_version: String,
}

/// A watch stream of typed events; ends when the server closes it.
pub type WatchStream<K> = BoxStream<'static, Result<WatchEvent<K>>>;

/// The verbs the control plane uses. Namespace `None` means cluster-scoped objects, or all
/// namespaces for list/watch of namespaced ones.
pub trait Api: Clone + Send + Sync + 'static {
    fn get<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<K>> + Send;
    fn list<K: Object>(
        &self,
        ns: Option<&str>,
        params: &ListParams,
    ) -> impl Future<Output = Result<ObjectList<K>>> + Send;
    fn create<K: Object>(
        &self,
        ns: Option<&str>,
        obj: &K,
    ) -> impl Future<Output = Result<K>> + Send;
    /// A full replace; conflicts (409) when `obj`'s resourceVersion is stale.
    fn update<K: Object>(
        &self,
        ns: Option<&str>,
        obj: &K,
    ) -> impl Future<Output = Result<K>> + Send;
    /// An RFC 7386 JSON merge patch.
    fn patch_merge<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> impl Future<Output = Result<K>> + Send;
    /// A delete with default options.
    fn delete<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.delete_with::<K>(ns, name, &DeleteParams::default())
                .await
        }
    }
    /// A delete with options: propagation policy, uid precondition, grace period.
    fn delete_with<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        params: &DeleteParams,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `PUT <object>/<subresource>`: `status` replaces the status only; a namespace's
    /// `finalize` replaces its `spec.finalizers` only.
    fn update_subresource<K: Object>(
        &self,
        ns: Option<&str>,
        obj: &K,
        subresource: &'static str,
    ) -> impl Future<Output = Result<K>> + Send;
    /// `PUT <object>/status`.
    fn update_status<K: Object>(
        &self,
        ns: Option<&str>,
        obj: &K,
    ) -> impl Future<Output = Result<K>> + Send {
        self.update_subresource(ns, obj, "status")
    }
    /// `POST pods/<name>/binding`; 409 if the pod is already bound.
    fn bind(&self, ns: &str, binding: &Binding) -> impl Future<Output = Result<()>> + Send;
    /// Events after `resource_version`; a 410 (as an error or an ERROR event) means relist.
    fn watch<K: Object>(
        &self,
        ns: Option<&str>,
        params: &ListParams,
        resource_version: &str,
    ) -> impl Future<Output = Result<WatchStream<K>>> + Send;
}

/// The collection path of `K`: `/api/v1[/namespaces/<ns>]/pods` or `/apis/<g>/<v>/...`.
pub fn collection_path<K: Resource>(ns: Option<&str>) -> String {
    let mut p = if K::GROUP.is_empty() {
        format!("/api/{}", K::VERSION)
    } else {
        format!("/apis/{}", K::API_VERSION)
    };
    if let Some(ns) = ns {
        p.push_str("/namespaces/");
        p.push_str(ns);
    }
    p.push('/');
    p.push_str(K::URL_PATH_SEGMENT);
    p
}

/// `namespace/name` (or `name`), the key objects are tracked by.
pub fn key_of(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        _ => meta.name.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Node, Pod};

    #[test]
    fn paths() {
        let cases = [
            (
                collection_path::<Pod>(Some("default")),
                "/api/v1/namespaces/default/pods",
            ),
            (collection_path::<Pod>(None), "/api/v1/pods"),
            (collection_path::<Node>(None), "/api/v1/nodes"),
            (
                collection_path::<Lease>(Some("kube-system")),
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
