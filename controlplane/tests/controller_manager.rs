//! The controller manager as a user meets it: raftkv + one API server + two schedulers +
//! two controller managers (Lease leader election) + three fake nodes (the in-process test
//! kubelet), driven by kubectl 1.20:
//!
//! - a Deployment rolls out; `kubectl set image` rolls it to a new image while the
//!   active controller manager is killed mid-rollout, and the ready pods never drop below
//!   `replicas - maxUnavailable`; `kubectl rollout undo` brings the old image back as
//!   revision 3; `kubectl rollout status` and `history` work throughout;
//! - a node that stops heartbeating is marked unreachable and its pods are recreated on
//!   the other nodes;
//! - `kubectl delete deployment` removes its ReplicaSets and pods (garbage collector);
//! - `kubectl delete namespace` removes everything in it, waiting for finalizers.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start_elected, wait_for, ApiServer, Flavor, Kubectl, Proc, StoreServer};
use controlplane::client::http::HttpClient;
use controlplane::client::{Api, ListParams};
use controlplane::controllers::podutil;
use controlplane::controllers::testing::TestKubelet;
use controlplane::launcher::status::lease_holder;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Fast node failure detection and resync for the test.
const CM_FLAGS: &[&str] = &[
    "--node-monitor-grace-period",
    "3s",
    "--node-monitor-period",
    "500ms",
    "--min-resync-period",
    "5s",
];

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  template:
    metadata:
      labels: {app: web}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
      containers:
      - name: main
        image: nginx:1
"#;

