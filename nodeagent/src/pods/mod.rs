//! The pod reconciler: one worker per pod uid, level-triggered. Each sync looks at the
//! pod object (or its absence) and at what is on disk and in the runtime ([`crate::store`]),
//! never at remembered events, so a restarted agent re-adopts running containers instead
//! of duplicating them. A sync
//!
//! - runs init containers one at a time, in order, then every app container;
//! - restarts exited containers by restartPolicy with the crash-loop backoff
//!   ([`crate::status::decide`]);
//! - runs probes and kills containers whose liveness/startup probe fails;
//! - on deletion, sends SIGTERM, SIGKILL once the deletionTimestamp (the end of the grace
//!   period) passes, removes the containers and then the pod object (grace 0);
//! - writes the pod status (phase, conditions, container statuses) when it changed.
//!
//! Bad input never stops the worker: it becomes a waiting reason (ErrImagePull,
//! CreateContainerConfigError, CreateContainerError) retried on later syncs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use controlplane::client::{Api, DeleteParams};
use controlplane::clock::Clock;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;

use crate::images::ImageStore;
use crate::network::{PodNetwork, PodNetworkStatus};
use crate::probes::{self, Tracker};
use crate::runtime::{CreateRequest, Runtime, State};
use crate::shim::ExitRecord;
use crate::spec::{self, BindMount, SpecInput};
use crate::status::{self, ContainerView, Current, Decision, Terminated};
use crate::store::{container_id, AttemptMeta, PodRecord, Store};
use crate::{env, volumes};

/// How often configMap and secret volumes are rewritten from the API.
const VOLUME_REFRESH: Duration = Duration::from_secs(30);

/// The shortest grace period a container gets (the kubelet's minimum).
const MINIMUM_GRACE_SECONDS: i64 = 2;

/// How long a container that failed to be created waits before the next try.
const CREATE_RETRY: Duration = Duration::from_secs(5);

/// Why a pod could not be synced at all (container-level problems become waiting
/// reasons instead).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("writing the pod's state: {0}")]
    PodState(std::io::Error),
    #[error("setting up the pod network: {0}")]
    Network(std::io::Error),
}

/// The node-level settings the reconciler needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: String,
    /// pids.max of every container; `None` for no limit.
    pub pids_limit: Option<i64>,
    /// The cgroup under which containers go: `<cgroup_parent>/<container id>`.
    pub cgroup_parent: String,
    /// How often a worker re-syncs without a pod change.
    pub resync: Duration,
}

/// What every worker shares.
pub struct Shared<C: Api, R: Runtime, N: PodNetwork> {
    pub api: C,
    pub runtime: R,
    pub network: N,
    pub store: Store,
    pub images: ImageStore,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
}

/// Why a container has no running attempt right now (kept between syncs).
#[derive(Clone, Debug)]
struct Waiting {
    reason: String,
    message: String,
    retry_at: DateTime<Utc>,
}

/// One pod's worker.
pub struct Worker<C: Api, R: Runtime, N: PodNetwork> {
    shared: Arc<Shared<C, R, N>>,
    uid: String,
    last_pod: Option<Pod>,
    waiting: HashMap<String, Waiting>,
    probes: HashMap<(String, u32, &'static str), Tracker>,
    /// Attempts already removed from runc (their exit record stays on disk).
    removed: HashSet<String>,
    /// Containers sent SIGTERM.
    terminating: HashSet<String>,
    /// Containers killed because their definition changed.
    changed: HashSet<String>,
    /// (container, attempt) whose BackOff event was recorded.
    backoff_events: HashSet<(String, u32)>,
    /// The last pod network error recorded as an event (once per distinct message).
    network_error: Option<String>,
    gone_since: Option<DateTime<Utc>>,
    last_status: Option<PodStatus>,
    start_time: Option<Time>,
    /// The prepared volumes and when: configMap and secret contents are refreshed every
    /// [`VOLUME_REFRESH`], not on every sync.
    volumes: Option<(DateTime<Utc>, BTreeMap<String, volumes::Prepared>)>,
}

/// Whether a worker is done.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Finished,
}

