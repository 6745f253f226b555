//! End-to-end: two API server replicas on one store (raftkv, then real etcd), driven by
//! kubectl. Each scenario runs against both stores; the store is the only thing the
//! replicas share.

mod common;

use std::time::Duration;

use common::{wait_for_output, ApiServer, Flavor, Kubectl, StoreServer};

const DEPLOYMENT_V1: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.19
        ports:
        - containerPort: 80
      - name: sidecar
        image: busybox
";

/// The same deployment with the sidecar removed and a new image: apply must delete the
/// container (strategic merge `$patch: delete`) and keep the server-set defaults.
const DEPLOYMENT_V2: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.20
        ports:
        - containerPort: 80
";

struct Cluster {
    _dir: tempfile::TempDir,
    store: StoreServer,
    _a: ApiServer,
    b: ApiServer,
    ka: Kubectl,
    kb: Kubectl,
}

fn cluster(flavor: Flavor) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreServer::start(flavor, dir.path());
    let a = ApiServer::start("a", &store.endpoint, dir.path(), &[]);
    let b = ApiServer::start("b", &store.endpoint, dir.path(), &[]);
    let ka = Kubectl::new(&a, dir.path(), "a");
    let kb = Kubectl::new(&b, dir.path(), "b");
    Cluster {
        _dir: dir,
        store,
        _a: a,
        b,
        ka,
        kb,
    }
}

fn jsonpath(k: &Kubectl, args: &[&str], path: &str) -> String {
    let arg = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &arg]);
    k.ok(&all)
}

fn apply_get_scale_delete(flavor: Flavor) {
    let c = cluster(flavor);
    let out =
        c.ka.ok_with_input(&["apply", "-f", "-"], Some(DEPLOYMENT_V1));
    assert_eq!(out.trim(), "deployment.apps/web created");
    // Written through A, read through B.
    let table = c.kb.ok(&["get", "deployments"]);
    assert!(
        table.starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE"),
        "{table}"
    );
    assert!(table.contains("web    0/2"), "{table}");
    assert_eq!(
        jsonpath(
            &c.kb,
            &["get", "deploy", "web"],
            "{.spec.strategy.rollingUpdate.maxSurge} {.metadata.generation}"
        ),
        "25% 1"
    );

    let out =
        c.kb.ok_with_input(&["apply", "-f", "-"], Some(DEPLOYMENT_V2));
    assert_eq!(out.trim(), "deployment.apps/web configured");
    let containers = jsonpath(&c.ka, &["get", "deploy", "web"], "{.spec.template.spec.containers[*].name} {.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].imagePullPolicy} {.metadata.generation}");
    assert_eq!(containers, "nginx nginx:1.20 IfNotPresent 2");
    let out =
        c.ka.ok_with_input(&["apply", "-f", "-"], Some(DEPLOYMENT_V2));
    assert_eq!(out.trim(), "deployment.apps/web unchanged");

    assert_eq!(
        c.kb.ok(&["scale", "deployment", "web", "--replicas=5"])
            .trim(),
        "deployment.apps/web scaled"
    );
    assert_eq!(
        jsonpath(
            &c.ka,
            &["get", "deploy", "web"],
            "{.spec.replicas} {.metadata.generation}"
        ),
        "5 3"
    );

    c.ka.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    ]);
    c.ka.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]);
    c.kb.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","env":[{"name":"A","value":"1"}]}]}}}}"#]);
    assert_eq!(
        jsonpath(&c.kb, &["get", "deploy", "web"], "{.metadata.labels.tier} {.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}"),
        "front 4 nginx:1.20 A"
    );
    assert!(c
        .ka
        .ok(&["get", "deploy", "-l", "tier in (front,back)", "-o", "name"])
        .contains("deployment.apps/web"));
    assert_eq!(
        c.ka.ok(&["get", "deploy", "-l", "tier!=front", "-o", "name"])
            .trim(),
        ""
    );

    assert_eq!(
        c.ka.ok(&["delete", "deployment", "web"]).trim(),
        "deployment.apps \"web\" deleted"
    );
    let err = c.kb.fails(&["get", "deployment", "web"]);
    assert!(
        err.contains(r#"Error from server (NotFound): deployments.apps "web" not found"#),
        "{err}"
    );
}

