//! The OCI runtime spec (`config.json`) of one container, built with the `oci-spec` types
//! from the pod, the container, its image's config and the prepared mounts: Kubernetes'
//! command/args vs. the image's Entrypoint/Cmd, env, workingDir, resource limits as
//! cgroup limits (memory.max, cpu.max from limits; cpu weight from requests; pids.max
//! from the agent's pod PID limit), bind mounts for volumes and /etc/hosts.
//!
//! Namespaces: pid, ipc, uts (hostname = pod name) and mount are per container; the
//! network namespace is the one the pod network gives ([`crate::network`]), by default
//! the host's.

use std::path::PathBuf;

use controlplane::scheduler::resources::parse_quantity;
use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::images::ImageConfig;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Bad input in the pod spec: the container waits with CreateContainerConfigError.
    #[error("{0}")]
    Config(String),
    #[error("building the runtime spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything the spec is built from.
#[derive(Clone, Debug)]
pub struct SpecInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    pub rootfs: PathBuf,
    /// The container's environment, resolved (configMap/secret/field refs) and in order.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    pub cgroups_path: String,
    pub pids_limit: Option<i64>,
    /// A network namespace to join; `None` shares the host's.
    pub netns: Option<PathBuf>,
}

/// The process's argv by Kubernetes' rules: `command` replaces the image's Entrypoint,
/// `args` its Cmd; with only `args`, the Entrypoint stays.
pub fn argv(container: &Container, image: &ImageConfig) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    match (command.is_empty(), args.is_empty()) {
        (false, _) => [command, args].concat(),
        (true, false) => [image.entrypoint.clone(), args].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

/// A container's resources as cgroup settings need them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub cpu_millis: Option<i64>,
    pub cpu_request_millis: Option<i64>,
}

/// The resource limits (and CPU request) of a container.
pub fn limits(container: &Container) -> Result<Limits, SpecError> {
    let get = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               k: &str,
               milli: bool|
     -> Result<Option<i64>, SpecError> {
        match m.and_then(|m| m.get(k)) {
            None => Ok(None),
            Some(q) => match parse_quantity(&q.0, milli) {
                Some(v) if v > 0 => Ok(Some(v)),
                _ => Err(SpecError::Config(format!("invalid {k} quantity {:?}", q.0))),
            },
        }
    };
    let r = container.resources.as_ref();
    let lim = r.and_then(|r| r.limits.as_ref());
    let req = r.and_then(|r| r.requests.as_ref());
    let memory = get(lim, "memory", false)?;
    if memory.is_some_and(|m| m < 4096 * 2) {
        return Err(SpecError::Config(format!(
            "memory limit {} is below the minimum of 8Ki",
            memory.unwrap_or(0)
        )));
    }
    Ok(Limits {
        memory_bytes: memory,
        cpu_millis: get(lim, "cpu", true)?,
        cpu_request_millis: get(req, "cpu", true)?,
    })
}

/// The capabilities containerd gives a Kubernetes container by default.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability (privileged containers and `add: [ALL]`).
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

