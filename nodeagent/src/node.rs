//! The agent's Node: registration (capacity/allocatable from the host or flags, labels,
//! taints, addresses, the log server's port), the node status loop (conditions Ready,
//! MemoryPressure, DiskPressure, PIDPressure with heartbeat and transition times) and
//! the heartbeat Lease `kube-node-lease/<node>` (holderIdentity = node name,
//! leaseDurationSeconds 40, renewTime every `--lease-renew-interval`), which the
//! controller manager's node-lifecycle controller watches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use controlplane::client::Api;
use controlplane::clock::Clock;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use tokio_util::sync::CancellationToken;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// How the node describes itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// CPU capacity in millicores.
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub max_pods: i64,
    /// Held back from allocatable for the system (the kubelet's --system-reserved).
    pub reserved_cpu_millis: i64,
    pub reserved_memory_bytes: i64,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// The filesystem the disk-pressure condition watches (the state dir).
    pub root_dir: PathBuf,
    pub runtime_version: String,
    /// The runc binary, checked on every status update for the Ready condition.
    pub runc: PathBuf,
}

/// Why the container runtime cannot run containers, if it cannot.
fn runtime_error(runc: &std::path::Path) -> Option<String> {
    match std::process::Command::new(runc).arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("{} --version: {}", runc.display(), o.status)),
        Err(e) => Some(format!("{}: {e}", runc.display())),
    }
}

/// Parses `key=value:Effect` or `key:Effect` (the kubelet's --register-with-taints).
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid taint {s:?}: want key[=value]:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!("invalid taint effect {effect:?} in {s:?}"));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(format!("invalid taint {s:?}: empty key"));
    }
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

/// The host's CPU count (millicores) and memory (bytes).
pub fn host_capacity() -> (i64, i64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as i64;
    (cpus * 1000, meminfo("MemTotal").unwrap_or(0))
}

/// A /proc/meminfo field in bytes.
fn meminfo(field: &str) -> Option<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: i64 = rest.trim().trim_end_matches(" kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Pressure signals, sampled from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pids: bool,
}

/// The kubelet's default hard eviction thresholds: memory.available < 100Mi,
/// nodefs.available < 10%, and PIDs over 90% of pid_max here.
pub fn sample_pressure(root: &std::path::Path) -> Pressure {
    let memory = meminfo("MemAvailable").is_some_and(|a| a < 100 << 20);
    let disk = disk_free_fraction(root).is_some_and(|f| f < 0.10);
    let pids = (|| {
        let max: f64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let used = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count() as f64;
        Some(used / max > 0.9)
    })()
    .unwrap_or(false);
    Pressure { memory, disk, pids }
}

fn disk_free_fraction(path: &std::path::Path) -> Option<f64> {
    let c = std::ffi::CString::new(path.to_str()?).ok()?;
    // SAFETY: statvfs fills a zeroed struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 / st.f_blocks as f64)
}

fn t(now: DateTime<Utc>) -> Time {
    Time(DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now))
}

