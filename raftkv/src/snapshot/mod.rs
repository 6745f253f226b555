//! Snapshot files: what `Maintenance.Snapshot` streams and `raftkv snapshot restore` reads.
//!
//! Layout: a sequence of file records, then the SHA-256 of everything before it (etcd also
//! ends its snapshot stream with a SHA-256, so truncation is detected the same way):
//!
//! ```text
//! repeat: | name len: u32 BE | name (UTF-8, no '/') | data len: u64 BE | data |
//! then:   | 0u32 BE (end mark) | zero padding to a multiple of 512 bytes | sha256: 32 bytes |
//! ```
//!
//! The padding is there because `etcdctl snapshot save` accepts only streams whose length is
//! 32 more than a multiple of 512 (a bbolt file plus its digest).
//!
//! The files are a RocksDB checkpoint of the state machine's database.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The body is padded to a multiple of this.
const PAGE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Serialises every regular file of `dir` into the snapshot format.
pub fn pack(dir: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::new();
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let data = fs::read(dir.join(&name))?;
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out.extend_from_slice(&0u32.to_be_bytes());
    out.resize(out.len().next_multiple_of(PAGE), 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Verifies a snapshot and writes its files into `dir` (created; must not exist).
pub fn unpack(mut src: impl Read, dir: &Path) -> Result<(), SnapshotError> {
    let mut all = Vec::new();
    src.read_to_end(&mut all)?;
    if all.len() < 36 {
        return Err(SnapshotError::Corrupt("too short"));
    }
    let (body, digest) = all.split_at(all.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(SnapshotError::Corrupt("sha256 mismatch"));
    }
    fs::create_dir_all(dir)?;
    let mut rest = body;
    let mut take = |n: usize| -> Result<&[u8], SnapshotError> {
        if rest.len() < n {
            return Err(SnapshotError::Corrupt("truncated record"));
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    loop {
        let name_len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        if name_len == 0 {
            break;
        }
        let name = std::str::from_utf8(take(name_len)?)
            .map_err(|_| SnapshotError::Corrupt("file name"))?
            .to_string();
        if name.contains('/') || name == ".." || name == "." {
            return Err(SnapshotError::Corrupt("file name"));
        }
        let len = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let data = take(len)?;
        fs::File::create(dir.join(&name))?.write_all(data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a"), b"alpha").unwrap();
        fs::write(src.path().join("b"), vec![7u8; 10_000]).unwrap();
        let packed = pack(src.path()).unwrap();
        assert_eq!(packed.len() % 512, 32, "etcdctl checks this shape");
        let dst = tempfile::tempdir().unwrap();
        unpack(packed.as_slice(), &dst.path().join("out")).unwrap();
        assert_eq!(fs::read(dst.path().join("out/a")).unwrap(), b"alpha");
        assert_eq!(fs::read(dst.path().join("out/b")).unwrap().len(), 10_000);
        let mut bad = packed.clone();
        bad[10] ^= 1;
        assert!(matches!(
            unpack(bad.as_slice(), &dst.path().join("x")),
            Err(SnapshotError::Corrupt(_))
        ));
        assert!(unpack(&packed[..packed.len() - 1], &dst.path().join("y")).is_err());
    }
}
