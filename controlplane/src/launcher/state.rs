//! The cluster folder and its state file, `<dir>/cluster.json`: what `up` started, so that
//! `status` can find it and `down` can clean up after a run that crashed.
//!
//! Layout of the folder:
//!
//! ```text
//! <dir>/cluster.json         this state (JSON, below)
//! <dir>/kubeconfig           admin kubeconfig for the load-balanced API endpoint
//! <dir>/node-kubeconfig      the same endpoint at the node network's gateway (node agents
//!                            in namespaces of their own)
//! <dir>/etcdctl.env          ETCDCTL_API / ETCDCTL_ENDPOINTS for the raftkv members
//! <dir>/pki/                 serving certificate + key of the API servers, token file
//! <dir>/logs/<name>.log      stdout+stderr of every process
//! <dir>/<name>/              data of a raftkv member or state of a node agent
//! ```
//!
//! `cluster.json`: `{"launcher_pid": u32, "api_endpoint": "https://127.0.0.1:P",
//! "node_network"?: {"bridge", "cidr"}, "processes": [{"name", "role", "pid", "program",
//! "endpoint"?, "state_dir"?, "netns"?, "restarts"}]}` where `role` is one of raftkv,
//! apiserver, scheduler, controller-manager, nodeagent, host-routes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Raftkv,
    Apiserver,
    Scheduler,
    ControllerManager,
    Nodeagent,
    /// `nodeagent host-routes`: the host's routes to the nodes' podCIDRs.
    HostRoutes,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Raftkv => "raftkv",
            Role::Apiserver => "apiserver",
            Role::Scheduler => "scheduler",
            Role::ControllerManager => "controller-manager",
            Role::Nodeagent => "nodeagent",
            Role::HostRoutes => "host-routes",
        }
    }
}

/// One process `up` started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub role: Role,
    pub pid: u32,
    /// The executable, to recognise the pid as still ours before signalling it.
    pub program: PathBuf,
    /// The client URL of a raftkv member, or the HTTPS URL of an API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A node agent's state folder (its runc root and mounts live below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// A node agent's own network namespace (a bind-mounted file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// How often the launcher restarted it after it exited.
    #[serde(default)]
    pub restarts: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub launcher_pid: u32,
    pub api_endpoint: String,
    /// The nodes' network when they have namespaces of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_network: Option<super::nodenet::NodeNetwork>,
    pub processes: Vec<ProcessRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

impl ClusterState {
    pub fn load(dir: &Path) -> Result<ClusterState, StateError> {
        let path = state_path(dir);
        let text = std::fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| StateError::Json { path, source })
    }

    /// Written atomically (temp file + rename) so a crash never leaves half a file.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = state_path(dir);
        let tmp = path.with_extension("json.tmp");
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    pub fn of_role(&self, role: Role) -> impl Iterator<Item = &ProcessRecord> {
        self.processes.iter().filter(move |p| p.role == role)
    }
}

/// Whether `pid` is alive and still runs `program` (not a recycled pid).
pub fn is_ours(pid: u32, program: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    // A rebuilt binary shows as "<path> (deleted)".
    exe == program
        || exe.to_string_lossy().trim_end_matches(" (deleted)") == program.to_string_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_our_own_pid_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let s = ClusterState {
            launcher_pid: std::process::id(),
            api_endpoint: "https://127.0.0.1:1".into(),
            node_network: None,
            processes: vec![ProcessRecord {
                name: "m1".into(),
                role: Role::Raftkv,
                pid: std::process::id(),
                program: me.clone(),
                endpoint: Some("http://127.0.0.1:2379".into()),
                state_dir: None,
                netns: None,
                restarts: 0,
            }],
        };
        s.save(dir.path()).unwrap();
        let back = ClusterState::load(dir.path()).unwrap();
        assert_eq!(back.processes[0].name, "m1");
        assert_eq!(back.of_role(Role::Raftkv).count(), 1);
        assert!(is_ours(std::process::id(), &me));
        assert!(!is_ours(std::process::id(), Path::new("/bin/true")));
    }
}
