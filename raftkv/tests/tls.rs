//! TLS with a CA made at test time (rcgen): etcd's client flags (`--cert-file --key-file
//! --trusted-ca-file --client-cert-auth`, https client URLs) on real etcd 3.4 and on raftkv,
//! driven by `etcdctl --cacert --cert --key` and compared; and a 3-member raftkv cluster whose
//! members talk to each other over https with `--peer-client-cert-auth`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_ports, Flavor};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const STARTUP: Duration = Duration::from_secs(40);

/// PEM files of one certificate and its key.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

/// A CA, a certificate for 127.0.0.1 usable as server and client (`CN=root`), a client one
/// for `CN=alice`, and one from another CA that the servers must refuse.
struct Pki {
    ca: PathBuf,
    node: Pem,
    alice: Pem,
    stranger: Pem,
}

fn issue(dir: &Path, name: &str, cn: &str, issuer: &CertifiedIssuer<'_, KeyPair>) -> Pem {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("certificate params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signing");
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pem.cert, cert.pem()).expect("writing cert");
    std::fs::write(&pem.key, key.serialize_pem()).expect("writing key");
    pem
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn pki(dir: &Path) -> Pki {
    let (ours, theirs) = (ca("raftkv test CA"), ca("some other CA"));
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ours.pem()).expect("writing CA");
    Pki {
        ca: ca_path,
        node: issue(dir, "node", "root", &ours),
        alice: issue(dir, "alice", "alice", &ours),
        stranger: issue(dir, "stranger", "root", &theirs),
    }
}

