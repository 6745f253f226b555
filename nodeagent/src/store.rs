//! The agent's state directory (`--root-dir`): where each pod's containers, bundles, logs
//! and volumes live. This layout is what lets a restarted agent re-adopt its containers:
//! everything the reconciler needs to know about a container is on disk or in runc.
//!
//! ```text
//! <root>/runc/                                   runc --root (this agent's containers only)
//! <root>/images/<name>_<tag>/{rootfs/,image.json}  the image store (crate::images)
//! <root>/certs/                                  the log server's self-signed TLS pair
//! <root>/pods/<uid>/pod.json                     {"namespace","name","uid"} of the pod
//! <root>/pods/<uid>/hosts                        /etc/hosts of the pod's containers
//! <root>/pods/<uid>/resolv.conf                  their /etc/resolv.conf (the node's)
//! <root>/pods/<uid>/volumes/<volume>/            emptyDir, configMap and secret volumes
//! <root>/pods/<uid>/containers/<name>/<attempt>/ one run of a container (the OCI bundle):
//!     config.json    the OCI runtime spec
//!     rootfs/        a copy of the image's rootfs (removed once the attempt is replaced)
//!     meta.json      {"id","attempt","createdAt","startedAt"}
//!     container.log  stdout/stderr in the CRI log format (crate::logs)
//!     exit.json      how it ended, written by the shim (crate::shim)
//!     runc.log, shim.log, init.pid
//! ```
//!
//! `<attempt>` counts from 0 and is the container's restartCount; the runc container id
//! is `<pod uid>-<container name>-<attempt>`, unique per agent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The identity of a pod kept beside its containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One container attempt's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptMeta {
    pub id: String,
    pub attempt: u32,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    /// The image the attempt was created from.
    #[serde(default)]
    pub image: String,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }
    pub fn runc_root(&self) -> PathBuf {
        self.root.join("runc")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods().join(uid)
    }
    pub fn volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(volume)
    }
    pub fn container_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(name)
    }
    pub fn attempt_dir(&self, uid: &str, name: &str, attempt: u32) -> PathBuf {
        self.container_dir(uid, name).join(attempt.to_string())
    }

    /// The attempts of a container, oldest first.
    pub fn attempts(&self, uid: &str, name: &str) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.container_dir(uid, name))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn write_pod_record(&self, rec: &PodRecord) -> std::io::Result<()> {
        let dir = self.pod_dir(&rec.uid);
        std::fs::create_dir_all(&dir)?;
        write_json(&dir.join("pod.json"), rec)
    }

    /// Every pod with state on disk.
    pub fn pod_records(&self) -> Vec<PodRecord> {
        std::fs::read_dir(self.pods())
            .map(|rd| {
                rd.filter_map(|e| {
                    let bytes = std::fs::read(e.ok()?.path().join("pod.json")).ok()?;
                    serde_json::from_slice(&bytes).ok()
                })
                .collect()
            })
            .unwrap_or_default()
    }

    pub fn read_meta(&self, dir: &Path) -> Option<AttemptMeta> {
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()
    }

    pub fn write_meta(&self, dir: &Path, meta: &AttemptMeta) -> std::io::Result<()> {
        write_json(&dir.join("meta.json"), meta)
    }
}

/// The runc id of a container attempt.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}-{name}-{attempt}")
}

/// Writes JSON atomically (temp file + rename), so a crash never leaves half a record.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_sorted_numerically_and_records_listed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        for a in [10, 2, 0] {
            std::fs::create_dir_all(s.attempt_dir("u1", "c", a)).unwrap();
        }
        assert_eq!(s.attempts("u1", "c"), vec![0, 2, 10]);
        assert!(s.attempts("u1", "other").is_empty());
        let rec = PodRecord {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u1".into(),
        };
        s.write_pod_record(&rec).unwrap();
        assert_eq!(s.pod_records(), vec![rec]);
        assert_eq!(container_id("u1", "c", 3), "u1-c-3");
    }
}
