//! A one-node cluster for the node agent's end-to-end tests: a store (controlplane's
//! [`StoreServer`]: the raftkv binary beside the test executable's directory, or real etcd
//! with `NODEAGENT_E2E_STORE=etcd`), the API server and the scheduler (the `controlplane`
//! binary beside it; `cargo test --workspace` builds both, or `cargo build -p raftkv -p
//! controlplane` first), one `nodeagent` and kubectl 1.20.
//!
//! Everything is torn down on drop: processes killed and reaped, then every runc container
//! under the agent's `--root` killed and deleted and the agent's cgroups removed, so a
//! failing test leaves no container, mount, cgroup or process behind. Every wait is bounded.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use controlplane::testing::{
    free_port, kubectl_program, sibling_binary, Flavor, Proc, StoreServer,
};

use serde_json::Value;

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An API server on the store at `store_url`, listening on `bind` (the address the nodes
/// reach it at) with a self-signed certificate, whose kubeconfig (returned) holds an admin
/// token; returns once it accepts connections. Its files go in `dir`.
pub fn start_apiserver(dir: &Path, store_url: &str, bind: &str) -> (Proc, PathBuf) {
    std::fs::write(
        dir.join("tokens.csv"),
        "admin-token,admin,1,\"system:masters\"\n",
    )
    .expect("writing the token file");
    let port = free_port();
    let kubeconfig = dir.join("kubeconfig");
    let apiserver = Proc::spawn(
        Command::new(sibling_binary("controlplane"))
            .args(["apiserver", "--etcd-servers", store_url])
            .args(["--bind-address", bind])
            .args(["--secure-port", &port.to_string(), "--cert-dir"])
            .arg(dir.join("certs"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--token-auth-file")
            .arg(dir.join("tokens.csv")),
        &dir.join("apiserver.log"),
    );
    wait_for(30, "the API server", || {
        (kubeconfig.exists() && std::net::TcpStream::connect((bind, port)).is_ok()).then_some(())
    });
    (apiserver, kubeconfig)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub node: String,
    pub agent_root: PathBuf,
    pub kubeconfig: PathBuf,
    agent_port: u16,
    pub agent: Option<Proc>,
    scheduler: Proc,
    apiserver: Proc,
    store: StoreServer,
}

impl Cluster {
    pub fn start(name: &str) -> Cluster {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the node agent's end-to-end tests run containers and need root"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let flavor = match std::env::var("NODEAGENT_E2E_STORE").as_deref() {
            Ok("etcd") => Flavor::Etcd,
            _ => Flavor::Raftkv,
        };
        let store = StoreServer::start(flavor, d);
        let client_url = store.endpoint.clone();
        let (apiserver, kubeconfig) = start_apiserver(d, &client_url, "127.0.0.1");
        let controlplane = sibling_binary("controlplane");
        let scheduler = Proc::spawn(
            Command::new(&controlplane)
                .arg("scheduler")
                .arg("--kubeconfig")
                .arg(&kubeconfig),
            &d.join("scheduler.log"),
        );
        let node = format!("{name}-{}", std::process::id());
        let mut c = Cluster {
            agent_root: d.join("agent"),
            node,
            kubeconfig,
            agent_port: free_port(),
            agent: None,
            scheduler,
            apiserver,
            store,
            dir,
        };
        wait_for(30, "the API server to answer", || {
            c.get(&["namespace", "default"])
        });
        c.start_agent();
        c
    }

    pub fn start_agent(&mut self) {
        self.agent = Some(spawn_agent(
            self.dir.path(),
            &self.kubeconfig,
            &self.node,
            self.agent_port,
            &self.agent_root,
        ));
    }

    /// Another agent (its own node name, port, state dir and runc root), torn down on drop.
    pub fn extra_agent(&self, name: &str) -> ExtraAgent {
        let node = format!("{name}-{}", std::process::id());
        // Its own directory: its runc state must outlive the cluster's until its drop.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("agent");
        let port = free_port();
        let proc = spawn_agent(dir.path(), &self.kubeconfig, &node, port, &root);
        ExtraAgent {
            node,
            root,
            proc: Some(proc),
            _dir: dir,
        }
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let program = kubectl_program();
        let mut child = Command::new(&program)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {program} (scripts/setup.sh installs it): {e}"));
        {
            use std::io::Write;
            let mut input = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).expect("stdin");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if child.try_wait().expect("wait").is_some() {
                return child.wait_with_output().expect("output");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kubectl {args:?} timed out");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get -o json`, or `None` if it fails (e.g. not found).
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.get(&["pod", name])
    }

    /// The ids of the runc containers of this agent (`runc --root <root>/runc list`).
    pub fn runc_ids(&self) -> Vec<String> {
        runc_ids(&self.agent_root)
    }

    /// The runc containers that are running.
    pub fn running_ids(&self) -> Vec<String> {
        running_ids(&self.agent_root)
    }

    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| std::fs::read_to_string(&a.log).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        teardown_agent(&self.agent_root, &self.node);
        if std::env::var_os("NODEAGENT_E2E_KEEP").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("keeping {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

fn spawn_agent(dir: &Path, kubeconfig: &Path, node: &str, port: u16, root: &Path) -> Proc {
    let log = dir.join(format!(
        "agent-{node}-{}.log",
        std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeagent"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", node, "--port", &port.to_string()])
        .arg("--root-dir")
        .arg(root)
        // These tests are about containers, not networks (tests/network.rs is): keep pods
        // on the host network even if node IPAM gives the node a podCIDR.
        .args(["--network", "host"])
        .args([
            "--lease-renew-interval",
            "1s",
            "--node-status-update-frequency",
            "2s",
        ])
        .env("RUST_LOG", "nodeagent=debug");
    Proc::spawn(&mut cmd, &log)
}

/// The runc containers under an agent's state dir.
pub fn runc_ids(agent_root: &Path) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(agent_root.join("runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .filter(|l| !l.is_empty())
        .collect();
    ids.sort();
    ids
}

/// Those of them that are running.
pub fn running_ids(agent_root: &Path) -> Vec<String> {
    runc_ids(agent_root)
        .into_iter()
        .filter(|id| {
            Command::new("runc")
                .arg("--root")
                .arg(agent_root.join("runc"))
                .args(["state", id])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"running\""))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills and deletes every runc container of an agent and removes its cgroups.
pub fn teardown_agent(agent_root: &Path, node: &str) {
    let root = agent_root.join("runc");
    for id in runc_ids(agent_root) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["kill", "--all", &id, "KILL"])
            .output();
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &id])
            .output();
    }
    // runc removes each container's cgroup; the agent's parent cgroup is left.
    let parent = format!("nodeagent-{node}");
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for hierarchy in rd.flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join(&parent));
        }
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&parent));
}

/// A second (third...) agent of a cluster.
pub struct ExtraAgent {
    pub node: String,
    pub root: PathBuf,
    pub proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

impl Drop for ExtraAgent {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        teardown_agent(&self.root, &self.node);
    }
}
