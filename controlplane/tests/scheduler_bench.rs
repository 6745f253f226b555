//! Scheduling throughput (`controlplane::scheduler::throughput`, also `bench scheduler`):
//! 1000 pending pods over 100 fake nodes, measured from the scheduler's start until every
//! pod is bound. `in_memory` runs against the in-memory
//! fake API (the scheduler's own cost; always runs); `through_apiserver` against raftkv +
//! the API server (`cargo test -p controlplane --test scheduler_bench -- --ignored
//! --nocapture`; ignored by default as it mostly measures the debug-built API server;
//! `BENCH_STORE=etcd` puts etcd 3.4 under the API server instead of raftkv).

mod common;

use std::time::{Duration, Instant};

use controlplane::client::fake::FakeApi;
use controlplane::client::http::HttpClient;
use controlplane::scheduler::throughput::{measure, populate};

const NODES: usize = 100;
const PODS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    let api = FakeApi::new();
    populate(&api, NODES, PODS).await.expect("populate");
    let rate = measure(api, PODS, Duration::from_secs(50))
        .await
        .expect("scheduling");
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
        populate(&api, NODES, PODS).await.expect("populate");
        eprintln!("created {NODES} nodes and {PODS} pods in {:?}", t.elapsed());
        let rate = measure(api, PODS, Duration::from_secs(120))
            .await
            .expect("scheduling");
        eprintln!("through the API server: {PODS} pods over {NODES} nodes at {rate:.0} pods/s");
    });
}
