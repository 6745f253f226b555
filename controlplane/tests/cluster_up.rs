//! End to end, as a user meets it: `controlplane up` (3 raftkv members, 2 API servers,
//! 2 schedulers, 2 controller managers, 2 node agents running busybox pods with runc on
//! CNI pod networks), a Deployment of httpd pods and a Service applied with kubectl, then —
//! while the Deployment scales from 2 to 6 — the raftkv leader, the active scheduler and
//! one API server are killed. All 6 pods must end Running, each bound exactly once; every
//! object written before the kills must still be there; the Service's ClusterIP must
//! answer from several pods, and every pod's address from the host; `controlplane down`
//! must leave no process, container, mount, network namespace, bridge or route behind.
//!
//! With the CNI plugins installed (as CI has them) each node agent runs in a network
//! namespace of its own on the cluster's node network, so the pod traffic between nodes
//! and from the host crosses the host's routes, as between real machines.
//!
//! Needs root (runc, cgroups): skipped with a message otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kubectl_program, wait_for, Kubectl};
use controlplane::client::http::HttpClient;
use controlplane::client::{Api, ListParams};
use controlplane::launcher::state::{is_ours, ClusterState};
use controlplane::launcher::{cleanup, status};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && echo started && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

/// A base whose whole range (base .. base+110) is free now. It lies below Linux's
/// ephemeral range (32768 and up): the node agents bind their ports only after the
/// control plane is up, and by then an outgoing connection may hold an ephemeral port
/// (CI once failed so: a node agent could not bind its port and never became Ready).
fn free_base() -> u16 {
    for _ in 0..50 {
        let base = 20000 + (rand::random::<u16>() % 100) * 120;
        let free = (0..110).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port range");
}

struct Up {
    child: Child,
    dir: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        controlplane::launcher::down(&self.dir, &|_| {}).ok();
    }
}

