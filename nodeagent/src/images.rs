//! The local image store: images are imported from OCI image layout tarballs or
//! `docker save` tarballs (gzip or plain layers, applied in order with `.wh.` whiteouts
//! and `.wh..wh..opq` opaque directories) and unpacked once into a rootfs that each
//! container attempt copies. There is no registry client: "pulling" an image means finding
//! it here, so pods run offline.
//!
//! Layout under `<root>/images/`:
//!
//! ```text
//! <repository with / as _>_<tag>/rootfs/      the unpacked layers
//! <repository with / as _>_<tag>/image.json   {"reference", "entrypoint", "cmd", "env", "workingDir", "user"}
//! ```
//!
//! References are normalized as Docker does: `busybox` is `docker.io/library/busybox:latest`.
//!
//! [`build_busybox`] writes a one-layer OCI layout tarball of Debian's busybox-static
//! (`busybox:latest`), the image tests and offline clusters run.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0:?} is not in the local image store (import it with `nodeagent image import FILE`)")]
    NotFound(String),
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not an OCI image layout or docker-save tarball: {0}")]
    Format(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the runtime spec takes from an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    pub reference: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

/// An image in the store.
#[derive(Clone, Debug)]
pub struct Image {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// `busybox` → `docker.io/library/busybox:latest`; digests are kept as they are.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let r = reference.trim();
    if r.is_empty() || r.contains(char::is_whitespace) || r.contains("..") {
        return Err(ImageError::InvalidReference(reference.into()));
    }
    let (name, tag) = match r.rsplit_once('@') {
        Some((n, d)) => (n.to_string(), format!("@{d}")),
        None => match r.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (r.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    if full.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ImageError::InvalidReference(reference.into()));
    }
    Ok(format!("{full}{tag}"))
}

/// The store directory name of a normalized reference.
fn dir_name(normalized: &str) -> String {
    normalized
        .trim_start_matches("docker.io/library/")
        .trim_start_matches("docker.io/")
        .replace(['/', ':', '@'], "_")
}

#[derive(Clone, Debug)]
pub struct ImageStore {
    pub dir: PathBuf,
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore { dir: dir.into() }
    }

    /// Finds an image by reference ("pull" from the local store).
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let n = normalize(reference)?;
        let dir = self.dir.join(dir_name(&n));
        let cfg_path = dir.join("image.json");
        let bytes = std::fs::read(&cfg_path).map_err(|_| ImageError::NotFound(reference.into()))?;
        let config: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Format(format!("{}: {e}", cfg_path.display())))?;
        Ok(Image {
            rootfs: dir.join("rootfs"),
            config,
        })
    }

    /// Imports every tagged image of a tarball (or of an unpacked layout directory);
    /// returns the normalized references imported.
    pub fn import(&self, file: &Path) -> Result<Vec<String>, ImageError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let staging = tempdir_in(&self.dir)?;
        let src = if file.is_dir() {
            file.to_path_buf()
        } else {
            let f = std::fs::File::open(file).map_err(io_err(file))?;
            let mut a = tar::Archive::new(maybe_gzip(f).map_err(io_err(file))?);
            a.unpack(staging.path()).map_err(io_err(file))?;
            staging.path().to_path_buf()
        };
        let images = if src.join("index.json").exists() {
            oci_layout_images(&src)?
        } else if src.join("manifest.json").exists() {
            docker_save_images(&src)?
        } else {
            return Err(ImageError::Format(
                "neither index.json nor manifest.json at the top level".into(),
            ));
        };
        let mut imported = Vec::new();
        for (reference, config, layers) in images {
            let n = normalize(&reference)?;
            let target = self.dir.join(dir_name(&n));
            let work = self.dir.join(format!(".import-{}", dir_name(&n)));
            let _ = std::fs::remove_dir_all(&work);
            let rootfs = work.join("rootfs");
            std::fs::create_dir_all(&rootfs).map_err(io_err(&rootfs))?;
            for layer in &layers {
                apply_layer(&src.join(layer), &rootfs)?;
            }
            let cfg = ImageConfig {
                reference: n.clone(),
                ..config
            };
            let cfg_path = work.join("image.json");
            std::fs::write(
                &cfg_path,
                serde_json::to_vec_pretty(&cfg).unwrap_or_default(),
            )
            .map_err(io_err(&cfg_path))?;
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(&work, &target).map_err(io_err(&target))?;
            tracing::info!(image = %n, layers = layers.len(), "imported image");
            imported.push(n);
        }
        Ok(imported)
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir_in(dir: &Path) -> Result<TempDir, ImageError> {
    let p = dir.join(format!(".staging-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    Ok(TempDir(p))
}
fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A reader that gunzips when the content starts with the gzip magic.
fn maybe_gzip<R: Read + Seek + Send + 'static>(mut r: R) -> std::io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 2];
    let n = r.read(&mut magic)?;
    r.seek(std::io::SeekFrom::Start(0))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

type Found = (String, ImageConfig, Vec<PathBuf>);

fn read_json(path: &Path) -> Result<Value, ImageError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Format(format!("{}: {e}", path.display())))
}