/// The node's conditions, keeping each condition's transition time while its status
/// holds; Ready is False with `runtime_error` when the container runtime does not work.
pub fn conditions(
    previous: Option<&[NodeCondition]>,
    p: Pressure,
    runtime_error: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<NodeCondition> {
    let mk =
        |ty: &str, on: bool, reason_on: &str, reason_off: &str, msg_on: &str, msg_off: &str| {
            let status = if on { "True" } else { "False" }.to_string();
            let prev = previous.and_then(|cs| cs.iter().find(|c| c.type_ == ty));
            let since = match prev {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Some(t(now)),
            };
            NodeCondition {
                type_: ty.into(),
                status,
                reason: Some(if on { reason_on } else { reason_off }.into()),
                message: Some(if on { msg_on } else { msg_off }.into()),
                last_heartbeat_time: Some(t(now)),
                last_transition_time: since,
            }
        };
    vec![
        mk(
            "MemoryPressure",
            p.memory,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "kubelet has insufficient memory available",
            "kubelet has sufficient memory available",
        ),
        mk(
            "DiskPressure",
            p.disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has disk pressure",
            "kubelet has no disk pressure",
        ),
        mk(
            "PIDPressure",
            p.pids,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "kubelet has insufficient PID available",
            "kubelet has sufficient PID available",
        ),
        mk(
            "Ready",
            runtime_error.is_none(),
            "KubeletReady",
            "KubeletNotReady",
            "kubelet is posting ready status",
            &format!(
                "container runtime is down: {}",
                runtime_error.unwrap_or_default()
            ),
        ),
    ]
}

fn quantity_cpu(millis: i64) -> Quantity {
    if millis % 1000 == 0 {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

impl NodeConfig {
    fn status(
        &self,
        previous: Option<&[NodeCondition]>,
        p: Pressure,
        now: DateTime<Utc>,
    ) -> NodeStatus {
        let resources = |cpu: i64, memory: i64| -> BTreeMap<String, Quantity> {
            [
                ("cpu".to_string(), quantity_cpu(cpu.max(0))),
                (
                    "memory".to_string(),
                    Quantity(format!("{}Ki", memory.max(0) / 1024)),
                ),
                ("pods".to_string(), Quantity(self.max_pods.to_string())),
            ]
            .into()
        };
        NodeStatus {
            capacity: Some(resources(self.cpu_millis, self.memory_bytes)),
            allocatable: Some(resources(
                self.cpu_millis - self.reserved_cpu_millis,
                self.memory_bytes - self.reserved_memory_bytes,
            )),
            conditions: Some(conditions(
                previous,
                p,
                runtime_error(&self.runc).as_deref(),
                now,
            )),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.ip.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: self.port as i32,
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
                operating_system: "linux".into(),
                container_runtime_version: self.runtime_version.clone(),
                kubelet_version: "v1.20.0-nodeagent".into(),
                kube_proxy_version: "v1.20.0-nodeagent".into(),
                kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
                    .into(),
                os_image: os_image(),
                machine_id: std::fs::read_to_string("/etc/machine-id")
                    .unwrap_or_default()
                    .trim()
                    .into(),
                boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .unwrap_or_default()
                    .trim()
                    .into(),
                system_uuid: String::new(),
            }),
            ..Default::default()
        }
    }

    fn object(&self, now: DateTime<Utc>, p: Pressure) -> Node {
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "kubernetes.io/arch".to_string(),
                std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
            ),
        ]);
        labels.extend(self.labels.clone());
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..Default::default()
            }),
            status: Some(self.status(None, p, now)),
        }
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Creates the Node, or adopts an existing one (merging our labels and writing status).
pub async fn register<C: Api>(
    api: &C,
    cfg: &NodeConfig,
    now: DateTime<Utc>,
) -> Result<Node, controlplane::client::ClientError> {
    let p = sample_pressure(&cfg.root_dir);
    let node = cfg.object(now, p);
    match api.create(None, &node).await {
        Ok(n) => {
            tracing::info!(node = %cfg.name, "registered node");
            // The status of a create is dropped by the API server (status is a subresource).
            let mut n = n;
            n.status = node.status.clone();
            api.update_status(None, &n).await
        }
        Err(e) if e.is_already_exists() => {
            let mut existing: Node = api.get(None, &cfg.name).await?;
            let labels = existing.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(node.metadata.labels.clone().unwrap_or_default());
            if !cfg.taints.is_empty() {
                existing.spec.get_or_insert_with(Default::default).taints =
                    Some(cfg.taints.clone());
            }
            let mut updated = api.update(None, &existing).await?;
            let prev = updated.status.as_ref().and_then(|s| s.conditions.clone());
            updated.status = Some(cfg.status(prev.as_deref(), p, now));
            tracing::info!(node = %cfg.name, "adopted existing node");
            api.update_status(None, &updated).await
        }
        Err(e) => Err(e),
    }
}

/// Writes the node status every `every` until cancelled.
pub async fn status_loop<C: Api>(
    api: C,
    cfg: NodeConfig,
    clock: Arc<dyn Clock>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock.sleep(every) => {}
        }
        let now = clock.now();
        let p = sample_pressure(&cfg.root_dir);
        let result = async {
            let mut node: Node = api.get(None, &cfg.name).await?;
            let prev = node.status.as_ref().and_then(|s| s.conditions.clone());
            node.status = Some(cfg.status(prev.as_deref(), p, now));
            api.update_status(None, &node).await
        }
        .await;
        match result {
            Ok(_) => tracing::debug!(node = %cfg.name, "node status updated"),
            Err(e) if e.is_not_found() => {
                if let Err(e) = register(&api, &cfg, now).await {
                    tracing::warn!(error = %e, "re-registering the node");
                }
            }
            Err(e) => tracing::warn!(error = %e, "updating node status"),
        }
    }
}

/// Renews (creating if needed) the node's Lease once.
pub async fn renew_lease<C: Api>(
    api: &C,
    node: &str,
    node_uid: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Lease, controlplane::client::ClientError> {
    let renew = MicroTime(now);
    match api.get::<Lease>(Some(LEASE_NAMESPACE), node).await {
        Ok(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(node.into());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(renew);
            api.update(Some(LEASE_NAMESPACE), &lease).await
        }
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node.into(),
                            uid: uid.into(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(renew),
                    ..Default::default()
                }),
            };
            api.create(Some(LEASE_NAMESPACE), &lease).await
        }
        Err(e) => Err(e),
    }
}

