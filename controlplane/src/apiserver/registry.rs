//! The table of served resources. One row per resource drives discovery (`/api/v1`,
//! `/apis/<group>/<version>`), request routing (which plural is which kind, cluster- or
//! namespace-scoped, which subresources exist) and the etcd key layout.
//!
//! Keys follow kube-apiserver's layout so an etcd dump reads the same:
//! `/registry/<prefix>/<namespace>/<name>` for namespaced resources and
//! `/registry/<prefix>/<name>` for cluster-scoped ones, where `<prefix>` is the resource's
//! plural except for Kubernetes' historical names (`minions` for nodes, `services/specs`
//! and `services/endpoints`).

/// One served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// URL name, e.g. `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources beside the object itself (`status`, `scale`, `binding`, `log`).
    pub subresources: &'static [&'static str],
    /// Path under `/registry/` in etcd.
    pub etcd_prefix: &'static str,
    /// Listed by `kubectl get all`.
    pub in_category_all: bool,
}

/// Verbs every resource serves on the object itself.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

macro_rules! res {
    ($g:expr, $k:expr, $p:expr, $s:expr, $ns:expr, $short:expr, $sub:expr, $prefix:expr, $all:expr) => {
        Resource {
            group: $g,
            version: "v1",
            kind: $k,
            plural: $p,
            singular: $s,
            namespaced: $ns,
            short_names: $short,
            subresources: $sub,
            etcd_prefix: $prefix,
            in_category_all: $all,
        }
    };
}

/// Every resource this server serves.
pub static RESOURCES: &[Resource] = &[
    res!(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &["status", "finalize"],
        "namespaces",
        false
    ),
    res!(
        "",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        &["status"],
        "minions",
        false
    ),
    res!(
        "",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        &["status", "binding", "log"],
        "pods",
        true
    ),
    res!(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        &["status"],
        "services/specs",
        true
    ),
    res!(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        &[],
        "services/endpoints",
        false
    ),
    res!(
        "",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        "events",
        false
    ),
    res!(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
        "configmaps",
        false
    ),
    res!(
        "",
        "Secret",
        "secrets",
        "secret",
        true,
        &[],
        &[],
        "secrets",
        false
    ),
    res!(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        &["status", "scale"],
        "deployments",
        true
    ),
    res!(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        &["status", "scale"],
        "replicasets",
        true
    ),
    res!(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
        "leases",
        false
    ),
];

/// The API groups, in discovery order, with their one version.
pub const GROUPS: &[&str] = &["apps", "coordination.k8s.io"];

impl Resource {
    /// `deployments.apps`, or `pods` for the core group: how kube names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key prefix of a list: every object (`namespace` None) or one namespace's.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{ns}/", self.etcd_prefix),
            _ => format!("/registry/{}/", self.etcd_prefix),
        }
    }

    /// The key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.list_prefix(namespace))
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

/// The resource served at `/<group>/<version>/<plural>`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resources of one group/version, for discovery.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let cases = [
            (
                "",
                "pods",
                Some("default"),
                "web",
                "/registry/pods/default/web",
            ),
            ("", "nodes", None, "n1", "/registry/minions/n1"),
            (
                "",
                "services",
                Some("ns"),
                "s",
                "/registry/services/specs/ns/s",
            ),
            (
                "",
                "endpoints",
                Some("ns"),
                "s",
                "/registry/services/endpoints/ns/s",
            ),
            (
                "apps",
                "deployments",
                Some("a"),
                "d",
                "/registry/deployments/a/d",
            ),
            (
                "",
                "namespaces",
                None,
                "default",
                "/registry/namespaces/default",
            ),
        ];
        for (group, plural, ns, name, key) in cases {
            assert_eq!(lookup(group, "v1", plural).unwrap().key(ns, name), key);
        }
    }

    #[test]
    fn list_prefix_of_namespaced_resource_ends_with_slash() {
        let pods = lookup("", "v1", "pods").unwrap();
        assert_eq!(pods.list_prefix(Some("a")), "/registry/pods/a/");
        assert_eq!(pods.list_prefix(None), "/registry/pods/");
        assert!(lookup("apps", "v1", "pods").is_none());
    }
}