fn blob_path(digest: &str) -> Result<PathBuf, ImageError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| ImageError::Format(format!("bad digest {digest:?}")))?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit())
        || !alg.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(ImageError::Format(format!("bad digest {digest:?}")));
    }
    Ok(PathBuf::from("blobs").join(alg).join(hex))
}

fn config_of(v: &Value) -> ImageConfig {
    let c = &v["config"];
    let strings = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    ImageConfig {
        reference: String::new(),
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        working_dir: c["WorkingDir"].as_str().unwrap_or("").into(),
        user: c["User"].as_str().unwrap_or("").into(),
    }
}

/// Images of an OCI image layout: index.json → (nested indexes →) manifests.
fn oci_layout_images(dir: &Path) -> Result<Vec<Found>, ImageError> {
    let index = read_json(&dir.join("index.json"))?;
    let mut out = Vec::new();
    let mut stack: Vec<(Value, Option<String>)> = index["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d, None))
        .collect();
    while let Some((desc, inherited)) = stack.pop() {
        let name = desc["annotations"]["io.containerd.image.name"]
            .as_str()
            .or(desc["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .map(String::from)
            .or(inherited);
        let digest = desc["digest"].as_str().unwrap_or("");
        let blob = read_json(&dir.join(blob_path(digest)?))?;
        let media = desc["mediaType"].as_str().unwrap_or("");
        if media.contains("index")
            || media.contains("manifest.list")
            || blob.get("manifests").is_some()
        {
            // A multi-platform index: take linux/amd64 (or the only) manifest.
            let ms = blob["manifests"].as_array().cloned().unwrap_or_default();
            let pick = ms
                .iter()
                .find(|m| {
                    m["platform"]["os"] == "linux"
                        && m["platform"]["architecture"]
                            == std::env::consts::ARCH.replace("x86_64", "amd64")
                })
                .or(ms.first())
                .cloned();
            if let Some(m) = pick {
                stack.push((m, name));
            }
            continue;
        }
        // A bare tag ("1.0") names no repository; such layouts need a full reference.
        let Some(name) = name else { continue };
        let config =
            read_json(&dir.join(blob_path(blob["config"]["digest"].as_str().unwrap_or(""))?))?;
        let layers = blob["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| blob_path(l["digest"].as_str().unwrap_or("")))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((name, config_of(&config), layers));
    }
    if out.is_empty() {
        return Err(ImageError::Format(
            "index.json names no tagged image".into(),
        ));
    }
    Ok(out)
}

/// Images of a `docker save` tarball: manifest.json lists Config, RepoTags and Layers.
fn docker_save_images(dir: &Path) -> Result<Vec<Found>, ImageError> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for m in manifest.as_array().cloned().unwrap_or_default() {
        let config = read_json(&safe_join(dir, m["Config"].as_str().unwrap_or(""))?)?;
        let layers: Vec<PathBuf> = m["Layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| safe_join(Path::new(""), l.as_str().unwrap_or("")))
            .collect::<Result<_, _>>()?;
        for tag in m["RepoTags"].as_array().cloned().unwrap_or_default() {
            if let Some(t) = tag.as_str() {
                out.push((t.to_string(), config_of(&config), layers.clone()));
            }
        }
    }
    if out.is_empty() {
        return Err(ImageError::Format(
            "manifest.json names no tagged image".into(),
        ));
    }
    Ok(out)
}

fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ImageError::Format(format!(
            "bad path {rel:?} in manifest.json"
        )));
    }
    Ok(base.join(p))
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Applies one layer tarball (gzip or plain) to `rootfs`: first its whiteouts remove
/// what lower layers left, then its entries are unpacked (safely inside `rootfs`).
pub fn apply_layer(layer: &Path, rootfs: &Path) -> Result<(), ImageError> {
    let open = || -> Result<tar::Archive<Box<dyn Read + Send>>, ImageError> {
        let f = std::fs::File::open(layer).map_err(io_err(layer))?;
        Ok(tar::Archive::new(maybe_gzip(f).map_err(io_err(layer))?))
    };
    // Pass 1: whiteouts.
    let mut opaque: BTreeSet<PathBuf> = BTreeSet::new();
    let mut removed: Vec<PathBuf> = Vec::new();
    let mut a = open()?;
    for e in a.entries().map_err(io_err(layer))? {
        let e = e.map_err(io_err(layer))?;
        let path = e.path().map_err(io_err(layer))?.into_owned();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if file == OPAQUE {
            opaque.insert(parent);
        } else if let Some(target) = file.strip_prefix(WHITEOUT_PREFIX) {
            removed.push(parent.join(target));
        }
    }
    for dir in &opaque {
        let d = inside(rootfs, dir)?;
        if let Ok(rd) = std::fs::read_dir(&d) {
            for entry in rd.flatten() {
                remove_any(&entry.path());
            }
        }
    }
    for p in &removed {
        remove_any(&inside(rootfs, p)?);
    }
    // Pass 2: contents.
    let mut a = open()?;
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_overwrite(true);
    a.set_unpack_xattrs(false);
    for e in a.entries().map_err(io_err(layer))? {
        let mut e = e.map_err(io_err(layer))?;
        let path = e.path().map_err(io_err(layer))?.into_owned();
        if path
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with(WHITEOUT_PREFIX))
        {
            continue;
        }
        let dest = inside(rootfs, &path)?;
        let is_dir = e.header().entry_type().is_dir();
        // A lower layer's entry of another type (or a symlink) is replaced, not merged.
        if let Ok(md) = std::fs::symlink_metadata(&dest) {
            let both_dirs = md.is_dir() && is_dir;
            if !both_dirs && (md.is_dir() || is_dir || md.file_type().is_symlink()) {
                remove_any(&dest);
            }
        }
        e.unpack_in(rootfs).map_err(io_err(&dest))?;
    }
    Ok(())
}

/// `rootfs/rel` for a relative path without `..`.
fn inside(rootfs: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut out = rootfs.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(ImageError::Format(format!(
                    "layer path {} leaves the rootfs",
                    rel.display()
                )))
            }
        }
    }
    Ok(out)
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn append_file<W: Write>(
    t: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    t.append_data(&mut h, path, data)
}

