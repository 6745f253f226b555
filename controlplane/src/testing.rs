//! The process harness shared by the black-box tests of this crate and of `nodeagent`:
//! child processes killed and reaped on drop, free loopback ports, the workspace's built
//! binaries, kubectl 1.20, and one store member (raftkv or real etcd 3.4) started on free
//! ports and waited for. The binaries never use it; it is in the library so that both
//! crates' tests share one copy. Every wait is bounded.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The store flavours the same tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Raftkv,
    Etcd,
}

/// `n` distinct free ports on 127.0.0.1. They are released before they are returned, so
/// another process may take one before its user binds it (see [`StoreServer::start`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A binary of the workspace, `target/<profile>/<name>` beside the test executable's
/// `target/<profile>/deps/`: `cargo test --workspace` builds every member's binaries.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {name}` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout and stderr to the file `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Proc {
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
            Flavor::Raftkv => sibling_binary("raftkv"),
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
        let proc = Proc::spawn(&mut cmd, log);
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
