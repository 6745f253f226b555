//! The launcher's own sweep after `nodeagent teardown` (which removes each node's
//! containers, pod networks, proxy table and cgroups): runc containers still in a runc
//! root below the cluster folder (an agent binary that is gone cannot remove its own) and
//! mounts below it (container root filesystems, volumes). `up` runs this after stopping
//! the node agents, `down` after killing whatever a crashed run left.

use std::path::{Path, PathBuf};
use std::process::Command;

/// runc roots below `dir`: any folder holding a runc `state.json` one level down.
fn runc_roots(dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "runc") {
                roots.push(path);
            } else if path.components().count() - dir.components().count() < 4 {
                stack.push(path);
            }
        }
    }
    roots
}

/// `runc --root R delete --force` of every container of every runc root below `dir`;
/// returns how many were removed.
pub fn remove_containers(dir: &Path) -> usize {
    let mut removed = 0;
    for root in runc_roots(dir) {
        let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        else {
            continue; // no runc: nothing can have been started with it
        };
        for id in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            let ok = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                removed += 1;
            } else {
                tracing::warn!(root = %root.display(), id, "runc delete failed");
            }
        }
    }
    removed
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal.
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Lazily unmounts every mount below `dir`; returns how many.
pub fn unmount_below(dir: &Path) -> usize {
    let mut n = 0;
    for p in mounts_below(dir) {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_runc_roots_a_few_levels_down() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["node-1/runc", "node-2/state/runc", "node-3/a/b/c/d/runc"] {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        let mut roots: Vec<String> = runc_roots(dir.path())
            .iter()
            .map(|r| r.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        roots.sort();
        assert_eq!(roots, ["node-1/runc", "node-2/state/runc"]);
    }

    #[test]
    fn no_mounts_below_a_fresh_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_below(dir.path()).is_empty());
        assert!(!mounts_below(Path::new("/")).is_empty());
    }
}
