//! The Watch service: one task per client stream multiplexes its watches (etcd's
//! `serverWatchStream`). A watch's `created` response always precedes its events because the
//! same task sends both, in order.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request, watch_server::Watch, RangeRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use proto::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AuthError, Caller};
use crate::error::ServerError;
use crate::server::authn::Credentials;

use crate::mvcc::watch::{WatchEvents, WatchSpec, WatcherKey};
use crate::mvcc::{KeyRange, RangeEnd};
use crate::server::EtcdServer;

/// etcd's `clientv3.InvalidWatchID`.
const INVALID_WATCH_ID: i64 = -1;
/// How often a progress request waiting for catching-up watchers looks again.
const PROGRESS_RETRY: Duration = Duration::from_millis(50);
/// Responses buffered per stream before watchers fall back to catching up from storage.
const EVENT_BUFFER: usize = 1024;

pub struct WatchService(pub Arc<EtcdServer>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let (out, rx) = mpsc::channel(128);
        let stream = StreamTask::new(self.0.clone(), out, Credentials::of(&req));
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct WatchState {
    key: WatcherKey,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Set at each progress tick, cleared by any event: a notification goes out only after a
    /// quiet interval, as etcd does.
    quiet: bool,
}

struct StreamTask {
    server: Arc<EtcdServer>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    events_tx: mpsc::Sender<WatchEvents>,
    events_rx: mpsc::Receiver<WatchEvents>,
    watches: HashMap<i64, WatchState>,
    next_id: i64,
    /// A progress request waits until every watch of the stream is caught up.
    progress_pending: bool,
    /// Who opened the stream: resolved again at each create, as etcd does.
    credentials: Credentials,
}

impl StreamTask {
    fn new(
        server: Arc<EtcdServer>,
        out: mpsc::Sender<Result<WatchResponse, Status>>,
        credentials: Credentials,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        Self {
            server,
            out,
            events_tx,
            events_rx,
            watches: HashMap::new(),
            next_id: 0,
            progress_pending: false,
            credentials,
        }
    }

    async fn run(mut self, mut input: Streaming<WatchRequest>) {
        let mut progress = tokio::time::interval(self.server.limits.watch_progress_interval);
        progress.tick().await;
        // A client that half-closes its side keeps its watches, as with etcd (whose receive
        // loop just ends on EOF): the JSON gateway's /v3/watch relies on it. The stream ends
        // when the client goes away or its side fails.
        let mut input_open = true;
        loop {
            let ok = tokio::select! {
                msg = input.message(), if input_open => match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) => { input_open = false; true }
                    Err(_) => false,
                },
                _ = self.out.closed() => false,
                Some(ev) = self.events_rx.recv() => self.deliver(ev).await,
                _ = progress.tick() => { self.progress_tick(); true }
                _ = tokio::time::sleep(PROGRESS_RETRY), if self.progress_pending => self.answer_progress().await,
            };
            if !ok {
                break;
            }
        }
        for w in self.watches.values() {
            self.server.sm.hub().cancel(w.key);
        }
    }

    async fn send(&self, resp: WatchResponse) -> bool {
        self.out.send(Ok(resp)).await.is_ok()
    }

    async fn handle(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                let Some(w) = self.watches.remove(&c.watch_id) else {
                    return true;
                };
                self.server.sm.hub().cancel(w.key);
                let resp = WatchResponse {
                    header: self.server.header(0),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                self.send(resp).await
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                self.answer_progress().await
            }
            None => true,
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let key = if c.key.is_empty() {
            vec![0]
        } else {
            c.key.clone()
        };
        let range = KeyRange::new(&key, &c.range_end);
        if let Err(e) = self.is_watch_permitted(&key, &c.range_end).await {
            let resp = WatchResponse {
                header: self.server.header(0),
                watch_id: c.watch_id,
                created: true,
                canceled: true,
                // Go's text form of the gRPC error, as etcd puts it in the reason; Code's
                // Debug names are grpc-go's.
                cancel_reason: format!("rpc error: code = {:?} desc = {e}", e.code()),
                ..Default::default()
            };
            return self.send(resp).await;
        }
        let id = match self.pick_id(&c, &range) {
            Ok(id) => id,
            Err(reason) => {
                let resp = WatchResponse {
                    header: self.server.header(0),
                    watch_id: INVALID_WATCH_ID,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..Default::default()
                };
                return self.send(resp).await;
            }
        };
        let spec = WatchSpec {
            watch_id: id,
            range,
            start_rev: c.start_revision,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        };
        let (key, rev, needs_sync) = {
            let st = self.server.sm.read();
            let rev = st.mvcc.current_rev();
            let (key, needs_sync) = self
                .server
                .sm
                .hub()
                .watch(rev, spec, self.events_tx.clone());
            (key, rev, needs_sync)
        };
        self.watches.insert(
            id,
            WatchState {
                key,
                prev_kv: c.prev_kv,
                fragment: c.fragment,
                progress_notify: c.progress_notify,
                quiet: false,
            },
        );
        let created = WatchResponse {
            header: self.server.header(rev),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        let ok = self.send(created).await;
        if needs_sync {
            self.server.kick_watch_sync();
        }
        ok
    }

    /// etcd's `isWatchPermitted`: read permission on the range, with etcd's quirk that a
    /// from-key watch (range end "\0") is checked as the single key. Errors other than a
    /// bad token, a stale revision or a missing user are reported as permission denied.
    async fn is_watch_permitted(&self, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        let who = match self.server.auth_info(&self.credentials).await {
            Ok(who) => who,
            Err(ServerError::Auth(e)) => return Err(e),
            Err(_) => return Err(AuthError::PermissionDenied),
        };
        let range_end: &[u8] = if range_end == [0] { &[] } else { range_end };
        let caller = Caller::Client(who.unwrap_or_default());
        let st = self.server.sm.read();
        match st.auth.check(&caller, key, range_end, false) {
            Ok(()) => Ok(()),
            Err(e @ (AuthError::InvalidToken | AuthError::OldRevision | AuthError::UserEmpty)) => {
                Err(e)
            }
            Err(_) => Err(AuthError::PermissionDenied),
        }
    }

    /// etcd's `watchStream.Watch` id rules.
    fn pick_id(&mut self, c: &WatchCreateRequest, range: &KeyRange) -> Result<i64, &'static str> {
        if let RangeEnd::Until(_) = range.end {
            if range.is_empty() {
                return Err("mvcc: watcher range is empty");
            }
        }
        if c.watch_id == 0 {
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            Ok(self.next_id - 1)
        } else if self.watches.contains_key(&c.watch_id) {
            Err("mvcc: duplicate watch ID provided on the WatchStream")
        } else {
            Ok(c.watch_id)
        }
    }

    /// Answers a pending progress request with the store revision, once nothing up to that
    /// revision can still be on its way: a progress response promises the client it has seen
    /// every event up to it (etcd 3.4 could break that promise, etcd-io/etcd#15220).
    async fn answer_progress(&mut self) -> bool {
        if !self.progress_pending {
            return true;
        }
        // The hub is notified under the state write lock, so once this read lock is held
        // every event up to `rev` is already queued for synced watchers; and a watcher is
        // marked synced only after its catch-up events are queued. So: check, then drain.
        let rev = self.server.sm.read().mvcc.current_rev();
        let hub = self.server.sm.hub();
        if self.watches.values().any(|w| !hub.is_synced(w.key)) {
            return true;
        }
        while let Ok(ev) = self.events_rx.try_recv() {
            if !self.deliver(ev).await {
                return false;
            }
        }
        self.progress_pending = false;
        // Not tied to one watch: clients deliver it to all of theirs.
        let resp = WatchResponse {
            header: self.server.header(rev),
            watch_id: INVALID_WATCH_ID,
            ..Default::default()
        };
        self.send(resp).await
    }

    fn progress_tick(&mut self) {
        let rev = self.server.sm.read().mvcc.current_rev();
        for w in self.watches.values_mut() {
            if w.progress_notify && w.quiet {
                self.server.sm.hub().request_progress(w.key, rev);
            }
            w.quiet = true;
        }
    }

    async fn deliver(&mut self, ev: WatchEvents) -> bool {
        let Some(w) = self.watches.get_mut(&ev.watch_id) else {
            return true;
        };
        if !ev.events.is_empty() {
            w.quiet = false;
        }
        let (prev_kv, fragment) = (w.prev_kv, w.fragment);
        let canceled = ev.compact_revision != 0;
        if canceled {
            // The hub already dropped it.
            self.watches.remove(&ev.watch_id);
        }
        let mut events = ev.events;
        if prev_kv {
            for e in &mut events {
                self.fill_prev_kv(e);
            }
        }
        let mut header = self.server.header(ev.revision);
        if canceled {
            // etcd reports a compaction cancel at revision 0.
            if let Some(h) = header.as_mut() {
                h.revision = 0;
            }
        }
        let resp = WatchResponse {
            header,
            watch_id: ev.watch_id,
            events,
            compact_revision: ev.compact_revision,
            canceled,
            ..Default::default()
        };
        if fragment {
            for part in fragments(resp, self.server.limits.max_request_bytes) {
                if !self.send(part).await {
                    return false;
                }
            }
            true
        } else {
            self.send(resp).await
        }
    }

    fn fill_prev_kv(&self, e: &mut Event) {
        let Some(kv) = &e.kv else { return };
        let is_create = e.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
        if is_create {
            return;
        }
        let req = RangeRequest {
            key: kv.key.clone(),
            revision: kv.mod_revision - 1,
            ..Default::default()
        };
        if let Ok(r) = self.server.sm.range(&req) {
            e.prev_kv = r.kvs.into_iter().next();
        }
    }
}

