//! An in-memory [`Api`] for unit tests: objects by (kind, namespace, name), a global
//! resourceVersion counter, 409 on stale updates and duplicate creates, bindings that
//! refuse already-bound pods, watches replayed from history then live, and an
//! "unavailable" switch that fails every call (a partitioned client).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use k8s_openapi::Resource;
use serde_json::Value;
use tokio::sync::broadcast;

use super::{
    Api, ClientError, DeleteParams, ListParams, Object, ObjectList, Propagation, Result,
    WatchStream,
};

type Key = (&'static str, String, String);

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    ns: String,
    ty: &'static str,
    obj: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from before this resourceVersion get 410.
    compacted: u64,
}

/// The fake; clones share state.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Change>,
    unavailable: Arc<AtomicBool>,
    /// Bumped to end every open watch stream.
    closer: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Arc::default(),
            events: broadcast::channel(4096).0,
            unavailable: Arc::default(),
            closer: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

fn ns_of(ns: Option<&str>) -> String {
    ns.unwrap_or("").to_string()
}

fn meta_name(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn decode<K: Object>(v: &Value) -> Result<K> {
    Ok(serde_json::from_value(v.clone())?)
}

impl FakeApi {
    pub fn new() -> FakeApi {
        FakeApi::default()
    }

    /// While set, every call fails as if the server could not be reached.
    pub fn set_unavailable(&self, down: bool) {
        self.unavailable.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(ClientError::Transport("connection refused".into()));
        }
        Ok(())
    }

    fn write(
        &self,
        st: &mut State,
        kind: &'static str,
        ns: &str,
        ty: &'static str,
        mut obj: Value,
    ) -> Value {
        // As the API server does: an update that removes the last finalizer of an object
        // marked for deletion deletes it.
        let ty = if ty == "MODIFIED" && marked_and_finalized(&obj) {
            "DELETED"
        } else {
            ty
        };
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(st.rv.to_string());
        let key = (kind, ns.to_string(), meta_name(&obj));
        if ty == "DELETED" {
            st.objects.remove(&key);
        } else {
            st.objects.insert(key, obj.clone());
        }
        let change = Change {
            rv: st.rv,
            kind,
            ns: ns.to_string(),
            ty,
            obj: obj.clone(),
        };
        st.history.push(change.clone());
        let _ = self.events.send(change);
        obj
    }

    /// Forgets the history (watches from older resourceVersions get 410 Gone) and ends
    /// every open watch, as a server restart after a compaction would.
    pub fn compact_and_close_watches(&self) {
        {
            let mut st = self.state.lock().unwrap();
            st.compacted = st.rv;
            st.history.clear();
        }
        self.closer.send_modify(|g| *g += 1);
    }

    /// Every stored object of `K`, for assertions.
    pub fn all<K: Object>(&self) -> Vec<K> {
        let st = self.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|((k, _, _), _)| *k == K::KIND)
            .filter_map(|(_, v)| serde_json::from_value(v.clone()).ok())
            .collect()
    }
}

/// Whether `incoming` names a resourceVersion other than `current`'s (an optimistic-lock
/// failure); no resourceVersion means an unconditional write.
fn stale(incoming: &Value, current: &Value) -> bool {
    let rv = |v: &Value| {
        v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from)
    };
    rv(incoming).is_some_and(|w| Some(w) != rv(current))
}

/// `metadata.finalizers`, or a namespace's `spec.finalizers`, not empty.
fn has_finalizers(obj: &Value) -> bool {
    ["/metadata/finalizers", "/spec/finalizers"]
        .iter()
        .any(|p| {
            obj.pointer(p)
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty())
        })
}

fn marked_and_finalized(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(obj)
}

fn not_found<K: Object>(name: &str) -> ClientError {
    ClientError::api(
        404,
        "NotFound",
        format!("{}.{} \"{name}\" not found", K::URL_PATH_SEGMENT, K::GROUP).replace(". \"", " \""),
    )
}

fn conflict<K: Object>(name: &str) -> ClientError {
    ClientError::api(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", K::URL_PATH_SEGMENT),
    )
}

