//! Two scheduler replicas with Lease leader election against raftkv + one API server:
//! the active one is killed while pods are being created; every pod still ends bound
//! exactly once (its nodeName, once set, never changes) and the standby takes the Lease
//! one lease duration after the kill (give or take the retry periods it takes to notice).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_elected, wait_for, ApiServer, Flavor, Proc, StoreServer};
use controlplane::client::http::HttpClient;
use controlplane::client::{Api, ListParams};
use controlplane::launcher::status::lease_holder;
use controlplane::scheduler::testing;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;

const LEASE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(250);
const PODS: usize = 60;
const NODES: usize = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn node(name: &str) -> Node {
    testing::node(name, "8", "32Gi")
}

fn pod(name: &str) -> Pod {
    testing::pod(name, "100m", "64Mi")
}

#[test]
fn killing_the_active_scheduler_loses_no_pod_and_binds_none_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreServer::start(Flavor::Raftkv, dir.path());
    let apiserver = ApiServer::start("api", &store.endpoint, dir.path(), &[]);
    let ports = BTreeMap::from([("a", free_port()), ("b", free_port())]);
    let mut schedulers: BTreeMap<&str, Proc> = ports
        .iter()
        .map(|(id, port)| {
            (
                *id,
                start_elected(
                    "scheduler",
                    &apiserver.kubeconfig,
                    dir.path(),
                    id,
                    &["--metrics-address", &format!("127.0.0.1:{port}")],
                ),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = HttpClient::from_kubeconfig(&apiserver.kubeconfig).expect("client");
        for i in 0..NODES {
            api.create(None, &node(&format!("node-{i}")))
                .await
                .expect("create node");
        }
        let leader = wait_for("a leader", 20, || lease_holder(&api, "kube-scheduler")).await;
        // Every nodeName each pod is seen with, in order.
        let seen: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
        let list = api
            .list::<Pod>(Some("default"), &ListParams::default())
            .await
            .expect("list");
        let mut stream = api
            .watch::<Pod>(
                Some("default"),
                &ListParams::default(),
                &list.resource_version,
            )
            .await
            .expect("watch");
        let recorder = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(ev) = stream.next().await {
                    if let Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) = ev {
                        if let Some(n) = p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty())
                        {
                            let mut seen = seen.lock().unwrap();
                            let v = seen.entry(p.metadata.name.unwrap_or_default()).or_default();
                            if v.last() != Some(&n) {
                                v.push(n);
                            }
                        }
                    }
                }
            })
        };
        let mut killed_at = None;
        for i in 0..PODS {
            api.create(Some("default"), &pod(&format!("pod-{i}")))
                .await
                .expect("create pod");
            if i == PODS / 2 {
                schedulers
                    .get_mut(leader.as_str())
                    .expect("leader is a or b")
                    .kill();
                killed_at = Some(Instant::now());
            }
        }
        let killed_at = killed_at.expect("killed");
        let successor = wait_for("the standby to take the Lease", 20, || async {
            lease_holder(&api, "kube-scheduler").await.filter(|h| *h != leader)
        })
        .await;
        let takeover = killed_at.elapsed();
        // The killed leader last renewed at most one retry period before the kill, and the
        // standby waits a full lease duration from when it saw that renewal: so the
        // takeover can come no sooner than LEASE - RETRY after the kill (safety), and
        // should come within LEASE plus a few retry periods (noticing, the next attempt,
        // request latency on a loaded machine).
        assert!(
            takeover + RETRY >= LEASE && takeover <= LEASE + 4 * RETRY,
            "{successor} took the Lease {takeover:?} after the kill (lease {LEASE:?}, retry {RETRY:?})"
        );
        eprintln!("{successor} took over {takeover:?} after {leader} was killed");
        wait_for("all pods bound", 30, || async {
            let pods = api
                .list::<Pod>(Some("default"), &ListParams::default())
                .await
                .ok()?;
            let bound = pods
                .items
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            (bound == PODS).then_some(())
        })
        .await;
        // Let late watch events arrive, then check no pod moved.
        tokio::time::sleep(Duration::from_millis(300)).await;
        recorder.abort();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen.len(), PODS, "every pod was seen bound");
        for (pod, nodes) in &seen {
            assert_eq!(nodes.len(), 1, "{pod} was bound to {nodes:?}");
        }
        let lease: Lease = api
            .get(Some("kube-system"), "kube-scheduler")
            .await
            .expect("lease");
        let spec = lease.spec.expect("spec");
        assert!(spec.lease_transitions.unwrap_or(0) >= 1, "{spec:?}");
        assert_eq!(spec.lease_duration_seconds, Some(2));
        // The successor's /metrics says it leads and has scheduled pods.
        let url = format!("http://127.0.0.1:{}/metrics", ports[successor.as_str()]);
        let text = reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        assert!(text.contains("leader_election_master_status 1"), "{text}");
        assert!(
            text.contains(r#"scheduler_schedule_attempts_total{result="scheduled"}"#),
            "{text}"
        );
    });
}
