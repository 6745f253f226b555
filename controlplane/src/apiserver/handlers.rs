//! The verbs on resources: get, list, create, update, patch, delete, deletecollection and
//! the `status`/`scale`/`binding`/`log` subresources. Every write goes through
//! [`Store`]'s optimistic transactions, so replicas never need to coordinate; patch and
//! delete re-read and retry when another writer got in between, as kube-apiserver does.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::allocator::{self, AllocError};
use super::objects;
use super::patch::{self, PatchType};
use super::registry::{self, Resource};
use super::request::Target;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, Cause};
use super::storage::{set_resource_version, StoreError, Stored};
use super::table::{self, IncludeObject};
use super::ApiServer;

/// How often a write retries after losing an optimistic race.
const WRITE_ATTEMPTS: usize = 8;

/// One parsed request on a resource.
pub struct ResourceRequest {
    pub target: Target,
    pub verb: &'static str,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ResourceRequest {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("as=Table"))
    }

    fn r(&self) -> &'static Resource {
        self.target.resource
    }

    fn ns(&self) -> Option<&str> {
        self.target.namespace.as_deref()
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn key(&self) -> String {
        self.r().key(self.ns(), self.name())
    }

    pub fn dry_run(&self) -> bool {
        self.q("dryRun").is_some()
    }
}

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Maps a storage failure on `name` to its Status.
fn store_err(r: &Resource, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists => ApiError::already_exists(r, name),
        StoreError::NotFound => ApiError::not_found(r, name),
        StoreError::Conflict(_) => ApiError::conflict(r, name),
        StoreError::Compacted(_) => ApiError::Gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()),
        StoreError::Corrupt(e) => ApiError::Internal(format!("stored object is corrupt: {e}")),
        StoreError::Claimed(k) => ApiError::Internal(format!("{k} is already allocated")),
        StoreError::Etcd(e) => ApiError::Internal(format!("etcdserver: {e}")),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The `resourceVersion` a client sent, if any, as a revision.
fn precondition_rv(obj: &Value) -> Result<Option<i64>, ApiError> {
    meta_str(obj, "resourceVersion")
        .map(|rv| {
            rv.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))
        })
        .transpose()
}

/// Bodies of create and update must be JSON; kube would also take protobuf and YAML.
/// Answering 415 makes newer clients (client-go 1.32+) fall back to JSON.
fn require_json_body(req: &ResourceRequest) -> Result<(), ApiError> {
    let ct = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or("").trim();
    match media {
        "application/json" | "" | "*/*" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType("application/json".into())),
    }
}

pub async fn handle(
    server: &std::sync::Arc<ApiServer>,
    req: ResourceRequest,
) -> Result<Response, ApiError> {
    let sub = req.target.subresource.as_deref();
    if matches!(req.verb, "create" | "update") {
        require_json_body(&req)?;
    }
    match (req.verb, sub) {
        ("get", None | Some("status")) => get(server, &req).await,
        ("get", Some("scale")) => get_scale(server, &req).await,
        ("get", Some("log")) => pod_log(server, &req).await,
        ("list", None) => list(server, &req).await,
        ("watch", None) => super::watch::watch(server, &req).await,
        ("create", None) => create(server, &req).await,
        ("create", Some("binding")) => bind(server, &req).await,
        ("update" | "patch", None | Some("status" | "finalize")) => write(server, &req).await,
        ("update" | "patch", Some("scale")) => write_scale(server, &req).await,
        ("delete", None) => delete(server, &req).await,
        ("deletecollection", None) => delete_collection(server, &req).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `pods/<name>/log`: proxied to the node agent of the pod's node.
async fn pod_log(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let pod = server
        .store
        .get(&req.key())
        .await
        .map_err(|e| store_err(req.r(), req.name(), e))?
        .object;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let nodes = registry::lookup("", "v1", "nodes").expect("nodes are served");
    let node = match server.store.get(&nodes.key(None, node_name)).await {
        Ok(n) => n.object,
        Err(_) => json!({}),
    };
    let url = super::podlogs::agent_url(&pod, &node, &req.query)?;
    super::podlogs::proxy(&url).await
}

async fn get(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let stored = server
        .store
        .get(&req.key())
        .await
        .map_err(|e| store_err(req.r(), req.name(), e))?;
    if req.wants_table() {
        let include = IncludeObject::parse(req.q("includeObject"));
        let t = table::table(
            req.r().kind,
            &[stored.object],
            json!({}),
            include,
            server.clock.now(),
        );
        return Ok(json_response(StatusCode::OK, &t));
    }
    Ok(json_response(StatusCode::OK, &stored.object))
}

/// Selectors of a list or watch request.
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    kind: &'static str,
}

impl Filter {
    pub fn from_request(req: &ResourceRequest) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(
            req.q("fieldSelector").unwrap_or(""),
            req.r().kind,
            &req.r().api_version(),
        )
        .map_err(ApiError::BadRequest)?;
        Ok(Filter {
            namespace: req.target.namespace.clone(),
            labels,
            fields,
            kind: req.r().kind,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if meta_str(obj, "namespace") != Some(ns.as_str()) {
                return false;
            }
        }
        self.labels.matches(obj) && self.fields.matches(self.kind, obj)
    }
}

/// A list's continue token: base64 of `{"v":"meta.k8s.io/v1","rv":<rev>,"start":<key>}`
/// with `start` relative to the list's key prefix, the layout kube-apiserver uses.
fn encode_continue(rev: i64, start_rel: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start_rel});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::BadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into())
    };
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = v["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?.to_string();
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rev, start))
}