impl Api for FakeApi {
    async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> Result<K> {
        self.check()?;
        let st = self.state.lock().unwrap();
        match st.objects.get(&(K::KIND, ns_of(ns), name.to_string())) {
            Some(v) => decode(v),
            None => Err(not_found::<K>(name)),
        }
    }

    async fn list<K: Object>(
        &self,
        ns: Option<&str>,
        _params: &ListParams,
    ) -> Result<ObjectList<K>> {
        self.check()?;
        let st = self.state.lock().unwrap();
        let items = st
            .objects
            .iter()
            .filter(|((k, n, _), _)| *k == K::KIND && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| decode(v))
            .collect::<Result<_>>()?;
        Ok(ObjectList {
            items,
            resource_version: st.rv.to_string(),
        })
    }

    async fn create<K: Object>(&self, ns: Option<&str>, obj: &K) -> Result<K> {
        self.check()?;
        let mut v = serde_json::to_value(obj)?;
        let mut st = self.state.lock().unwrap();
        if meta_name(&v).is_empty() {
            if let Some(prefix) = v.pointer("/metadata/generateName").and_then(Value::as_str) {
                // Deterministic suffixes: the next resourceVersion is unique.
                v["metadata"]["name"] = format!("{prefix}{:05}", st.rv + 1).into();
            }
        }
        let name = meta_name(&v);
        if st.objects.contains_key(&(K::KIND, ns_of(ns), name.clone())) {
            return Err(ClientError::api(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", K::URL_PATH_SEGMENT),
            ));
        }
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = Value::String(ns.into());
        }
        v["metadata"]["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
        v["metadata"]["generation"] = 1.into();
        v["metadata"]["creationTimestamp"] = format!("2023-11-14T22:{:02}:00Z", st.rv % 60).into();
        decode(&self.write(&mut st, K::KIND, &ns_of(ns), "ADDED", v))
    }