fn watch_through_the_other_replica(flavor: Flavor) {
    let mut c = cluster(flavor);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("watch.out");
    let _watch = c.ka.spawn(&["get", "pods", "-w"], &out);
    // The watch is established once kubectl has listed (it prints nothing for an empty list).
    std::thread::sleep(Duration::from_millis(1500));
    c.kb.ok(&["run", "p1", "--image=nginx", "--labels=app=p"]);
    c.kb.ok(&["label", "pod", "p1", "extra=yes"]);
    c.kb.ok(&["delete", "pod", "p1"]);
    let text = wait_for_output(&out, "p1 ", 3, 15);
    assert!(
        text.starts_with("NAME   READY   STATUS    RESTARTS   AGE"),
        "{text}"
    );
    assert!(text.contains("0/1     Pending"), "{text}");

    // A selector watch sees an object leave its selection as DELETED and re-enter as ADDED.
    let selected = dir.path().join("selected.out");
    let _sel = c.ka.spawn(
        &["get", "pods", "-l", "tier=a", "-w", "--output-watch-events"],
        &selected,
    );
    std::thread::sleep(Duration::from_millis(1500));
    c.kb.ok(&["run", "p3", "--image=nginx", "--labels=tier=a"]);
    c.kb.ok(&["label", "pod", "p3", "tier=b", "--overwrite"]);
    c.kb.ok(&["label", "pod", "p3", "tier=a", "--overwrite"]);
    let text = wait_for_output(&selected, "p3 ", 3, 15);
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("p3 "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(events, ["ADDED", "DELETED", "ADDED"], "{text}");

    // Killing replica B disturbs nobody on A: the watch keeps going, writes through A work.
    c.b.proc.kill();
    c.ka.ok(&["run", "p2", "--image=nginx"]);
    wait_for_output(&out, "p2 ", 1, 15);
    let pods = c.ka.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        pods.contains("IP") && pods.contains("NODE") && pods.contains("p2 "),
        "{pods}"
    );
    drop(c.store);
}

