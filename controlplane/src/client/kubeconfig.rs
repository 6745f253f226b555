//! The subset of kubeconfig files the client reads: the current context's server URL,
//! CA (`certificate-authority` path or `-data` base64 PEM) and bearer token — what
//! `controlplane apiserver --kubeconfig-out` writes.

use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::ClientError;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority")]
    certificate_authority: Option<String>,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize, Default)]
struct User {
    token: Option<String>,
}

/// Where and how to reach the API server.
#[derive(Clone, Debug)]
pub struct Kubeconfig {
    pub server: String,
    /// PEM CA bundle trusted for HTTPS.
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

impl Kubeconfig {
    pub fn load(path: &Path) -> Result<Kubeconfig, ClientError> {
        let err = |message: String| ClientError::Kubeconfig {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: File = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let context = file
            .contexts
            .iter()
            .find(|c| c.name == file.current_context)
            .or(file.contexts.first())
            .ok_or_else(|| err("no context".into()))?;
        let cluster = file
            .clusters
            .iter()
            .find(|c| c.name == context.value.cluster)
            .ok_or_else(|| err(format!("no cluster {:?}", context.value.cluster)))?;
        let token = file
            .users
            .iter()
            .find(|u| u.name == context.value.user)
            .and_then(|u| u.value.token.clone());
        let ca_pem = match (
            &cluster.value.certificate_authority_data,
            &cluster.value.certificate_authority,
        ) {
            (Some(data), _) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| err(format!("certificate-authority-data: {e}")))?,
            ),
            (None, Some(file)) => {
                // Relative paths are relative to the kubeconfig, as kubectl resolves them.
                let file = path.parent().unwrap_or(Path::new(".")).join(file);
                Some(std::fs::read(&file).map_err(|e| err(format!("{}: {e}", file.display())))?)
            }
            (None, None) => None,
        };
        Ok(Kubeconfig {
            server: cluster.value.server.trim_end_matches('/').to_string(),
            ca_pem,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_apiserver_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "PEM").unwrap();
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: raftkv\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt\ncontexts:\n- name: raftkv\n  context:\n    cluster: raftkv\n    user: raftkv\n    namespace: default\ncurrent-context: raftkv\nusers:\n- name: raftkv\n  user:\n    token: admin-token\n";
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        let k = Kubeconfig::load(&path).unwrap();
        assert_eq!(k.server, "https://127.0.0.1:6443");
        assert_eq!(k.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(k.token.as_deref(), Some("admin-token"));
    }

    #[test]
    fn missing_context_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "apiVersion: v1\nkind: Config\n").unwrap();
        assert!(matches!(
            Kubeconfig::load(&path),
            Err(ClientError::Kubeconfig { .. })
        ));
    }
}