/// etcd's `sendFragments`: splits a large response into parts under `max_bytes`, all but the
/// last flagged `fragment`; one event is never split.
fn fragments(resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut parts = Vec::new();
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..resp.clone()
    };
    let mut cur = template.clone();
    for ev in resp.events {
        cur.events.push(ev);
        if cur.events.len() > 1 && cur.encoded_len() >= max_bytes {
            let ev = cur.events.pop().expect("just pushed");
            parts.push(std::mem::replace(&mut cur, template.clone()));
            cur.events.push(ev);
        }
    }
    cur.fragment = false;
    parts.push(cur);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::mvccpb::KeyValue;

    #[test]
    fn fragments_split_and_flag() {
        let ev = |n: u8| Event {
            kv: Some(KeyValue {
                key: vec![n],
                value: vec![n; 100],
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(ev).collect(),
            ..Default::default()
        };
        // (limit, expected number of parts)
        for (limit, parts) in [(10_000, 1), (250, 5), (1, 10)] {
            let got = fragments(resp.clone(), limit);
            assert_eq!(got.len(), parts, "limit {limit}");
            assert_eq!(got.iter().map(|p| p.events.len()).sum::<usize>(), 10);
            assert!(got[..got.len() - 1].iter().all(|p| p.fragment));
            assert!(!got.last().unwrap().fragment);
        }
    }
}
