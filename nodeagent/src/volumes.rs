//! Pod volumes on the node: emptyDir (a directory under the pod's state dir), hostPath
//! (the node's path, created for the `*OrCreate` types), configMap and secret (their data
//! written as files, one per key or per `items` entry, refreshed on every sync); and each
//! container's volumeMounts as bind mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use controlplane::client::Api;
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};

use crate::spec::BindMount;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A referenced object or key is missing: CreateContainerConfigError.
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Api(#[from] controlplane::client::ClientError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A prepared volume: its host path and whether it is read-only by nature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Makes every volume of the pod ready on the node.
pub async fn prepare<C: Api>(
    api: &C,
    store: &Store,
    pod: &Pod,
) -> Result<BTreeMap<String, Prepared>, VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in volumes {
        let dir = store.volume_dir(&uid, &v.name);
        let prepared = if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            Prepared {
                path: dir,
                read_only: false,
            }
        } else if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io(&path))?,
                "FileOrCreate" => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(io(&path))?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(VolumeError::Config(format!(
                        "hostPath type check failed: {} is not a directory",
                        hp.path
                    )))
                }
                "File" if !path.is_file() => {
                    return Err(VolumeError::Config(format!(
                        "hostPath type check failed: {} is not a file",
                        hp.path
                    )))
                }
                _ => {}
            }
            Prepared {
                path,
                read_only: false,
            }
        } else if let Some(cm) = &v.config_map {
            let name = cm.name.clone().unwrap_or_default();
            let data = match api.get::<ConfigMap>(Some(&ns), &name).await {
                Ok(c) => {
                    let mut d: BTreeMap<String, Vec<u8>> = c
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    d.extend(
                        c.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    Some(d)
                }
                Err(e) if e.is_not_found() && cm.optional == Some(true) => None,
                Err(e) if e.is_not_found() => {
                    return Err(VolumeError::Config(format!(
                        "configmap \"{name}\" not found"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            write_files(&dir, data.unwrap_or_default(), cm.items.as_deref())?;
            Prepared {
                path: dir,
                read_only: true,
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = match api.get::<Secret>(Some(&ns), &name).await {
                Ok(sec) => {
                    let mut d: BTreeMap<String, Vec<u8>> = sec
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    d.extend(
                        sec.string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    Some(d)
                }
                Err(e) if e.is_not_found() && s.optional == Some(true) => None,
                Err(e) if e.is_not_found() => {
                    return Err(VolumeError::Config(format!("secret \"{name}\" not found")))
                }
                Err(e) => return Err(e.into()),
            };
            write_files(&dir, data.unwrap_or_default(), s.items.as_deref())?;
            Prepared {
                path: dir,
                read_only: true,
            }
        } else {
            return Err(VolumeError::Config(format!(
                "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported",
                v.name
            )));
        };
        out.insert(v.name.clone(), prepared);
    }
    Ok(out)
}

/// Writes the data as files into `dir` (every key, or the listed items), replacing what
/// was there.
fn write_files(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<(), VolumeError> {
    let files: Vec<(String, Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                data.get(&i.key)
                    .map(|d| (i.path.clone(), d.clone()))
                    .ok_or_else(|| VolumeError::Config(format!("key {:?} not found", i.key)))
            })
            .collect::<Result<_, _>>()?,
        None => data.into_iter().collect(),
    };
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (rel, bytes) in files {
        if Path::new(&rel)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(VolumeError::Config(format!("invalid path {rel:?}")));
        }
        let p = staging.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, bytes).map_err(io(&p))?;
    }
    // Replace the directory's contents in place: running containers bind-mount the
    // directory itself, so it must keep its inode.
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
    }
    for e in std::fs::read_dir(&staging).map_err(io(&staging))?.flatten() {
        let to = dir.join(e.file_name());
        std::fs::rename(e.path(), &to).map_err(io(&to))?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// The container's volumeMounts as bind mounts.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, Prepared>,
) -> Result<Vec<BindMount>, VolumeError> {
    container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let v = volumes.get(&m.name).ok_or_else(|| {
                VolumeError::Config(format!("volumeMount {:?}: no volume of that name", m.name))
            })?;
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    let p = v.path.join(sub);
                    if !p.exists() {
                        std::fs::create_dir_all(&p).map_err(io(&p))?;
                    }
                    p
                }
                None => v.path.clone(),
            };
            Ok(BindMount {
                source,
                destination: m.mount_path,
                read_only: v.read_only || m.read_only == Some(true),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::client::fake::FakeApi;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, PodSpec, Volume, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn configmap_and_empty_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let api = FakeApi::new();
        let cm_vol = Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: Some("settings".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let scratch = Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        };
        let p = pod(vec![cm_vol, scratch]);
        let err = prepare(&api, &store, &p).await.unwrap_err();
        assert_eq!(err.to_string(), "configmap \"settings\" not found");
        api.create(
            Some("ns"),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("settings".into()),
                    ..Default::default()
                },
                data: Some([("a.conf".to_string(), "x=1".to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let vols = prepare(&api, &store, &p).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(vols["cfg"].path.join("a.conf")).unwrap(),
            "x=1"
        );
        assert!(vols["scratch"].path.is_dir());
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "cfg".into(),
                    mount_path: "/etc/app".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/tmp/s".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let m = mounts(&c, &vols).unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.destination.as_str(), m.read_only))
                .collect::<Vec<_>>(),
            [("/etc/app", true), ("/tmp/s", false)]
        );
        let bad = Container {
            volume_mounts: Some(vec![VolumeMount {
                name: "nope".into(),
                mount_path: "/x".into(),
                ..Default::default()
            }]),
            ..c
        };
        assert!(matches!(mounts(&bad, &vols), Err(VolumeError::Config(_))));
    }
}

#[cfg(test)]
mod host_path_and_secret_tests {
    use super::*;
    use controlplane::client::fake::FakeApi;
    use k8s_openapi::api::core::v1::{HostPathVolumeSource, PodSpec, SecretVolumeSource, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;

    fn pod(v: Volume) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(vec![v]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn host_path(path: &Path, ty: &str) -> Volume {
        Volume {
            name: "h".into(),
            host_path: Some(HostPathVolumeSource {
                path: path.display().to_string(),
                type_: Some(ty.into()),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn host_path_types() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("root"));
        let api = FakeApi::new();
        let created = dir.path().join("made/here");
        let file = dir.path().join("f/file");
        // (volume, ok?, then this path exists)
        let cases = [
            (
                host_path(&created, "DirectoryOrCreate"),
                true,
                Some(created.clone()),
            ),
            (host_path(&file, "FileOrCreate"), true, Some(file.clone())),
            (
                host_path(&dir.path().join("nope"), "Directory"),
                false,
                None,
            ),
            (host_path(&file, "Directory"), false, None),
            (host_path(&file, "File"), true, None),
        ];
        for (v, ok, exists) in cases {
            let got = prepare(&api, &store, &pod(v.clone())).await;
            assert_eq!(got.is_ok(), ok, "{v:?}: {got:?}");
            if let Some(p) = exists {
                assert!(p.exists(), "{}", p.display());
            }
        }
    }

    #[tokio::test]
    async fn secret_items_are_written_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let api = FakeApi::new();
        api.create(
            Some("ns"),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("creds".into()),
                    ..Default::default()
                },
                data: Some([("password".to_string(), ByteString(b"s3cret".to_vec()))].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let v = Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("creds".into()),
                items: Some(vec![KeyToPath {
                    key: "password".into(),
                    path: "db/pass".into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let vols = prepare(&api, &store, &pod(v)).await.unwrap();
        assert!(vols["s"].read_only);
        assert_eq!(
            std::fs::read(vols["s"].path.join("db/pass")).unwrap(),
            b"s3cret"
        );
        let missing = Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("other".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            prepare(&api, &store, &pod(missing))
                .await
                .unwrap_err()
                .to_string(),
            "secret \"other\" not found"
        );
    }
}
