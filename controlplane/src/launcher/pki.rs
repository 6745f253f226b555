//! The cluster's credentials, made once per cluster folder and kept across restarts:
//! one self-signed serving certificate for `127.0.0.1`/`localhost` (and the node network's
//! gateway, where node agents in their own namespaces reach the API) that every API server
//! replica presents (so the load balancer can send a connection to any of them) and that
//! kubeconfigs trust, and a kube-apiserver token file with one admin token
//! (`system:masters`).
//!
//! Files: `pki/apiserver.crt`, `pki/apiserver.key` (PEM), `pki/apiserver.names` (the
//! certificate's subject alternative names, one per line: a change makes a new
//! certificate), `pki/tokens.csv`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating the serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn cert_path(dir: &Path) -> PathBuf {
    dir.join("pki/apiserver.crt")
}

pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("pki/apiserver.key")
}

pub fn tokens_path(dir: &Path) -> PathBuf {
    dir.join("pki/tokens.csv")
}

fn write(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, data).map_err(io)
}

/// Makes the certificate (for `127.0.0.1`, `localhost` and `extra_names`), key and token
/// file unless they exist.
pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<(), PkiError> {
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    names.extend(extra_names.iter().cloned());
    let names_path = dir.join("pki/apiserver.names");
    let listed = names.join("\n") + "\n";
    let same_names = std::fs::read_to_string(&names_path).is_ok_and(|s| s == listed);
    if !cert_path(dir).exists() || !key_path(dir).exists() || !same_names {
        let generated = rcgen::generate_simple_self_signed(names)?;
        write(&cert_path(dir), generated.cert.pem().as_bytes())?;
        write(
            &key_path(dir),
            generated.signing_key.serialize_pem().as_bytes(),
        )?;
        write(&names_path, listed.as_bytes())?;
    }
    if !tokens_path(dir).exists() {
        let token = uuid::Uuid::new_v4().simple().to_string();
        write(
            &tokens_path(dir),
            format!("{token},admin,admin,\"system:masters\"\n").as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &[]).unwrap();
        let cert = std::fs::read(cert_path(dir.path())).unwrap();
        let tokens = std::fs::read_to_string(tokens_path(dir.path())).unwrap();
        assert!(tokens.ends_with(",admin,admin,\"system:masters\"\n"));
        ensure(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read(cert_path(dir.path())).unwrap(), cert);
        assert_eq!(
            std::fs::read_to_string(tokens_path(dir.path())).unwrap(),
            tokens
        );
        // Another name (the node network's gateway): a new certificate, the same tokens.
        ensure(dir.path(), &["10.100.0.1".to_string()]).unwrap();
        assert_ne!(std::fs::read(cert_path(dir.path())).unwrap(), cert);
        assert_eq!(
            std::fs::read_to_string(tokens_path(dir.path())).unwrap(),
            tokens
        );
    }
}
