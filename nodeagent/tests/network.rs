//! Pod networking and the service proxy end to end, as root: two "hosts" are two network
//! namespaces linked to a test bridge on the host, each running a nodeagent
//! (`--network cni --proxy`) inside it; the store, the API server (bound to the bridge's
//! address), the scheduler and the controller manager run on the host. A Deployment of 3
//! busybox `httpd` pods sits behind a ClusterIP/NodePort Service and a ClientIP-affinity
//! Service; a client pod requests them in a loop and logs what answered, with the host's
//! uptime (pods share the host's clock) so the test can time failures.
//!
//! The harness (not the product) uses the `ip` binary to build the topology. Drop tears
//! everything down: agents killed, their runc containers deleted, the pods' and nodes'
//! network namespaces (with their bridges, veths and nftables tables) and the test bridge
//! removed.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    kubectl_program, sibling_binary, start_apiserver, teardown_agent, wait_for, Flavor, Proc,
    StoreServer,
};
use serde_json::Value;

const CLUSTER_IP: &str = "10.96.0.100";
const STICKY_IP: &str = "10.96.0.101";
const EMPTY_IP: &str = "10.96.0.102";
const NODE_PORT: u16 = 30080;

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host bridge, the node namespaces, and everything they hold.
struct Topology {
    bridge: String,
    /// `172.31.<subnet>.0/24`: .1 is the host, .2, .3 the nodes.
    subnet: u8,
    netns: Vec<String>,
}

