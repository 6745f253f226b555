//! PATCH bodies: RFC 6902 JSON patch and RFC 7386 merge patch (both through the
//! `json-patch` crate), and Kubernetes' strategic merge patch for the kinds we serve.
//!
//! Strategic merge patch is a merge patch where some lists merge element-wise by a key
//! (containers by `name`, ports by `containerPort`, ...) instead of being replaced, plus
//! the directives kubectl emits: `$patch: replace|delete|merge`, `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`. The merge keys are the
//! `patchMergeKey`/`patchStrategy` tags of the Kubernetes 1.20 Go types.

use serde_json::{Map, Value};

/// Errors applying a patch: a body that does not parse (400), or a patch that cannot
/// apply to the object (422).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Json(String),
    #[error("{0}")]
    Strategic(String),
}

/// The patch flavours, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

/// The accepted media types, listed in 415 answers.
pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` of `ty` to `doc` (an object of `kind`).
pub fn apply(ty: PatchType, kind: &str, doc: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    match ty {
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
            let mut out = doc.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| PatchError::Json(e.to_string()))?;
            Ok(out)
        }
        PatchType::Merge => {
            let p: Value =
                serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
            let mut out = doc.clone();
            json_patch::merge(&mut out, &p);
            Ok(out)
        }
        PatchType::Strategic => {
            let p: Value =
                serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
            strategic_merge(kind, doc, &p)
        }
    }
}

/// How a list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListStrategy {
    /// Elements are objects merged by this key.
    ByKey(&'static str),
    /// A list of scalars merged as a set (finalizers).
    Primitive,
    Replace,
}

/// Merge keys of the pod spec, relative to the pod spec.
const POD_SPEC_KEYS: &[(&str, ListStrategy)] = &[
    ("containers", ListStrategy::ByKey("name")),
    ("initContainers", ListStrategy::ByKey("name")),
    ("ephemeralContainers", ListStrategy::ByKey("name")),
    ("volumes", ListStrategy::ByKey("name")),
    ("imagePullSecrets", ListStrategy::ByKey("name")),
    ("hostAliases", ListStrategy::ByKey("ip")),
    (
        "topologySpreadConstraints",
        ListStrategy::ByKey("topologyKey"),
    ),
    ("containers.ports", ListStrategy::ByKey("containerPort")),
    ("containers.env", ListStrategy::ByKey("name")),
    ("containers.volumeMounts", ListStrategy::ByKey("mountPath")),
    (
        "containers.volumeDevices",
        ListStrategy::ByKey("devicePath"),
    ),
    ("initContainers.ports", ListStrategy::ByKey("containerPort")),
    ("initContainers.env", ListStrategy::ByKey("name")),
    (
        "initContainers.volumeMounts",
        ListStrategy::ByKey("mountPath"),
    ),
    (
        "initContainers.volumeDevices",
        ListStrategy::ByKey("devicePath"),
    ),
];

/// Merge keys outside the pod spec, by kind and path from the object root.
const OTHER_KEYS: &[(&str, &str, ListStrategy)] = &[
    ("*", "metadata.finalizers", ListStrategy::Primitive),
    ("*", "metadata.ownerReferences", ListStrategy::ByKey("uid")),
    ("Pod", "status.conditions", ListStrategy::ByKey("type")),
    ("Pod", "status.podIPs", ListStrategy::ByKey("ip")),
    ("Node", "status.conditions", ListStrategy::ByKey("type")),
    ("Node", "status.addresses", ListStrategy::ByKey("type")),
    ("Node", "spec.podCIDRs", ListStrategy::Primitive),
    ("Service", "spec.ports", ListStrategy::ByKey("port")),
    (
        "Deployment",
        "status.conditions",
        ListStrategy::ByKey("type"),
    ),
    (
        "ReplicaSet",
        "status.conditions",
        ListStrategy::ByKey("type"),
    ),
    (
        "Namespace",
        "status.conditions",
        ListStrategy::ByKey("type"),
    ),
];

fn list_strategy(kind: &str, path: &str) -> ListStrategy {
    let pod_spec_rel = match kind {
        "Pod" => path.strip_prefix("spec."),
        "Deployment" | "ReplicaSet" => path.strip_prefix("spec.template.spec."),
        _ => None,
    };
    if let Some(rel) = pod_spec_rel {
        if let Some((_, s)) = POD_SPEC_KEYS.iter().find(|(p, _)| *p == rel) {
            return *s;
        }
    }
    OTHER_KEYS
        .iter()
        .find(|(k, p, _)| (*k == "*" || *k == kind) && *p == path)
        .map(|(_, _, s)| *s)
        .unwrap_or(ListStrategy::Replace)
}

/// Applies a strategic merge patch to `doc`.
pub fn strategic_merge(kind: &str, doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let (Value::Object(orig), Value::Object(p)) = (doc, patch) else {
        return Err(PatchError::Strategic(
            "invalid JSON document: the patch is not an object".into(),
        ));
    };
    Ok(merge_map(kind, "", orig, p)?
        .map(Value::Object)
        .unwrap_or(Value::Object(Map::new())))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges map `p` into `orig`; `None` means the map itself is deleted (`$patch: delete`).
fn merge_map(
    kind: &str,
    path: &str,
    orig: &Map<String, Value>,
    p: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut out = p.clone();
            out.remove("$patch");
            return Ok(Some(out));
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Strategic(format!(
                "unknown patch type: {other}"
            )))
        }
    }
    let mut out = orig.clone();
    for (k, v) in p {
        if k == "$patch"
            || k == "$retainKeys"
            || k.starts_with("$setElementOrder/")
            || k.starts_with("$deleteFromPrimitiveList/")
        {
            continue;
        }
        let field_path = join(path, k);
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::Object(pm) => match orig.get(k) {
                Some(Value::Object(om)) => match merge_map(kind, &field_path, om, pm)? {
                    Some(m) => {
                        out.insert(k.clone(), Value::Object(m));
                    }
                    None => {
                        out.remove(k);
                    }
                },
                _ => match merge_map(kind, &field_path, &Map::new(), pm)? {
                    Some(m) => {
                        out.insert(k.clone(), Value::Object(strip_directives(m)));
                    }
                    None => {
                        out.remove(k);
                    }
                },
            },
            Value::Array(pl) => {
                let ol = orig
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let merged = merge_list(kind, &field_path, &ol, pl)?;
                out.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                out.insert(k.clone(), scalar.clone());
            }
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|x| !drop.contains(&x));
            }
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            let order = v.as_array().cloned().unwrap_or_default();
            let strategy = list_strategy(kind, &join(path, field));
            if let Some(Value::Array(list)) = out.get_mut(field) {
                reorder(list, &order, strategy);
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or_else(|| {
                PatchError::Strategic("invalid patch: $retainKeys must be a list".into())
            })?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(out))
}

/// Removes `$`-directives from a map that had nothing to merge into.
fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            *inner = strip_directives(std::mem::take(inner));
        }
    }
    m
}

fn merge_list(
    kind: &str,
    path: &str,
    orig: &[Value],
    patch: &[Value],
) -> Result<Vec<Value>, PatchError> {
    match list_strategy(kind, path) {
        ListStrategy::Replace => Ok(patch
            .iter()
            .map(|v| match v {
                Value::Object(m) => Value::Object(strip_directives(m.clone())),
                other => other.clone(),
            })
            .collect()),
        ListStrategy::Primitive => {
            let mut out = orig.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::ByKey(key) => {
            if patch
                .iter()
                .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Ok(patch
                    .iter()
                    .filter(|e| e.get("$patch").is_none())
                    .cloned()
                    .collect());
            }
            let mut out = orig.to_vec();
            for pe in patch {
                let Value::Object(pm) = pe else {
                    return Err(PatchError::Strategic(format!("unable to find api field in struct for the list {path}: elements must be objects")));
                };
                let Some(kv) = pm.get(key) else {
                    return Err(PatchError::Strategic(format!(
                        "map: {} does not contain declared merge key: {key}",
                        Value::Object(pm.clone())
                    )));
                };
                let pos = out.iter().position(|o| o.get(key) == Some(kv));
                match pos {
                    Some(i) => {
                        let om = out[i].as_object().cloned().unwrap_or_default();
                        match merge_map(kind, path, &om, pm)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    None => {
                        if pm.get("$patch").and_then(Value::as_str) != Some("delete") {
                            out.push(Value::Object(strip_directives(pm.clone())));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `$setElementOrder` says; elements it does not name keep their place
/// after the named ones, in their previous order.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let ident = |v: &Value| -> Value {
        match strategy {
            ListStrategy::ByKey(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let want: Vec<Value> = order.iter().map(ident).collect();
    let rank = |v: &Value| {
        want.iter()
            .position(|w| *w == ident(v))
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|v| rank(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, doc: Value, patch: Value) -> Value {
        strategic_merge(kind, &doc, &patch).unwrap()
    }

    #[test]
    fn strategic_merge_table() {
        let pod = json!({
            "metadata": {"name": "p", "labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"containers": [
                {"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "busybox"}
            ], "tolerations": [{"key": "k"}]}
        });
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "containers merge by name",
                json!({"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}),
                json!([
                    {"name": "app", "image": "nginx:2", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]},
                    {"name": "side", "image": "busybox"}
                ]),
            ),
            (
                "$patch delete removes one container",
                json!({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}),
                json!([{"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}]),
            ),
            (
                "new container appended, env merged by name",
                json!({"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}]}, {"name": "new", "image": "x"}]}}),
                json!([
                    {"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "busybox"},
                    {"name": "new", "image": "x"}
                ]),
            ),
            (
                "$setElementOrder reorders",
                json!({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}]}}),
                json!([
                    {"name": "side", "image": "busybox"},
                    {"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}
                ]),
            ),
        ];
        for (name, patch, want) in cases {
            let got = smp("Pod", pod.clone(), patch);
            assert_eq!(got["spec"]["containers"], want, "{name}");
        }
        // Lists without a merge key are replaced; null deletes; primitive lists union.
        let got = smp(
            "Pod",
            pod.clone(),
            json!({"spec": {"tolerations": [{"key": "z"}]}, "metadata": {"labels": {"a": null, "b": "2"}, "finalizers": ["y"]}}),
        );
        assert_eq!(got["spec"]["tolerations"], json!([{"key": "z"}]));
        assert_eq!(got["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(got["metadata"]["finalizers"], json!(["x", "y"]));
        let got = smp(
            "Pod",
            pod.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(got["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn deployment_template_and_retain_keys() {
        let d = json!({"spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
            "template": {"spec": {"containers": [{"name": "a", "image": "1"}]}}
        }});
        let got = smp(
            "Deployment",
            d.clone(),
            json!({"spec": {
                "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
                "template": {"spec": {"containers": [{"name": "a", "image": "2"}]}}
            }}),
        );
        assert_eq!(got["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "2"}])
        );
        let got = smp(
            "Deployment",
            d,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "3"}, {"$patch": "replace"}]}}}}),
        );
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "3"}])
        );
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let err = strategic_merge(
            "Pod",
            &json!({"spec": {}}),
            &json!({"spec": {"containers": [{"image": "x"}]}}),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not contain declared merge key: name"),
            "{err}"
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let doc = json!({"spec": {"replicas": 1, "paused": true}});
        let got = apply(
            PatchType::Json,
            "Deployment",
            &doc,
            br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        )
        .unwrap();
        assert_eq!(got["spec"]["replicas"], 3);
        let got = apply(
            PatchType::Merge,
            "Deployment",
            &doc,
            br#"{"spec":{"paused":null}}"#,
        )
        .unwrap();
        assert_eq!(got, json!({"spec": {"replicas": 1}}));
        assert!(apply(
            PatchType::Json,
            "Deployment",
            &doc,
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#
        )
        .is_err());
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }
}
