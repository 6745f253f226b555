//! Shared by the integration tests: spawning a real `raftkv` process on a free loopback port,
//! killing it (SIGKILL, as a crash), and restarting it on the same data directory.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound then released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A raftkv member running as a child process; killed on drop.
pub struct Raftkv {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
}

impl Raftkv {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut me = Self {
            child: None,
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        me.spawn();
        me
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("http://127.0.0.1:{}", self.port);
        let child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
            .args(["--name", "test", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn raftkv");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the HTTP health endpoint answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("poll child"))
            {
                panic!("raftkv exited during start-up: {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("raftkv did not start listening within 20 s");
    }

    /// SIGKILL: no shutdown code runs, as in a power loss of the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill raftkv");
            c.wait().expect("reap raftkv");
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect to raftkv")
    }
}

impl Drop for Raftkv {
    fn drop(&mut self) {
        self.kill();
    }
}