impl Topology {
    fn new(nodes: usize) -> Topology {
        let pid = std::process::id();
        let subnet = (pid % 200 + 20) as u8;
        let t = Topology {
            bridge: format!("nab{}", pid % 1_000_000),
            subnet,
            netns: (0..nodes).map(|i| format!("na{pid}-n{i}")).collect(),
        };
        ip(&["link", "add", &t.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", t.host_ip()),
            "dev",
            &t.bridge,
        ]);
        ip(&["link", "set", &t.bridge, "up"]);
        for (i, ns) in t.netns.iter().enumerate() {
            let veth = format!("nav{}{i}", pid % 1_000_000);
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["link", "set", &veth, "master", &t.bridge, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", t.node_ip(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "route", "add", "default", "via", &t.host_ip()]);
            // Each node reaches the others' pods through them.
            for j in (0..nodes).filter(|j| *j != i) {
                ip(&["-n", ns, "route", "add", &pod_cidr(j), "via", &t.node_ip(j)]);
            }
        }
        t
    }
    fn host_ip(&self) -> String {
        format!("172.31.{}.1", self.subnet)
    }
    fn node_ip(&self, i: usize) -> String {
        format!("172.31.{}.{}", self.subnet, i + 2)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Node namespaces take their bridges, veths and nftables tables with them.
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn pod_cidr(i: usize) -> String {
    format!("10.244.{}.0/24", i + 1)
}

/// An agent inside a node namespace; on drop its containers and pod namespaces go too.
struct Agent {
    proc: Option<Proc>,
    node: String,
    root: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        teardown_agent(&self.root, &self.node);
        // Pod namespaces the agent did not get to delete.
        for e in std::fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let rec: Value = std::fs::read(e.path().join("network.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if let Some(ns) = rec["netns"].as_str().and_then(|p| Path::new(p).file_name()) {
                let _ = Command::new("ip").arg("netns").arg("del").arg(ns).output();
            }
        }
    }
}

/// Fields drop in order of declaration: agents first, then the control plane, the store,
/// then the topology.
struct Cluster {
    agents: Vec<Agent>,
    _controlplane: Vec<Proc>,
    _store: StoreServer,
    kubeconfig: PathBuf,
    topo: Topology,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        assert_eq!(unsafe { libc::geteuid() }, 0, "the network tests need root");
        let topo = Topology::new(2);
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let store = StoreServer::start(Flavor::Raftkv, d);
        // Bound to the bridge's address: the agents in the node namespaces reach it there.
        let (apiserver, kubeconfig) = start_apiserver(d, &store.endpoint, &topo.host_ip());
        let mut cp = vec![apiserver];
        let controlplane = sibling_binary("controlplane");
        for (cmd, log) in [
            ("scheduler", "scheduler.log"),
            ("controller-manager", "cm.log"),
        ] {
            cp.push(Proc::spawn(
                Command::new(&controlplane)
                    .arg(cmd)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig),
                &d.join(log),
            ));
        }
        let mut c = Cluster {
            agents: Vec::new(),
            _controlplane: cp,
            _store: store,
            kubeconfig,
            topo,
            dir,
        };
        wait_for(30, "the API server to answer", || {
            c.get(&["namespace", "default"])
        });
        for i in 0..c.topo.netns.len() {
            let node = format!("n{i}-{}", std::process::id());
            // The node's podCIDR, as node IPAM would set it.
            c.apply(&format!(
                r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{node}"}},
                    "spec":{{"podCIDR":"{0}","podCIDRs":["{0}"]}}}}"#,
                pod_cidr(i)
            ));
            let root = c.dir.path().join(format!("agent-{i}"));
            c.agents.push(Agent {
                proc: None,
                node,
                root,
            });
            c.start_agent(i);
        }
        for a in &c.agents {
            wait_for(60, "the node to be Ready", || {
                let n = c.get(&["node", &a.node])?;
                let ready = n["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                ready.then_some(())
            });
        }
        c
    }

    /// Starts (or restarts) agent `i` inside its node namespace.
    fn start_agent(&mut self, i: usize) {
        let a = &self.agents[i];
        let log = self.dir.path().join(format!("agent-{i}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.topo.netns[i]))
            .arg(env!("CARGO_BIN_EXE_nodeagent"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &a.node, "--node-ip", &self.topo.node_ip(i)])
            .args(["--port", "10250", "--network", "cni", "--proxy"])
            // 2 pods per node: the client and 3 web pods must spread over both.
            .args(["--max-pods", "2"])
            .arg("--root-dir")
            .arg(&a.root)
            .args(["--lease-renew-interval", "1s"])
            .env("RUST_LOG", "nodeagent=debug")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().expect("dup"))
            .stderr(log_file)
            .spawn()
            .expect("spawning the agent");
        self.agents[i].proc = Some(Proc { child, log });
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = Command::new(kubectl_program())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.unwrap_or("").as_bytes())
                .expect("stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    fn apply(&self, doc: &str) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(doc));
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn get(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The client's output, read from the agent's CRI log file (`<ts> <stream> <F|P>
    /// <line>`) of its first attempt: the pod runs on node 0.
    fn client_log(&self) -> String {
        let pods = self.agents[0].root.join("pods");
        let mut out = String::new();
        for e in std::fs::read_dir(pods).into_iter().flatten().flatten() {
            let log = e.path().join("containers/c/0/container.log");
            for l in std::fs::read_to_string(log).unwrap_or_default().lines() {
                if let Some(text) = l.splitn(4, ' ').nth(3) {
                    out += text;
                    out.push('\n');
                }
            }
        }
        out
    }

    fn diagnostics(&self) -> String {
        let mut s = String::new();
        for f in ["agent-0.log", "agent-1.log", "cm.log"] {
            let log = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s += &format!(
                "--- {f}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // NODEAGENT_E2E_KEEP=DIR keeps the logs there.
        if let Some(keep) = std::env::var_os("NODEAGENT_E2E_KEEP") {
            let _ = std::fs::create_dir_all(&keep);
            for e in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(e.path(), Path::new(&keep).join(e.file_name()));
                }
            }
        }
    }
}

/// The host's uptime in seconds, the clock the client pod stamps its lines with.
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/uptime")
}

/// One client request: `<uptime> OK <pod> <sticky pod>` or `<uptime> FAIL`.
#[derive(Debug, Clone)]
struct Line {
    at: f64,
    pod: Option<String>,
    sticky: Option<String>,
}

fn parse(log: &str) -> Vec<Line> {
    log.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let at = f.next()?.parse().ok()?;
            let ok = f.next()? == "OK";
            Some(Line {
                at,
                pod: ok.then(|| f.next().map(String::from)).flatten(),
                sticky: f.next().map(String::from),
            })
        })
        .collect()
}

/// `GET /` over plain HTTP/1.0; the body.
fn http_get(addr: &str, port: u16) -> Option<String> {
    let sock = (addr.parse::<std::net::IpAddr>().ok()?, port).into();
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let body = buf.split("\r\n\r\n").nth(1)?.trim().to_string();
    (!body.is_empty()).then_some(body)
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: busybox
        command: [sh, -c, "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: CLUSTER_IP
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: NODE_PORT}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  clusterIP: STICKY_IP
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: EMPTY_IP
  selector: {app: nothing}
  ports: [{port: 80}]
"#;

fn client_pod(node: &str) -> String {
    let script = format!(
        "while true; do t=$(cut -d' ' -f1 /proc/uptime); \
         a=$(timeout 2 wget -q -O- http://{CLUSTER_IP}/ 2>/dev/null) && \
         b=$(timeout 2 wget -q -O- http://{STICKY_IP}/ 2>/dev/null) && \
         echo \"$t OK $a $b\" || echo \"$t FAIL\"; sleep 0.05; done"
    );
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script]}],
        },
    })
    .to_string()
}

