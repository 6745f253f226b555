//! End to end: store + API server + scheduler + one nodeagent running real runc
//! containers from the busybox image the agent builds from Debian's busybox-static.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Cluster};
use serde_json::Value;

fn container_status(pod: &Value) -> Value {
    pod.pointer("/status/containerStatuses/0")
        .cloned()
        .unwrap_or(Value::Null)
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo hello; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo crashing; echo bye > /dev/termination-log; exit 1"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "x=0123456789abcdef; while true; do x=$x$x; done"]
    resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "sleep 2; for i in 1 2 3; do echo line $i; sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: config}
spec:
  restartPolicy: Never
  volumes:
  - name: cfg
    configMap: {name: settings}
  - name: scratch
    emptyDir: {}
  initContainers:
  - name: init
    image: busybox
    command: ["sh", "-c", "echo from-init > /scratch/x"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  containers:
  - name: main
    image: busybox
    workingDir: /scratch
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    command: ["sh", "-c", "chown 65534 x && echo $GREETING $POD $(cat x) $(cat /etc/cfg/greeting) $(pwd)"]
    volumeMounts:
    - {name: cfg, mountPath: /etc/cfg}
    - {name: scratch, mountPath: /scratch}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hi}
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers:
  - name: main
    image: nosuchimage:1.0
"#;

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "sleep 6; touch /tmp/ready; sleep 3600"]
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
  - name: unhealthy
    image: busybox
    command: ["sh", "-c", "echo started; sleep 3600"]
    livenessProbe:
      tcpSocket: {port: 1}
      initialDelaySeconds: 1
      periodSeconds: 1
      failureThreshold: 2
"#;

#[test]
fn pods_run_log_restart_oom_and_terminate() {
    let c = Cluster::start("e2e");
    // The node registers Ready with the host's capacity and renews its lease.
    wait_for(30, "node Ready", || {
        let n = c.get(&["node", &c.node])?;
        let ready = n
            .pointer("/status/conditions")?
            .as_array()?
            .iter()
            .any(|x| x["type"] == "Ready" && x["status"] == "True");
        ready.then_some(())
    });
    let node = c.get(&["node", &c.node]).unwrap();
    assert!(node.pointer("/status/capacity/cpu").is_some());
    assert!(node.pointer("/status/capacity/memory").is_some());
    let lease = wait_for(10, "node lease", || {
        c.get(&["lease", "-n", "kube-node-lease", &c.node])
    });
    assert_eq!(
        lease
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str),
        Some(c.node.as_str())
    );
    assert_eq!(
        lease.pointer("/spec/leaseDurationSeconds"),
        Some(&Value::from(40))
    );
    let renewed = lease.pointer("/spec/renewTime").cloned();
    wait_for(10, "lease renewal", || {
        let l = c.get(&["lease", "-n", "kube-node-lease", &c.node])?;
        (l.pointer("/spec/renewTime").cloned() != renewed).then_some(())
    });

    c.apply(PODS);

    // image: busybox runs `sh -c "echo hello; sleep 3600"`; kubectl logs shows it.
    wait_for(60, "hello Running", || {
        (phase(&c.pod("hello")?) == "Running").then_some(())
    });
    let logs = wait_for(20, "hello's log", || {
        let out = c.ok(&["logs", "hello"]);
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(logs, "hello\n");
    let events = c.get(&["events"]).unwrap();
    let started = events["items"].as_array().unwrap().iter().any(|e| {
        e["reason"] == "Started"
            && e.pointer("/involvedObject/name") == Some(&Value::from("hello"))
            && e.pointer("/source/component") == Some(&Value::from("kubelet"))
    });
    assert!(started, "no Started event for hello: {events}");
    let described = c.ok(&["describe", "pod", "hello"]);
    assert!(described.contains("Started container main"), "{described}");
    let ts = c.ok(&["logs", "hello", "--timestamps"]);
    assert!(ts.ends_with("Z hello\n"), "{ts}");

    // kubectl logs -f follows until the container exits.
    wait_for(30, "counter Running", || {
        (phase(&c.pod("counter")?) == "Running").then_some(())
    });
    let followed = c.ok(&["logs", "-f", "counter"]);
    assert_eq!(followed, "line 1\nline 2\nline 3\n");
    wait_for(20, "counter Succeeded", || {
        (phase(&c.pod("counter")?) == "Succeeded").then_some(())
    });

    // Init container, emptyDir, configMap env and volume, fieldRef, workingDir.
    wait_for(60, "config Succeeded", || {
        (phase(&c.pod("config")?) == "Succeeded").then_some(())
    });
    assert_eq!(
        c.ok(&["logs", "config"]),
        "hi config from-init hi /scratch\n"
    );
    assert_eq!(c.ok(&["logs", "config", "-c", "init"]), "");

    // exit 1 with restartPolicy Always: restarts, then backs off.
    let st = wait_for(60, "crash restarted twice", || {
        let s = container_status(&c.pod("crash")?);
        (s["restartCount"].as_i64()? >= 2).then_some(s)
    });
    assert_eq!(
        st.pointer("/lastState/terminated/exitCode"),
        Some(&Value::from(1))
    );
    wait_for(30, "CrashLoopBackOff", || {
        let s = container_status(&c.pod("crash")?);
        (s.pointer("/state/waiting/reason")? == "CrashLoopBackOff").then_some(())
    });
    assert_eq!(c.ok(&["logs", "crash", "--previous"]), "crashing\n");

    // The memory hog is OOM-killed.
    let t = wait_for(60, "hog OOMKilled", || {
        let s = container_status(&c.pod("hog")?);
        s.pointer("/state/terminated").cloned()
    });
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);
    assert_eq!(phase(&c.pod("hog").unwrap()), "Failed");

    // Readiness gates the container's ready flag; a failing liveness probe restarts.
    c.apply(PROBED);
    let probed = wait_for(60, "probed Running", || {
        let p = c.pod("probed")?;
        (phase(&p) == "Running").then_some(p)
    });
    let main_ready = |p: &Value| p.pointer("/status/containerStatuses/0/ready").cloned();
    if let Some(Value::Bool(true)) = main_ready(&probed) {
        panic!("ready before its readiness probe passed: {probed}");
    }
    wait_for(30, "main ready", || {
        (main_ready(&c.pod("probed")?)? == true).then_some(())
    });
    wait_for(60, "unhealthy restarted", || {
        let p = c.pod("probed")?;
        (p.pointer("/status/containerStatuses/1/restartCount")?
            .as_i64()?
            >= 1)
            .then_some(())
    });

    // A missing image is a waiting reason, never an agent crash.
    let w = wait_for(30, "missing image reason", || {
        container_status(&c.pod("missing")?)
            .pointer("/state/waiting/reason")
            .cloned()
    });
    assert!(w == "ErrImagePull" || w == "ImagePullBackOff", "{w}");

    // Deleting the pod stops its runc container within the grace period (3 s: sh as
    // PID 1 ignores SIGTERM, so SIGKILL ends it), then the object goes away.
    let hello_uid = c.pod("hello").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(c.running_ids().iter().any(|id| id.starts_with(&hello_uid)));
    let start = Instant::now();
    c.ok(&["delete", "pod", "hello", "--wait=false"]);
    wait_for(15, "hello's container gone", || {
        (!c.runc_ids().iter().any(|id| id.starts_with(&hello_uid))).then_some(())
    });
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "killed before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3 + 4),
        "not stopped within the grace period: {took:?}"
    );
    wait_for(10, "hello deleted", || {
        c.pod("hello").is_none().then_some(())
    });
    eprintln!("hello stopped {took:?} after its deletion (grace period 3s)");
    assert!(!c.agent_root.join("pods").join(&hello_uid).exists());
    assert!(
        c.agent_log().contains("sending SIGTERM"),
        "{}",
        c.agent_log()
    );
}