/// One container's latest attempt.
struct Observed {
    attempt: u32,
    id: String,
    dir: PathBuf,
    meta: Option<AttemptMeta>,
    state: State,
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(Into::into)
}

/// The file bind-mounted at the container's terminationMessagePath, in its attempt dir.
const TERMINATION_LOG: &str = "termination-log";
/// Kubernetes' cap on a termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

/// The termination message of an ended attempt: what the container wrote to its
/// terminationMessagePath, or with FallbackToLogsOnError and a failure, its log's tail.
fn termination_message(dir: &std::path::Path, c: &Container, exit_code: i32) -> Option<String> {
    let mut bytes = std::fs::read(dir.join(TERMINATION_LOG)).unwrap_or_default();
    let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if bytes.is_empty() && fallback && exit_code != 0 {
        let log = std::fs::read(dir.join("container.log")).unwrap_or_default();
        let text = crate::logs::render(
            &log,
            &crate::logs::ReadOptions {
                tail_lines: Some(80),
                ..Default::default()
            },
        );
        bytes = text[text.len().saturating_sub(2048)..].to_vec();
    }
    bytes.truncate(TERMINATION_MESSAGE_MAX);
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

fn terminated_of(
    meta: Option<&AttemptMeta>,
    exit: &ExitRecord,
    dir: &std::path::Path,
    c: &Container,
) -> Terminated {
    Terminated {
        exit_code: exit.exit_code,
        signal: exit.signal,
        reason: Terminated::reason_for(exit.exit_code, exit.oom_killed).into(),
        message: termination_message(dir, c, exit.exit_code),
        started_at: meta
            .and_then(|m| m.started_at.as_deref())
            .and_then(parse_time),
        finished_at: parse_time(&exit.finished_at).unwrap_or_default(),
    }
}

fn now_str(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl<C: Api, R: Runtime, N: PodNetwork> Worker<C, R, N> {
    pub fn new(shared: Arc<Shared<C, R, N>>, uid: String) -> Self {
        Worker {
            shared,
            uid,
            last_pod: None,
            waiting: HashMap::new(),
            probes: HashMap::new(),
            removed: HashSet::new(),
            terminating: HashSet::new(),
            backoff_events: HashSet::new(),
            network_error: None,
            changed: HashSet::new(),
            gone_since: None,
            last_status: None,
            start_time: None,
            volumes: None,
        }
    }

    /// Syncs on every pod change and every `resync` until the pod is finished.
    pub async fn run(mut self, mut rx: watch::Receiver<Option<Pod>>) {
        loop {
            let pod = rx.borrow_and_update().clone();
            match self.sync(pod.as_ref()).await {
                Outcome::Finished => return,
                Outcome::Continue => {}
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The agent is shutting down; containers keep running.
                        return;
                    }
                }
                _ = self.shared.clock.sleep(self.shared.config.resync) => {}
            }
        }
    }

    /// One level-triggered pass.
    pub async fn sync(&mut self, pod: Option<&Pod>) -> Outcome {
        let now = self.shared.clock.now();
        match pod {
            None => {
                // Gone from the API: a graceful deletion keeps its deadline; a pod removed
                // at once (force-deleted, or gone while the agent was down) gets the
                // kubelet's minimum grace period.
                let since = *self.gone_since.get_or_insert(now);
                let deadline = self
                    .last_pod
                    .as_ref()
                    .and_then(|p| p.metadata.deletion_timestamp.clone())
                    .map(|t| t.0)
                    .unwrap_or(since + chrono::Duration::seconds(MINIMUM_GRACE_SECONDS));
                if self.terminate(deadline).await {
                    self.cleanup().await;
                    return Outcome::Finished;
                }
                Outcome::Continue
            }
            Some(pod) => {
                self.last_pod = Some(pod.clone());
                if let Some(ts) = &pod.metadata.deletion_timestamp {
                    if self.terminate(ts.0).await {
                        self.cleanup().await;
                        return self.finalize(pod).await;
                    }
                    return Outcome::Continue;
                }
                if let Err(e) = self.sync_live(pod, now).await {
                    tracing::warn!(pod = %self.key(), error = %e, "sync failed");
                }
                Outcome::Continue
            }
        }
    }

    fn key(&self) -> String {
        self.last_pod
            .as_ref()
            .map(|p| controlplane::client::key_of(&p.metadata))
            .unwrap_or_else(|| self.uid.clone())
    }

    fn container_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.shared.store.pod_dir(&self.uid).join("containers"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.file_name().to_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
        names.sort();
        names
    }

    async fn observe(&self, name: &str) -> Option<Observed> {
        let s = &self.shared.store;
        let attempt = *s.attempts(&self.uid, name).last()?;
        let dir = s.attempt_dir(&self.uid, name, attempt);
        let meta = s.read_meta(&dir);
        let id = meta
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_else(|| container_id(&self.uid, name, attempt));
        let state = match self.shared.runtime.state(&id, &dir).await {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!(%id, error = %e, "runtime state");
                State::Running
            }
        };
        Some(Observed {
            attempt,
            id,
            dir,
            meta,
            state,
        })
    }

    /// Signals every live container: SIGTERM once, SIGKILL after `deadline`. True when
    /// none is left running.
    async fn terminate(&mut self, deadline: DateTime<Utc>) -> bool {
        let now = self.shared.clock.now();
        let mut all_stopped = true;
        for name in self.container_names() {
            let Some(o) = self.observe(&name).await else {
                continue;
            };
            if matches!(o.state, State::Exited(_) | State::Missing) {
                continue;
            }
            all_stopped = false;
            let rt = &self.shared.runtime;
            if now >= deadline || o.state == State::Created {
                tracing::info!(pod = %self.key(), container = %name, "killing (grace period over)");
                if let Err(e) = rt.kill(&o.id, libc::SIGKILL).await {
                    tracing::warn!(id = %o.id, error = %e, "SIGKILL");
                }
                if o.state == State::Created {
                    let _ = rt.delete(&o.id).await;
                }
            } else if self.terminating.insert(o.id.clone()) {
                tracing::info!(pod = %self.key(), container = %name, "sending SIGTERM");
                self.event(crate::events::Record::normal(
                    "Killing",
                    &name,
                    format!("Stopping container {name}"),
                ))
                .await;
                let rt = &self.shared.runtime;
                if let Err(e) = rt.kill(&o.id, libc::SIGTERM).await {
                    tracing::warn!(id = %o.id, error = %e, "SIGTERM");
                }
            }
        }
        all_stopped
    }

    /// Removes every container of the pod from runc and the pod's state from disk.
    async fn cleanup(&mut self) {
        for name in self.container_names() {
            for attempt in self.shared.store.attempts(&self.uid, &name) {
                let dir = self.shared.store.attempt_dir(&self.uid, &name, attempt);
                let id = self
                    .shared
                    .store
                    .read_meta(&dir)
                    .map(|m| m.id)
                    .unwrap_or_else(|| container_id(&self.uid, &name, attempt));
                if let Err(e) = self.shared.runtime.delete(&id).await {
                    tracing::warn!(%id, error = %e, "runc delete");
                }
            }
        }
        if let Err(e) = self.shared.network.teardown(&self.uid) {
            tracing::warn!(uid = %self.uid, error = %e, "network teardown");
        }
        let dir = self.shared.store.pod_dir(&self.uid);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "removing pod state");
            }
        }
        tracing::info!(pod = %self.key(), "pod cleaned up");
    }

    /// Deletes the pod object now that its containers are gone.
    async fn finalize(&self, pod: &Pod) -> Outcome {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            precondition_uid: pod.metadata.uid.clone(),
            ..Default::default()
        };
        match self
            .shared
            .api
            .delete_with::<Pod>(Some(&ns), &name, &params)
            .await
        {
            Ok(()) => Outcome::Finished,
            Err(e) if e.is_not_found() || e.is_conflict() => Outcome::Finished,
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "deleting the pod object");
                Outcome::Continue
            }
        }
    }

    async fn sync_live(&mut self, pod: &Pod, now: DateTime<Utc>) -> Result<(), SyncError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let store = &self.shared.store;
        store
            .write_pod_record(&PodRecord {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: self.uid.clone(),
            })
            .map_err(SyncError::PodState)?;
        let net = match self
            .shared
            .network
            .setup(&self.uid, spec.host_network.unwrap_or(false))
        {
            Ok(net) => {
                self.network_error = None;
                net
            }
            Err(e) => {
                let message = e.to_string();
                if self.network_error.as_deref() != Some(message.as_str()) {
                    self.network_error = Some(message.clone());
                    self.event(crate::events::Record {
                        warning: true,
                        reason: "FailedCreatePodSandBox",
                        message: format!("Failed to create pod sandbox: {message}"),
                        container: None,
                    })
                    .await;
                }
                return Err(SyncError::Network(e));
            }
        };
        let hosts = store.pod_dir(&self.uid).join("hosts");
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{pod_name}\n",
                net.ip
            ),
        )
        .map_err(SyncError::PodState)?;
        // There is no cluster DNS: pods resolve names as the node does.
        let resolv = store.pod_dir(&self.uid).join("resolv.conf");
        let host_resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        std::fs::write(&resolv, host_resolv).map_err(SyncError::PodState)?;
        let fresh = self
            .volumes
            .as_ref()
            .filter(|(at, _)| controlplane::clock::since(now, *at) < VOLUME_REFRESH)
            .map(|(_, v)| v.clone());
        let vols = match fresh {
            Some(v) => Ok(v),
            None => {
                let prepared = volumes::prepare(&self.shared.api, &self.shared.store, pod).await;
                if let Ok(v) = &prepared {
                    self.volumes = Some((now, v.clone()));
                }
                prepared
            }
        };
        let terminal = self
            .last_status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .or(pod.status.as_ref().and_then(|s| s.phase.as_deref()))
            .is_some_and(|p| p == "Succeeded" || p == "Failed");

        let mut init_views = Vec::new();
        let mut initialized = true;
        for c in spec.init_containers.clone().unwrap_or_default() {
            let view = if initialized {
                self.step(pod, &c, true, &policy, &vols, &net, !terminal, now)
                    .await
            } else {
                self.pending_view(&c, "PodInitializing").await
            };
            initialized &= matches!(&view.current, Current::Terminated(t) if t.exit_code == 0);
            init_views.push(view);
        }
        let mut app_views = Vec::new();
        for c in spec.containers.clone() {
            let view = if initialized {
                self.step(pod, &c, false, &policy, &vols, &net, !terminal, now)
                    .await
            } else {
                self.pending_view(&c, "PodInitializing").await
            };
            app_views.push(view);
        }
        let phase = status::phase(&policy, &init_views, &app_views);
        self.write_status(pod, phase, initialized, &init_views, &app_views, &net, now)
            .await;
        Ok(())
    }

    async fn pending_view(&self, c: &Container, reason: &str) -> ContainerView {
        ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            current: Current::Waiting {
                reason: reason.into(),
                message: None,
            },
            last: None,
            restart_count: 0,
            ready: false,
            started: Some(false),
            container_id: None,
        }
    }

    /// The terminated state of the attempt before `attempt`, for lastState.
    fn previous(&self, c: &Container, attempt: u32) -> Option<Terminated> {
        let prev = attempt.checked_sub(1)?;
        let dir = self.shared.store.attempt_dir(&self.uid, &c.name, prev);
        let exit = crate::shim::read_exit(&dir)?;
        Some(terminated_of(
            self.shared.store.read_meta(&dir).as_ref(),
            &exit,
            &dir,
            c,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn step(
        &mut self,
        pod: &Pod,
        c: &Container,
        is_init: bool,
        policy: &str,
        vols: &Result<BTreeMap<String, volumes::Prepared>, volumes::VolumeError>,
        net: &PodNetworkStatus,
        allow_start: bool,
        now: DateTime<Utc>,
    ) -> ContainerView {
        let image = c.image.clone().unwrap_or_default();
        let mut view = ContainerView {
            name: c.name.clone(),
            image: image.clone(),
            current: Current::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            restart_count: 0,
            ready: false,
            started: Some(false),
            container_id: None,
        };
        let Some(mut o) = self.observe(&c.name).await else {
            if allow_start {
                return self.start(pod, c, 0, vols, net, view, now).await;
            }
            return view;
        };
        view.restart_count = o.attempt;
        view.last = self.previous(c, o.attempt);
        view.container_id = Some(format!("runc://{}", o.id));
        if o.state == State::Missing {
            match o.meta.as_ref().and_then(|m| m.started_at.clone()) {
                // Never started (the agent stopped mid-create): try this attempt again.
                None => {
                    let _ = std::fs::remove_dir_all(&o.dir);
                    if allow_start {
                        return self.start(pod, c, o.attempt, vols, net, view, now).await;
                    }
                    return view;
                }
                // It ran and is gone without an exit record (e.g. the machine rebooted).
                Some(_) => {
                    let exit = ExitRecord {
                        exit_code: 255,
                        signal: None,
                        oom_killed: false,
                        finished_at: now_str(now),
                    };
                    let _ = crate::store::write_json(&o.dir.join(crate::shim::EXIT_FILE), &exit);
                    o.state = State::Exited(exit);
                }
            }
        }
        let spec_changed = o.meta.as_ref().is_some_and(|m| m.image != image);
        match o.state.clone() {
            State::Created => {
                // The agent stopped between create and start.
                if let Err(e) = self.shared.runtime.start(&o.id).await {
                    tracing::warn!(id = %o.id, error = %e, "starting an adopted container");
                }
                self.mark_started(&o, now);
                view.current = Current::Running { started_at: now };
                view.started = Some(true);
                view
            }
            State::Running if spec_changed => {
                // The kubelet restarts a container whose definition changed (here: its
                // image) whatever the restart policy.
                if self.changed.insert(o.id.clone()) {
                    tracing::info!(id = %o.id, "image changed; restarting the container");
                    self.event(crate::events::Record::normal(
                        "Killing",
                        &c.name,
                        format!("Container {} definition changed, will be restarted", c.name),
                    ))
                    .await;
                    let _ = self.shared.runtime.kill(&o.id, libc::SIGKILL).await;
                }
                view.current = Current::Running { started_at: now };
                view
            }
            State::Running => {
                let started_at = o
                    .meta
                    .as_ref()
                    .and_then(|m| m.started_at.as_deref())
                    .and_then(parse_time)
                    .unwrap_or(now);
                view.current = Current::Running { started_at };
                let (started, ready) = self.run_probes(c, &o, started_at, net, now).await;
                view.started = Some(started);
                view.ready = ready;
                view
            }
            State::Exited(exit) => {
                if self.removed.insert(o.id.clone()) {
                    let _ = self.shared.runtime.delete(&o.id).await;
                    let _ = std::fs::remove_dir_all(o.dir.join("rootfs"));
                }
                let t = terminated_of(o.meta.as_ref(), &exit, &o.dir, c);
                let decision = if spec_changed {
                    Decision::Restart
                } else {
                    status::decide(policy, is_init, &t, o.attempt, now)
                };
                match decision {
                    Decision::Restart if allow_start => {
                        view.last = Some(t);
                        view.restart_count = o.attempt + 1;
                        self.start(pod, c, o.attempt + 1, vols, net, view, now)
                            .await
                    }
                    Decision::BackOff(d) if allow_start => {
                        let pod_name = pod.metadata.name.clone().unwrap_or_default();
                        let ns = pod.metadata.namespace.clone().unwrap_or_default();
                        let delay = status::decide(policy, is_init, &t, o.attempt, t.finished_at);
                        let total = match delay {
                            Decision::BackOff(total) => total,
                            _ => d,
                        };
                        if self.backoff_events.insert((c.name.clone(), o.attempt)) {
                            self.event(crate::events::Record::warning(
                                "BackOff",
                                &c.name,
                                "Back-off restarting failed container",
                            ))
                            .await;
                        }
                        view.current = Current::Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: Some(format!(
                                "back-off {}s restarting failed container={} pod={pod_name}_{ns}({})",
                                total.as_secs(),
                                c.name,
                                self.uid
                            )),
                        };
                        view.last = Some(t);
                        view
                    }
                    _ => {
                        view.current = Current::Terminated(t);
                        view
                    }
                }
            }
            State::Missing => view,
        }
    }

    fn mark_started(&self, o: &Observed, now: DateTime<Utc>) {
        if let Some(mut meta) = o.meta.clone() {
            if meta.started_at.is_none() {
                meta.started_at = Some(now_str(now));
                let _ = self.shared.store.write_meta(&o.dir, &meta);
            }
        }
    }

    /// Startup, liveness and readiness probes of a running container: (started, ready).
    async fn run_probes(
        &mut self,
        c: &Container,
        o: &Observed,
        started_at: DateTime<Utc>,
        net: &PodNetworkStatus,
        now: DateTime<Utc>,
    ) -> (bool, bool) {
        let (started, ready, unhealthy) = self.probe_round(c, o, started_at, net, now).await;
        for message in unhealthy {
            self.event(crate::events::Record::warning(
                "Unhealthy",
                &c.name,
                message,
            ))
            .await;
        }
        (started, ready)
    }

    /// One round of due probes: (started, ready, messages of probes that just failed).
    async fn probe_round(
        &mut self,
        c: &Container,
        o: &Observed,
        started_at: DateTime<Utc>,
        net: &PodNetworkStatus,
        now: DateTime<Utc>,
    ) -> (bool, bool, Vec<String>) {
        let rt = &self.shared.runtime;
        let mut unhealthy = Vec::new();
        let mut started = true;
        if let Some(p) = &c.startup_probe {
            let t = self
                .probes
                .entry((c.name.clone(), o.attempt, "startup"))
                .or_default();
            if t.result != Some(true) {
                if t.due(p, started_at, now) {
                    let ok = probes::run(rt, &o.id, c, p, &net.ip).await;
                    if t.record(p, ok, now) == Some(false) {
                        tracing::info!(id = %o.id, "startup probe failed; killing");
                        unhealthy.push(
                            "Startup probe failed; the container will be restarted".to_string(),
                        );
                        let _ = rt.kill(&o.id, libc::SIGKILL).await;
                    }
                }
                started = t.result == Some(true);
            }
        }
        if !started {
            return (false, false, unhealthy);
        }
        if let Some(p) = &c.liveness_probe {
            let t = self
                .probes
                .entry((c.name.clone(), o.attempt, "liveness"))
                .or_default();
            if t.due(p, started_at, now) {
                let ok = probes::run(rt, &o.id, c, p, &net.ip).await;
                if t.record(p, ok, now) == Some(false) {
                    tracing::info!(id = %o.id, "liveness probe failed; killing");
                    unhealthy
                        .push("Liveness probe failed; the container will be restarted".to_string());
                    let _ = rt.kill(&o.id, libc::SIGKILL).await;
                    return (true, false, unhealthy);
                }
            }
        }
        let ready = match &c.readiness_probe {
            None => true,
            Some(p) => {
                let t = self
                    .probes
                    .entry((c.name.clone(), o.attempt, "readiness"))
                    .or_default();
                if t.due(p, started_at, now) {
                    let before = t.result;
                    let ok = probes::run(rt, &o.id, c, p, &net.ip).await;
                    if t.record(p, ok, now) == Some(false) && before != Some(false) {
                        unhealthy.push("Readiness probe failed".to_string());
                    }
                }
                t.result == Some(true)
            }
        };
        (true, ready, unhealthy)
    }

    async fn event(&self, r: crate::events::Record) {
        if let Some(pod) = &self.last_pod {
            let now = self.shared.clock.now();
            crate::events::record(&self.shared.api, pod, &self.shared.config.node_name, r, now)
                .await;
        }
    }

    async fn wait_view(
        &mut self,
        mut view: ContainerView,
        reason: &str,
        message: String,
        now: DateTime<Utc>,
    ) -> ContainerView {
        tracing::warn!(pod = %self.key(), container = %view.name, %reason, %message, "container cannot start");
        let repeated = self
            .waiting
            .get(&view.name)
            .is_some_and(|w| w.message == message);
        if !repeated {
            let text = if reason == "ErrImagePull" || reason == "ImagePullBackOff" {
                format!("Failed to pull image \"{}\": {message}", view.image)
            } else {
                format!("Error: {message}")
            };
            self.event(crate::events::Record::warning("Failed", &view.name, text))
                .await;
        }
        self.waiting.insert(
            view.name.clone(),
            Waiting {
                reason: reason.into(),
                message: message.clone(),
                retry_at: now + chrono::Duration::from_std(CREATE_RETRY).unwrap_or_default(),
            },
        );
        view.current = Current::Waiting {
            reason: reason.into(),
            message: Some(message),
        };
        view
    }

    /// Creates and starts attempt `attempt` of a container.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        vols: &Result<BTreeMap<String, volumes::Prepared>, volumes::VolumeError>,
        net: &PodNetworkStatus,
        mut view: ContainerView,
        now: DateTime<Utc>,
    ) -> ContainerView {
        if let Some(w) = self.waiting.get(&c.name) {
            if now < w.retry_at {
                view.current = Current::Waiting {
                    reason: w.reason.clone(),
                    message: Some(w.message.clone()),
                };
                return view;
            }
        }
        let image_ref = c.image.clone().unwrap_or_default();
        let image = match self.shared.images.resolve(&image_ref) {
            Ok(i) => i,
            Err(e) => {
                let reason = match self.waiting.get(&c.name) {
                    Some(w) if w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff" => {
                        "ImagePullBackOff"
                    }
                    _ => "ErrImagePull",
                };
                return self.wait_view(view, reason, e.to_string(), now).await;
            }
        };
        let vols = match vols {
            Ok(v) => v,
            Err(e) => {
                return self
                    .wait_view(view, "CreateContainerConfigError", e.to_string(), now)
                    .await
            }
        };
        let node = env::NodeFields {
            node_name: self.shared.config.node_name.clone(),
            pod_ip: net.ip.clone(),
            host_ip: self.shared.config.node_ip.clone(),
        };
        let env = match env::resolve(&self.shared.api, pod, c, &node).await {
            Ok(e) => e,
            Err(e) => {
                return self
                    .wait_view(view, "CreateContainerConfigError", e.to_string(), now)
                    .await
            }
        };
        let mut mounts = match volumes::mounts(c, vols) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .wait_view(view, "CreateContainerConfigError", e.to_string(), now)
                    .await
            }
        };
        let store = &self.shared.store;
        let dir = store.attempt_dir(&self.uid, &c.name, attempt);
        let rootfs = dir.join("rootfs");
        if image.rootfs.join("etc").is_dir() {
            for file in ["hosts", "resolv.conf"] {
                mounts.push(BindMount {
                    source: store.pod_dir(&self.uid).join(file),
                    destination: format!("/etc/{file}"),
                    read_only: false,
                });
            }
        }
        mounts.push(BindMount {
            source: dir.join(TERMINATION_LOG),
            destination: c
                .termination_message_path
                .clone()
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| "/dev/termination-log".into()),
            read_only: false,
        });
        let id = container_id(&self.uid, &c.name, attempt);
        let cgroups_path = format!("{}/{id}", self.shared.config.cgroup_parent);
        let input = SpecInput {
            pod,
            container: c,
            image: &image.config,
            rootfs: rootfs.clone(),
            env,
            mounts,
            cgroups_path: cgroups_path.clone(),
            pids_limit: self.shared.config.pids_limit,
            netns: net.netns.clone(),
        };
        let oci = match spec::build(&input) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .wait_view(view, "CreateContainerConfigError", e.to_string(), now)
                    .await
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return self
                .wait_view(
                    view,
                    "CreateContainerError",
                    format!("{}: {e}", dir.display()),
                    now,
                )
                .await;
        }
        let copied = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(image.rootfs.join("."))
            .arg(&rootfs)
            .output()
            .await;
        match copied {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let _ = std::fs::remove_dir_all(&dir);
                let msg = format!(
                    "copying the image rootfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return self.wait_view(view, "CreateContainerError", msg, now).await;
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return self
                    .wait_view(
                        view,
                        "CreateContainerError",
                        format!("running cp: {e}"),
                        now,
                    )
                    .await;
            }
        }
        if let Err(e) = std::fs::write(dir.join(TERMINATION_LOG), b"") {
            let _ = std::fs::remove_dir_all(&dir);
            return self
                .wait_view(view, "CreateContainerError", e.to_string(), now)
                .await;
        }
        if let Err(e) = oci.save(dir.join("config.json")) {
            let _ = std::fs::remove_dir_all(&dir);
            return self
                .wait_view(view, "CreateContainerError", e.to_string(), now)
                .await;
        }
        let image_ref_for_events = image_ref.clone();
        let mut meta = AttemptMeta {
            id: id.clone(),
            attempt,
            created_at: now_str(now),
            started_at: None,
            image: image_ref,
        };
        if let Err(e) = store.write_meta(&dir, &meta) {
            let _ = std::fs::remove_dir_all(&dir);
            return self
                .wait_view(view, "CreateContainerError", e.to_string(), now)
                .await;
        }
        let req = CreateRequest {
            id: id.clone(),
            bundle: dir.clone(),
            log: dir.join("container.log"),
            cgroups_path,
        };
        let rt = &self.shared.runtime;
        let started = match rt.create(&req).await {
            Ok(()) => rt
                .start(&id)
                .await
                .map_err(|e| ("RunContainerError", e.to_string())),
            Err(e) => Err(("CreateContainerError", e.to_string())),
        };
        if let Err((reason, msg)) = started {
            let _ = rt.delete(&id).await;
            let _ = std::fs::remove_dir_all(&dir);
            return self.wait_view(view, reason, msg, now).await;
        }
        meta.started_at = Some(now_str(now));
        let _ = store.write_meta(&dir, &meta);
        self.waiting.remove(&c.name);
        // Probe state belongs to one run.
        self.probes
            .retain(|(name, a, _), _| name != &c.name || *a >= attempt);
        tracing::info!(pod = %self.key(), container = %c.name, attempt, %id, "container started");
        for (reason, message) in [
            (
                "Pulled",
                format!(
                    "Container image \"{}\" already present on machine",
                    image_ref_for_events
                ),
            ),
            ("Created", format!("Created container {}", c.name)),
            ("Started", format!("Started container {}", c.name)),
        ] {
            self.event(crate::events::Record::normal(reason, &c.name, message))
                .await;
        }
        // Keep the previous attempt (for --previous logs and lastState), drop older ones.
        for old in store.attempts(&self.uid, &c.name) {
            if old + 1 < attempt {
                let old_dir = store.attempt_dir(&self.uid, &c.name, old);
                let old_id = container_id(&self.uid, &c.name, old);
                let _ = rt.delete(&old_id).await;
                let _ = std::fs::remove_dir_all(old_dir);
            }
        }
        view.current = Current::Running { started_at: now };
        view.container_id = Some(format!("runc://{id}"));
        view.restart_count = attempt;
        view.started = Some(c.startup_probe.is_none());
        view.ready = c.readiness_probe.is_none() && c.startup_probe.is_none();
        view
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_status(
        &mut self,
        pod: &Pod,
        phase: &str,
        initialized: bool,
        init: &[ContainerView],
        app: &[ContainerView],
        net: &PodNetworkStatus,
        now: DateTime<Utc>,
    ) {
        let old = pod.status.clone().unwrap_or_default();
        let start_time = self
            .start_time
            .clone()
            .or(old.start_time.clone())
            .unwrap_or(Time(
                DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now),
            ));
        self.start_time = Some(start_time.clone());
        let status = podstatus::build(&podstatus::Input {
            pod,
            phase,
            initialized,
            init,
            app,
            host_ip: &self.shared.config.node_ip,
            pod_ip: &net.ip,
            start_time,
            now,
        });
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let mut next = pod.clone();
        next.status = Some(status.clone());
        let ns = pod.metadata.namespace.clone();
        let mut result = self.shared.api.update_status(ns.as_deref(), &next).await;
        if matches!(&result, Err(e) if e.is_conflict()) {
            // The watch has not caught up with a newer version; write onto the latest.
            if let Ok(mut fresh) = self
                .shared
                .api
                .get::<Pod>(ns.as_deref(), pod.metadata.name.as_deref().unwrap_or(""))
                .await
            {
                if fresh.metadata.uid == pod.metadata.uid {
                    fresh.status = Some(status.clone());
                    result = self.shared.api.update_status(ns.as_deref(), &fresh).await;
                }
            }
        }
        match result {
            Ok(_) => {
                tracing::debug!(pod = %self.key(), %phase, "status written");
                self.last_status = Some(status);
            }
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "writing pod status"),
        }
    }
}

mod podstatus;
#[cfg(test)]
mod tests;
