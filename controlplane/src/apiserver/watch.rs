//! `?watch=true`: a chunked stream of `{"type":...,"object":...}` JSON lines (ADDED,
//! MODIFIED, DELETED, BOOKMARK, ERROR), served from the resource's [`WatchCache`].
//!
//! Without a resourceVersion (or with `0`) the stream starts with a synthetic ADDED for
//! every existing object, listed from etcd, then continues from the list's revision. With a
//! resourceVersion it resumes after it; one older than the cache's window gets a single
//! ERROR event with a 410 Status (kube-apiserver 1.20 answers the same way), after which
//! the client re-lists. `kubectl get -w` asks for Tables; each event then carries a
//! one-row Table.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::handlers::{list_objects, Filter, ResourceRequest};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::watch_cache::{Event, EventKind};
use super::ApiServer;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// The longest a watch stays open when the client sets no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How each event's object is rendered.
#[derive(Clone)]
struct Render {
    table: Option<IncludeObject>,
    kind: &'static str,
    server: Arc<ApiServer>,
}

impl Render {
    fn event(&self, ty: &str, obj: &Value) -> Bytes {
        let object = match self.table {
            Some(include) => table::table(
                self.kind,
                std::slice::from_ref(obj),
                json!({}),
                include,
                self.server.clock.now(),
            ),
            None => obj.clone(),
        };
        line(&json!({"type": ty, "object": object}))
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.to_status()}))
}

pub async fn watch(server: &Arc<ApiServer>, req: &ResourceRequest) -> Result<Response, ApiError> {
    let server = server.clone();
    let r = req.target.resource;
    let mut filter = Filter::from_request(req)?;
    if let Some(name) = &req.target.name {
        // `/watch/namespaces/<ns>/pods/<name>`: the old form of a name field selector.
        filter.fields =
            super::selectors::FieldSelector::parse(&format!("metadata.name={name}"), r.kind, "")
                .map_err(ApiError::BadRequest)?;
    }
    let cache = server.cache(r)?;
    let rv = req
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let (initial, from) = match rv {
        "" | "0" => {
            let (items, rev, _) = list_objects(&server, r, &filter, 0, None).await?;
            (items, rev)
        }
        rv => {
            let rev = rv
                .parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))?;
            (Vec::new(), rev)
        }
    };
    let render = Render {
        table: req
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .filter(|a| a.contains("as=Table"))
            .map(|_| IncludeObject::parse(req.query.get("includeObject").map(String::as_str))),
        kind: r.kind,
        server: server.clone(),
    };
    let bookmarks = req
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let subscription = cache.subscribe(from);
    let api_version = r.api_version();
    tokio::spawn(async move {
        let sub = match subscription {
            Ok(s) => s,
            Err(super::watch_cache::TooOld { asked, oldest }) => {
                let _ = tx
                    .send(Ok(error_event(&ApiError::too_old(asked, oldest))))
                    .await;
                return;
            }
        };
        for obj in &initial {
            if tx.send(Ok(render.event("ADDED", obj))).await.is_err() {
                return;
            }
        }
        let mut last = from;
        for ev in sub.backlog {
            if !send_event(&tx, &render, &filter, &ev, from, &mut last).await {
                return;
            }
        }
        let mut live = sub.live;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = live.recv() => match msg {
                    Ok(ev) => {
                        if !send_event(&tx, &render, &filter, &ev, from, &mut last).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(error_event(&ApiError::too_old(last, cache.latest())))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rev = cache.latest().max(last);
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": render.kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string()}}});
                    if tx.send(Ok(line(&bm))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Sends one cache event if it is after the watch's start and matches its filter; false
/// once the client is gone. Backlog and live events never overlap (see the cache).
async fn send_event(
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
    render: &Render,
    filter: &Filter,
    ev: &Arc<Event>,
    from: i64,
    last: &mut i64,
) -> bool {
    if ev.revision <= from {
        return true;
    }
    *last = (*last).max(ev.revision);
    let now = filter.matches(&ev.object);
    let ty = match ev.kind {
        EventKind::Added if now => "ADDED",
        EventKind::Deleted if now => "DELETED",
        EventKind::Modified => match (ev.prev.as_ref().map(|p| filter.matches(p)), now) {
            // Kubernetes' cacher: entering the selection is ADDED, leaving it DELETED.
            (Some(true), true) | (None, true) => "MODIFIED",
            (Some(false), true) => "ADDED",
            (Some(true), false) => "DELETED",
            _ => return true,
        },
        _ => return true,
    };
    tx.send(Ok(render.event(ty, &ev.object))).await.is_ok()
}
