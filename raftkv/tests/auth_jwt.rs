//! JWT auth tokens (`--auth-token jwt,...`) end to end, with RSA keys made by the `openssl`
//! CLI for each run:
//!
//! - a 3-member raftkv cluster, the third member given only the public key: a token
//!   issued by one member works on the others, the verify-only member refuses to issue
//!   tokens with etcd's error, a token goes stale with the next auth change and expires with
//!   its TTL, and etcdctl 3.4 (`--user`) works against it;
//! - the same script against real etcd 3.4 and raftkv started with the same flags and keys,
//!   every answer rendered and compared, including tokens forged with the key (expired, of
//!   an old revision, of an unknown user) and tampered ones, and each side accepting the
//!   tokens the other signed;
//! - flags both refuse to start with.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{render, with_token, Cluster, Flavor, Server, Timing};
use proto::authpb::{permission, Permission};
use proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthDisableRequest, AuthEnableRequest,
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use tonic::transport::Channel;

const STARTUP: Duration = Duration::from_secs(30);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// An RSA key pair in PEM files, made by `openssl`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        for args in [
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa.key",
            ][..],
            &["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"],
        ] {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("running the openssl CLI (it makes the test keys)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        Keys { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `--auth-token` flag: RS256 with both keys, or only the public one.
    fn flag(&self, private: bool, ttl: &str) -> Vec<String> {
        let mut flag = format!(
            "jwt,pub-key={},sign-method=RS256,ttl={ttl}",
            self.path("rsa.pub").display()
        );
        if private {
            flag += &format!(",priv-key={}", self.path("rsa.key").display());
        }
        vec!["--auth-token".into(), flag]
    }

    /// A token signed with the private key, as etcd signs them, with any claims.
    fn forge(&self, username: &str, revision: u64, exp: i64) -> String {
        let pem = std::fs::read_to_string(self.path("rsa.key")).expect("rsa.key");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("PEM body");
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("PKCS #8 RSA key");
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"exp":{exp},"revision":{revision},"username":"{username}"}}"#
            ))
        );
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .expect("signing");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The `revision` claim of a token.
fn revision_of(token: &str) -> u64 {
    let claims = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url"))
            .expect("JSON claims");
    claims["revision"].as_u64().expect("numeric revision")
}

/// The token with its signature's first character changed.
fn tampered(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').expect("a JWT");
    let first = if sig.starts_with('A') { "B" } else { "A" };
    format!("{signed}.{first}{}", &sig[1..])
}

/// gRPC clients of one member.
#[derive(Clone)]
struct Conn {
    auth: AuthClient<Channel>,
    kv: KvClient<Channel>,
}

async fn conn(endpoint: &str) -> Conn {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .timeout(RPC_TIMEOUT)
        .connect()
        .await
        .expect("connecting");
    Conn {
        auth: AuthClient::new(channel.clone()),
        kv: KvClient::new(channel),
    }
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) {
    r.map(|_| ()).expect("setup step");
}

impl Conn {
    async fn authenticate(&mut self, name: &str, password: &str) -> (String, Option<String>) {
        let r = self
            .auth
            .authenticate(AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await;
        let token = r.as_ref().ok().map(|t| t.get_ref().token.clone());
        (render(r, |_| "token".into()), token)
    }

    async fn get(&mut self, key: &str, token: Option<&str>) -> String {
        let req = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        render(self.kv.range(with_token(req, token)).await, |r| {
            format!("count={}", r.count)
        })
    }

    async fn put(&mut self, key: &str, token: Option<&str>) -> String {
        let req = PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        render(self.kv.put(with_token(req, token)).await, |_| String::new())
    }

    async fn grant_read(&mut self, key: &str, token: Option<&str>) -> String {
        let req = AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission {
                perm_type: permission::Type::Read as i32,
                key: key.into(),
                range_end: Vec::new(),
            }),
        };
        let r = self
            .auth
            .role_grant_permission(with_token(req, token))
            .await;
        render(r, |_| String::new())
    }

    /// root (root role) and u (role r: read k), k = v, auth enabled.
    async fn setup(&mut self) {
        assert_eq!(self.put("k", None).await, "ok ");
        for (name, pw) in [("root", "rootpw"), ("u", "pw")] {
            ok(self
                .auth
                .user_add(AuthUserAddRequest {
                    name: name.into(),
                    password: pw.into(),
                    options: None,
                })
                .await);
        }
        ok(self
            .auth
            .role_add(AuthRoleAddRequest { name: "r".into() })
            .await);
        assert_eq!(self.grant_read("k", None).await, "ok ");
        for (user, role) in [("root", "root"), ("u", "r")] {
            ok(self
                .auth
                .user_grant_role(AuthUserGrantRoleRequest {
                    user: user.into(),
                    role: role.into(),
                })
                .await);
        }
        ok(self.auth.auth_enable(AuthEnableRequest {}).await);
    }
}