    async fn update<K: Object>(&self, ns: Option<&str>, obj: &K) -> Result<K> {
        self.check()?;
        let v = serde_json::to_value(obj)?;
        let name = meta_name(&v);
        let mut st = self.state.lock().unwrap();
        let Some(current) = st.objects.get(&(K::KIND, ns_of(ns), name.clone())) else {
            return Err(not_found::<K>(&name));
        };
        if stale(&v, current) {
            return Err(conflict::<K>(&name));
        }
        // Server-owned metadata survives the replace; spec changes bump the generation.
        let mut v = v;
        for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
            if let Some(x) = current.pointer(&format!("/metadata/{field}")) {
                v["metadata"][field] = x.clone();
            }
        }
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let bump = i64::from(current.get("spec") != v.get("spec"));
        v["metadata"]["generation"] = (generation + bump).into();
        decode(&self.write(&mut st, K::KIND, &ns_of(ns), "MODIFIED", v))
    }

    async fn patch_merge<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K> {
        self.check()?;
        let mut st = self.state.lock().unwrap();
        let Some(current) = st.objects.get(&(K::KIND, ns_of(ns), name.to_string())) else {
            return Err(not_found::<K>(name));
        };
        let mut v = current.clone();
        json_patch::merge(&mut v, patch);
        decode(&self.write(&mut st, K::KIND, &ns_of(ns), "MODIFIED", v))
    }

    /// Foreground and Orphan add their finalizer and mark the object, as the API server
    /// does; an object with finalizers is only marked. Grace periods are not modelled.
    async fn delete_with<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        params: &DeleteParams,
    ) -> Result<()> {
        self.check()?;
        let mut st = self.state.lock().unwrap();
        let Some(current) = st
            .objects
            .get(&(K::KIND, ns_of(ns), name.to_string()))
            .cloned()
        else {
            return Err(not_found::<K>(name));
        };
        if let Some(uid) = &params.precondition_uid {
            if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return Err(conflict::<K>(name));
            }
        }
        let mut marked = current.clone();
        let finalizer = match params.propagation {
            Some(Propagation::Foreground) => Some("foregroundDeletion"),
            Some(Propagation::Orphan) => Some("orphan"),
            _ => None,
        };
        if let Some(f) = finalizer {
            let list = marked["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !list.iter().any(|x| x == f) {
                let mut list = list;
                list.push(f.into());
                marked["metadata"]["finalizers"] = Value::Array(list);
            }
        }
        if has_finalizers(&marked) {
            if marked.pointer("/metadata/deletionTimestamp").is_none() {
                marked["metadata"]["deletionTimestamp"] = "2023-11-14T22:13:20Z".into();
            }
            self.write(&mut st, K::KIND, &ns_of(ns), "MODIFIED", marked);
        } else {
            self.write(&mut st, K::KIND, &ns_of(ns), "DELETED", current);
        }
        Ok(())
    }

    async fn update_subresource<K: Object>(
        &self,
        ns: Option<&str>,
        obj: &K,
        subresource: &'static str,
    ) -> Result<K> {
        self.check()?;
        let v = serde_json::to_value(obj)?;
        let name = meta_name(&v);
        let mut st = self.state.lock().unwrap();
        let Some(current) = st.objects.get(&(K::KIND, ns_of(ns), name.clone())).cloned() else {
            return Err(not_found::<K>(&name));
        };
        if stale(&v, &current) {
            return Err(conflict::<K>(&name));
        }
        let mut next = current;
        match subresource {
            "status" => next["status"] = v.get("status").cloned().unwrap_or(Value::Null),
            "finalize" => {
                next["spec"]["finalizers"] = v
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or(Value::Array(Vec::new()))
            }
            other => {
                return Err(ClientError::api(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({other})"),
                ))
            }
        }
        decode(&self.write(&mut st, K::KIND, &ns_of(ns), "MODIFIED", next))
    }

    async fn bind(&self, ns: &str, binding: &Binding) -> Result<()> {
        self.check()?;
        let name = binding.metadata.name.clone().unwrap_or_default();
        let mut st = self.state.lock().unwrap();
        let key = (Pod::KIND, ns.to_string(), name.clone());
        let Some(mut pod) = st.objects.get(&key).cloned() else {
            return Err(not_found::<Pod>(&name));
        };
        if let Some(node) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ClientError::api(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{node}\""),
            ));
        }
        pod["spec"]["nodeName"] = Value::String(binding.target.name.clone().unwrap_or_default());
        self.write(&mut st, Pod::KIND, ns, "MODIFIED", pod);
        Ok(())
    }

    async fn watch<K: Object>(
        &self,
        ns: Option<&str>,
        _params: &ListParams,
        resource_version: &str,
    ) -> Result<WatchStream<K>> {
        self.check()?;
        let from: u64 = resource_version.parse().unwrap_or(0);
        let mut closed = self.closer.subscribe();
        closed.mark_unchanged();
        let ns = ns.map(str::to_string);
        let matches = move |c: &Change| {
            c.kind == K::KIND && c.rv > from && ns.as_ref().is_none_or(|n| *n == c.ns)
        };
        // Subscribing under the lock: nothing written between replay and live is lost.
        let (replay, rx) = {
            let st = self.state.lock().unwrap();
            if from < st.compacted {
                return Err(ClientError::api(
                    410,
                    "Expired",
                    format!("too old resource version: {from} ({})", st.compacted),
                ));
            }
            let replay: Vec<Change> = st.history.iter().filter(|c| matches(c)).cloned().collect();
            (replay, self.events.subscribe())
        };
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |c| {
            let c = c.ok().filter(&matches);
            async move { c }
        });
        let closed = async move {
            let _ = closed.changed().await;
        };
        Ok(futures::stream::iter(replay)
            .chain(live)
            .take_until(closed)
            .map(|c| {
                let obj: K = decode(&c.obj)?;
                Ok(match c.ty {
                    "ADDED" => WatchEvent::Added(obj),
                    "DELETED" => WatchEvent::Deleted(obj),
                    _ => WatchEvent::Modified(obj),
                })
            })
            .boxed())
    }
}