/// Lists matching objects, paging through etcd: returns the items, the revision read at and
/// the continue token when `limit` cut the list short.
pub async fn list_objects(
    server: &ApiServer,
    r: &Resource,
    filter: &Filter,
    limit: i64,
    cont: Option<&str>,
) -> Result<(Vec<Value>, i64, Option<String>), ApiError> {
    let prefix = r.list_prefix(filter.namespace.as_deref());
    let (mut rev, mut start) = match cont {
        Some(c) => {
            let (rev, rel) = decode_continue(c)?;
            (rev, Some(format!("{prefix}{rel}")))
        }
        None => (0, None),
    };
    let mut items = Vec::new();
    loop {
        let page = server
            .store
            .list(&prefix, start.as_deref(), limit, rev)
            .await
            .map_err(|e| store_err(r, "", e))?;
        rev = page.revision;
        let n = page.items.len();
        for (i, Stored { object, .. }) in page.items.into_iter().enumerate() {
            if !filter.matches(&object) {
                continue;
            }
            items.push(object);
            if limit > 0 && items.len() as i64 == limit {
                let more = i + 1 < n || page.next_key.is_some();
                let token = more.then(|| {
                    let last = items.last().expect("just pushed");
                    let key = r.key(
                        meta_str(last, "namespace"),
                        meta_str(last, "name").unwrap_or(""),
                    );
                    encode_continue(rev, &format!("{}\0", &key[prefix.len()..]))
                });
                return Ok((items, rev, token));
            }
        }
        match page.next_key {
            Some(k) if limit > 0 => start = Some(k),
            _ => return Ok((items, rev, None)),
        }
    }
}