#[test]
fn agent_restart_keeps_pods() {
    let mut c = Cluster::start("e2e-restart");
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo up; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: short}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "sleep 6; echo done; exit 7"]
"#,
    );
    wait_for(60, "sleeper and short Running", || {
        let both = phase(&c.pod("sleeper")?) == "Running" && phase(&c.pod("short")?) == "Running";
        both.then_some(())
    });
    let sleeper_uid = c.pod("sleeper").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let before: Vec<String> = c
        .running_ids()
        .into_iter()
        .filter(|id| id.starts_with(&sleeper_uid))
        .collect();
    assert_eq!(before.len(), 1);

    // Kill the agent: the containers live on (their shims are not the agent's children),
    // and `short` ends while no agent runs; its shim records how.
    c.agent.take().unwrap().kill();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(c.running_ids(), before);

    c.start_agent();
    // Let the restarted agent sync a few times: no duplicate, no restart.
    wait_for(20, "the new agent's sync", || {
        c.agent_log().contains("node agent running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.running_ids(), before, "{}", c.agent_log());
    let pod = c.pod("sleeper").unwrap();
    assert_eq!(phase(&pod), "Running");
    assert_eq!(container_status(&pod)["restartCount"], 0);
    assert_eq!(c.ok(&["logs", "sleeper"]), "up\n");
    let t = wait_for(20, "short's exit reported", || {
        container_status(&c.pod("short")?)
            .pointer("/state/terminated")
            .cloned()
    });
    assert_eq!(t["exitCode"], 7, "{t}");
    assert_eq!(phase(&c.pod("short").unwrap()), "Failed");
    assert_eq!(c.ok(&["logs", "short"]), "done\n");

    // The re-adopted pod still terminates cleanly.
    c.ok(&["delete", "pod", "sleeper", "short", "--wait=false"]);
    wait_for(15, "sleeper's container gone", || {
        c.runc_ids().is_empty().then_some(())
    });
    wait_for(10, "sleeper deleted", || {
        c.pod("sleeper").is_none().then_some(())
    });
}

/// Two agents on one machine: each runs only its own pods under its own runc root, and
/// restarting one leaves the other's containers alone.
#[test]
fn two_agents_keep_to_their_own_containers() {
    let c = Cluster::start("e2e-a");
    let b = c.extra_agent("e2e-b");
    let pod = |name: &str, node: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: main, image: busybox, command: [sleep, \"3600\"]}}\n"
        )
    };
    c.apply(&(pod("on-a", &c.node) + &pod("on-b", &b.node)));
    for name in ["on-a", "on-b"] {
        wait_for(60, name, || {
            (phase(&c.pod(name)?) == "Running").then_some(())
        });
    }
    let uid = |name: &str| {
        c.pod(name).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a_ids, b_ids) = (c.running_ids(), common::running_ids(&b.root));
    assert_eq!(a_ids.len(), 1);
    assert_eq!(b_ids.len(), 1);
    assert!(a_ids[0].starts_with(&uid("on-a")), "{a_ids:?}");
    assert!(b_ids[0].starts_with(&uid("on-b")), "{b_ids:?}");
    // Both nodes register; A's restart (which removes containers no pod of A owns)
    // leaves B's container running.
    for node in [&c.node, &b.node] {
        wait_for(30, "node registered", || c.get(&["node", node]));
    }
    let mut c = c;
    c.agent.take().unwrap().kill();
    c.start_agent();
    wait_for(20, "A restarted", || {
        c.agent_log().contains("node agent running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(common::running_ids(&b.root), b_ids);
    assert_eq!(c.running_ids(), a_ids);
}
