//! Request routing: turns a resource URL into what it names (resource, namespace, name,
//! subresource) and the Kubernetes verb, following kube-apiserver's path grammar:
//!
//! ```text
//! /api/v1[/watch][/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]
//! /apis/<group>/<version>[/watch][/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]
//! /api/v1/namespaces/<name>[/status|/finalize]       (the namespace object itself)
//! ```

use axum::http::Method;

use super::registry::{self, Resource};
use super::status::ApiError;

/// What a resource URL names.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path form.
    pub watch_path: bool,
}

/// Parses the path segments after `/api` or `/apis`.
pub fn parse(segments: &[&str]) -> Result<Target, ApiError> {
    let (group, version, mut rest) = match segments {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::PathNotFound),
    };
    let watch_path = rest.first() == Some(&"watch");
    if watch_path {
        rest = &rest[1..];
    }
    let mut namespace = None;
    if let ["namespaces", ns, plural, ..] = rest {
        if registry::lookup(group, version, plural).is_some() {
            namespace = Some(ns.to_string());
            rest = &rest[2..];
        }
    }
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::PathNotFound),
    };
    let resource = registry::lookup(group, version, plural).ok_or(ApiError::PathNotFound)?;
    if resource.namespaced != namespace.is_some() && (name.is_some() || !resource.namespaced) {
        return Err(ApiError::PathNotFound);
    }
    if let Some(s) = &sub {
        if !resource.has_subresource(s) {
            return Err(ApiError::PathNotFound);
        }
    }
    Ok(Target {
        resource,
        namespace,
        name,
        subresource: sub,
        watch_path,
    })
}

/// The Kubernetes verb of a request on `target`.
pub fn verb(method: &Method, target: &Target, watch_param: bool) -> Result<&'static str, ApiError> {
    let item = target.name.is_some();
    Ok(match (method.as_str(), item) {
        ("GET", _) if target.watch_path || (watch_param && !item) => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("POST", true) if target.subresource.is_some() => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) if target.subresource.is_none() => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ApiError::MethodNotAllowed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (plural, namespace, name, subresource)
    type Parsed = (String, Option<String>, Option<String>, Option<String>);

    fn p(path: &str) -> Result<Parsed, ApiError> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        parse(&segs).map(|t| {
            (
                t.resource.plural.to_string(),
                t.namespace,
                t.name,
                t.subresource,
            )
        })
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn paths() {
        assert_eq!(
            p("/api/v1/pods").unwrap(),
            ("pods".into(), None, None, None)
        );
        assert_eq!(
            p("/api/v1/namespaces/a/pods").unwrap(),
            ("pods".into(), s("a"), None, None)
        );
        assert_eq!(
            p("/api/v1/namespaces/a/pods/x/status").unwrap(),
            ("pods".into(), s("a"), s("x"), s("status"))
        );
        assert_eq!(
            p("/api/v1/namespaces").unwrap(),
            ("namespaces".into(), None, None, None)
        );
        assert_eq!(
            p("/api/v1/namespaces/a").unwrap(),
            ("namespaces".into(), None, s("a"), None)
        );
        assert_eq!(
            p("/api/v1/namespaces/a/status").unwrap(),
            ("namespaces".into(), None, s("a"), s("status"))
        );
        assert_eq!(
            p("/api/v1/nodes/n/status").unwrap(),
            ("nodes".into(), None, s("n"), s("status"))
        );
        assert_eq!(
            p("/apis/apps/v1/namespaces/d/deployments/w/scale").unwrap(),
            ("deployments".into(), s("d"), s("w"), s("scale"))
        );
        assert_eq!(
            p("/api/v1/watch/namespaces/a/pods").unwrap(),
            ("pods".into(), s("a"), None, None)
        );
        for bad in [
            "/api/v1/bogus",
            "/api/v1/pods/x",
            "/api/v1/namespaces/a/pods/x/nope",
            "/apis/apps/v1/pods",
            "/api/v2/pods",
            "/api/v1/nodes/n/scale",
        ] {
            assert_eq!(p(bad), Err(ApiError::PathNotFound), "{bad}");
        }
    }

    #[test]
    fn verbs() {
        let segs = ["api", "v1", "namespaces", "a", "pods"];
        let list = parse(&segs).unwrap();
        assert_eq!(verb(&Method::GET, &list, false).unwrap(), "list");
        assert_eq!(verb(&Method::GET, &list, true).unwrap(), "watch");
        assert_eq!(verb(&Method::POST, &list, false).unwrap(), "create");
        assert_eq!(
            verb(&Method::DELETE, &list, false).unwrap(),
            "deletecollection"
        );
        assert_eq!(
            verb(&Method::PUT, &list, false),
            Err(ApiError::MethodNotAllowed)
        );
        let item = parse(&["api", "v1", "namespaces", "a", "pods", "x"]).unwrap();
        assert_eq!(verb(&Method::PATCH, &item, false).unwrap(), "patch");
        assert_eq!(verb(&Method::DELETE, &item, false).unwrap(), "delete");
    }
}