async fn list(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let filter = Filter::from_request(req)?;
    let limit = req
        .q("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    let (items, rev, cont) =
        list_objects(server, req.r(), &filter, limit, req.q("continue")).await?;
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if req.wants_table() {
        let include = IncludeObject::parse(req.q("includeObject"));
        let t = table::table(req.r().kind, &items, meta, include, server.clock.now());
        return Ok(json_response(StatusCode::OK, &t));
    }
    let list = json!({
        "kind": format!("{}List", req.r().kind),
        "apiVersion": req.r().api_version(),
        "metadata": meta,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// Rejects a body whose namespace disagrees with the URL's, and fills it in otherwise.
/// Also the guard that `metadata` is an object, so later field writes cannot panic.
fn set_namespace(req: &ResourceRequest, obj: &mut Value) -> Result<(), ApiError> {
    match obj.get("metadata") {
        None | Some(Value::Null) => obj["metadata"] = json!({}),
        Some(Value::Object(_)) => {}
        Some(_) => {
            let r = req.r();
            return Err(ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: metadata: expected an object",
                r.kind, r.version, r.kind
            )));
        }
    }
    if !req.r().namespaced {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("namespace");
        }
        return Ok(());
    }
    let ns = req.ns().unwrap_or("default");
    match meta_str(obj, "namespace") {
        Some(given) if given != ns => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        _ => {
            obj["metadata"]["namespace"] = json!(ns);
            Ok(())
        }
    }
}

async fn create(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let r = req.r();
    let mut obj = objects::parse_body(r, &req.body)?;
    objects::check_type(r, &obj)?;
    set_namespace(req, &mut obj)?;
    if meta_str(&obj, "name").is_none() {
        if let Some(prefix) = meta_str(&obj, "generateName") {
            obj["metadata"]["name"] = json!(format!("{prefix}{}", objects::generate_suffix()));
        }
    }
    objects::validate(r, &obj)?;
    let mut obj = objects::normalize(r, obj)?;
    objects::init_metadata(r, &mut obj, &server.now_rfc3339());
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    if let Some(ns) = req.ns() {
        let namespaces = registry::lookup("", "v1", "namespaces").expect("namespaces are served");
        match server.store.get(&namespaces.key(None, ns)).await {
            Err(_) => return Err(ApiError::not_found(namespaces, ns)),
            Ok(n) if n.object.pointer("/metadata/deletionTimestamp").is_some() => {
                return Err(ApiError::NamespaceTerminating {
                    resource: r.plural.into(),
                    group: r.group.into(),
                    name,
                    namespace: ns.into(),
                })
            }
            Ok(_) => {}
        }
    }
    if req.dry_run() {
        return Ok(json_response(StatusCode::CREATED, &obj));
    }
    let key = r.key(req.ns(), &name);
    let rev = if r.kind == "Service" {
        create_service(server, r, &key, &mut obj, &name).await?
    } else {
        server
            .store
            .create(&key, &obj)
            .await
            .map_err(|e| store_err(r, &name, e))?
    };
    set_resource_version(&mut obj, rev);
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// Creates a Service with its ClusterIP and NodePorts claimed in the same Txn; a claim
/// lost to a concurrent create (another replica) is retried with fresh picks.
async fn create_service(
    server: &ApiServer,
    r: &Resource,
    key: &str,
    obj: &mut Value,
    name: &str,
) -> Result<i64, ApiError> {
    let owner = format!("{}/{name}", meta_str(obj, "namespace").unwrap_or(""));
    let template = obj.clone();
    for _ in 0..WRITE_ATTEMPTS {
        let ip_keys = server
            .store
            .keys(allocator::IP_CLAIMS)
            .await
            .map_err(|e| store_err(r, name, e))?;
        let port_keys = server
            .store
            .keys(allocator::PORT_CLAIMS)
            .await
            .map_err(|e| store_err(r, name, e))?;
        let (ips, ports) = allocator::used(&ip_keys, &port_keys);
        *obj = template.clone();
        let claims = server
            .ranges
            .assign(obj, &ips, &ports)
            .map_err(|e| match e {
                AllocError::Invalid(field, value, detail) => ApiError::Invalid {
                    kind: "Service".into(),
                    group: String::new(),
                    name: name.into(),
                    causes: vec![Cause::invalid_raw(field, &value, &detail)],
                },
                AllocError::Full(what) => {
                    ApiError::Internal(format!("failed to allocate a {what}: the range is full"))
                }
            })?;
        match server
            .store
            .create_claiming(key, obj, &claims, &owner)
            .await
        {
            Ok(rev) => return Ok(rev),
            Err(StoreError::Claimed(_)) => continue,
            Err(e) => return Err(store_err(r, name, e)),
        }
    }
    Err(ApiError::Internal(
        "failed to allocate a clusterIP: too many concurrent allocations".into(),
    ))
}

/// The object that results from writing `incoming` over `existing` through `sub`.
fn merge_update(r: &Resource, sub: Option<&str>, existing: &Value, incoming: Value) -> Value {
    let mut new = match sub {
        Some("status") => {
            let mut n = existing.clone();
            n["status"] = incoming.get("status").cloned().unwrap_or(json!({}));
            n
        }
        // A namespace's `spec.finalizers`, which the namespace controller empties once
        // the namespace's content is deleted.
        Some("finalize") => {
            let mut n = existing.clone();
            n["spec"]["finalizers"] = incoming
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            n
        }
        _ => {
            let mut n = incoming;
            if r.has_subresource("status") {
                match existing.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            n
        }
    };
    for server_owned in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "name",
        "namespace",
    ] {
        match existing["metadata"].get(server_owned) {
            Some(v) => new["metadata"][server_owned] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(server_owned);
                }
            }
        }
    }
    if objects::has_generation(r) && existing.get("spec") != new.get("spec") {
        let g = existing["metadata"]["generation"].as_i64().unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    new
}

/// PUT and PATCH on an object or its status.
async fn write(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let r = req.r();
    let name = req.name();
    let patch_type = if req.verb == "patch" {
        let ct = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Some(
            PatchType::from_content_type(ct)
                .ok_or_else(|| ApiError::UnsupportedMediaType(patch::ACCEPTED.into()))?,
        )
    } else {
        None
    };
    for _ in 0..WRITE_ATTEMPTS {
        let existing = server
            .store
            .get(&req.key())
            .await
            .map_err(|e| store_err(r, name, e))?;
        let incoming = match patch_type {
            Some(ty) => {
                let out =
                    patch::apply(ty, r.kind, &existing.object, &req.body).map_err(|e| match e {
                        patch::PatchError::Malformed(m) => ApiError::BadRequest(m),
                        other => ApiError::Unprocessable(other.to_string()),
                    })?;
                if !out.is_object() {
                    return Err(ApiError::BadRequest(
                        "the patched object is not a JSON object".into(),
                    ));
                }
                out
            }
            None => {
                let obj = objects::parse_body(r, &req.body)?;
                objects::check_type(r, &obj)?;
                if meta_str(&obj, "name") != Some(name) {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        meta_str(&obj, "name").unwrap_or("")
                    )));
                }
                obj
            }
        };
        let mut incoming = incoming;
        set_namespace(req, &mut incoming)?;
        let expected = match precondition_rv(&incoming)? {
            Some(rv) if rv != existing.mod_revision => return Err(ApiError::conflict(r, name)),
            _ => existing.mod_revision,
        };
        let mut merged = merge_update(
            r,
            req.target.subresource.as_deref(),
            &existing.object,
            incoming,
        );
        if r.kind == "Service" {
            keep_service_allocations(&existing.object, &mut merged, name)?;
        }
        objects::check_type(r, &merged)?;
        objects::validate(r, &merged)?;
        let mut new = objects::normalize(r, merged)?;
        if req.dry_run() {
            return Ok(json_response(StatusCode::OK, &new));
        }
        let result = if finalized(&new) {
            server.store.delete(&req.key(), expected).await
        } else {
            server.store.update(&req.key(), &new, expected).await
        };
        match result {
            Ok(rev) => {
                set_resource_version(&mut new, rev);
                return Ok(json_response(StatusCode::OK, &new));
            }
            // A PUT with a stale object is the client's conflict; a patch re-reads.
            Err(StoreError::Conflict(_)) if patch_type.is_some() => continue,
            Err(e) => return Err(store_err(r, name, e)),
        }
    }
    Err(ApiError::conflict(r, name))
}