fn conflicts_and_errors(flavor: Flavor) {
    let c = cluster(flavor);
    c.ka.ok(&["create", "configmap", "cfg", "--from-literal=a=1"]);
    let stale = c.ka.ok(&["get", "configmap", "cfg", "-o", "json"]);
    c.kb.ok(&["label", "configmap", "cfg", "changed=yes"]);
    let err = c.ka.fails_with_input(&["replace", "-f", "-"], Some(&stale));
    assert!(
        err.contains(r#"Operation cannot be fulfilled on configmaps "cfg": the object has been modified; please apply your changes to the latest version and try again"#),
        "{err}"
    );
    let err = c.kb.fails(&["create", "configmap", "cfg"]);
    assert!(
        err.contains(r#"Error from server (AlreadyExists): configmaps "cfg" already exists"#),
        "{err}"
    );
    let err = c.kb.fails(&["run", "Bad_Name", "--image=x"]);
    assert!(
        err.contains(r#"The Pod "Bad_Name" is invalid"#)
            && err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    let err = c.kb.fails(&["get", "widgets"]);
    assert!(
        err.contains(r#"the server doesn't have a resource type "widgets""#),
        "{err}"
    );
    let err = c.kb.fails(&["create", "configmap", "x", "-n", "nope"]);
    assert!(
        err.contains(r#"Error from server (NotFound): namespaces "nope" not found"#),
        "{err}"
    );
    let err =
        c.kb.fails(&["get", "pods", "--field-selector", "spec.bogus=1"]);
    assert!(err.contains("is not a known field selector"), "{err}");
    let err = c.kb.fails_with_input(
        &["create", "-f", "-"],
        Some(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[]}}"#,
        ),
    );
    assert!(err.contains("spec.containers: Required value"), "{err}");

    // Finalizers hold a deleted object (with its deletionTimestamp) until they are gone.
    c.ka.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    c.ka.ok(&["delete", "configmap", "cfg", "--wait=false"]);
    let marked = jsonpath(
        &c.kb,
        &["get", "configmap", "cfg"],
        "{.metadata.deletionTimestamp}",
    );
    assert!(marked.ends_with('Z'), "deletionTimestamp {marked:?}");
    let err = c.kb.fails(&[
        "patch",
        "configmap",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/a","value":"other"}]"#,
    ]);
    assert!(err.contains("The request is invalid"), "{err}");
    c.kb.ok(&[
        "patch",
        "configmap",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let err = c.ka.fails(&["get", "configmap", "cfg"]);
    assert!(err.contains(r#"configmaps "cfg" not found"#), "{err}");

    // A pod bound to a node is deleted gracefully: it shows Terminating until its node
    // agent (or a forced delete) removes it.
    c.ka.ok_with_input(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bound"},"spec":{"nodeName":"n1","containers":[{"name":"c","image":"x"}]}}"#),
    );
    c.ka.ok(&["delete", "pod", "bound", "--wait=false"]);
    let row = c.kb.ok(&["get", "pod", "bound", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    assert_eq!(
        jsonpath(
            &c.kb,
            &["get", "pod", "bound"],
            "{.metadata.deletionGracePeriodSeconds}"
        ),
        "30"
    );
    c.kb.ok(&["delete", "pod", "bound", "--grace-period=0", "--force"]);
    assert!(c
        .ka
        .fails(&["get", "pod", "bound"])
        .contains(r#"pods "bound" not found"#));

    // Deleting a namespace only marks it Terminating: emptying it is the namespace
    // controller's (tests/controller_manager.rs).
    c.ka.ok(&["create", "namespace", "team"]);
    c.kb.ok(&["delete", "namespace", "team", "--wait=false"]);
    assert_eq!(
        jsonpath(&c.ka, &["get", "namespace", "team"], "{.status.phase}"),
        "Terminating"
    );
    let err = c.ka.fails(&["create", "configmap", "late", "-n", "team"]);
    assert!(
        err.contains(r#"Error from server (Forbidden): configmaps "late" is forbidden: unable to create new content in namespace team because it is being terminated"#),
        "{err}"
    );

    // Patches that break the object's shape are refused, never applied.
    for (ty, body) in [
        ("merge", r#"{"metadata":"x"}"#),
        ("merge", r#"{"spec":{"containers":"x"}}"#),
        ("json", r#"[{"op":"replace","path":"/metadata","value":7}]"#),
    ] {
        c.ka.ok(&["run", "shape", "--image=nginx"]);
        let err =
            c.ka.fails(&["patch", "pod", "shape", &format!("--type={ty}"), "-p", body]);
        assert!(
            err.contains("Error from server (BadRequest)") || err.contains("is invalid"),
            "{body}: {err}"
        );
        c.ka.ok(&["delete", "pod", "shape"]);
    }

    // Paging: limit/continue over the raw API.
    for i in 0..5 {
        c.ka.ok(&["create", "configmap", &format!("page-{i}")]);
    }
    let first: serde_json::Value = serde_json::from_str(&c.kb.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=2",
    ]))
    .expect("json");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    let second: serde_json::Value = serde_json::from_str(&c.ka.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={token}"),
    ]))
    .expect("json");
    assert_eq!(
        second["items"].as_array().map(Vec::len),
        Some(3),
        "5 configmaps in all"
    );
    assert!(second["metadata"].get("continue").is_none());

    // 410 Gone: a continue token whose revision was compacted away, and a watch from a
    // resourceVersion older than the watch cache's window.
    c.ka.ok(&["create", "configmap", "after-token"]);
    c.store.compact();
    let err = c.kb.fails(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=2&continue={token}"),
    ]);
    assert!(
        err.contains("Error from server (Expired)")
            && err.contains("The provided continue parameter is too old"),
        "{err}"
    );
    let stream = c.kb.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
    ]);
    assert!(
        stream.contains(r#""type":"ERROR""#)
            && stream.contains(r#""code":410"#)
            && stream.contains("too old resource version: 1"),
        "{stream}"
    );
}

fn token_auth(flavor: Flavor) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreServer::start(flavor, dir.path());
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "admin-token,admin,1,\"system:masters\"\nbob-token,bob,2\n",
    )
    .expect("write tokens");
    let policy = dir.path().join("policy.jsonl");
    std::fs::write(&policy, r#"{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"user":"bob","namespace":"default","resource":"*","apiGroup":"*","readonly":true}}"#).expect("write policy");
    let a = ApiServer::start(
        "a",
        &store.endpoint,
        dir.path(),
        &[
            "--token-auth-file",
            tokens.to_str().expect("utf-8"),
            "--authorization-policy-file",
            policy.to_str().expect("utf-8"),
        ],
    );
    let admin = Kubectl::new(&a, dir.path(), "admin");
    admin.ok(&["create", "configmap", "shared"]);
    let nobody = Kubectl::new(&a, dir.path(), "nobody").with_token("wrong");
    let err = nobody.fails(&["get", "pods"]);
    assert!(
        err.contains("error: You must be logged in to the server (Unauthorized)"),
        "{err}"
    );
    let bob = Kubectl::new(&a, dir.path(), "bob").with_token("bob-token");
    assert!(bob.ok(&["get", "configmaps"]).contains("shared"));
    let err = bob.fails(&["create", "configmap", "mine"]);
    assert!(
        err.contains(r#"Error from server (Forbidden): configmaps is forbidden: User "bob" cannot create resource "configmaps" in API group "" in the namespace "default""#),
        "{err}"
    );
    let err = bob.fails(&["get", "nodes"]);
    assert!(
        err.contains(
            r#"User "bob" cannot list resource "nodes" in API group "" at the cluster scope"#
        ),
        "{err}"
    );
}

/// ClusterIPs and NodePorts: allocated once across both replicas, explicit ones checked,
/// released on delete, the ClusterIP immutable.
fn service_allocation(flavor: Flavor) {
    let c = cluster(flavor);
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..6 {
        // Alternate replicas: allocations are claims in the store, not per-replica state.
        let k = if i % 2 == 0 { &c.ka } else { &c.kb };
        let name = format!("svc-{i}");
        k.ok(&["create", "service", "clusterip", &name, "--tcp=80:8080"]);
        let ip = jsonpath(k, &["get", "service", &name], "{.spec.clusterIP}");
        let addr: std::net::Ipv4Addr = ip.parse().expect("an IPv4 clusterIP");
        let (a, b) = (addr.octets()[0], addr.octets()[1]);
        assert!(
            a == 10 && (96..112).contains(&b),
            "{ip} is outside 10.96.0.0/12"
        );
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
    }
    let taken = ips.iter().next().unwrap().clone();
    let manifest = |name: &str, ip: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n")
    };
    let err =
        c.ka.fails_with_input(&["create", "-f", "-"], Some(&manifest("dup", &taken)));
    assert!(
        err.contains(&format!(r#"The Service "dup" is invalid: spec.clusterIPs: Invalid value: []string{{"{taken}"}}: failed to allocate IP {taken}: provided IP is already allocated"#)),
        "{err}"
    );
    let owner = c.ka.ok(&[
        "get",
        "services",
        "-o",
        &format!("jsonpath={{.items[?(@.spec.clusterIP==\"{taken}\")].metadata.name}}"),
    ]);
    c.ka.ok(&["delete", "service", owner.trim()]);
    c.kb.ok_with_input(&["create", "-f", "-"], Some(&manifest("reuse", &taken)));
    let err = c.ka.fails(&[
        "patch",
        "service",
        "reuse",
        "-p",
        r#"{"spec":{"clusterIP":"10.96.0.77"}}"#,
    ]);
    assert!(
        err.contains("spec.clusterIP: Invalid value: \"10.96.0.77\": field is immutable"),
        "{err}"
    );
    c.ka.ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    let port: u16 = jsonpath(
        &c.ka,
        &["get", "service", "np"],
        "{.spec.ports[0].nodePort}",
    )
    .parse()
    .expect("a nodePort");
    assert!((30000..=32767).contains(&port), "{port}");
}

#[test]
fn raftkv_service_allocation() {
    service_allocation(Flavor::Raftkv);
}

#[test]
fn raftkv_apply_get_scale_delete() {
    apply_get_scale_delete(Flavor::Raftkv);
}

#[test]
fn etcd_apply_get_scale_delete() {
    apply_get_scale_delete(Flavor::Etcd);
}

#[test]
fn raftkv_watch_through_the_other_replica() {
    watch_through_the_other_replica(Flavor::Raftkv);
}

#[test]
fn etcd_watch_through_the_other_replica() {
    watch_through_the_other_replica(Flavor::Etcd);
}

#[test]
fn raftkv_conflicts_and_errors() {
    conflicts_and_errors(Flavor::Raftkv);
}

#[test]
fn etcd_conflicts_and_errors() {
    conflicts_and_errors(Flavor::Etcd);
}

#[test]
fn raftkv_token_auth() {
    token_auth(Flavor::Raftkv);
}

#[test]
fn etcd_token_auth() {
    token_auth(Flavor::Etcd);
}

/// Writes a CA and two client certificates signed by it: `carol` in `system:masters`, and
/// `dave` in no group. Returns the CA file.
fn client_pki(dir: &std::path::Path) -> std::path::PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test client CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let ca_file = dir.join("client-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
    let issuer = Issuer::new(ca_params, ca_key);
    for (user, org) in [("carol", Some("system:masters")), ("dave", None)] {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(o) = org {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("client certificate");
        std::fs::write(dir.join(format!("{user}.crt")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{user}.key")), key.serialize_pem()).expect("write key");
    }
    ca_file
}

/// A kubeconfig like `server`'s but authenticating with `user`'s client certificate.
fn cert_kubeconfig(server: &ApiServer, dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(&server.kubeconfig).expect("read kubeconfig");
    let cluster_part = base.split("users:").next().expect("kubeconfig has users");
    let text = format!(
        "{cluster_part}users:\n- name: raftkv\n  user:\n    client-certificate: {}\n    client-key: {}\n",
        dir.join(format!("{user}.crt")).display(),
        dir.join(format!("{user}.key")).display()
    );
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

#[test]
fn client_certificates_name_the_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreServer::start(Flavor::Raftkv, dir.path());
    let ca = client_pki(dir.path());
    let policy = dir.path().join("policy.jsonl");
    std::fs::write(&policy, "").expect("write policy");
    let a = ApiServer::start(
        "a",
        &store.endpoint,
        dir.path(),
        &[
            "--client-ca-file",
            ca.to_str().expect("utf-8"),
            "--authorization-policy-file",
            policy.to_str().expect("utf-8"),
        ],
    );
    let carol = Kubectl::with_kubeconfig(
        cert_kubeconfig(&a, dir.path(), "carol"),
        dir.path(),
        "carol",
    );
    assert_eq!(
        carol.ok(&["create", "configmap", "by-cert"]).trim(),
        "configmap/by-cert created"
    );
    let dave =
        Kubectl::with_kubeconfig(cert_kubeconfig(&a, dir.path(), "dave"), dir.path(), "dave");
    let err = dave.fails(&["get", "configmaps"]);
    assert!(err.contains(r#"User "dave" cannot list resource "configmaps" in API group "" in the namespace "default""#), "{err}");
}