async fn web_pods(api: &HttpClient) -> Vec<Pod> {
    let params = ListParams {
        label_selector: Some("app=web".into()),
        ..Default::default()
    };
    api.list::<Pod>(Some("default"), &params)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn rollout_status(k: &Kubectl) {
    let out = k.ok(&["rollout", "status", "deployment/web", "--timeout=25s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
}

#[test]
fn deployments_roll_out_through_failover_node_loss_and_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreServer::start(Flavor::Raftkv, dir.path());
    let apiserver = ApiServer::start("api", &store.endpoint, dir.path(), &[]);
    let kc = &apiserver.kubeconfig;
    let _schedulers: Vec<Proc> = ["s1", "s2"]
        .iter()
        .map(|id| start_elected("scheduler", kc, dir.path(), id, &[]))
        .collect();
    let mut managers: BTreeMap<&str, Proc> = ["cm1", "cm2"]
        .iter()
        .map(|id| {
            (
                *id,
                start_elected("controller-manager", kc, dir.path(), id, CM_FLAGS),
            )
        })
        .collect();
    let k = Kubectl::new(&apiserver, dir.path(), "k");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = HttpClient::from_kubeconfig(kc).expect("client");
        let kubelet = TestKubelet::start(api.clone(), &NODES, Duration::from_millis(300)).await;

        k.ok_with_input(&["apply", "-f", "-"], Some(DEPLOYMENT));
        tokio::task::block_in_place(|| rollout_status(&k));
        let pods = web_pods(&api).await;
        assert_eq!(
            pods.iter()
                .filter(|p| live(p) && podutil::is_ready(p))
                .count(),
            4
        );

        // Sample the ready pods through the whole rolling update.
        let sampler = {
            let api = api.clone();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s = stop.clone();
            let task = tokio::spawn(async move {
                let mut min = usize::MAX;
                let mut samples = 0;
                while !s.load(std::sync::atomic::Ordering::SeqCst) {
                    let pods = web_pods(&api).await;
                    if !pods.is_empty() {
                        min = min.min(
                            pods.iter()
                                .filter(|p| live(p) && podutil::is_ready(p))
                                .count(),
                        );
                        samples += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (min, samples)
            });
            (stop, task)
        };
        let leader = wait_for("a controller-manager leader", 20, || {
            lease_holder(&api, "kube-controller-manager")
        })
        .await;
        k.ok(&["set", "image", "deployment/web", "main=nginx:2"]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        managers
            .get_mut(leader.as_str())
            .expect("leader is cm1 or cm2")
            .kill();
        let killed = Instant::now();
        let successor = wait_for("the standby controller-manager to lead", 20, || async {
            lease_holder(&api, "kube-controller-manager")
                .await
                .filter(|h| *h != leader)
        })
        .await;
        eprintln!(
            "{successor} took over {:?} after {leader} was killed",
            killed.elapsed()
        );
        tokio::task::block_in_place(|| rollout_status(&k));
        sampler.0.store(true, std::sync::atomic::Ordering::SeqCst);
        let (min_ready, samples) = sampler.1.await.expect("sampler");
        eprintln!("rolling update: {samples} samples, at least {min_ready} ready pods");
        assert!(
            min_ready >= 3,
            "ready pods dropped to {min_ready} (replicas 4, maxUnavailable 1)"
        );
        let pods = web_pods(&api).await;
        let live_pods: Vec<&Pod> = pods.iter().filter(|p| live(p)).collect();
        assert_eq!(live_pods.len(), 4, "exactly 4 pods after the rollout");
        assert!(live_pods
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("nginx:2")));

        k.ok(&["rollout", "undo", "deployment/web"]);
        tokio::task::block_in_place(|| rollout_status(&k));
        let image = k.ok(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        assert_eq!(image, "nginx:1");
        let history = k.ok(&["rollout", "history", "deployment/web"]);
        assert!(history.contains('2') && history.contains('3'), "{history}");
        let revision = k.ok(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ]);
        assert_eq!(revision, "3");

        // A node dies: its pods come back elsewhere.
        let pods = web_pods(&api).await;
        let victim = NODES
            .iter()
            .copied()
            .max_by_key(|n| {
                pods.iter()
                    .filter(|p| live(p) && node_of(p) == Some(*n))
                    .count()
            })
            .expect("a node");
        kubelet.stop_node(victim);
        wait_for("the dead node marked Unknown", 20, || async {
            let n: Node = api.get(None, victim).await.ok()?;
            n.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "Unknown")
                .then_some(())
        })
        .await;
        wait_for("4 ready pods on the live nodes", 30, || async {
            let pods = web_pods(&api).await;
            let elsewhere = pods
                .iter()
                .filter(|p| live(p) && podutil::is_ready(p) && node_of(p) != Some(victim))
                .count();
            let on_victim = pods
                .iter()
                .filter(|p| live(p) && node_of(p) == Some(victim))
                .count();
            (elsewhere == 4 && on_victim == 0).then_some(())
        })
        .await;

        // Deleting the deployment deletes what it owns.
        k.ok(&["delete", "deployment", "web"]);
        wait_for("replica sets and pods collected", 30, || async {
            let sets = api
                .list::<ReplicaSet>(Some("default"), &ListParams::default())
                .await
                .ok()?;
            // Pods of the dead node stay Terminating: no kubelet confirms them.
            let pods = web_pods(&api).await;
            (sets.items.is_empty() && pods.iter().all(|p| !live(p))).then_some(())
        })
        .await;

        // Deleting a namespace deletes its content; a finalizer on one object holds the
        // namespace (Terminating, closed to new content) until it is removed.
        k.ok(&["create", "namespace", "team"]);
        k.ok(&["create", "configmap", "plain", "-n", "team"]);
        k.ok(&["create", "deployment", "app", "--image=app:1", "-n", "team"]);
        k.ok_with_input(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: team\n  finalizers: [example.com/hold]\n"));
        wait_for("the team deployment's pod", 20, || async {
            let pods = api.list::<Pod>(Some("team"), &ListParams::default()).await.ok()?;
            pods.items.iter().any(podutil::is_ready).then_some(())
        })
        .await;
        k.ok(&["delete", "namespace", "team", "--wait=false"]);
        wait_for("all but the held object deleted", 20, || async {
            let pods = api.list::<Pod>(Some("team"), &ListParams::default()).await.ok()?;
            let sets = api.list::<ReplicaSet>(Some("team"), &ListParams::default()).await.ok()?;
            let plain = api.get::<k8s_openapi::api::core::v1::ConfigMap>(Some("team"), "plain").await;
            (pods.items.is_empty() && sets.items.is_empty() && plain.is_err()).then_some(())
        })
        .await;
        let phase = k.ok(&["get", "namespace", "team", "-o", "jsonpath={.status.phase}"]);
        assert_eq!(phase, "Terminating");
        k.ok(&["patch", "configmap", "held", "-n", "team", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
        wait_for("the namespace gone", 20, || async {
            let ns = api.get::<k8s_openapi::api::core::v1::Namespace>(None, "team").await;
            ns.is_err_and(|e| e.is_not_found()).then_some(())
        })
        .await;
    });
}
