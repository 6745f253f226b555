//! Token semantics at the gRPC level, which etcdctl hides (it authenticates afresh on every
//! run): the same script against real etcd 3.4 and raftkv, sending the `token` metadata by
//! hand, every answer rendered as `ok ...` or `<gRPC code>: <message>` and compared. Covers
//! requests without a token, malformed tokens, a token dying with its user's password
//! change, permission changes seen through a live token, watch creation refused, wrong
//! passwords, and tokens after auth is disabled.

mod common;

use std::time::Duration;

use common::{render, with_token, Flavor, Server};
use proto::authpb::{permission, Permission};
use proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, watch_client::WatchClient, AuthDisableRequest,
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use tonic::transport::Channel;

const STARTUP: Duration = Duration::from_secs(30);

struct Side {
    auth: AuthClient<Channel>,
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    lines: Vec<String>,
}

impl Side {
    async fn authenticate(&mut self, name: &str, password: &str) -> Option<String> {
        let r = self
            .auth
            .authenticate(AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await;
        let token = r.as_ref().ok().map(|t| t.get_ref().token.clone());
        self.lines.push(format!(
            "authenticate {name}: {}",
            render(r, |_| "token".into())
        ));
        token
    }

    async fn get(&mut self, what: &str, key: &str, token: Option<&str>) {
        let req = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let r = self.kv.range(with_token(req, token)).await;
        self.lines.push(format!(
            "{what}: {}",
            render(r, |r| format!("count={}", r.count))
        ));
    }

    async fn watch(&mut self, what: &str, key: &str, token: Option<&str>) {
        let create = WatchRequest {
            request_union: Some(
                proto::etcdserverpb::watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: key.into(),
                        ..Default::default()
                    },
                ),
            ),
        };
        let input = tokio_stream::iter(vec![create]).chain(tokio_stream::pending());
        let line = match self.watch.watch(with_token(input, token)).await {
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
            Ok(stream) => match stream.into_inner().message().await {
                Ok(Some(m)) => format!(
                    "created={} canceled={} reason={:?}",
                    m.created, m.canceled, m.cancel_reason
                ),
                other => format!("{other:?}"),
            },
        };
        self.lines.push(format!("{what}: {line}"));
    }
}

use tokio_stream::StreamExt;

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) {
    r.map(|_| ()).expect("setup step");
}

/// The script's renderings, and the server's `/metrics` text at the end.
async fn run(flavor: Flavor, dir: &std::path::Path) -> (Vec<String>, String) {
    std::fs::create_dir_all(dir).expect("creating the server dir");
    let mut server = Server::spawn(flavor, &dir.join("data"), &dir.join("server.log"));
    server
        .wait_ready(STARTUP)
        .await
        .unwrap_or_else(|e| panic!("{flavor:?} did not start: {e}"));
    let channel = Channel::from_shared(server.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connecting");
    let mut s = Side {
        auth: AuthClient::new(channel.clone()),
        kv: KvClient::new(channel.clone()),
        watch: WatchClient::new(channel),
        lines: Vec::new(),
    };
    ok(s.kv
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await);
    for (name, pw) in [("root", "rootpw"), ("u", "pw")] {
        ok(s.auth
            .user_add(AuthUserAddRequest {
                name: name.into(),
                password: pw.into(),
                options: None,
            })
            .await);
    }
    ok(s.auth
        .role_add(AuthRoleAddRequest { name: "r".into() })
        .await);
    let perm = Permission {
        perm_type: permission::Type::Read as i32,
        key: b"k".to_vec(),
        range_end: Vec::new(),
    };
    ok(s.auth
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(perm),
        })
        .await);
    for (user, role) in [("root", "root"), ("u", "r")] {
        ok(s.auth
            .user_grant_role(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            })
            .await);
    }
    s.get("before enable, a made-up token", "k", Some("nonsense"))
        .await;
    s.authenticate("u", "pw").await;
    ok(s.auth.auth_enable(AuthEnableRequest {}).await);

    let root = s.authenticate("root", "rootpw").await;
    let t1 = s.authenticate("u", "pw").await;
    s.authenticate("u", "wrong").await;
    s.authenticate("nobody", "pw").await;
    s.get("no token", "k", None).await;
    s.get("malformed token", "k", Some("nonsense")).await;
    s.get("u reads k", "k", t1.as_deref()).await;
    s.get("u reads k2", "k2", t1.as_deref()).await;
    s.watch("u watches k", "k", t1.as_deref()).await;
    s.watch("u watches k2", "k2", t1.as_deref()).await;
    s.watch("watch without token", "k", None).await;

    let r = s
        .auth
        .user_change_password(with_token(
            AuthUserChangePasswordRequest {
                name: "u".into(),
                password: "pw2".into(),
            },
            root.as_deref(),
        ))
        .await;
    s.lines
        .push(format!("change password: {}", render(r, |_| String::new())));
    s.get("old token after the password change", "k", t1.as_deref())
        .await;
    let t2 = s.authenticate("u", "pw2").await;
    s.get("new token", "k", t2.as_deref()).await;
    let r = s
        .auth
        .role_revoke_permission(with_token(
            AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"k".to_vec(),
                range_end: Vec::new(),
            },
            root.as_deref(),
        ))
        .await;
    s.lines
        .push(format!("revoke: {}", render(r, |_| String::new())));
    s.get("live token after the revoke", "k", t2.as_deref())
        .await;
    let r = s
        .auth
        .role_add(with_token(
            AuthRoleAddRequest { name: "x".into() },
            t2.as_deref(),
        ))
        .await;
    s.lines
        .push(format!("u adds a role: {}", render(r, |_| String::new())));

    let r = s
        .auth
        .auth_disable(with_token(AuthDisableRequest {}, root.as_deref()))
        .await;
    s.lines
        .push(format!("disable: {}", render(r, |_| String::new())));
    s.get("root's token after disable", "k", root.as_deref())
        .await;
    s.get("no token after disable", "k", None).await;
    let metrics = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("{}/metrics", server.endpoint),
        ])
        .output()
        .expect("running curl");
    (
        s.lines,
        String::from_utf8_lossy(&metrics.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_behave_as_etcds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_dir, raftkv_dir) = (dir.path().join("etcd"), dir.path().join("raftkv"));
    let ((etcd, _), (raftkv, metrics)) = tokio::join!(
        run(Flavor::Etcd, &etcd_dir),
        run(Flavor::Raftkv, &raftkv_dir),
    );
    for (e, r) in etcd.iter().zip(&raftkv) {
        println!("etcd:   {e}\nraftkv: {r}");
    }
    assert_eq!(etcd, raftkv);
    // Two refused Authenticates: a wrong password and an unknown user.
    assert!(
        metrics.contains("raftkv_auth_failures_total 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("auth"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
