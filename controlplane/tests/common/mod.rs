//! Processes for the API server's black-box tests: API server replicas (the `controlplane`
//! binary), leader-elected components and kubectl, on top of [`controlplane::testing`]
//! (one store member, raftkv or real etcd; child processes killed and reaped when their
//! guard drops, so a failing test leaves nothing behind). Every wait is bounded.

#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use controlplane::testing::{free_port, kubectl_program, Flavor, Proc, StoreServer};

/// One API server replica.
pub struct ApiServer {
    pub kubeconfig: PathBuf,
    pub url: String,
    pub proc: Proc,
}

impl ApiServer {
    /// A replica whose kubeconfig holds the admin token of a token file shared by all
    /// replicas started in `dir` (unless `extra` brings its own `--token-auth-file`).
    pub fn start(name: &str, etcd: &str, dir: &Path, extra: &[&str]) -> ApiServer {
        let tokens = dir.join("admin-tokens.csv");
        if !tokens.exists() {
            std::fs::write(&tokens, "admin-token,admin,1,\"system:masters\"\n")
                .expect("writing the token file");
        }
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.contains(&"--token-auth-file") {
            args.extend(["--token-auth-file", tokens.to_str().expect("utf-8 path")]);
        }
        let extra = args.as_slice();
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_controlplane"));
        // HTTPS with a self-signed certificate the written kubeconfig trusts, as a real
        // cluster is reached: kubectl sends tokens over TLS only.
        cmd.args([
            "apiserver",
            "--etcd-servers",
            etcd,
            "--secure-port",
            &port.to_string(),
            "--cert-dir",
        ])
        .arg(dir.join(format!("{name}-certs")))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .args(extra)
        .env("RUST_LOG", "controlplane=debug");
        let proc = Proc::spawn(&mut cmd, &dir.join(format!("{name}.log")));
        let url = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(kubeconfig.exists() && std::net::TcpStream::connect(&url).is_ok()) {
            assert!(
                Instant::now() < deadline,
                "apiserver {name} did not start; log: {}",
                proc.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ApiServer {
            kubeconfig,
            url: format!("https://{url}"),
            proc,
        }
    }
}

/// kubectl against one replica, with its own discovery cache.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    cache: PathBuf,
    token: Option<String>,
}

impl Kubectl {
    pub fn new(server: &ApiServer, dir: &Path, name: &str) -> Kubectl {
        Kubectl {
            kubeconfig: server.kubeconfig.clone(),
            cache: dir.join(format!("cache-{name}")),
            token: None,
        }
    }

    /// kubectl with its own kubeconfig (e.g. a client-certificate user).
    pub fn with_kubeconfig(kubeconfig: PathBuf, dir: &Path, name: &str) -> Kubectl {
        Kubectl {
            kubeconfig,
            cache: dir.join(format!("cache-{name}")),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Kubectl {
        self.token = Some(token.into());
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_program());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=15s");
        if let Some(t) = &self.token {
            cmd.arg("--token").arg(t);
        }
        cmd.args(args);
        cmd
    }

    /// Runs kubectl (bounded to 30s), feeding `stdin`.
    pub fn run_with_input(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}; set KUBECTL", kubectl_program()));
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("writing stdin");
        }
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(_status) = child.try_wait().expect("wait") {
                return child.wait_with_output().expect("output");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "kubectl {args:?} timed out; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs kubectl and returns stdout; panics with stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with_input(args, None)
    }

    pub fn ok_with_input(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run_with_input(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_with_input(args, None)
    }

    pub fn fails_with_input(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run_with_input(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A long-running kubectl (e.g. `get -w`) whose stdout goes to a file.
    pub fn spawn(&self, args: &[&str], out: &Path) -> Proc {
        Proc::spawn(&mut self.command(args), out)
    }
}

/// Waits until `path` contains `needle` `times` times (or panics after `secs`).
pub fn wait_for_output(path: &Path, needle: &str, times: usize, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            let _ = f.read_to_string(&mut text);
        }
        if text.matches(needle).count() >= times {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not show {needle:?} {times} times within {secs}s:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 100 ms until it returns `Some` (or panics after `secs`).
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A leader-elected `controlplane <component>` (scheduler or controller-manager) with a
/// 2 s lease (renew deadline 1.5 s, retry 250 ms), logging to `<dir>/<component>-<id>.log`.
pub fn start_elected(
    component: &str,
    kubeconfig: &Path,
    dir: &Path,
    id: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_controlplane"));
    cmd.arg(component)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--leader-elect", "--identity", id])
        .args(["--leader-elect-lease-duration", "2s"])
        .args(["--leader-elect-renew-deadline", "1500ms"])
        .args(["--leader-elect-retry-period", "250ms"])
        .args(extra)
        .env("RUST_LOG", "controlplane=debug");
    Proc::spawn(&mut cmd, &dir.join(format!("{component}-{id}.log")))
}