/// Whether anything still holds the object back from deletion: `metadata.finalizers`, or a
/// namespace's `spec.finalizers`.
fn has_finalizers(obj: &Value) -> bool {
    ["/metadata/finalizers", "/spec/finalizers"]
        .iter()
        .any(|p| {
            obj.pointer(p)
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty())
        })
}

/// An object marked for deletion whose last finalizer is gone (and, for a pod, whose grace
/// period is over) leaves the store.
fn finalized(obj: &Value) -> bool {
    let marked = obj.pointer("/metadata/deletionTimestamp").is_some();
    let finalizers = has_finalizers(obj);
    let grace = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    marked && !finalizers && grace == 0
}

/// `autoscaling/v1` Scale of a deployment or replica set.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            parts.sort();
            parts.join(",")
        })
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

async fn get_scale(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let stored = server
        .store
        .get(&req.key())
        .await
        .map_err(|e| store_err(req.r(), req.name(), e))?;
    Ok(json_response(StatusCode::OK, &scale_of(&stored.object)))
}

/// PUT or PATCH of `/scale`: changes `spec.replicas` only.
async fn write_scale(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let r = req.r();
    let name = req.name();
    for _ in 0..WRITE_ATTEMPTS {
        let existing = server
            .store
            .get(&req.key())
            .await
            .map_err(|e| store_err(r, name, e))?;
        let current = scale_of(&existing.object);
        let scale = if req.verb == "patch" {
            let ct = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ty = PatchType::from_content_type(ct)
                .ok_or_else(|| ApiError::UnsupportedMediaType(patch::ACCEPTED.into()))?;
            patch::apply(ty, "Scale", &current, &req.body)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
        } else {
            serde_json::from_slice::<Value>(&req.body).map_err(|e| ApiError::BadRequest(format!("the object provided is unrecognized (must be of type Scale): couldn't get version/kind; json parse error: {e}")))?
        };
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale".into(),
                group: "autoscaling".into(),
                name: name.into(),
                causes: vec![super::status::Cause::invalid_raw(
                    "spec.replicas",
                    &replicas.to_string(),
                    "must be greater than or equal to 0",
                )],
            });
        }
        let expected = match precondition_rv(&scale)? {
            Some(rv) if rv != existing.mod_revision => return Err(ApiError::conflict(r, name)),
            _ => existing.mod_revision,
        };
        let mut new = existing.object.clone();
        if new["spec"]["replicas"] != json!(replicas) {
            new["spec"]["replicas"] = json!(replicas);
            let g = new["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        match server.store.update(&req.key(), &new, expected).await {
            Ok(rev) => {
                set_resource_version(&mut new, rev);
                return Ok(json_response(StatusCode::OK, &scale_of(&new)));
            }
            Err(StoreError::Conflict(_)) if req.verb == "patch" => continue,
            Err(e) => return Err(store_err(r, name, e)),
        }
    }
    Err(ApiError::conflict(r, name))
}