/// Server processes, killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(flavor: Flavor, dir: &Path, name: &str, args: &[String]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    Command::new(flavor.program())
        .arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(dir.join(format!("{name}.etcd")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("spawning the server")
}

/// Runs etcdctl against `endpoint` with `tls` flags; (exit code, stdout, stderr).
fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> (i32, String, String) {
    let out = Command::new("timeout")
        .args(["20", "etcdctl", &format!("--endpoints={endpoint}")])
        .args(tls)
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .output()
        .expect("running etcdctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn client_flags(pki: &Pki, pem: &Pem) -> Vec<String> {
    vec![
        format!("--cacert={}", pki.ca.display()),
        format!("--cert={}", pem.cert.display()),
        format!("--key={}", pem.key.display()),
    ]
}

fn wait_healthy(endpoint: &str, tls: &[String], logs: &Path) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let (code, out, err) = etcdctl(endpoint, tls, &["endpoint", "health"]);
        if code == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not healthy within {STARTUP:?}: {out}{err} (logs in {})",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What one side answers to a fixed script over TLS.
fn script(endpoint: &str, pki: &Pki) -> Vec<String> {
    let good = client_flags(pki, &pki.node);
    let stranger = client_flags(pki, &pki.stranger);
    let no_cert = vec![format!("--cacert={}", pki.ca.display())];
    let mut lines = Vec::new();
    let mut run = |tls: &[String], args: &[&str]| {
        let (code, out, err) = etcdctl(endpoint, tls, args);
        // Handshake failures are worded by the client library and the TLS stack; only
        // success vs failure is compared for them.
        // Error texts are compared only once past the handshake (stdout is always).
        let err = if tls.is_empty() || tls.len() == 1 || tls == stranger.as_slice() {
            String::new()
        } else {
            err.lines()
                .filter(|l| l.starts_with("Error:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        lines.push(format!("{args:?}: exit {} {out}{err}", code == 0));
    };
    run(&good, &["put", "/tls/a", "1"]);
    run(&good, &["get", "/tls/a"]);
    run(&good, &["get", "/tls/", "--prefix", "--print-value-only"]);
    run(&no_cert, &["get", "/tls/a"]);
    run(&stranger, &["get", "/tls/a"]);
    run(&[], &["get", "/tls/a"]);
    // With auth on, a request without a token runs as its certificate's CN.
    let alice = client_flags(pki, &pki.alice);
    run(&good, &["user", "add", "root", "--new-user-password=pw"]);
    run(&good, &["user", "grant-role", "root", "root"]);
    run(&good, &["auth", "enable"]);
    run(&good, &["put", "/tls/b", "2"]);
    run(&alice, &["get", "/tls/b"]);
    run(&alice, &["--user=root:pw", "get", "/tls/b"]);
    run(&good, &["user", "list"]);
    run(&good, &["auth", "disable"]);
    run(&alice, &["get", "/tls/b"]);
    lines
}

#[test]
fn etcdctl_over_tls_matches_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let mut outputs = Vec::new();
    for flavor in [Flavor::Etcd, Flavor::Raftkv] {
        let ports = free_ports(2);
        let client = format!("https://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let name = format!("{flavor:?}").to_lowercase();
        let args: Vec<String> = [
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("{name}={peer}"),
            "--cert-file",
            &pki.node.cert.to_string_lossy(),
            "--key-file",
            &pki.node.key.to_string_lossy(),
            "--trusted-ca-file",
            &pki.ca.to_string_lossy(),
            "--client-cert-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let _procs = Procs(vec![spawn(flavor, dir.path(), &name, &args)]);
        wait_healthy(&client, &client_flags(&pki, &pki.node), dir.path());
        outputs.push(script(&client, &pki));
    }
    let (etcd, raftkv) = (&outputs[0], &outputs[1]);
    for (e, r) in etcd.iter().zip(raftkv) {
        println!("etcd:   {e}\nraftkv: {r}");
    }
    assert_eq!(etcd, raftkv, "raftkv over TLS answers as etcd does");
    assert!(etcd[1].contains("exit true /tls/a\n1"), "{}", etcd[1]);
    assert!(etcd[3].contains("exit false"), "no client cert is refused");
}

#[test]
fn three_members_with_peer_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let ports = free_ports(6);
    let peer = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
    let client = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
    let cluster = (0..3)
        .map(|i| format!("m{i}={}", peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    let procs = Procs(
        (0..3)
            .map(|i| {
                let args: Vec<String> = [
                    "--listen-client-urls",
                    &client(i),
                    "--advertise-client-urls",
                    &client(i),
                    "--listen-peer-urls",
                    &peer(i),
                    "--initial-advertise-peer-urls",
                    &peer(i),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--peer-cert-file",
                    &pki.node.cert.to_string_lossy(),
                    "--peer-key-file",
                    &pki.node.key.to_string_lossy(),
                    "--peer-trusted-ca-file",
                    &pki.ca.to_string_lossy(),
                    "--peer-client-cert-auth",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                spawn(Flavor::Raftkv, dir.path(), &format!("m{i}"), &args)
            })
            .collect(),
    );
    for i in 0..3 {
        wait_healthy(&client(i), &[], dir.path());
    }
    // A write on one member is read from the others (forwarded and replicated over TLS).
    let (code, out, err) = etcdctl(&client(0), &[], &["put", "/peer-tls/k", "v"]);
    assert_eq!(code, 0, "{out}{err}");
    for i in 1..3 {
        let (code, out, err) = etcdctl(&client(i), &[], &["get", "/peer-tls/k"]);
        assert_eq!(
            (code, out.as_str()),
            (0, "/peer-tls/k\nv\n"),
            "member {i}: {err}"
        );
    }
    let (code, out, _) = etcdctl(&client(2), &[], &["member", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("https://127.0.0.1").count(), 3, "{out}");
    // The peer port completes a handshake only with a certificate from the peer CA (any
    // HTTP answer means the handshake went through).
    let handshake = |pem: Option<&Pem>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "--max-time", "5", "--cacert"])
            .arg(&pki.ca);
        if let Some(pem) = pem {
            cmd.arg("--cert").arg(&pem.cert).arg("--key").arg(&pem.key);
        }
        cmd.arg(peer(0)).status().expect("running curl").success()
    };
    assert!(
        handshake(Some(&pki.node)),
        "the peer CA's certificate is accepted"
    );
    assert!(
        !handshake(Some(&pki.stranger)),
        "a foreign certificate is refused"
    );
    assert!(!handshake(None), "no certificate is refused");
    drop(procs);
}