fn up(dir: &Path, base: u16) -> Up {
    let log = std::fs::File::create(dir.join("up.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_controlplane"))
        .arg("up")
        .arg("--dir")
        .arg(dir.join("cluster"))
        .args(["--members", "3", "--apiservers", "2", "--schedulers", "2"])
        .args(["--controller-managers", "2", "--nodes", "2"])
        .args([
            "--port-base",
            &base.to_string(),
            "--api-port",
            &(base + 100).to_string(),
        ])
        .args(["--lease-duration", "3s", "--node-grace-period", "20s"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("controlplane up");
    let up = Up {
        child,
        dir: dir.join("cluster"),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
        if text.contains("cluster up in") {
            return up;
        }
        assert!(
            Instant::now() < deadline && !text.contains("start failed"),
            "controlplane up did not come up:\n{text}\n{}",
            log_tails(&dir.join("cluster/logs"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last lines of every log in `dir`, so a failure in CI says what went wrong.
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("--- {} (last 30 lines)\n", f.display());
        for l in &lines[lines.len().saturating_sub(30)..] {
            out += l;
            out.push('\n');
        }
    }
    out
}

fn kill(state: &ClusterState, name: &str) {
    let p = state
        .processes
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the state file"));
    assert!(is_ours(p.pid, &p.program), "{name} is not running");
    controlplane::launcher::process::signal(p.pid, libc::SIGKILL);
    eprintln!("killed {name} (pid {})", p.pid);
}

#[test]
fn up_survives_killing_leaders_while_scaling_and_down_leaves_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the node agents need root (runc, cgroups); CI runs as root");
        return;
    }
    let _ = kubectl_program();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let cluster = up(tmp.path(), base);
    let dir = cluster.dir.clone();
    let k = Kubectl::with_kubeconfig(dir.join("kubeconfig"), tmp.path(), "k");
    let state = ClusterState::load(&dir).expect("state file");
    let node_network = own_namespaces(&state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = HttpClient::from_kubeconfig(&dir.join("kubeconfig")).expect("client");
        // Objects written before the faults, to be found after them.
        for i in 0..30 {
            k.ok(&[
                "create",
                "configmap",
                &format!("before-{i}"),
                &format!("--from-literal=i={i}"),
            ]);
        }
        k.ok_with_input(&["apply", "-f", "-"], Some(WORKLOAD));
        wait_for("2 web pods Running", 120, || async {
            let pods = web_pods(&api).await;
            (pods.iter().filter(|p| phase(p) == "Running").count() == 2).then_some(())
        })
        .await;

        // Every nodeName each pod is bound to, in order.
        let seen: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
        let list = api
            .list::<Pod>(Some("default"), &ListParams::default())
            .await
            .expect("list");
        for p in &list.items {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                seen.lock()
                    .unwrap()
                    .insert(p.metadata.name.clone().unwrap_or_default(), vec![n]);
            }
        }
        let recorder = {
            let (api, seen) = (api.clone(), seen.clone());
            let rv = list.resource_version.clone();
            tokio::spawn(async move {
                let mut rv = rv;
                loop {
                    let Ok(mut stream) = api
                        .watch::<Pod>(Some("default"), &ListParams::default(), &rv)
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    while let Some(Ok(ev)) = stream.next().await {
                        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                            rv = p.metadata.resource_version.clone().unwrap_or(rv);
                            if let Some(n) =
                                p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty())
                            {
                                let mut seen = seen.lock().unwrap();
                                let v =
                                    seen.entry(p.metadata.name.unwrap_or_default()).or_default();
                                if v.last() != Some(&n) {
                                    v.push(n);
                                }
                            }
                        }
                    }
                }
            })
        };

        let leader = status::raft_leader(&state).await.expect("a raftkv leader");
        let scheduler = status::lease_holder(&api, "kube-scheduler")
            .await
            .expect("a scheduler leader");
        k.ok(&["scale", "deployment/web", "--replicas=6"]);
        kill(&state, &leader);
        kill(&state, &scheduler);
        kill(&state, "apiserver-1");
        wait_for("6 web pods Running", 180, || async {
            let pods = web_pods(&api).await;
            (pods
                .iter()
                .filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none())
                .count()
                == 6)
                .then_some(())
        })
        .await;
        // Each pod has its own address, from its node's podCIDR.
        let ips: std::collections::BTreeSet<String> = web_pods(&api)
            .await
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        assert_eq!(ips.len(), 6, "pod IPs are not distinct: {ips:?}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("http client");
        // Each pod answers on its own address from the host: through the host's route to
        // its node's podCIDR when the nodes have namespaces of their own.
        for ip in &ips {
            let url = format!("http://{ip}:8080/");
            let answer = http.get(&url).send().await.map(|r| r.status());
            assert!(
                answer.as_ref().is_ok_and(|s| s.is_success()),
                "{url}: {answer:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        recorder.abort();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let web: Vec<_> = seen
            .iter()
            .filter(|(name, _)| name.starts_with("web-"))
            .collect();
        assert_eq!(web.len(), 6, "6 web pods were bound: {seen:?}");
        for (pod, nodes) in web {
            assert_eq!(nodes.len(), 1, "{pod} was bound to {nodes:?}");
        }
        let cms = api
            .list::<ConfigMap>(Some("default"), &ListParams::default())
            .await
            .expect("list");
        for i in 0..30 {
            let name = format!("before-{i}");
            let cm = cms
                .items
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(&name))
                .unwrap_or_else(|| panic!("{name} was lost"));
            assert_eq!(
                cm.data.as_ref().and_then(|d| d.get("i")),
                Some(&i.to_string())
            );
        }
        // The Service answers on its ClusterIP from the host (the node agents' proxies),
        // spread over the pods.
        let ip = k.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
        let mut answered_by = std::collections::BTreeSet::new();
        let mut failures = 0;
        for _ in 0..60 {
            match http.get(format!("http://{ip}:80/")).send().await {
                Ok(r) if r.status().is_success() => {
                    answered_by.insert(r.text().await.unwrap_or_default().trim().to_string());
                }
                _ => failures += 1,
            }
        }
        eprintln!("service {ip}: 60 requests, {failures} failed, answered by {answered_by:?}");
        assert!(
            failures <= 3,
            "{failures} of 60 requests to the ClusterIP failed"
        );
        assert!(answered_by.len() >= 3, "only {answered_by:?} answered");
    });

    // The launcher restarted what was killed: check those pids too after `down`.
    let restarted = ClusterState::load(&dir).expect("state file");
    // `down` from another process, as after a crash of the launcher.
    let out = Command::new(env!("CARGO_BIN_EXE_controlplane"))
        .args(["down", "--dir"])
        .arg(&dir)
        .output()
        .expect("controlplane down");
    assert!(
        out.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in state.processes.iter().chain(&restarted.processes) {
        assert!(
            !is_ours(p.pid, &p.program),
            "{} (pid {}) still runs",
            p.name,
            p.pid
        );
    }
    let killed: Vec<&str> = restarted
        .processes
        .iter()
        .filter(|p| p.restarts > 0)
        .map(|p| p.name.as_str())
        .collect();
    assert!(
        killed.len() >= 3,
        "the killed processes were restarted: {killed:?}"
    );
    assert!(
        cleanup::mounts_below(&dir).is_empty(),
        "mounts left: {:?}",
        cleanup::mounts_below(&dir)
    );
    assert_eq!(
        cleanup::remove_containers(&dir),
        0,
        "runc containers were left running"
    );
    if let Some(net) = node_network {
        let left: Vec<String> = std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", net.bridge)))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "network namespaces left: {left:?}");
        assert!(
            !Path::new("/sys/class/net").join(&net.bridge).exists(),
            "bridge {} left",
            net.bridge
        );
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        assert!(
            !routes.contains(&net.bridge),
            "routes via {} left:\n{routes}",
            net.bridge
        );
    }
    drop(cluster);
}

/// With the CNI plugins, every node agent must run in a network namespace of its own (not
/// the host's, not another node's); the cluster's node network, if so.
fn own_namespaces(state: &ClusterState) -> Option<controlplane::launcher::nodenet::NodeNetwork> {
    if !Path::new("/usr/lib/cni/static").exists() {
        eprintln!("no CNI static plugin: the node agents share the host's network namespace");
        return None;
    }
    let net = state
        .node_network
        .clone()
        .expect("a node network with the CNI plugins installed");
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    let mut seen = vec![ns("self")];
    for p in state
        .processes
        .iter()
        .filter(|p| p.name.starts_with("node-"))
    {
        assert!(p.netns.is_some(), "{} has no namespace recorded", p.name);
        let theirs = ns(&p.pid.to_string());
        assert!(
            !seen.contains(&theirs),
            "{} shares a network namespace ({theirs:?})",
            p.name
        );
        seen.push(theirs);
    }
    assert_eq!(seen.len(), 3, "two node agents and the host");
    Some(net)
}

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

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[test]
fn down_of_a_folder_without_a_cluster_is_harmless() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_controlplane"))
        .args(["down", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("controlplane down");
    assert!(out.status.success());
    let status = Command::new(env!("CARGO_BIN_EXE_controlplane"))
        .args(["status", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("controlplane status");
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("no running cluster there"));
}