/// The container's capability set: the default (or all, privileged) with the
/// securityContext's `add` and `drop` applied (names with or without `CAP_`, or `ALL`).
fn capabilities(
    sc: Option<&k8s_openapi::api::core::v1::SecurityContext>,
) -> Result<oci_spec::runtime::LinuxCapabilities, SpecError> {
    let norm = |n: &str| {
        n.trim()
            .to_ascii_uppercase()
            .trim_start_matches("CAP_")
            .to_string()
    };
    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    let base = if privileged {
        ALL_CAPABILITIES
    } else {
        DEFAULT_CAPABILITIES
    };
    let mut set: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    for d in caps.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        let d = norm(d);
        set.retain(|c| d != "ALL" && *c != d);
    }
    for a in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        let a = norm(a);
        let add: Vec<String> = if a == "ALL" {
            ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect()
        } else {
            vec![a]
        };
        for c in add {
            if !set.contains(&c) {
                set.push(c);
            }
        }
    }
    let parsed: oci_spec::runtime::Capabilities = set
        .iter()
        .map(|c| {
            serde_json::from_value::<oci_spec::runtime::Capability>(serde_json::json!(format!(
                "CAP_{c}"
            )))
            .map_err(|_| SpecError::Config(format!("unknown capability {c:?}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(parsed.clone())
        .effective(parsed.clone())
        .permitted(parsed)
        .build()?)
}

/// Builds the spec.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let c = input.container;
    let args = argv(c, input.image);
    if args.is_empty() {
        return Err(SpecError::Config(
            "no command specified: the image has no Entrypoint or Cmd and the container no command"
                .into(),
        ));
    }
    let mut env: Vec<(String, String)> = input
        .image
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let pod_name = input.pod.metadata.name.clone().unwrap_or_default();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set("HOSTNAME", &pod_name);
    if !input.image.env.iter().any(|e| e.starts_with("PATH=")) {
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (k, v) in &input.env {
        set(k, v);
    }
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(input.image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::Config(format!(
            "workingDir {cwd:?} is not absolute"
        )));
    }
    let sc = c.security_context.as_ref();
    let uid = sc.and_then(|s| s.run_as_user).or_else(|| {
        input
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.run_as_user)
    });
    let gid = sc.and_then(|s| s.run_as_group).unwrap_or(0);
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid.unwrap_or(0) as u32)
                .gid(gid as u32)
                .build()?,
        )
        .no_new_privileges(sc.and_then(|s| s.allow_privilege_escalation) == Some(false))
        .capabilities(capabilities(sc)?)
        .build()?;
    // Keep the defaults' rlimits.
    let default_process = oci_spec::runtime::Process::default();
    let process = {
        let mut p = process;
        p.set_rlimits(default_process.rlimits().clone());
        p
    };
    let privileged = sc.and_then(|s| s.privileged) == Some(true);

    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    for m in &input.mounts {
        mounts.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ("bind")
                .source(&m.source)
                .options(vec![
                    "rbind".to_string(),
                    if m.read_only { "ro" } else { "rw" }.to_string(),
                ])
                .build()?,
        );
    }

    let Limits {
        memory_bytes: memory,
        cpu_millis: cpu,
        cpu_request_millis: cpu_request,
    } = limits(c)?;
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()?]);
    if let Some(m) = memory {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m).build()?);
    }
    if cpu.is_some() || cpu_request.is_some() {
        let mut b = LinuxCpuBuilder::default();
        if let Some(millis) = cpu {
            b = b.period(100_000u64).quota(millis * 100);
        }
        if let Some(req) = cpu_request {
            // Kubernetes' MilliCPUToShares.
            b = b.shares(((req * 1024) / 1000).max(2) as u64);
        }
        resources = resources.cpu(b.build()?);
    }
    if let Some(p) = input.pids_limit.filter(|p| *p > 0) {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }

    let mut namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<Result<_, _>>()?;
    if let Some(ns) = &input.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(ns)
                .build()?,
        );
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources.build()?)
        .masked_paths(if privileged {
            vec![]
        } else {
            oci_spec::runtime::get_default_maskedpaths()
        })
        .readonly_paths(if privileged {
            vec![]
        } else {
            oci_spec::runtime::get_default_readonly_paths()
        })
        .build()?;
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&input.rootfs)
                .readonly(sc.and_then(|s| s.read_only_root_filesystem) == Some(true))
                .build()?,
        )
        .hostname(pod_name)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};

    #[test]
    fn capability_sets() {
        let sc = |add: &[&str], drop: &[&str], privileged: bool| SecurityContext {
            privileged: Some(privileged),
            capabilities: Some(Capabilities {
                add: Some(add.iter().map(|s| s.to_string()).collect()),
                drop: Some(drop.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        };
        let names = |c: &oci_spec::runtime::LinuxCapabilities| -> Vec<String> {
            let mut v: Vec<String> = c
                .bounding()
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    serde_json::to_value(c)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            v.sort();
            v
        };
        let cases: [(SecurityContext, Result<usize, ()>, &str, bool); 5] = [
            (sc(&[], &[], false), Ok(14), "CAP_CHOWN", true),
            (
                sc(&["NET_ADMIN"], &["CHOWN"], false),
                Ok(14),
                "CAP_CHOWN",
                false,
            ),
            (
                sc(&["CAP_NET_ADMIN"], &["ALL"], false),
                Ok(1),
                "CAP_NET_ADMIN",
                true,
            ),
            (
                sc(&[], &[], true),
                Ok(ALL_CAPABILITIES.len()),
                "CAP_SYS_ADMIN",
                true,
            ),
            (sc(&["NOT_A_CAP"], &[], false), Err(()), "", false),
        ];
        for (ctx, want_len, probe, has) in cases {
            let got = capabilities(Some(&ctx));
            match want_len {
                Ok(n) => {
                    let got = names(&got.unwrap());
                    assert_eq!(got.len(), n, "{ctx:?}: {got:?}");
                    assert_eq!(got.iter().any(|c| c == probe), has, "{ctx:?}: {got:?}");
                }
                Err(()) => assert!(matches!(got, Err(SpecError::Config(_)))),
            }
        }
    }
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn container(command: &[&str], args: &[&str]) -> Container {
        let v = |a: &[&str]| (!a.is_empty()).then(|| a.iter().map(|s| s.to_string()).collect());
        Container {
            name: "c".into(),
            command: v(command),
            args: v(args),
            ..Default::default()
        }
    }

    #[test]
    fn argv_rules() {
        let image = ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["cmd1".into()],
            ..Default::default()
        };
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            (&[], &[], &["/ep", "cmd1"]),
            (&[], &["a"], &["/ep", "a"]),
            (&["sh"], &[], &["sh"]),
            (&["sh", "-c"], &["echo"], &["sh", "-c", "echo"]),
        ];
        for (command, args, want) in cases {
            assert_eq!(argv(&container(command, args), &image), want);
        }
    }

    fn with_limits(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let m = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            )
        };
        Container {
            resources: Some(ResourceRequirements {
                limits: m(limits),
                requests: m(requests),
            }),
            ..container(&["sh"], &[])
        }
    }

    #[test]
    fn limits_table() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Pairs, Pairs, Result<Limits, ()>); 5] = [
            (&[], &[], Ok(Limits::default())),
            (
                &[("memory", "64Mi"), ("cpu", "500m")],
                &[("cpu", "250m")],
                Ok(Limits {
                    memory_bytes: Some(64 << 20),
                    cpu_millis: Some(500),
                    cpu_request_millis: Some(250),
                }),
            ),
            (&[("memory", "1")], &[], Err(())),
            (&[("memory", "lots")], &[], Err(())),
            (&[("cpu", "-1")], &[], Err(())),
        ];
        for (l, r, want) in cases {
            assert_eq!(
                limits(&with_limits(l, r)).map_err(drop),
                want,
                "{l:?} {r:?}"
            );
        }
    }

    #[test]
    fn spec_carries_limits_env_mounts() {
        let pod = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        let c = with_limits(&[("memory", "32Mi"), ("cpu", "1")], &[]);
        let image = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        };
        let input = SpecInput {
            pod: &pod,
            container: &c,
            image: &image,
            rootfs: "/r".into(),
            env: vec![("A".into(), "pod".into()), ("B".into(), "2".into())],
            mounts: vec![BindMount {
                source: "/v".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            cgroups_path: "/na/x".into(),
            pids_limit: Some(100),
            netns: None,
        };
        let spec = build(&input).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["hostname"], "web");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 100_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["linux"]["cgroupsPath"], "/na/x");
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(env, ["PATH=/bin", "A=pod", "HOSTNAME=web", "B=2"]);
        let data = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(data["options"], serde_json::json!(["rbind", "ro"]));
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        let caps: Vec<&str> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(
            caps.contains(&"CAP_CHOWN") && !caps.contains(&"CAP_SYS_ADMIN"),
            "{caps:?}"
        );
        assert_eq!(v["root"]["readonly"], false);
        let no_cmd = Container::default();
        assert!(matches!(
            build(&SpecInput {
                container: &no_cmd,
                ..input.clone()
            }),
            Err(SpecError::Config(_))
        ));
    }
}
