//! List-then-watch, as client-go's reflector does: list, deliver the full set
//! ([`Event::Restarted`]), watch from the list's resourceVersion, resume from the last
//! seen resourceVersion (bookmarks included) when the stream ends, relist when the server
//! says 410 Gone, and back off exponentially (100 ms → 5 s) on other errors.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use tokio::sync::mpsc;

use super::{Api, ListParams, Object};

/// What a watcher delivers.
#[derive(Debug)]
pub enum Event<K> {
    /// A (re)list: the complete current set; anything not in it is gone.
    Restarted(Vec<K>),
    Applied(K),
    Deleted(K),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts a watcher task; it stops when the receiver is dropped.
pub fn watcher<C: Api, K: Object>(
    api: C,
    ns: Option<String>,
    params: ListParams,
) -> mpsc::Receiver<Event<K>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut rv: Option<String> = None;
        loop {
            if tx.is_closed() {
                return;
            }
            let from = match &rv {
                Some(rv) => rv.clone(),
                None => match api.list::<K>(ns.as_deref(), &params).await {
                    Ok(list) => {
                        if tx.send(Event::Restarted(list.items)).await.is_err() {
                            return;
                        }
                        rv = Some(list.resource_version.clone());
                        list.resource_version
                    }
                    Err(e) => {
                        tracing::warn!(kind = K::KIND, error = %e, "list failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let mut stream = match api.watch::<K>(ns.as_deref(), &params, &from).await {
                Ok(s) => s,
                Err(e) => {
                    if e.is_gone() {
                        rv = None;
                    }
                    tracing::warn!(kind = K::KIND, error = %e, "watch failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            while let Some(ev) = stream.next().await {
                let out = match ev {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.metadata().resource_version.clone().or(rv);
                        Event::Applied(o)
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = o.metadata().resource_version.clone().or(rv);
                        Event::Deleted(o)
                    }
                    Ok(WatchEvent::Bookmark { resource_version }) => {
                        rv = Some(resource_version);
                        continue;
                    }
                    Ok(WatchEvent::ErrorStatus(s)) => {
                        if s.code == Some(410) {
                            rv = None;
                        }
                        tracing::info!(kind = K::KIND, status = ?s.message, "watch error event");
                        break;
                    }
                    Ok(WatchEvent::ErrorOther(_)) => break,
                    Err(e) => {
                        tracing::warn!(kind = K::KIND, error = %e, "watch stream failed");
                        break;
                    }
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::FakeApi;
    use k8s_openapi::api::core::v1::Node;

    fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    #[tokio::test]
    async fn lists_then_watches() {
        let api = FakeApi::new();
        api.create(None, &node("a")).await.unwrap();
        let mut rx = watcher::<_, Node>(api.clone(), None, ListParams::default());
        match rx.recv().await.unwrap() {
            Event::Restarted(items) => assert_eq!(items.len(), 1),
            e => panic!("{e:?}"),
        }
        api.create(None, &node("b")).await.unwrap();
        api.delete::<Node>(None, "a").await.unwrap();
        assert!(
            matches!(rx.recv().await.unwrap(), Event::Applied(n) if n.metadata.name.as_deref() == Some("b"))
        );
        assert!(
            matches!(rx.recv().await.unwrap(), Event::Deleted(n) if n.metadata.name.as_deref() == Some("a"))
        );
    }

    #[tokio::test]
    async fn relists_when_its_resource_version_is_gone() {
        let api = FakeApi::new();
        api.create(None, &node("a")).await.unwrap();
        let mut rx = watcher::<_, Node>(api.clone(), None, ListParams::default());
        assert!(matches!(rx.recv().await.unwrap(), Event::Restarted(_)));
        api.create(None, &node("b")).await.unwrap();
        assert!(matches!(rx.recv().await.unwrap(), Event::Applied(_)));
        // The stream ends; meanwhile a write happens and history is compacted, so
        // resuming from the last seen version gets 410: the watcher must relist.
        api.delete::<Node>(None, "a").await.unwrap();
        api.compact_and_close_watches();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        match next.unwrap() {
            Event::Restarted(items) => {
                let names: Vec<_> = items
                    .iter()
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                assert_eq!(names, ["b"]);
            }
            e => panic!("{e:?}"),
        }
    }
}
