//! What the server does to an object's body before storing it: check `apiVersion`/`kind`,
//! validate (422 Invalid with field causes, Kubernetes' texts), decode into the typed
//! Kubernetes 1.20 struct from `k8s-openapi` (type errors are 400, unknown fields are
//! dropped as kube-apiserver 1.20 drops them), apply the API defaults, and set the
//! server-owned metadata (uid, creationTimestamp, generation).
//!
//! The storage and watch path handle objects as `serde_json::Value`; only this module
//! knows the typed structs.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Endpoints, Event, Namespace, Node, Pod, PodSpec, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::registry::Resource;
use super::status::{ApiError, Cause};

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_label)
}

/// The name rules of a kind, as kube's `ValidateObjectMeta` applies them.
fn name_causes(r: &Resource, field: &str, name: &str) -> Vec<Cause> {
    let (ok, msg, max) = match r.kind {
        "Namespace" => (is_label(name), LABEL_MSG, 63),
        "Service" => (
            is_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
            DNS1035_MSG,
            63,
        ),
        _ => (is_subdomain(name), SUBDOMAIN_MSG, 253),
    };
    let mut causes = Vec::new();
    if name.len() > max {
        causes.push(Cause::invalid(
            field,
            name,
            &format!("must be no more than {max} characters"),
        ));
    }
    if !ok {
        causes.push(Cause::invalid(field, name, msg));
    }
    causes
}

/// Checks `apiVersion` and `kind` of a request body; kube's 400 texts.
pub fn check_type(r: &Resource, obj: &Value) -> Result<(), ApiError> {
    let want = r.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == want => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )))
        }
        None => {
            return Err(ApiError::BadRequest(format!(
                "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: Object 'apiVersion' is missing in '{}'",
                r.kind, obj
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k == r.kind => Ok(()),
        Some(k) => Err(ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type {}): no kind \"{k}\" is registered for version \"{want}\" in scheme \"k8s.io/kubernetes/pkg/api/legacyscheme/scheme.go:30\"",
            r.kind
        ))),
        None => Err(ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: Object 'Kind' is missing in '{}'",
            r.kind, obj
        ))),
    }
}

/// Parses a request body as a JSON object; kube's 400 text for malformed JSON.
pub fn parse_body(r: &Resource, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: json: cannot unmarshal into Go value of type struct",
            r.kind
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e}",
            r.kind
        ))),
    }
}

/// Field checks of one object (its name and kind-specific rules).
pub fn validate(r: &Resource, obj: &Value) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        causes.extend(name_causes(r, "metadata.name", name));
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let value = v.as_str().unwrap_or("");
            if value.len() > 63
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                ));
            }
            if k.is_empty() {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    k,
                    "name part must be non-empty",
                ));
            }
        }
    }
    match r.kind {
        "Pod" => pod_spec_causes("spec", obj.get("spec"), &mut causes),
        "Deployment" | "ReplicaSet" => workload_causes(obj, &mut causes),
        "Service" => service_causes(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r, name, causes))
    }
}

fn pod_spec_causes(path: &str, spec: Option<&Value>, causes: &mut Vec<Cause>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        causes.push(Cause::required(format!("{path}.containers"), ""));
        return;
    };
    let mut seen = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{path}.containers[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{at}.name"), "")),
            Some(n) if !is_label(n) || n.len() > 63 => {
                causes.push(Cause::invalid(format!("{at}.name"), n, LABEL_MSG))
            }
            Some(n) if seen.contains(&n) => causes.push(Cause::duplicate(format!("{at}.name"), n)),
            Some(n) => seen.push(n),
        }
        if c.get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            causes.push(Cause::required(format!("{at}.image"), ""));
        }
    }
    if let Some(p) = spec
        .and_then(|s| s.get("restartPolicy"))
        .and_then(Value::as_str)
    {
        if !["Always", "OnFailure", "Never"].contains(&p) {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("{path}.restartPolicy"),
                message: format!("Unsupported value: \"{p}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
            });
        }
    }
}