fn append_dir<W: Write>(t: &mut tar::Builder<W>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    t.append_data(&mut h, path, std::io::empty())
}

fn append_symlink<W: Write>(
    t: &mut tar::Builder<W>,
    path: &str,
    target: &str,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    t.append_link(&mut h, path, target)
}

/// Writes `busybox:latest` as an OCI image layout tarball to `out`, from a static busybox
/// binary: one gzip layer with /bin/busybox, a symlink per applet, and the usual dirs.
pub fn build_busybox(busybox: &Path, out: &Path) -> Result<(), ImageError> {
    let binary = std::fs::read(busybox).map_err(io_err(busybox))?;
    let applets = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_err(busybox))?;
    let applets = String::from_utf8_lossy(&applets.stdout).into_owned();
    let layer_tar = (|| -> std::io::Result<Vec<u8>> {
        let mut t = tar::Builder::new(Vec::new());
        for (d, mode) in [
            ("bin", 0o755),
            ("dev", 0o755),
            ("etc", 0o755),
            ("home", 0o755),
            ("proc", 0o755),
            ("root", 0o700),
            ("sys", 0o755),
            ("tmp", 0o1777),
            ("var", 0o755),
        ] {
            append_dir(&mut t, d, mode)?;
        }
        append_file(&mut t, "bin/busybox", 0o755, &binary)?;
        for a in applets
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
        {
            append_symlink(&mut t, &format!("bin/{a}"), "busybox")?;
        }
        append_file(
            &mut t,
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )?;
        append_file(&mut t, "etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
        t.into_inner()
    })()
    .map_err(io_err(out))?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar).map_err(io_err(out))?;
    let layer_gz = gz.finish().map_err(io_err(out))?;
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap_or_default();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha256_hex(&layer_gz)), "size": layer_gz.len()}],
    }))
    .unwrap_or_default();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/busybox:latest", "org.opencontainers.image.ref.name": "latest"},
        }],
    }))
    .unwrap_or_default();
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(out)?;
        let mut t = tar::Builder::new(f);
        append_file(
            &mut t,
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        append_file(&mut t, "index.json", 0o644, &index)?;
        append_dir(&mut t, "blobs", 0o755)?;
        append_dir(&mut t, "blobs/sha256", 0o755)?;
        for blob in [&config, &manifest, &layer_gz] {
            append_file(
                &mut t,
                &format!("blobs/sha256/{}", sha256_hex(blob)),
                0o644,
                blob,
            )?;
        }
        t.into_inner()?.sync_all()
    };
    write().map_err(io_err(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_references() {
        let cases = [
            ("busybox", Some("docker.io/library/busybox:latest")),
            ("busybox:1.36", Some("docker.io/library/busybox:1.36")),
            ("library/busybox", Some("docker.io/library/busybox:latest")),
            (
                "docker.io/library/busybox:latest",
                Some("docker.io/library/busybox:latest"),
            ),
            ("me/app:v1", Some("docker.io/me/app:v1")),
            ("localhost:5000/app", Some("localhost:5000/app:latest")),
            ("quay.io/x/y@sha256:abcd", Some("quay.io/x/y@sha256:abcd")),
            ("", None),
            ("Busybox", None),
            ("bad image", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).ok().as_deref(), want, "{input}");
        }
    }

    fn layer(entries: &[(&str, Option<&[u8]>)], gzip: bool) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            match data {
                Some(d) => append_file(&mut t, path, 0o644, d).unwrap(),
                None => append_dir(&mut t, path, 0o755).unwrap(),
            }
        }
        let raw = t.into_inner().unwrap();
        if !gzip {
            return raw;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    /// A docker-save tarball of two layers where the upper one whites out a file and
    /// makes a directory opaque, with its config and tag.
    #[test]
    fn docker_save_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let lower = layer(
            &[
                ("etc", None),
                ("etc/keep", Some(b"k")),
                ("etc/gone", Some(b"g")),
                ("opq", None),
                ("opq/old", Some(b"o")),
            ],
            true,
        );
        let upper = layer(
            &[
                ("etc/.wh.gone", Some(b"")),
                ("opq/.wh..wh..opq", Some(b"")),
                ("opq/new", Some(b"n")),
                ("etc/added", Some(b"a")),
            ],
            false,
        );
        let config = serde_json::to_vec(&json!({"config": {"Cmd": ["sh"], "Entrypoint": ["/bin/x"], "Env": ["A=1"], "WorkingDir": "/w"}})).unwrap();
        let manifest = serde_json::to_vec(&json!([{"Config": "cfg.json", "RepoTags": ["me/app:v1"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}])).unwrap();
        let tarball = dir.path().join("save.tar");
        {
            let mut t = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
            append_file(&mut t, "manifest.json", 0o644, &manifest).unwrap();
            append_file(&mut t, "cfg.json", 0o644, &config).unwrap();
            append_file(&mut t, "l1/layer.tar", 0o644, &lower).unwrap();
            append_file(&mut t, "l2/layer.tar", 0o644, &upper).unwrap();
            t.finish().unwrap();
        }
        let store = ImageStore::new(dir.path().join("images"));
        assert_eq!(store.import(&tarball).unwrap(), vec!["docker.io/me/app:v1"]);
        let img = store.resolve("me/app:v1").unwrap();
        let r = &img.rootfs;
        assert!(r.join("etc/keep").exists());
        assert!(!r.join("etc/gone").exists());
        assert!(r.join("etc/added").exists());
        assert!(!r.join("opq/old").exists());
        assert!(r.join("opq/new").exists());
        assert!(!r.join("opq/.wh..wh..opq").exists());
        assert_eq!(img.config.entrypoint, vec!["/bin/x"]);
        assert_eq!(img.config.cmd, vec!["sh"]);
        assert_eq!(img.config.working_dir, "/w");
        assert!(matches!(
            store.resolve("other"),
            Err(ImageError::NotFound(_))
        ));
    }

    #[test]
    fn busybox_layout_imports() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("skipping: /bin/busybox missing (scripts/setup.sh installs busybox-static)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("busybox.tar");
        build_busybox(busybox, &out).unwrap();
        let store = ImageStore::new(dir.path().join("images"));
        assert_eq!(
            store.import(&out).unwrap(),
            vec!["docker.io/library/busybox:latest"]
        );
        let img = store.resolve("busybox").unwrap();
        assert!(img.rootfs.join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(img.rootfs.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(img.config.cmd, vec!["sh"]);
    }

    #[test]
    fn layer_paths_cannot_escape() {
        assert!(inside(Path::new("/r"), Path::new("../x")).is_err());
        assert_eq!(
            inside(Path::new("/r"), Path::new("./a/b")).unwrap(),
            Path::new("/r/a/b")
        );
        assert!(safe_join(Path::new("/d"), "../etc/passwd").is_err());
    }
}
