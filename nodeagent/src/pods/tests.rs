//! The pod state machine against a fake runtime, a fake API and a manual clock: restart
//! backoff, init container order, phases, reasons for bad input, graceful deletion.

use controlplane::client::fake::FakeApi;
use controlplane::clock::ManualClock;
use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::network::HostNetwork;
use crate::runtime::fake::FakeRuntime;

struct Harness {
    _dir: tempfile::TempDir,
    api: FakeApi,
    clock: ManualClock,
    rt: FakeRuntime,
    shared: Arc<Shared<FakeApi, FakeRuntime, HostNetwork>>,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let images = ImageStore::new(store.images());
    for (dir, reference) in [
        ("busybox_latest", "docker.io/library/busybox:latest"),
        ("busybox_2", "docker.io/library/busybox:2"),
    ] {
        let img = images.dir.join(dir);
        std::fs::create_dir_all(img.join("rootfs/bin")).unwrap();
        std::fs::write(
            img.join("image.json"),
            format!(r#"{{"reference":"{reference}","cmd":["sh"]}}"#),
        )
        .unwrap();
    }
    let clock = ManualClock::default();
    let rt = FakeRuntime::new(clock.clone());
    let api = FakeApi::new();
    let shared = Arc::new(Shared {
        api: api.clone(),
        runtime: rt.clone(),
        network: HostNetwork {
            node_ip: "10.0.0.1".into(),
        },
        store,
        images,
        config: Config {
            node_name: "n1".into(),
            node_ip: "10.0.0.1".into(),
            pids_limit: Some(100),
            cgroup_parent: "/nodeagent-test".into(),
            resync: Duration::from_secs(1),
        },
        clock: Arc::new(clock.clone()),
    });
    Harness {
        _dir: dir,
        api,
        clock,
        rt,
        shared,
    }
}

fn container(name: &str, command: &[&str]) -> Container {
    Container {
        name: name.into(),
        image: Some("busybox".into()),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

impl Harness {
    /// The reasons of the events recorded so far.
    fn reasons(&self) -> Vec<String> {
        self.api
            .all::<k8s_openapi::api::core::v1::Event>()
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    async fn pod(
        &self,
        policy: &str,
        init: Vec<Container>,
        app: Vec<Container>,
    ) -> (Pod, Worker<FakeApi, FakeRuntime, HostNetwork>) {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                restart_policy: Some(policy.into()),
                termination_grace_period_seconds: Some(5),
                init_containers: (!init.is_empty()).then_some(init),
                containers: app,
                ..Default::default()
            }),
            status: None,
        };
        let pod = self.api.create(Some("ns"), &pod).await.unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        (pod, Worker::new(self.shared.clone(), uid))
    }

    /// One sync with the pod as the API server has it now; returns the written status.
    async fn sync(&self, w: &mut Worker<FakeApi, FakeRuntime, HostNetwork>) -> PodStatus {
        let pod: Pod = self.api.get(Some("ns"), "p").await.unwrap();
        assert_eq!(w.sync(Some(&pod)).await, Outcome::Continue);
        let pod: Pod = self.api.get(Some("ns"), "p").await.unwrap();
        pod.status.unwrap_or_default()
    }
}

fn app_status(s: &PodStatus, i: usize) -> ContainerStatus {
    s.container_statuses.as_ref().unwrap()[i].clone()
}

fn waiting_reason(c: &ContainerStatus) -> Option<String> {
    c.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

fn terminated(c: &ContainerStatus) -> Option<(i32, String)> {
    let t = c.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

#[tokio::test]
async fn crash_loop_restarts_with_backoff() {
    let h = harness();
    let (_pod, mut w) = h
        .pod("Always", vec![], vec![container("main", &["false"])])
        .await;
    // (seconds to advance before the sync, exit the running container first?, want restartCount, want waiting reason)
    let steps: [(u64, bool, i32, Option<&str>); 7] = [
        (0, false, 0, None),
        (1, true, 1, None),                     // first restart is immediate
        (1, true, 1, Some("CrashLoopBackOff")), // then 10 s
        (9, false, 2, None),
        (1, true, 2, Some("CrashLoopBackOff")), // then 20 s
        (15, false, 2, Some("CrashLoopBackOff")),
        (5, false, 3, None),
    ];
    for (i, (advance, exit, restarts, waiting)) in steps.into_iter().enumerate() {
        if exit {
            h.rt.exit("-main-", 1, false);
        }
        h.clock.advance(Duration::from_secs(advance));
        let s = h.sync(&mut w).await;
        let c = app_status(&s, 0);
        assert_eq!(c.restart_count, restarts, "step {i}: {c:?}");
        assert_eq!(waiting_reason(&c).as_deref(), waiting, "step {i}: {c:?}");
        assert_eq!(s.phase.as_deref(), Some("Running"), "step {i}");
        if restarts > 0 {
            let last = c.last_state.unwrap().terminated.unwrap();
            assert_eq!(
                (last.exit_code, last.reason.as_deref()),
                (1, Some("Error")),
                "step {i}"
            );
        }
    }
    assert_eq!(h.rt.running().len(), 1);
    // Started per run, one BackOff per backed-off run.
    assert_eq!(h.reasons().iter().filter(|r| *r == "Started").count(), 4);
    assert_eq!(h.reasons().iter().filter(|r| *r == "BackOff").count(), 2);
}

#[tokio::test]
async fn init_containers_run_in_order_then_the_app() {
    let h = harness();
    let (_pod, mut w) = h
        .pod(
            "Always",
            vec![container("i1", &["true"]), container("i2", &["true"])],
            vec![container("app", &["sleep", "1000"])],
        )
        .await;
    let s = h.sync(&mut w).await;
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(h.rt.running().len(), 1);
    assert!(h.rt.running()[0].ends_with("-i1-0"));
    assert_eq!(
        waiting_reason(&s.init_container_statuses.clone().unwrap()[1]).as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(
        waiting_reason(&app_status(&s, 0)).as_deref(),
        Some("PodInitializing")
    );
    // A failing init container is retried (restartPolicy Always) before i2 runs.
    h.rt.exit("-i1-", 1, false);
    h.sync(&mut w).await;
    assert!(h.rt.running()[0].ends_with("-i1-1"), "{:?}", h.rt.running());
    h.rt.exit("-i1-", 0, false);
    h.sync(&mut w).await;
    assert!(h.rt.running()[0].ends_with("-i2-0"), "{:?}", h.rt.running());
    h.rt.exit("-i2-", 0, false);
    let s = h.sync(&mut w).await;
    assert!(
        h.rt.running()[0].ends_with("-app-0"),
        "{:?}",
        h.rt.running()
    );
    assert_eq!(s.phase.as_deref(), Some("Running"));
    let conds: Vec<(String, String)> = s
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert!(conds.contains(&("Initialized".into(), "True".into())));
    assert!(conds.contains(&("Ready".into(), "True".into())));
}

#[tokio::test]
async fn terminal_phases_and_oom() {
    // (policy, exit code, oom, want phase, want reason)
    let cases = [
        ("Never", 0, false, "Succeeded", "Completed"),
        ("Never", 1, false, "Failed", "Error"),
        ("Never", 137, true, "Failed", "OOMKilled"),
        ("OnFailure", 0, false, "Succeeded", "Completed"),
    ];
    for (policy, code, oom, phase, reason) in cases {
        let h = harness();
        let (_pod, mut w) = h.pod(policy, vec![], vec![container("main", &["x"])]).await;
        h.sync(&mut w).await;
        h.rt.exit("-main-", code, oom);
        let s = h.sync(&mut w).await;
        assert_eq!(s.phase.as_deref(), Some(phase), "{policy} {code}");
        assert_eq!(
            terminated(&app_status(&s, 0)),
            Some((code, reason.to_string()))
        );
        // Nothing restarts and the exited container is removed from the runtime.
        h.clock.advance(Duration::from_secs(60));
        h.sync(&mut w).await;
        assert!(
            h.rt.containers.lock().unwrap().is_empty(),
            "{policy} {code}"
        );
    }
}

#[tokio::test]
async fn bad_input_becomes_a_waiting_reason() {
    let mut bad_limit = container("main", &["sh"]);
    bad_limit.resources = Some(ResourceRequirements {
        limits: Some([("memory".to_string(), Quantity("1".into()))].into()),
        requests: None,
    });
    let mut no_image = container("main", &["sh"]);
    no_image.image = Some("nosuch:1".into());
    let cases = [
        (no_image, "ErrImagePull", "not in the local image store"),
        (
            container("main", &["/missing/bin"]),
            "CreateContainerError",
            "no such file or directory",
        ),
        (bad_limit, "CreateContainerConfigError", "memory limit"),
    ];
    for (c, reason, message) in cases {
        let h = harness();
        let (_pod, mut w) = h.pod("Always", vec![], vec![c]).await;
        let s = h.sync(&mut w).await;
        let st = app_status(&s, 0);
        assert_eq!(waiting_reason(&st).as_deref(), Some(reason));
        let msg = st.state.unwrap().waiting.unwrap().message.unwrap();
        assert!(msg.contains(message), "{msg}");
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert!(h.rt.containers.lock().unwrap().is_empty());
        // The failed attempt left nothing behind and is not counted as a restart.
        assert_eq!(st.restart_count, 0);
        // One Failed event, not one per retry.
        h.clock.advance(Duration::from_secs(10));
        h.sync(&mut w).await;
        assert_eq!(h.reasons(), vec!["Failed"], "{reason}");
    }
}

#[tokio::test]
async fn deletion_sends_sigterm_then_sigkill_then_removes_the_pod() {
    let h = harness();
    let (_pod, mut w) = h
        .pod(
            "Always",
            vec![],
            vec![container("main", &["sleep", "1000"])],
        )
        .await;
    h.sync(&mut w).await;
    let mut pod: Pod = h.api.get(Some("ns"), "p").await.unwrap();
    let deadline = h.clock.now() + chrono::Duration::seconds(5);
    pod.metadata.deletion_timestamp = Some(Time(deadline));
    pod.metadata.deletion_grace_period_seconds = Some(5);
    assert_eq!(w.sync(Some(&pod)).await, Outcome::Continue);
    assert_eq!(w.sync(Some(&pod)).await, Outcome::Continue);
    let signals: Vec<i32> = h.rt.signals.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(
        signals,
        vec![libc::SIGTERM],
        "SIGTERM once, no SIGKILL before the deadline"
    );
    h.clock.advance(Duration::from_secs(5));
    assert_eq!(w.sync(Some(&pod)).await, Outcome::Continue);
    let signals: Vec<i32> = h.rt.signals.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(signals, vec![libc::SIGTERM, libc::SIGKILL]);
    assert!(h.reasons().contains(&"Killing".to_string()));
    assert_eq!(w.sync(Some(&pod)).await, Outcome::Finished);
    assert!(h.rt.containers.lock().unwrap().is_empty());
    assert!(h
        .api
        .get::<Pod>(Some("ns"), "p")
        .await
        .unwrap_err()
        .is_not_found());
    assert!(!h.shared.store.pod_dir(&w.uid).exists());
}

#[tokio::test]
async fn a_new_worker_adopts_running_containers() {
    let h = harness();
    let (pod, mut w) = h
        .pod(
            "Always",
            vec![],
            vec![container("main", &["sleep", "1000"])],
        )
        .await;
    h.sync(&mut w).await;
    let before = h.rt.running();
    // The agent restarts: a fresh worker (no memory) for the same pod.
    let mut w2 = Worker::new(h.shared.clone(), pod.metadata.uid.clone().unwrap());
    let s = h.sync(&mut w2).await;
    assert_eq!(h.rt.running(), before, "no duplicate container");
    assert_eq!(app_status(&s, 0).restart_count, 0);
    assert_eq!(s.phase.as_deref(), Some("Running"));
}

#[test]
fn termination_messages() {
    let dir = tempfile::tempdir().unwrap();
    let log = crate::logs::format_record(chrono::Utc::now(), "stderr", false, b"panic: boom");
    std::fs::write(dir.path().join("container.log"), log).unwrap();
    let with_policy = |p: &str| Container {
        termination_message_policy: Some(p.into()),
        ..Default::default()
    };
    // (file contents, policy, exit code, want)
    let cases = [
        ("", "File", 1, None),
        ("bye", "File", 1, Some("bye")),
        ("", "FallbackToLogsOnError", 1, Some("panic: boom\n")),
        ("", "FallbackToLogsOnError", 0, None),
        ("mine", "FallbackToLogsOnError", 1, Some("mine")),
    ];
    for (file, policy, code, want) in cases {
        std::fs::write(dir.path().join(TERMINATION_LOG), file).unwrap();
        assert_eq!(
            termination_message(dir.path(), &with_policy(policy), code).as_deref(),
            want,
            "{file:?} {policy} {code}"
        );
    }
}

#[tokio::test]
async fn a_changed_image_restarts_the_container_whatever_the_policy() {
    let h = harness();
    let (_pod, mut w) = h
        .pod("Never", vec![], vec![container("main", &["sleep", "1000"])])
        .await;
    h.sync(&mut w).await;
    let first = h.rt.running();
    let mut pod: Pod = h.api.get(Some("ns"), "p").await.unwrap();
    pod.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
    h.api.update(Some("ns"), &pod).await.unwrap();
    h.sync(&mut w).await; // kills the old run
    let s = h.sync(&mut w).await; // starts the new one at once
    let now = h.rt.running();
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
    assert!(now[0].ends_with("-main-1"), "{now:?}");
    let c = app_status(&s, 0);
    assert_eq!((c.restart_count, c.image.as_str()), (1, "busybox:2"));
    assert_eq!(s.phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn a_pod_gone_from_the_api_is_stopped_after_the_minimum_grace() {
    let h = harness();
    let (pod, mut w) = h
        .pod(
            "Always",
            vec![],
            vec![container("main", &["sleep", "1000"])],
        )
        .await;
    h.sync(&mut w).await;
    // Force-deleted: the worker only learns that the pod is gone.
    assert_eq!(w.sync(None).await, Outcome::Continue);
    let signals = || -> Vec<i32> { h.rt.signals.lock().unwrap().iter().map(|s| s.1).collect() };
    assert_eq!(signals(), vec![libc::SIGTERM]);
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(w.sync(None).await, Outcome::Continue);
    assert_eq!(signals(), vec![libc::SIGTERM, libc::SIGKILL]);
    assert_eq!(w.sync(None).await, Outcome::Finished);
    assert!(h.rt.containers.lock().unwrap().is_empty());
    assert!(!h
        .shared
        .store
        .pod_dir(pod.metadata.uid.as_deref().unwrap())
        .exists());
}