#[test]
fn service_spreads_converges_and_nodeport() {
    let mut c = Cluster::start();
    let t0 = Instant::now();
    c.apply(&client_pod(&c.agents[0].node));
    c.apply(
        &WEB.replace("STICKY_IP", STICKY_IP)
            .replace("EMPTY_IP", EMPTY_IP)
            .replace("CLUSTER_IP", CLUSTER_IP)
            .replace("NODE_PORT", &NODE_PORT.to_string()),
    );
    // All three web pods answer through the ClusterIP.
    let pods: BTreeMap<String, String> =
        wait_for(120, "3 ready web pods behind the service", || {
            let list = c.get(&["pods", "-l", "app=web"])?;
            let pods: BTreeMap<String, String> = list["items"]
                .as_array()?
                .iter()
                .filter(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .map(|p| {
                    (
                        p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let log = c.client_log();
            if std::env::var_os("NODEAGENT_E2E_DEBUG").is_some() {
                eprintln!(
                    "pods {pods:?}\nclient log tail: {:?}",
                    log.lines().rev().take(3).collect::<Vec<_>>()
                );
            }
            let seen = parse(&log);
            let all = pods.len() == 3
                && pods
                    .keys()
                    .all(|p| seen.iter().any(|l| l.pod.as_deref() == Some(p.as_str())));
            all.then_some(pods)
        });
    eprintln!(
        "web pods ready and answering after {:?}: {pods:?}",
        t0.elapsed()
    );
    // Pod IPs come from the nodes' podCIDRs; the pods spread over both nodes (2 pods max
    // per node and the client on node 0), so some requests cross nodes.
    for (name, node) in &pods {
        let p = c.get(&["pod", name]).expect("pod");
        let i = c.agents.iter().position(|a| &a.node == node).expect("node");
        let ip = p["status"]["podIP"].as_str().unwrap_or("");
        assert!(
            ip.starts_with(&format!("10.244.{}.", i + 1)),
            "{name} on {node}: {ip}"
        );
    }
    assert!(
        pods.values().any(|n| n == &c.agents[1].node),
        "no web pod on the client's other node: {pods:?}"
    );

    // 300 requests from now on.
    let start = parse(&c.client_log()).len();
    let lines = wait_for(120, "300 more requests", || {
        let l = parse(&c.client_log());
        (l.len() >= start + 300).then(|| l[start..start + 300].to_vec())
    });
    let failed = lines.iter().filter(|l| l.pod.is_none()).count();
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &lines {
        if let Some(p) = &l.pod {
            *spread.entry(p.as_str()).or_default() += 1;
        }
    }
    let sticky: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.sticky.as_deref()).collect();
    eprintln!(
        "300 requests: spread {spread:?}, failed {failed}, sticky service answered by {sticky:?}"
    );
    assert_eq!(failed, 0, "{}", c.diagnostics());
    assert_eq!(spread.len(), 3, "{spread:?}");
    for (pod, n) in &spread {
        assert!(*n >= 45, "{pod} answered {n} of 300 (< 15%): {spread:?}");
    }
    assert_eq!(sticky.len(), 1, "ClientIP affinity: {sticky:?}");

    // NodePort on both nodes' IPs, from the host.
    for i in 0..2 {
        let node_ip = c.topo.node_ip(i);
        for _ in 0..10 {
            let body = http_get(&node_ip, NODE_PORT);
            assert!(
                body.as_ref().is_some_and(|b| pods.contains_key(b)),
                "NodePort {node_ip}:{NODE_PORT} answered {body:?}"
            );
        }
    }

    // A Service without endpoints refuses connections at once (ICMP port unreachable).
    // The host routes Service addresses to node 0; without the reject rule the packet
    // would loop between node and host until its TTL runs out.
    ip(&["route", "add", "10.96.0.0/12", "via", &c.topo.node_ip(0)]);
    let sock = (EMPTY_IP.parse::<std::net::IpAddr>().unwrap(), 80).into();
    // (The first SYN's ICMP error is sometimes lost; the retransmit 1 s later is refused.)
    let refused = wait_for(
        10,
        "a refused connection to a service without endpoints",
        || {
            let err = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
                .expect_err("a service without endpoints answered");
            (err.kind() == std::io::ErrorKind::ConnectionRefused).then_some(err)
        },
    );
    eprintln!("service without endpoints: {refused}");
    // ... and the same route reaches a Service with endpoints.
    assert!(http_get(CLUSTER_IP, 80).is_some_and(|b| pods.contains_key(&b)));

    // Delete a pod on the other node: requests keep working after a short convergence.
    let victim = pods
        .iter()
        .find(|(_, n)| *n == &c.agents[1].node)
        .map(|(p, _)| p.clone())
        .expect("a pod on node 1");
    let victim_pod = c.get(&["pod", &victim]).expect("victim");
    let victim_uid = victim_pod["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let victim_ip = victim_pod["status"]["podIP"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let victim_netns = PathBuf::from(format!("/var/run/netns/na-{victim_uid}"));
    // host-local's lease file of the address.
    let victim_lease = c.agents[1]
        .root
        .join("cni/networks/nodeagent")
        .join(&victim_ip);
    assert!(victim_netns.exists() && victim_lease.exists());
    let deleted_at = uptime();
    let out = c.kubectl(&["delete", "pod", &victim, "--wait=false"], None);
    assert!(out.status.success());
    let after = wait_for(60, "10 s of requests after the deletion", || {
        let l: Vec<Line> = parse(&c.client_log())
            .into_iter()
            .filter(|l| l.at >= deleted_at)
            .collect();
        l.last()
            .is_some_and(|l| l.at > deleted_at + 10.0)
            .then_some(l)
    });
    let fails: Vec<f64> = after
        .iter()
        .filter(|l| l.pod.is_none())
        .map(|l| l.at)
        .collect();
    let convergence = fails.last().map(|t| t - deleted_at).unwrap_or(0.0);
    let late_victim = after
        .iter()
        .filter(|l| l.at > deleted_at + 5.0 && l.pod.as_deref() == Some(victim.as_str()))
        .count();
    let last_victim = after
        .iter()
        .filter(|l| l.pod.as_deref() == Some(victim.as_str()))
        .map(|l| l.at - deleted_at)
        .fold(0.0, f64::max);
    eprintln!(
        "after deleting {victim}: {} requests, {} failed, last failure {convergence:.2}s and \
         last answer from it {last_victim:.2}s after the delete",
        after.len(),
        fails.len()
    );
    assert!(
        convergence < 5.0,
        "failures until {convergence:.2}s: {}",
        c.diagnostics()
    );
    assert_eq!(late_victim, 0, "the deleted pod still answers after 5 s");
    assert!(after.iter().rev().take(20).all(|l| l.pod.is_some()));
    // CNI DEL released the address and the namespace is gone.
    wait_for(30, "the deleted pod's network to be torn down", || {
        (!victim_netns.exists() && !victim_lease.exists()).then_some(())
    });

    // A restarted agent re-adopts the pod networks: same IPs, no second CNI ADD, and
    // requests keep flowing.
    let client_ip = |c: &Cluster| {
        c.get(&["pod", "client"]).expect("client")["status"]["podIP"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let ip_before = client_ip(&c);
    let adds = |c: &Cluster| {
        std::fs::read_to_string(c.dir.path().join("agent-0.log"))
            .unwrap_or_default()
            .matches("pod network added")
            .count()
    };
    let adds_before = adds(&c);
    if let Some(mut p) = c.agents[0].proc.take() {
        p.kill();
    }
    let restarted_at = uptime();
    c.start_agent(0);
    wait_for(60, "the restarted agent to sync", || {
        let log = std::fs::read_to_string(c.dir.path().join("agent-0.log")).ok()?;
        (log.matches("node agent running").count() == 2).then_some(())
    });
    let after_restart = wait_for(60, "10 s of requests after the restart", || {
        let l: Vec<Line> = parse(&c.client_log())
            .into_iter()
            .filter(|l| l.at >= restarted_at)
            .collect();
        l.last()
            .is_some_and(|l| l.at > restarted_at + 10.0)
            .then_some(l)
    });
    assert_eq!(client_ip(&c), ip_before);
    assert_eq!(adds(&c), adds_before, "a second CNI ADD after the restart");
    let failed = after_restart.iter().filter(|l| l.pod.is_none()).count();
    eprintln!(
        "agent restart: {} requests, {failed} failed",
        after_restart.len()
    );
    assert_eq!(failed, 0, "{}", c.diagnostics());
}