/// `POST pods/<name>/binding`: assigns the pod to a node, once.
async fn bind(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let r = req.r();
    let name = req.name();
    let binding: Value = serde_json::from_slice(&req.body).map_err(|e| ApiError::BadRequest(format!("the object provided is unrecognized (must be of type Binding): couldn't get version/kind; json parse error: {e}")))?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            group: "".into(),
            name: name.into(),
            causes: vec![super::status::Cause::required("target.name", "")],
        });
    }
    let existing = server
        .store
        .get(&req.key())
        .await
        .map_err(|e| store_err(r, name, e))?;
    if let Some(current) = existing
        .object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::Conflict {
            resource: "pods/binding".into(),
            group: "".into(),
            name: name.into(),
        }
        .with_message(format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{current}\"")));
    }
    let mut new = existing.object.clone();
    new["spec"]["nodeName"] = json!(node);
    server
        .store
        .update(&req.key(), &new, existing.mod_revision)
        .await
        .map_err(|e| store_err(r, name, e))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `DeleteOptions` from the body or the query.
struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
    /// The finalizer a Foreground or Orphan propagation policy adds; the garbage collector
    /// removes it once the dependents are deleted (or released). Background adds none.
    finalizer: Option<&'static str>,
}

fn delete_options(req: &ResourceRequest) -> Result<DeleteOptions, ApiError> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&req.body).map_err(|e| ApiError::BadRequest(format!("the object provided is unrecognized (must be of type DeleteOptions): couldn't get version/kind; json parse error: {e}")))?
    };
    let grace = body["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| req.q("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let policy = body["propagationPolicy"]
        .as_str()
        .map(String::from)
        .or_else(|| req.q("propagationPolicy").map(String::from));
    let orphan = body["orphanDependents"]
        .as_bool()
        .or_else(|| req.q("orphanDependents").and_then(|o| o.parse().ok()));
    let finalizer = match (policy.as_deref(), orphan) {
        (Some("Foreground"), _) => Some("foregroundDeletion"),
        (Some("Orphan"), _) | (None, Some(true)) => Some("orphan"),
        (Some("Background") | None, _) => None,
        (Some(other), _) => {
            return Err(ApiError::Invalid {
                kind: "DeleteOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                causes: vec![Cause {
                    reason: "FieldValueNotSupported",
                    field: "propagationPolicy".into(),
                    message: format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                }],
            })
        }
    };
    Ok(DeleteOptions {
        finalizer,
        grace,
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
    })
}

