//! Processes for the API server's black-box tests: one store member (raftkv or real etcd),
//! API server replicas (the `controlplane` binary) and kubectl. Every process is killed
//! and reaped when its guard drops, so a failing test leaves nothing behind; every wait
//! is bounded.
//!
//! The raftkv binary is found next to the test executable's directory
//! (`target/debug/raftkv`), as `bench` finds it: `cargo test --workspace` builds it
//! because raftkv is a workspace member; run `cargo build -p raftkv` first when testing
//! this crate alone. kubectl is `$KUBECTL`, else `kubectl` on PATH (the tests are written
//! for 1.20, Debian's kubernetes-client; newer kubectl works too).

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The store flavours the same tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Raftkv,
    Etcd,
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn raftkv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug/raftkv
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("raftkv");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p raftkv` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).expect("creating a log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("dup log"))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// One store member.
pub struct StoreServer {
    pub endpoint: String,
    pub proc: Proc,
}

impl StoreServer {
    /// Starts the store and waits until it answers. Its ports are picked free but released
    /// before the store binds them, so another process can take one in between; a store that
    /// exits at once is started again on other ports.
    pub fn start(flavor: Flavor, dir: &Path) -> StoreServer {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            // Each attempt has its own data dir: one that got as far as writing its
            // membership would hold the earlier ports.
            let (log, data) = match attempt {
                1 => ("store.log".to_string(), "store-data".to_string()),
                n => (format!("store.{n}.log"), format!("store-data.{n}")),
            };
            match Self::try_start(flavor, &dir.join(data), &dir.join(log)) {
                Ok(server) => return server,
                Err(why) if attempt < ATTEMPTS => eprintln!("store attempt {attempt}: {why}"),
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn try_start(flavor: Flavor, data: &Path, log: &Path) -> Result<StoreServer, String> {
        let ports = free_ports(2);
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let program = match flavor {
            Flavor::Raftkv => raftkv_binary(),
            Flavor::Etcd => PathBuf::from("/usr/bin/etcd"),
        };
        let mut cmd = Command::new(program);
        cmd.args(["--name", "m1", "--data-dir"])
            .arg(data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("m1={peer}")]);
        let proc = spawn_logged(&mut cmd, log);
        let mut server = StoreServer {
            endpoint: client,
            proc,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = rt.block_on(async {
                let mut c = etcd_client::Client::connect([server.endpoint.as_str()], None)
                    .await
                    .ok()?;
                c.get("probe", None).await.ok()
            });
            if ok.is_some() {
                return Ok(server);
            }
            let exited = server.proc.child.try_wait().expect("wait").is_some();
            if exited || Instant::now() >= deadline {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "store {} within 30s; log {}:\n{}",
                    if exited { "exited" } else { "did not answer" },
                    log.display(),
                    tail.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Compacts the store's history up to its current revision; returns that revision.
    pub fn compact(&self) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([self.endpoint.as_str()], None)
                .await
                .expect("connect");
            let rev = c
                .get("probe", None)
                .await
                .expect("get")
                .header()
                .expect("header")
                .revision();
            c.compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("compact");
            rev
        })
    }
}

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
        let port = free_ports(1)[0];
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
        let proc = spawn_logged(&mut cmd, &dir.join(format!("{name}.log")));
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

/// Where `scripts/setup.sh` unpacks Debian's kubernetes-client when another kubectl owns
/// `/usr/bin/kubectl`.
const UNPACKED_KUBECTL: &str = "/opt/kubectl-1.20/usr/bin/kubectl";

/// kubectl 1.20: `$KUBECTL`, else the unpacked package, else `kubectl` on PATH. Panics if
/// it is another version: newer kubectl sends protobuf bodies, which this server refuses.
pub fn kubectl_program() -> String {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let program = std::env::var("KUBECTL").ok().unwrap_or_else(|| {
                if Path::new(UNPACKED_KUBECTL).exists() {
                    UNPACKED_KUBECTL.to_string()
                } else {
                    "kubectl".to_string()
                }
            });
            let out = Command::new(&program)
                .args(["version", "--client"])
                .output()
                .unwrap_or_else(|e| panic!("running {program}: {e}; install kubectl 1.20 (scripts/setup.sh) or set KUBECTL"));
            let version = String::from_utf8_lossy(&out.stdout);
            assert!(version.contains("Minor:\"20\""), "{program} is not kubectl 1.20 ({version}); run scripts/setup.sh or set KUBECTL");
            program
        })
        .clone()
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
        spawn_logged(&mut self.command(args), out)
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
    spawn_logged(&mut cmd, &dir.join(format!("{component}-{id}.log")))
}
