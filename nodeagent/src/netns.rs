//! Named network namespaces, the way `ip netns add` makes them: a file whose bind mount
//! pins `/proc/thread-self/ns/net` of a thread that unshared its network namespace. The
//! pods' namespaces ([`crate::cni`]) and the nodes' own ones ([`crate::nodenet`]) are
//! such files.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Creates the namespace file `path` (its folder too).
pub fn create(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    let target = c_path(path)?;
    // A throwaway thread enters a new network namespace and pins it with a bind mount;
    // the caller's own threads never leave theirs.
    let made = std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare affects only this thread, which exits right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let src = c"/proc/thread-self/ns/net";
        // SAFETY: both paths are NUL-terminated; a plain bind mount.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Unmounts and removes the namespace file; a missing one is not an error. The
/// namespace itself ends once no process is in it.
pub fn remove(path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a NUL-terminated path; EINVAL (not a mount point) is fine.
    unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves the calling thread into the namespace at `path`. Call it before any other
/// thread is started: threads spawned afterwards inherit it, those before do not.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: a valid open descriptor of a namespace file.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` is a live namespace (its bind mount is in place), not a leftover file.
pub fn is_mounted(path: &Path) -> bool {
    std::fs::File::open(path).is_ok_and(|f| {
        // SAFETY: fstatfs on an open descriptor into a zeroed struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } == 0) && st.f_type == libc::NSFS_MAGIC
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_remove() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: network namespaces need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns/a");
        create(&path).unwrap();
        assert!(is_mounted(&path));
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let p = path.clone();
        let theirs = std::thread::spawn(move || {
            enter(&p).unwrap();
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        assert_ne!(ours, theirs);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
        assert!(!is_mounted(&path));
    }
}