/// Deletes (or marks for deletion) one object; returns the object as last seen.
async fn delete_one(
    server: &ApiServer,
    r: &Resource,
    key: &str,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> Result<Value, ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let Stored {
            object,
            mod_revision,
        } = server
            .store
            .get(key)
            .await
            .map_err(|e| store_err(r, name, e))?;
        if let Some(uid) = &opts.uid {
            if meta_str(&object, "uid") != Some(uid.as_str()) {
                return Err(ApiError::Conflict { resource: r.qualified(), group: r.group.into(), name: name.into() }.with_message(format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    r.qualified(),
                    meta_str(&object, "uid").unwrap_or("")
                )));
            }
        }
        if let Some(rv) = &opts.rv {
            if *rv != mod_revision.to_string() {
                return Err(ApiError::conflict(r, name));
            }
        }
        let mut object = object;
        if let Some(f) = opts.finalizer {
            if let Some(meta) = object["metadata"].as_object_mut() {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut().filter(|l| !l.iter().any(|x| x == f)) {
                    list.push(json!(f));
                }
            }
        }
        let has_finalizers = has_finalizers(&object);
        let grace = if r.kind == "Pod" {
            let phase = object
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            let unscheduled = object
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty();
            if unscheduled || phase == "Succeeded" || phase == "Failed" {
                0
            } else {
                opts.grace
                    .or_else(|| {
                        object
                            .pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
            }
        } else {
            0
        };
        let already_marked = object.pointer("/metadata/deletionTimestamp").is_some();
        if dry_run {
            return Ok(object);
        }
        let result = if has_finalizers || grace > 0 {
            if already_marked
                && grace
                    >= object
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
            {
                return Ok(object);
            }
            let mut marked = object.clone();
            let at = server.clock.now() + chrono::Duration::seconds(grace);
            marked["metadata"]["deletionTimestamp"] =
                json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if r.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
            if finalized(&marked) || (grace == 0 && !has_finalizers) {
                server
                    .store
                    .delete(key, mod_revision)
                    .await
                    .map(|_| object.clone())
            } else {
                server
                    .store
                    .update(key, &marked, mod_revision)
                    .await
                    .map(|rev| {
                        set_resource_version(&mut marked, rev);
                        marked
                    })
            }
        } else {
            server
                .store
                .delete(key, mod_revision)
                .await
                .map(|_| object.clone())
        };
        match result {
            Ok(obj) => {
                if r.kind == "Service" && obj.pointer("/metadata/deletionTimestamp").is_none() {
                    release_service_claims(server, &obj).await;
                }
                return Ok(obj);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(store_err(r, name, e)),
        }
    }
    Err(ApiError::conflict(r, name))
}

/// An update keeps the Service's ClusterIP (immutable, as in Kubernetes) and the NodePorts
/// of ports it leaves unset; allocating for a type changed to NodePort is not supported.
fn keep_service_allocations(existing: &Value, new: &mut Value, name: &str) -> Result<(), ApiError> {
    let old_ip = existing
        .pointer("/spec/clusterIP")
        .cloned()
        .unwrap_or(Value::Null);
    match new.pointer("/spec/clusterIP").and_then(Value::as_str) {
        None | Some("") => {
            new["spec"]["clusterIP"] = old_ip;
            new["spec"]["clusterIPs"] = existing
                .pointer("/spec/clusterIPs")
                .cloned()
                .unwrap_or(Value::Null);
        }
        Some(ip) if Some(ip) != old_ip.as_str() => {
            return Err(ApiError::Invalid {
                kind: "Service".into(),
                group: String::new(),
                name: name.into(),
                causes: vec![Cause::invalid("spec.clusterIP", ip, "field is immutable")],
            })
        }
        Some(_) => {}
    }
    let old_ports: Vec<Value> = existing
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports
            .iter_mut()
            .filter(|p| p["nodePort"].as_i64().unwrap_or(0) == 0)
        {
            if let Some(old) = old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
            {
                if old["nodePort"].as_i64().is_some() {
                    p["nodePort"] = old["nodePort"].clone();
                }
            }
        }
    }
    Ok(())
}