/// Runs etcdctl 3.4 (bounded), returning `ok <stdout>` or `err <stderr's last line>`.
async fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("/usr/bin/etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout",
            "5s",
            "--command-timeout",
            "10s",
        ])
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("etcdctl finished in time")
        .expect("running etcdctl");
    if out.status.success() {
        format!("ok {}", String::from_utf8_lossy(&out.stdout).trim())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        format!("err {}", err.trim().lines().last().unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_work_on_every_member() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // n3 verifies tokens but cannot sign them. A short TTL, so the test sees one expire
    // (long enough for the steps before that on a loaded machine).
    let mut cluster =
        Cluster::spawn_with_args(Flavor::Raftkv, 3, dir.path(), Timing::default(), |i| {
            keys.flag(i != 2, "8s")
        });
    cluster.wait_ready(STARTUP).await.expect("cluster ready");
    let eps = cluster.endpoints();
    let (mut n1, mut n2, mut n3) = (
        conn(&eps[0]).await,
        conn(&eps[1]).await,
        conn(&eps[2]).await,
    );
    n1.setup().await;

    let (line, token) = n1.authenticate("u", "pw").await;
    assert_eq!(line, "ok token");
    let token = token.expect("token");
    let t = Some(token.as_str());
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // (what, answer, expected)
    let cases = [
        (
            "n2 reads with n1's token",
            n2.get("k", t).await,
            "ok count=1",
        ),
        (
            "n3 (verify-only) reads with it",
            n3.get("k", t).await,
            "ok count=1",
        ),
        ("n1 reads with it", n1.get("k", t).await, "ok count=1"),
        (
            "n2 writes with it",
            n2.put("k", t).await,
            "PermissionDenied: etcdserver: permission denied",
        ),
        (
            "n2 without a token",
            n2.get("k", None).await,
            "InvalidArgument: etcdserver: user name is empty",
        ),
        (
            "n3 with a tampered token",
            n3.get("k", Some(&tampered(&token))).await,
            "Unauthenticated: etcdserver: invalid auth token",
        ),
        (
            "n3 authenticates",
            n3.authenticate("u", "pw").await.0,
            "Unknown: auth: token signing attempted with verify-only key",
        ),
        (
            "n2 with a wrong password",
            n2.authenticate("u", "nope").await.0,
            "InvalidArgument: etcdserver: authentication failed, invalid user ID or password",
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }

    // An auth change makes every earlier token stale, on every member.
    let (_, root) = n2.authenticate("root", "rootpw").await;
    assert_eq!(n2.grant_read("k2", root.as_deref()).await, "ok ");
    for (i, member) in [&mut n1, &mut n2, &mut n3].into_iter().enumerate() {
        assert_eq!(
            member.get("k", t).await,
            "InvalidArgument: etcdserver: revision of auth store is old",
            "n{}",
            i + 1
        );
    }
    let (_, fresh) = n2.authenticate("u", "pw").await;
    let fresh = fresh.expect("token");
    assert_eq!(revision_of(&fresh), revision_of(&token) + 1);
    assert_eq!(n3.get("k2", Some(&fresh)).await, "ok count=0");

    // etcdctl authenticates itself on each run: fine on a signing member, etcd's error on
    // the verify-only one.
    assert_eq!(
        etcdctl(&eps[1], &["--user", "u:pw", "get", "k"]).await,
        "ok k\nv"
    );
    assert_eq!(
        etcdctl(&eps[0], &["--user", "root:rootpw", "put", "k3", "v3"]).await,
        "ok OK"
    );
    assert_eq!(
        etcdctl(&eps[0], &["--user", "u:pw", "put", "k", "x"]).await,
        "err Error: etcdserver: permission denied"
    );
    let verify_only = etcdctl(&eps[2], &["--user", "u:pw", "get", "k"]).await;
    assert!(
        verify_only.contains("auth: token signing attempted with verify-only key"),
        "{verify_only}"
    );

    // Valid through the second `exp` names (8 s on), refused after.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        n1.get("k", Some(&fresh)).await,
        "Unauthenticated: etcdserver: invalid auth token",
        "expired"
    );
}

/// One member of `flavor` with JWT flags, set up; its directory is `dir`.
async fn single(flavor: Flavor, keys: &Keys, dir: &Path) -> (Server, Conn) {
    std::fs::create_dir_all(dir).expect("server dir");
    let mut server = Server::spawn_with_args(
        flavor,
        &dir.join("data"),
        &dir.join("server.log"),
        keys.flag(true, "5m"),
    );
    server
        .wait_ready(STARTUP)
        .await
        .unwrap_or_else(|e| panic!("{flavor:?} did not start: {e}"));
    let mut c = conn(&server.endpoint).await;
    c.setup().await;
    (server, c)
}

/// The first part of the script: answers, and u's last token (auth still enabled).
async fn script(c: &mut Conn, keys: &Keys) -> (Vec<String>, String) {
    let mut lines = Vec::new();
    let (line, token) = c.authenticate("u", "pw").await;
    lines.push(format!("authenticate u: {line}"));
    let token = token.expect("u's token");
    let rev = revision_of(&token);
    let t = Some(token.as_str());
    let (none_header, claims) = (
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        token.split('.').nth(1).expect("claims").to_string(),
    );
    let forged_root = {
        let (header, _) = token.split_once('.').expect("a JWT");
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"exp":{},"revision":{rev},"username":"root"}}"#,
            now() + 60
        ));
        let sig = token.rsplit_once('.').expect("a JWT").1;
        format!("{header}.{claims}.{sig}")
    };
    let steps: Vec<(&str, String)> = vec![
        ("wrong password", c.authenticate("u", "nope").await.0),
        ("unknown user", c.authenticate("nobody", "pw").await.0),
        ("no token", c.get("k", None).await),
        ("u reads k", c.get("k", t).await),
        ("u reads k2", c.get("k2", t).await),
        ("u writes k", c.put("k", t).await),
        (
            "tampered signature",
            c.get("k", Some(&tampered(&token))).await,
        ),
        (
            "u's signature on root's claims",
            c.get("k", Some(&forged_root)).await,
        ),
        (
            "alg none",
            c.get("k", Some(&format!("{none_header}.{claims}."))).await,
        ),
        (
            "a simple token",
            c.get("k", Some("abcdefghijklmnop.12")).await,
        ),
        ("garbage", c.get("k", Some("nonsense")).await),
        (
            "signed, expired",
            c.get("k", Some(&keys.forge("u", rev, now() - 5))).await,
        ),
        (
            "signed, old revision",
            c.get("k", Some(&keys.forge("u", rev - 1, now() + 60)))
                .await,
        ),
        (
            "signed, future revision",
            c.get("k", Some(&keys.forge("u", rev + 5, now() + 60)))
                .await,
        ),
        (
            "signed, unknown user",
            c.get("k", Some(&keys.forge("ghost", rev, now() + 60)))
                .await,
        ),
        (
            "signed, exp 0",
            c.get("k", Some(&keys.forge("u", rev, 0))).await,
        ),
        // Writes check only that the token is not older than the store (etcd's apply).
        (
            "signed root, future revision, writes",
            c.put("k", Some(&keys.forge("root", rev + 5, now() + 60)))
                .await,
        ),
        (
            "signed root, old revision, writes",
            c.put("k", Some(&keys.forge("root", rev - 1, now() + 60)))
                .await,
        ),
    ];
    lines.extend(steps.into_iter().map(|(what, r)| format!("{what}: {r}")));
    let (line, root) = c.authenticate("root", "rootpw").await;
    lines.push(format!("authenticate root: {line}"));
    lines.push(format!(
        "grant: {}",
        c.grant_read("k2", root.as_deref()).await
    ));
    lines.push(format!(
        "u's token after the grant: {}",
        c.get("k", t).await
    ));
    let (line, fresh) = c.authenticate("u", "pw").await;
    lines.push(format!("authenticate u again: {line}"));
    let fresh = fresh.expect("u's new token");
    lines.push(format!(
        "new token reads k2: {}",
        c.get("k2", Some(&fresh)).await
    ));
    (lines, fresh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_answers_match_etcds() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_dir, raftkv_dir) = (dir.path().join("etcd"), dir.path().join("raftkv"));
    let ((_etcd, mut e), (raftkv_server, mut r)) = tokio::join!(
        single(Flavor::Etcd, &keys, &etcd_dir),
        single(Flavor::Raftkv, &keys, &raftkv_dir),
    );
    let ((mut etcd, etcd_token), (mut raftkv, raftkv_token)) =
        tokio::join!(script(&mut e, &keys), script(&mut r, &keys));
    // Both stores took the same auth changes, so each accepts the other's tokens: the same
    // claims, signatures either verifies.
    assert_eq!(revision_of(&etcd_token), revision_of(&raftkv_token));
    let other = "the other server's token";
    etcd.push(format!(
        "{other}: {}",
        e.get("k2", Some(&raftkv_token)).await
    ));
    raftkv.push(format!("{other}: {}", r.get("k2", Some(&etcd_token)).await));
    for (c, lines, token) in [
        (&mut e, &mut etcd, &etcd_token),
        (&mut r, &mut raftkv, &raftkv_token),
    ] {
        let (_, root) = c.authenticate("root", "rootpw").await;
        let r = c
            .auth
            .auth_disable(with_token(AuthDisableRequest {}, root.as_deref()))
            .await;
        lines.push(format!("disable: {}", render(r, |_| String::new())));
        lines.push(format!(
            "u's token after disable: {}",
            c.get("k", Some(token)).await
        ));
        lines.push(format!(
            "tampered token after disable: {}",
            c.get("k", Some(&tampered(token))).await
        ));
        lines.push(format!(
            "no token after disable: {}",
            c.get("k", None).await
        ));
    }
    for (e, r) in etcd.iter().zip(&raftkv) {
        println!("etcd:   {e}\nraftkv: {r}");
    }
    assert_eq!(etcd, raftkv);
    assert!(etcd.len() > 20, "the script ran: {etcd:?}");
    let invalid = raftkv
        .iter()
        .filter(|l| l.contains("invalid auth token"))
        .count();
    let metrics = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("{}/metrics", raftkv_server.endpoint))
        .output()
        .expect("running curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains(&format!("raftkv_auth_invalid_tokens_total {invalid}")),
        "{invalid} refused tokens; {}",
        metrics
            .lines()
            .filter(|l| l.contains("auth"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwt_flags_stop_both_servers() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, private) = (keys.path("rsa.pub"), keys.path("rsa.key"));
    let (public, private) = (public.display(), private.display());
    // (flag, what raftkv says)
    let cases = [
        (
            format!("jwt,pub-key={public}"),
            "auth: invalid auth options",
        ),
        (
            format!("jwt,pub-key={public},sign-method=XY256"),
            "auth: invalid auth options",
        ),
        (
            format!("jwt,pub-key={public},sign-method=RS256,ttl=x"),
            "time: invalid duration",
        ),
        (
            "jwt,sign-method=RS256".to_string(),
            "auth: missing key data",
        ),
        (
            "jwt,pub-key=/nonexistent,sign-method=RS256".to_string(),
            "/nonexistent",
        ),
        (
            format!("jwt,pub-key={private},sign-method=RS256"),
            "not a valid RSA public key",
        ),
        (
            format!("jwt,pub-key={public},sign-method=RS256,pub-key={public}"),
            "duplicate",
        ),
        (
            format!("jwt,pub-key={public},sign-method"),
            "invalid token option",
        ),
        ("bogus".to_string(), "unknown token type"),
    ];
    for (i, (flag, says)) in cases.iter().enumerate() {
        for flavor in [Flavor::Etcd, Flavor::Raftkv] {
            let d = dir.path().join(format!("{}-{i}", flavor.name()));
            std::fs::create_dir_all(&d).expect("server dir");
            let mut server = Server::spawn_with_args(
                flavor,
                &d.join("data"),
                &d.join("log"),
                vec!["--auth-token".into(), flag.clone()],
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(s) = server.exited() {
                    break s;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{flavor:?} still runs with --auth-token {flag}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(!status.success(), "{flavor:?} {flag}");
            if flavor == Flavor::Raftkv {
                // The whole log: with RUST_BACKTRACE set, a backtrace follows the message.
                let log = std::fs::read_to_string(d.join("log")).expect("reading the log");
                assert!(log.contains(says), "{flag}: expected {says:?} in\n{log}");
            }
        }
    }
}
