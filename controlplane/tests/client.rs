//! The typed client (`HttpClient`) against raftkv + the API server: every verb, the
//! errors it decodes (404, 409 conflict, 409 already exists), a watch resumed from a
//! resourceVersion, and the list-then-watch watcher.

mod common;

use std::time::Duration;

use common::{ApiServer, Flavor, StoreServer};
use controlplane::client::http::HttpClient;
use controlplane::client::watcher::{watcher, Event};
use controlplane::client::{Api, ListParams};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;

fn cm(name: &str, value: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some([("k".to_string(), value.to_string())].into());
    c
}

#[test]
fn verbs_errors_and_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreServer::start(Flavor::Raftkv, dir.path());
    let apiserver = ApiServer::start("api", &store.endpoint, dir.path(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ns = Some("default");
    rt.block_on(async {
        let api = HttpClient::from_kubeconfig(&apiserver.kubeconfig).expect("client");
        let created = api.create(ns, &cm("a", "1")).await.expect("create");
        let rv0 = created.metadata.resource_version.clone().expect("rv");
        let dup = api.create(ns, &cm("a", "1")).await.unwrap_err();
        assert!(dup.is_already_exists(), "{dup}");

        let mut updated = created.clone();
        updated.data = Some([("k".to_string(), "2".to_string())].into());
        let updated = api.update(ns, &updated).await.expect("update");
        // The first version is stale now.
        let mut stale = created.clone();
        stale.data = Some([("k".to_string(), "3".to_string())].into());
        let err = api.update(ns, &stale).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert!(
            err.to_string().contains("the object has been modified"),
            "{err}"
        );

        let patched: ConfigMap = api
            .patch_merge(
                ns,
                "a",
                &serde_json::json!({"metadata": {"labels": {"x": "y"}}}),
            )
            .await
            .expect("patch");
        assert_eq!(patched.metadata.labels.unwrap()["x"], "y");
        assert_eq!(patched.data.unwrap()["k"], "2");

        let list = api
            .list::<ConfigMap>(
                ns,
                &ListParams {
                    label_selector: Some("x=y".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(list.items.len(), 1);

        // A watch from the first version replays what came after it.
        let mut w = api
            .watch::<ConfigMap>(ns, &ListParams::default(), &rv0)
            .await
            .expect("watch");
        let first = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("event in time");
        match first {
            Some(Ok(WatchEvent::Modified(c))) => {
                assert_eq!(
                    c.metadata.resource_version,
                    updated.metadata.resource_version
                )
            }
            other => panic!("{other:?}"),
        }

        api.delete::<ConfigMap>(ns, "a").await.expect("delete");
        let err = api.get::<ConfigMap>(ns, "a").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.to_string(), "configmaps \"a\" not found (404 NotFound)");
        let err = api.delete::<Pod>(ns, "nope").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    });

    rt.block_on(async {
        let api = HttpClient::from_kubeconfig(&apiserver.kubeconfig).expect("client");
        // The watcher: the list, then live events.
        api.create(ns, &cm("b", "1")).await.expect("create");
        let mut rx =
            watcher::<_, ConfigMap>(api.clone(), Some("default".into()), ListParams::default());
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("list in time")
        {
            Some(Event::Restarted(items)) => assert_eq!(items.len(), 1),
            other => panic!("{other:?}"),
        }
        api.create(ns, &cm("c", "1")).await.expect("create");
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("event in time")
        {
            Some(Event::Applied(c)) => assert_eq!(c.metadata.name.as_deref(), Some("c")),
            other => panic!("{other:?}"),
        }
    });
}
