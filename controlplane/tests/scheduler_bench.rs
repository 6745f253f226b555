//! Scheduling throughput: 1000 pending pods over 100 fake nodes, measured from the
//! scheduler's start until every pod is bound. `in_memory` runs against the in-memory
//! fake API (the scheduler's own cost; always runs); `through_apiserver` against raftkv +
//! the API server (`cargo test -p controlplane --test scheduler_bench -- --ignored
//! --nocapture`; ignored by default as it mostly measures the debug-built API server;
//! `BENCH_STORE=etcd` puts etcd 3.4 under the API server instead of raftkv).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::client::fake::FakeApi;
use controlplane::client::http::HttpClient;
use controlplane::client::{Api, ListParams};
use controlplane::clock::SystemClock;
use controlplane::scheduler::{run, testing, Options};
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio_util::sync::CancellationToken;

const NODES: usize = 100;
const PODS: usize = 1000;

fn node(name: &str) -> Node {
    testing::node(name, "32", "128Gi")
}

fn pod(name: &str) -> Pod {
    testing::pod(name, "100m", "128Mi")
}

async fn populate<C: Api>(api: &C) {
    for i in 0..NODES {
        api.create(None, &node(&format!("node-{i}")))
            .await
            .expect("create node");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let api = api.clone();
        tasks.spawn(async move {
            for i in (w..PODS).step_by(16) {
                api.create(Some("default"), &pod(&format!("pod-{i}")))
                    .await
                    .expect("create pod");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("creator");
    }
}

async fn bound<C: Api>(api: &C) -> usize {
    let pods = api
        .list::<Pod>(Some("default"), &ListParams::default())
        .await
        .expect("list");
    pods.items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count()
}

/// Runs the scheduler until all pods are bound; returns pods/s.
async fn measure<C: Api>(api: C, limit: Duration) -> f64 {
    let stop = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(run(
        api.clone(),
        Arc::new(SystemClock),
        Options::default(),
        stop.clone(),
    ));
    loop {
        if bound(&api).await == PODS {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "only {} of {PODS} pods bound within {limit:?}",
            bound(&api).await
        );
        // Listing 1000 pods is not free: poll gently so the measurement does not slow
        // the scheduler it measures.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = PODS as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    task.await.expect("scheduler");
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    let api = FakeApi::new();
    populate(&api).await;
    let rate = measure(api, Duration::from_secs(50)).await;
    eprintln!("in-memory API: {PODS} pods over {NODES} nodes at {rate:.0} pods/s");
}

#[test]
#[ignore]
fn through_apiserver() {
    let dir = tempfile::tempdir().expect("tempdir");
    // BENCH_STORE=etcd uses etcd 3.4 (e.g. for a release build without a release raftkv).
    let flavor = match std::env::var("BENCH_STORE").as_deref() {
        Ok("etcd") => common::Flavor::Etcd,
        _ => common::Flavor::Raftkv,
    };
    let store = common::StoreServer::start(flavor, dir.path());
    let apiserver = common::ApiServer::start("api", &store.endpoint, dir.path(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = HttpClient::from_kubeconfig(&apiserver.kubeconfig).expect("client");
        let t = Instant::now();
        populate(&api).await;
        eprintln!("created {NODES} nodes and {PODS} pods in {:?}", t.elapsed());
        let rate = measure(api, Duration::from_secs(120)).await;
        eprintln!("through the API server: {PODS} pods over {NODES} nodes at {rate:.0} pods/s");
    });
}
