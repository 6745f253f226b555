//! The CNI pod network: each pod gets a network namespace of its own (a bind-mounted
//! `/proc/thread-self/ns/net` under `/var/run/netns`, as `ip netns add` and CNI runtimes
//! make them), wired by the standard CNI plugins (Debian's containernetworking-plugins in
//! `/usr/lib/cni`) invoked the CNI way: `CNI_COMMAND=ADD|DEL`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` in the environment and the network configuration
//! as JSON on stdin. `bridge` (isGateway, ipMasq) with `host-local` IPAM over the node's
//! podCIDR makes `eth0`, `loopback` brings up `lo`.
//!
//! What a pod got is recorded in `<root>/pods/<uid>/network.json`
//! (`{"mode":"cni","ip":"10.244.1.5","netns":"/var/run/netns/na-<uid>","cidr":"10.244.1.0/24"}` or
//! `{"mode":"host","ip":"<node ip>"}`), so a restarted agent re-adopts it instead of
//! running ADD again, and a pod keeps the mode it started with.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::network::{PodNetwork, PodNetworkStatus};
use crate::store::{write_json, Store};

/// The CNI spec version of the configurations written here.
pub const CNI_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("the node has no podCIDR yet")]
    NoPodCidr,
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI result without an IPv4 address: {0}")]
    NoAddress(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<CniError> for std::io::Error {
    fn from(e: CniError) -> std::io::Error {
        match e {
            CniError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Runs one CNI plugin: the seam tests replace.
pub trait CniExec: Send + Sync + 'static {
    /// Runs `plugin` with the CNI environment `env` and `config` on stdin; stdout on
    /// success, the plugin's error message otherwise.
    fn exec(&self, plugin: &str, env: &[(&str, String)], config: &[u8]) -> Result<Vec<u8>, String>;
}

/// One variable of a plugin call's environment (`""` if unset); what test fakes read.
#[cfg(test)]
pub(crate) fn env_of(env: &[(&str, String)], key: &str) -> String {
    env.iter()
        .find(|(n, _)| *n == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The `loopback` plugin's configuration: brings up `lo`.
pub fn loopback_config() -> serde_json::Value {
    json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"})
}

/// Runs the plugin `config["type"]` the CNI way for container `id` in `netns`.
pub fn invoke<E: CniExec>(
    exec: &E,
    bin_dir: &Path,
    command: &'static str,
    id: &str,
    netns: &Path,
    ifname: &str,
    config: &serde_json::Value,
) -> Result<Vec<u8>, CniError> {
    let plugin = config["type"].as_str().unwrap_or_default().to_string();
    let env = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_PATH", bin_dir.display().to_string()),
    ];
    let stdin = serde_json::to_vec(config).unwrap_or_default();
    exec.exec(&plugin, &env, &stdin)
        .map_err(|message| CniError::Plugin {
            plugin,
            command,
            message,
        })
}

/// Runs the plugin binaries from `bin_dir`.
#[derive(Clone, Debug)]
pub struct PluginExec {
    pub bin_dir: PathBuf,
}

impl CniExec for PluginExec {
    fn exec(&self, plugin: &str, env: &[(&str, String)], config: &[u8]) -> Result<Vec<u8>, String> {
        let mut child = Command::new(self.bin_dir.join(plugin))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(config).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        // CNI errors are `{"code","msg","details"}` on stdout.
        let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Err(match err["msg"].as_str() {
            Some(m) => format!("{m} {}", err["details"].as_str().unwrap_or(""))
                .trim()
                .to_string(),
            None => format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// `network.json`: what a pod's network is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
enum Record {
    /// `cidr` is the podCIDR the address came from: DEL must name the same IPAM range.
    Cni {
        ip: String,
        netns: PathBuf,
        cidr: String,
    },
    Host {
        ip: String,
    },
}

/// The node's podCIDR, filled in once the Node has one (the controller manager's node IPAM
/// assigns it after registration).
#[derive(Clone, Debug, Default)]
pub struct PodCidr(Arc<RwLock<Option<String>>>);

impl PodCidr {
    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, cidr: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(cidr);
    }
}

/// Per-pod network namespaces on a per-node bridge.
pub struct CniNetwork<E: CniExec = PluginExec> {
    pub exec: E,
    pub bin_dir: PathBuf,
    pub store: Store,
    /// Where the pods' namespaces are bind-mounted (`/var/run/netns`).
    pub netns_dir: PathBuf,
    pub node_name: String,
    pub node_ip: String,
    pub pod_cidr: PodCidr,
    /// Pods started before the node has a podCIDR use the host network instead of waiting
    /// (the `--network auto` mode).
    pub host_until_cidr: bool,
    /// Namespaces are real kernel objects; tests with a fake exec use plain files.
    pub real_netns: bool,
}

/// The bridge of a node: `na` + 8 hex digits of the node name's hash, so several agents
/// sharing a network namespace get distinct bridges within the 15-byte name limit.
pub fn bridge_name(node: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(node.as_bytes());
    format!("na{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

impl<E: CniExec> CniNetwork<E> {
    fn record_path(&self, uid: &str) -> PathBuf {
        self.store.pod_dir(uid).join("network.json")
    }

    fn read_record(&self, uid: &str) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(uid)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_record(&self, uid: &str, rec: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(self.store.pod_dir(uid))?;
        write_json(&self.record_path(uid), rec)
    }

    /// The `bridge` plugin's configuration for this node.
    pub fn bridge_config(&self, cidr: &str) -> serde_json::Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": "nodeagent",
            "type": "bridge",
            "bridge": bridge_name(&self.node_name),
            "isGateway": true,
            "ipMasq": true,
            // A pod reaching itself through a Service: the DNATed packet leaves by the
            // bridge port it came in on (bridged traffic meets netfilter with br_netfilter).
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.store.pods().parent().unwrap_or(Path::new("/")).join("cni/networks"),
            },
        })
    }

    fn run(
        &self,
        command: &'static str,
        uid: &str,
        netns: &Path,
        ifname: &str,
        config: &serde_json::Value,
    ) -> Result<Vec<u8>, CniError> {
        invoke(
            &self.exec,
            &self.bin_dir,
            command,
            uid,
            netns,
            ifname,
            config,
        )
    }

    fn add(&self, uid: &str, cidr: &str) -> Result<Record, CniError> {
        let netns = self.netns_dir.join(format!("na-{uid}"));
        if !netns.exists() {
            self.create_netns(&netns)?;
        }
        let result = self
            .run("ADD", uid, &netns, "lo", &loopback_config())
            .and_then(|_| self.run("ADD", uid, &netns, "eth0", &self.bridge_config(cidr)))
            .and_then(|out| pod_ip(&out));
        match result {
            Ok(ip) => Ok(Record::Cni {
                ip,
                netns,
                cidr: cidr.to_string(),
            }),
            Err(e) => {
                self.del(uid, &netns, cidr);
                Err(e)
            }
        }
    }

    /// CNI DEL of the bridge (loopback has nothing to release) and the namespace; failures
    /// are logged (DEL of what is gone succeeds by the CNI spec, so a failure is worth a
    /// warning, not a stuck pod).
    fn del(&self, uid: &str, netns: &Path, cidr: &str) {
        if let Err(e) = self.run("DEL", uid, netns, "eth0", &self.bridge_config(cidr)) {
            tracing::warn!(%uid, error = %e, "CNI DEL");
        }
        if let Err(e) = self.remove_netns(netns) {
            tracing::warn!(%uid, error = %e, "removing the network namespace");
        }
    }

    fn create_netns(&self, path: &Path) -> Result<(), CniError> {
        let made = if self.real_netns {
            crate::netns::create(path)
        } else {
            std::fs::create_dir_all(&self.netns_dir)
                .and_then(|()| std::fs::File::create(path).map(drop))
        };
        made.map_err(|source| CniError::Netns {
            path: path.to_path_buf(),
            source,
        })
    }

    fn remove_netns(&self, path: &Path) -> std::io::Result<()> {
        if self.real_netns {
            return crate::netns::remove(path);
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn host(&self) -> PodNetworkStatus {
        PodNetworkStatus {
            ip: self.node_ip.clone(),
            netns: None,
        }
    }
}

/// The first IPv4 address of a CNI ADD result (`ips[].address`, `10.244.1.5/24`).
pub fn pod_ip(result: &[u8]) -> Result<String, CniError> {
    let v: serde_json::Value = serde_json::from_slice(result)
        .map_err(|_| CniError::NoAddress(String::from_utf8_lossy(result).into()))?;
    v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(String::from)
        .ok_or_else(|| CniError::NoAddress(v.to_string()))
}

impl<E: CniExec> PodNetwork for CniNetwork<E> {
    fn setup(&self, uid: &str, host_network: bool) -> std::io::Result<PodNetworkStatus> {
        match self.read_record(uid) {
            Some(Record::Host { .. }) => return Ok(self.host()),
            Some(Record::Cni { ip, netns, .. }) if netns.exists() => {
                return Ok(PodNetworkStatus {
                    ip,
                    netns: Some(netns),
                })
            }
            _ => {}
        }
        let cidr = match self.pod_cidr.get() {
            _ if host_network => None,
            Some(c) => Some(c),
            None if self.host_until_cidr => None,
            None => return Err(CniError::NoPodCidr.into()),
        };
        let rec = match cidr {
            None => Record::Host {
                ip: self.node_ip.clone(),
            },
            Some(cidr) => self.add(uid, &cidr)?,
        };
        self.write_record(uid, &rec)?;
        Ok(match rec {
            Record::Host { .. } => self.host(),
            Record::Cni { ip, netns, .. } => {
                tracing::info!(%uid, %ip, "pod network added");
                PodNetworkStatus {
                    ip,
                    netns: Some(netns),
                }
            }
        })
    }

    fn teardown(&self, uid: &str) -> std::io::Result<()> {
        if let Some(Record::Cni { netns, cidr, .. }) = self.read_record(uid) {
            self.del(uid, &netns, &cidr);
        }
        match std::fs::remove_file(self.record_path(uid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records calls; ADD of `bridge` answers with `result`.
    #[derive(Default)]
    struct FakeExec {
        calls: Mutex<Vec<(String, String, String)>>,
        result: String,
    }

    impl CniExec for Arc<FakeExec> {
        fn exec(
            &self,
            plugin: &str,
            env: &[(&str, String)],
            _config: &[u8],
        ) -> Result<Vec<u8>, String> {
            let get = |k: &str| env_of(env, k);
            self.calls
                .lock()
                .unwrap()
                .push((plugin.into(), get("CNI_COMMAND"), get("CNI_IFNAME")));
            match (plugin, get("CNI_COMMAND").as_str()) {
                ("bridge", "ADD") if self.result.is_empty() => {
                    Err("no IP addresses available".into())
                }
                ("bridge", "ADD") => Ok(self.result.clone().into_bytes()),
                _ => Ok(b"{}".to_vec()),
            }
        }
    }

    fn net(
        dir: &Path,
        exec: Arc<FakeExec>,
        cidr: Option<&str>,
        host_until_cidr: bool,
    ) -> CniNetwork<Arc<FakeExec>> {
        let pod_cidr = PodCidr::default();
        if let Some(c) = cidr {
            pod_cidr.set(c.into());
        }
        CniNetwork {
            exec,
            bin_dir: "/usr/lib/cni".into(),
            store: Store::new(dir.join("root")),
            netns_dir: dir.join("netns"),
            node_name: "n1".into(),
            node_ip: "10.0.0.1".into(),
            pod_cidr,
            host_until_cidr,
            real_netns: false,
        }
    }

    const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":0}]}"#;

    #[test]
    fn pod_ip_from_results() {
        let cases: &[(&str, Option<&str>)] = &[
            (RESULT, Some("10.244.1.7")),
            (
                r#"{"ips":[{"address":"fd00::2/64"},{"address":"10.1.0.9/16"}]}"#,
                Some("10.1.0.9"),
            ),
            (r#"{"ips":[]}"#, None),
            ("not json", None),
        ];
        for (input, want) in cases {
            assert_eq!(pod_ip(input.as_bytes()).ok().as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn modes() {
        // (podCIDR, host_until_cidr, hostNetwork) -> pod IP or error
        type Case<'a> = (Option<&'a str>, bool, bool, Result<&'a str, ()>);
        let cases: &[Case] = &[
            (Some("10.244.1.0/24"), false, false, Ok("10.244.1.7")),
            (Some("10.244.1.0/24"), false, true, Ok("10.0.0.1")),
            (None, true, false, Ok("10.0.0.1")),
            (None, false, false, Err(())),
        ];
        for (cidr, until, hostnet, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let exec = Arc::new(FakeExec {
                result: RESULT.into(),
                ..Default::default()
            });
            let n = net(dir.path(), exec.clone(), *cidr, *until);
            let got = n.setup("u1", *hostnet).map(|s| s.ip);
            assert_eq!(
                got.as_deref().map_err(|_| ()),
                *want,
                "{cidr:?} {until} {hostnet}"
            );
        }
    }

    #[test]
    fn add_is_recorded_readopted_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Arc::new(FakeExec {
            result: RESULT.into(),
            ..Default::default()
        });
        let n = net(dir.path(), exec.clone(), Some("10.244.1.0/24"), false);
        let s = n.setup("u1", false).unwrap();
        assert_eq!(s.netns, Some(dir.path().join("netns/na-u1")));
        // A second sync (or a restarted agent) re-adopts without another ADD.
        let again = net(dir.path(), exec.clone(), Some("10.244.1.0/24"), false);
        assert_eq!(again.setup("u1", false).unwrap(), s);
        let calls = |e: &FakeExec| e.calls.lock().unwrap().clone();
        assert_eq!(
            calls(&exec),
            vec![
                ("loopback".into(), "ADD".into(), "lo".into()),
                ("bridge".into(), "ADD".into(), "eth0".into()),
            ]
        );
        n.teardown("u1").unwrap();
        assert_eq!(
            calls(&exec)[2],
            ("bridge".into(), "DEL".into(), "eth0".into())
        );
        assert!(!dir.path().join("netns/na-u1").exists());
        // Teardown of a pod without a network is a no-op.
        n.teardown("u2").unwrap();
        assert_eq!(calls(&exec).len(), 3);
    }

    #[test]
    fn failed_add_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Arc::new(FakeExec::default());
        let n = net(dir.path(), exec.clone(), Some("10.244.1.0/24"), false);
        let err = n.setup("u1", false).unwrap_err();
        assert!(
            err.to_string().contains("no IP addresses available"),
            "{err}"
        );
        assert!(!dir.path().join("netns/na-u1").exists());
        assert!(exec.calls.lock().unwrap().iter().any(|c| c.1 == "DEL"));
    }

    #[test]
    fn bridge_config_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path(), Arc::default(), None, false);
        let c = n.bridge_config("10.244.3.0/24");
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["isGateway"], true);
        assert_eq!(c["ipMasq"], true);
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(c["bridge"].as_str().unwrap().len(), 10);
        assert_ne!(bridge_name("n1"), bridge_name("n2"));
    }
}