/// Frees a deleted Service's ClusterIP and NodePorts. Best effort: a claim that outlives
/// a failure here only narrows the range.
async fn release_service_claims(server: &ApiServer, svc: &Value) {
    let owner = format!(
        "{}/{}",
        meta_str(svc, "namespace").unwrap_or(""),
        meta_str(svc, "name").unwrap_or("")
    );
    if let Err(e) = server
        .store
        .release(&allocator::claims_of(svc), &owner)
        .await
    {
        tracing::warn!(service = %owner, error = %e, "releasing the service's IP and ports");
    }
}

async fn delete(server: &ApiServer, req: &ResourceRequest) -> Result<Response, ApiError> {
    let opts = delete_options(req)?;
    let obj = delete_one(
        server,
        req.r(),
        &req.key(),
        req.name(),
        &opts,
        req.dry_run(),
    )
    .await?;
    Ok(json_response(StatusCode::OK, &obj))
}

async fn delete_collection(
    server: &ApiServer,
    req: &ResourceRequest,
) -> Result<Response, ApiError> {
    let r = req.r();
    let filter = Filter::from_request(req)?;
    let opts = delete_options(req)?;
    let (items, rev, _) = list_objects(server, r, &filter, 0, None).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        let key = r.key(meta_str(&obj, "namespace"), &name);
        match delete_one(server, r, &key, &name, &opts, req.dry_run()).await {
            Ok(o) => deleted.push(o),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": rev.to_string()},
        "items": deleted,
    });
    Ok(json_response(StatusCode::OK, &list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_token_round_trip() {
        let t = encode_continue(42, "ns/name\0");
        assert_eq!(decode_continue(&t).unwrap(), (42, "ns/name\0".to_string()));
        assert!(decode_continue("!!").is_err());
        let evil = base64::engine::general_purpose::URL_SAFE.encode(r#"{"rv":1,"start":"../x"}"#);
        assert!(decode_continue(&evil).is_err());
    }

    #[test]
    fn update_keeps_server_fields_and_bumps_generation() {
        let d = registry::lookup("apps", "v1", "deployments").unwrap();
        let existing = json!({"metadata": {"name": "d", "uid": "u", "generation": 2, "creationTimestamp": "t"}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let incoming = json!({"metadata": {"name": "d", "uid": "forged"}, "spec": {"replicas": 3}, "status": {"replicas": 99}});
        let new = merge_update(d, None, &existing, incoming);
        assert_eq!(new["metadata"]["uid"], "u");
        assert_eq!(new["metadata"]["generation"], 3);
        assert_eq!(new["status"]["replicas"], 1);
        let status = merge_update(
            d,
            Some("status"),
            &existing,
            json!({"spec": {"replicas": 7}, "status": {"replicas": 5}}),
        );
        assert_eq!(status["spec"]["replicas"], 1);
        assert_eq!(status["status"]["replicas"], 5);
        assert_eq!(status["metadata"]["generation"], 2);
    }

    #[test]
    fn finalized_objects() {
        let cases = [
            (json!({"metadata": {}}), false),
            (json!({"metadata": {"deletionTimestamp": "t"}}), true),
            (
                json!({"metadata": {"deletionTimestamp": "t", "finalizers": ["f"]}}),
                false,
            ),
            (
                json!({"metadata": {"deletionTimestamp": "t", "deletionGracePeriodSeconds": 30}}),
                false,
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(finalized(&obj), want, "{obj}");
        }
    }
}