/// Renews the Lease every `every` until cancelled.
pub async fn lease_loop<C: Api>(
    api: C,
    node: String,
    node_uid: Option<String>,
    clock: Arc<dyn Clock>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        if let Err(e) = renew_lease(&api, &node, node_uid.as_deref(), clock.now()).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock.sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::client::fake::FakeApi;
    use controlplane::clock::ManualClock;

    #[test]
    fn taints() {
        let cases = [
            (
                "dedicated=gpu:NoSchedule",
                Some(("dedicated", Some("gpu"), "NoSchedule")),
            ),
            ("maint:NoExecute", Some(("maint", None, "NoExecute"))),
            ("a=b:Sometimes", None),
            ("novalue", None),
            ("=x:NoSchedule", None),
        ];
        for (s, want) in cases {
            let got = parse_taint(s).ok();
            assert_eq!(
                got.as_ref()
                    .map(|t| (t.key.as_str(), t.value.as_deref(), t.effect.as_str())),
                want,
                "{s}"
            );
        }
    }

    #[test]
    fn transition_time_kept_while_status_holds() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t1 = t0 + chrono::Duration::seconds(10);
        let calm = Pressure {
            memory: false,
            disk: false,
            pids: false,
        };
        let first = conditions(None, calm, None, t0);
        let second = conditions(Some(&first), calm, None, t1);
        let mem = |cs: &[NodeCondition]| {
            cs.iter()
                .find(|c| c.type_ == "MemoryPressure")
                .cloned()
                .unwrap()
        };
        assert_eq!(mem(&second).last_transition_time, Some(t(t0)));
        assert_eq!(mem(&second).last_heartbeat_time, Some(t(t1)));
        let third = conditions(
            Some(&second),
            Pressure {
                memory: true,
                ..calm
            },
            None,
            t1,
        );
        assert_eq!(mem(&third).status, "True");
        assert_eq!(mem(&third).last_transition_time, Some(t(t1)));
        let ready = third.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", Some("KubeletReady"))
        );
        let down = conditions(Some(&third), calm, Some("runc: not found"), t1);
        let ready = down.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_deref()),
            ("False", Some("container runtime is down: runc: not found"))
        );
        assert_eq!(ready.last_transition_time, Some(t(t1)));
    }

    #[tokio::test]
    async fn register_and_renew_lease() {
        let api = FakeApi::new();
        let clock = ManualClock::default();
        let cfg = NodeConfig {
            name: "n1".into(),
            ip: "10.0.0.1".into(),
            port: 10250,
            cpu_millis: 2500,
            memory_bytes: 4 << 30,
            max_pods: 110,
            reserved_cpu_millis: 500,
            reserved_memory_bytes: 1 << 30,
            labels: [("zone".to_string(), "a".to_string())].into(),
            taints: vec![parse_taint("k=v:NoSchedule").unwrap()],
            root_dir: "/".into(),
            runtime_version: "runc://1.1.5".into(),
            runc: "true".into(),
        };
        let node = register(&api, &cfg, clock.now()).await.unwrap();
        let status = node.status.unwrap();
        assert_eq!(
            status.capacity.as_ref().unwrap()["cpu"],
            Quantity("2500m".into())
        );
        assert_eq!(
            status.capacity.as_ref().unwrap()["memory"],
            Quantity("4194304Ki".into())
        );
        assert_eq!(
            status.allocatable.as_ref().unwrap()["cpu"],
            Quantity("2".into())
        );
        assert_eq!(
            status.allocatable.as_ref().unwrap()["memory"],
            Quantity("3145728Ki".into())
        );
        assert_eq!(
            status
                .daemon_endpoints
                .unwrap()
                .kubelet_endpoint
                .unwrap()
                .port,
            10250
        );
        assert_eq!(node.metadata.labels.as_ref().unwrap()["zone"], "a");
        assert_eq!(node.spec.unwrap().taints.unwrap()[0].key, "k");
        // Registering again adopts the node.
        register(&api, &cfg, clock.now()).await.unwrap();
        assert_eq!(api.all::<Node>().len(), 1);

        let l1 = renew_lease(&api, "n1", Some("uid"), clock.now())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(10));
        let l2 = renew_lease(&api, "n1", Some("uid"), clock.now())
            .await
            .unwrap();
        let spec = l2.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(
            (spec.renew_time.unwrap().0 - l1.spec.unwrap().renew_time.unwrap().0).num_seconds(),
            10
        );
    }
}