/// Go's `%#v` of a `map[string]string`, for the selector/labels mismatch message.
fn go_map(m: Option<&serde_json::Map<String, Value>>) -> String {
    let sorted: BTreeMap<&String, &str> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
        .collect();
    let body: Vec<String> = sorted.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", body.join(", "))
}

fn workload_causes(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    if let Some(n) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64) {
        if n < 0 {
            causes.push(Cause::invalid_raw(
                "spec.replicas",
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = spec.and_then(|s| s.get("selector"));
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    match selector {
        None => causes.push(Cause::required("spec.selector", "")),
        Some(sel) => {
            let sel = super::selectors::LabelSelector::from_json(sel);
            if sel.is_empty() {
                causes.push(Cause::invalid_raw("spec.selector", "v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}", "empty selector is invalid for deployment"));
            } else if !sel.matches_labels(labels) {
                causes.push(Cause::invalid_raw(
                    "spec.template.metadata.labels",
                    &go_map(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    pod_spec_causes(
        "spec.template.spec",
        obj.pointer("/spec/template/spec"),
        causes,
    );
}

fn service_causes(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let ty = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let headless = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        == Some("None");
    let ports = spec.and_then(|s| s.get("ports")).and_then(Value::as_array);
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        causes.push(Cause::required("spec.ports", ""));
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid_raw(
                format!("spec.ports[{i}].port"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
}

/// Decodes `obj` into `T`, applies `defaults`, and encodes it back.
fn typed<T: DeserializeOwned + Serialize>(
    r: &Resource,
    obj: Value,
    defaults: fn(&mut T),
) -> Result<Value, ApiError> {
    let mut t: T = serde_json::from_value(obj).map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        ))
    })?;
    defaults(&mut t);
    serde_json::to_value(&t).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Decodes through the typed struct and fills in the API defaults.
pub fn normalize(r: &Resource, obj: Value) -> Result<Value, ApiError> {
    match r.kind {
        "Pod" => typed::<Pod>(r, obj, |p| {
            if let Some(spec) = p.spec.as_mut() {
                default_pod_spec(spec);
            }
        }),
        "Deployment" => typed::<Deployment>(r, obj, default_deployment),
        "ReplicaSet" => typed::<ReplicaSet>(r, obj, |rs| {
            if let Some(spec) = rs.spec.as_mut() {
                spec.replicas.get_or_insert(1);
                if let Some(ps) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
                    default_pod_spec(ps);
                }
            }
        }),
        "Service" => typed::<Service>(r, obj, default_service),
        "Namespace" => typed::<Namespace>(r, obj, |_| {}),
        "Node" => typed::<Node>(r, obj, |_| {}),
        "Endpoints" => typed::<Endpoints>(r, obj, |_| {}),
        "Event" => typed::<Event>(r, obj, |_| {}),
        "ConfigMap" => typed::<ConfigMap>(r, obj, |_| {}),
        "Secret" => typed::<Secret>(r, obj, |s| {
            s.type_.get_or_insert_with(|| "Opaque".into());
        }),
        "Lease" => typed::<Lease>(r, obj, |_| {}),
        _ => Ok(obj),
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    c.resources.get_or_insert_with(Default::default);
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or("");
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'))
            .map(|(_, t)| t);
        let always = !image.contains('@') && matches!(tag, None | Some("latest"));
        c.image_pull_policy = Some(if always { "Always" } else { "IfNotPresent" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// Kubernetes 1.20's `SetDefaults_PodSpec` and container defaults.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    spec.priority.get_or_insert(0);
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
}

fn default_deployment(d: &mut Deployment) {
    let Some(spec) = d.spec.as_mut() else { return };
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if ty == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    if let Some(ps) = spec.template.spec.as_mut() {
        default_pod_spec(ps);
    }
}

fn default_service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else { return };
    spec.type_.get_or_insert_with(|| "ClusterIP".into());
    spec.session_affinity.get_or_insert_with(|| "None".into());
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        p.target_port.get_or_insert(IntOrString::Int(p.port));
    }
}

/// Server-owned metadata and initial status of a new object.
pub fn init_metadata(r: &Resource, obj: &mut Value, now: &str) {
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now);
    if let Some(m) = meta.as_object_mut() {
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(server_owned);
        }
    }
    if has_generation(r) {
        meta["generation"] = json!(1);
    }
    match r.kind {
        "Pod" => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            default_tolerations(obj);
        }
        "Namespace" => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        "Deployment" | "ReplicaSet" => {
            obj["status"] = json!({});
        }
        _ => {}
    }
}

/// kube-apiserver's DefaultTolerationSeconds admission: a new pod that does not tolerate
/// the node-lifecycle NoExecute taints tolerates them for 300 s, so a short network blip
/// does not evict it.
fn default_tolerations(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or("");
            let k = t["key"].as_str().unwrap_or("");
            let exists_all = k.is_empty() && t["operator"] == "Exists";
            (k == key || exists_all) && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// Kinds whose `metadata.generation` counts spec changes.
pub fn has_generation(r: &Resource) -> bool {
    matches!(r.kind, "Deployment" | "ReplicaSet")
}

/// Random suffix for `generateName`, from kube's alphabet (no vowels, no confusables).
pub fn generate_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::lookup;

    fn pod(name: &str, containers: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": containers}})
    }

    #[test]
    fn validation_table() {
        let pods = lookup("", "v1", "pods").unwrap();
        let cases: Vec<(Value, Option<&str>)> = vec![
            (pod("ok", json!([{"name": "a", "image": "x"}])), None),
            (
                pod("Bad_Name", json!([{"name": "a", "image": "x"}])),
                Some(
                    r#"Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#,
                ),
            ),
            (
                pod("p", json!([])),
                Some(r#"Pod "p" is invalid: spec.containers: Required value"#),
            ),
            (
                pod("p", json!([{"name": "a"}])),
                Some(r#"Pod "p" is invalid: spec.containers[0].image: Required value"#),
            ),
            (
                pod(
                    "p",
                    json!([{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]),
                ),
                Some(r#"Pod "p" is invalid: spec.containers[1].name: Duplicate value: "a""#),
            ),
        ];
        for (obj, want) in cases {
            match (validate(pods, &obj), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => {
                    assert!(e.to_string().starts_with(w), "{e} does not start with {w}")
                }
                (got, want) => panic!("{obj}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        let obj = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}
        }});
        let err = validate(d, &obj).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not match template `labels`"#
        );
    }

    #[test]
    fn type_checks_and_defaults() {
        let pods = lookup("", "v1", "pods").unwrap();
        let wrong = json!({"apiVersion": "apps/v1", "kind": "Pod"});
        assert_eq!(
            check_type(pods, &wrong).unwrap_err().to_string(),
            "the API version in the data (apps/v1) does not match the expected API version (v1)"
        );
        assert!(parse_body(pods, b"{nope").is_err());
        let p = normalize(pods, pod("p", json!([{"name": "a", "image": "nginx"}]))).unwrap();
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "x"}});
        let err = normalize(pods, bad).unwrap_err();
        assert_eq!(err.code().as_u16(), 400);
        let d = lookup("apps", "v1", "deployments").unwrap();
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        let dep = normalize(d, dep).unwrap();
        assert_eq!(dep["spec"]["replicas"], 1);
        assert_eq!(dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn new_pods_tolerate_node_problems_for_300s_unless_they_say_otherwise() {
        let r = lookup("", "v1", "pods").unwrap();
        let cases = [
            (json!([]), 2),
            (
                json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
                2,
            ),
            (json!([{"operator": "Exists"}]), 1),
        ];
        for (tolerations, want) in cases {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}});
            init_metadata(r, &mut p, "t");
            let list = p["spec"]["tolerations"].as_array().unwrap();
            assert_eq!(list.len(), want, "{list:?}");
            let secs: Vec<_> = list
                .iter()
                .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
                .map(|t| t["tolerationSeconds"].clone())
                .collect();
            assert!(secs.len() <= 1);
        }
    }

    #[test]
    fn generate_name_suffix() {
        let s = generate_suffix();
        assert_eq!(s.len(), 5);
        assert!(s
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }
}
