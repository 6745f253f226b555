//! A LazyFS-like FUSE layer for the `lose-unsynced` disk fault: a member's data dir is
//! a mount of this file system over a backing directory, file data written through it stays
//! in memory until the file is fsynced, and [`Mount::lose_unsynced`] throws away whatever
//! was never fsynced, as a power loss does to a real page cache. A server that acknowledges
//! a write before fsyncing it then loses the write for real, which the checkers see.
//!
//! LazyFS (the FUSE file system Jepsen uses for this, written in C++) is not packaged for
//! Debian; this is the same idea in a few hundred lines on the `fuser` crate, mounted from
//! the harness process itself (as root, no libfuse or fusermount needed).
//!
//! What survives a power loss here:
//! - **File data**: `write` goes to an in-memory page cache of [`PAGE`]-byte pages per
//!   file; `fsync`/`fdatasync` of the file writes its dirty pages and size to the backing
//!   file and fsyncs that. Everything else is lost by [`Mount::lose_unsynced`].
//! - **Metadata** (create, mkdir, rename, unlink, truncate) is applied to the backing
//!   directory at once, so it always survives. Real file systems can also lose a recent
//!   rename or create until the directory is fsynced; this layer does not model that, so it
//!   finds lost file data (the Raft log, the MVCC store's WAL) but not a missing directory
//!   fsync.
//! - **The kernel's page cache**: attributes and entries are never cached (zero TTL) and
//!   files are opened without `FOPEN_KEEP_CACHE`, so the kernel drops its cached pages of a
//!   file when it is reopened. The fault kills every process using the mount before
//!   dropping data, and the restarted server reopens every file.
//!
//! The kernel serves requests to one session thread; the state sits behind a mutex so the
//! harness can drop data from its own thread.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow,
};

/// Page size of the in-memory cache: what a partial write pulls in from the backing file.
pub const PAGE: u64 = 4096;
/// Nothing is cached by the kernel: every lookup and stat asks this layer.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// Errors from mounting.
#[derive(Debug, thiserror::Error)]
pub enum LazyFsError {
    #[error("cannot create {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot mount the lazy disk at {path} (needs root and /dev/fuse): {source}")]
    Mount { path: PathBuf, source: io::Error },
}

/// What [`Mount::lose_unsynced`] threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    pub files: usize,
    pub bytes: u64,
}

/// Un-fsynced state of one file: dirty pages by page index, and the file's size as
/// readers see it.
#[derive(Debug)]
struct Dirty {
    pages: BTreeMap<u64, Vec<u8>>,
    size: u64,
}

#[derive(Default)]
struct State {
    /// Inode → path in the backing directory. Inode numbers are ours: stable across
    /// renames, which is what keys the dirty pages.
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_ino: u64,
    dirty: HashMap<u64, Dirty>,
    files: HashMap<u64, File>,
    next_fh: u64,
}

impl State {
    fn new(backing: &Path) -> State {
        let mut s = State {
            next_ino: ROOT + 1,
            next_fh: 1,
            ..State::default()
        };
        s.paths.insert(ROOT, backing.to_path_buf());
        s.inodes.insert(backing.to_path_buf(), ROOT);
        s
    }

    fn unsynced(&self) -> Lost {
        Lost {
            files: self.dirty.len(),
            bytes: self
                .dirty
                .values()
                .map(|d| d.pages.len() as u64 * PAGE)
                .sum(),
        }
    }

    fn path(&self, ino: u64) -> Result<PathBuf, i32> {
        self.paths.get(&ino).cloned().ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, i32> {
        Ok(self.path(parent)?.join(name))
    }

    fn intern(&mut self, path: PathBuf) -> u64 {
        if let Some(&ino) = self.inodes.get(&path) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, path.clone());
        self.inodes.insert(path, ino);
        ino
    }

    /// Forgets a path that no longer exists, with its unsynced data.
    fn forget_path(&mut self, path: &Path) {
        if let Some(ino) = self.inodes.remove(path) {
            self.paths.remove(&ino);
            self.dirty.remove(&ino);
        }
    }

    /// Moves `from` (and, for a directory, everything below it) to `to`.
    fn rename_paths(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            // `join("")` would add a trailing slash, so the renamed path itself is `to`.
            let new = match old.strip_prefix(from) {
                Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                _ => to.to_path_buf(),
            };
            self.inodes.remove(&old);
            self.inodes.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, i32> {
        let path = self.path(ino)?;
        let md = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
        let mut attr = file_attr(ino, &md);
        if let Some(d) = self.dirty.get(&ino) {
            attr.size = d.size;
            attr.blocks = d.size.div_ceil(512);
        }
        Ok(attr)
    }

    fn size(&self, ino: u64, file: &File) -> io::Result<u64> {
        match self.dirty.get(&ino) {
            Some(d) => Ok(d.size),
            None => Ok(file.metadata()?.len()),
        }
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, len: u64) -> Result<Vec<u8>, i32> {
        let file = self.files.get(&fh).ok_or(libc::EBADF)?;
        let size = self.size(ino, file).map_err(|e| errno(&e))?;
        let end = size.min(offset.saturating_add(len));
        if end <= offset {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        read_fully_at(file, &mut buf, offset).map_err(|e| errno(&e))?;
        if let Some(d) = self.dirty.get(&ino) {
            for (&idx, page) in d.pages.range(offset / PAGE..=(end - 1) / PAGE) {
                let page_start = idx * PAGE;
                let from = offset.max(page_start);
                let to = end.min(page_start + PAGE);
                buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                    &page[(from - page_start) as usize..(to - page_start) as usize],
                );
            }
        }
        Ok(buf)
    }

    fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<(), i32> {
        let file = self.files.get(&fh).ok_or(libc::EBADF)?;
        let backing_len = file.metadata().map_err(|e| errno(&e))?.len();
        let d = self.dirty.entry(ino).or_insert(Dirty {
            pages: BTreeMap::new(),
            size: backing_len,
        });
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let page_start = idx * PAGE;
            let page = match d.pages.entry(idx) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    // A partial write keeps the rest of the page as the backing file has it
                    // (only below the visible size: a truncate may have cut the file).
                    let mut page = vec![0u8; PAGE as usize];
                    let keep = d.size.min(backing_len).saturating_sub(page_start).min(PAGE);
                    read_fully_at(file, &mut page[..keep as usize], page_start)
                        .map_err(|e| errno(&e))?;
                    e.insert(page)
                }
            };
            let to = end.min(page_start + PAGE);
            page[(pos - page_start) as usize..(to - page_start) as usize]
                .copy_from_slice(&data[(pos - offset) as usize..(to - offset) as usize]);
            pos = to;
        }
        d.size = d.size.max(end);
        Ok(())
    }

    /// Writes `ino`'s dirty pages to the backing file through `fh` and fsyncs it.
    fn sync(&mut self, ino: u64, fh: u64, datasync: bool) -> io::Result<()> {
        let file = self
            .files
            .get(&fh)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        if let Some(d) = self.dirty.remove(&ino) {
            for (&idx, page) in &d.pages {
                let start = idx * PAGE;
                if start >= d.size {
                    continue;
                }
                let len = (d.size - start).min(PAGE) as usize;
                file.write_all_at(&page[..len], start)?;
            }
            if file.metadata()?.len() != d.size {
                file.set_len(d.size)?;
            }
        }
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    /// Cuts or extends `ino` to `size`, in the backing file at once (metadata is durable).
    fn truncate(&mut self, ino: u64, size: u64) -> io::Result<()> {
        let path = self.path(ino).map_err(io::Error::from_raw_os_error)?;
        OpenOptions::new().write(true).open(&path)?.set_len(size)?;
        if let Some(d) = self.dirty.get_mut(&ino) {
            d.pages.retain(|&idx, _| idx * PAGE < size);
            if let Some(page) = d.pages.get_mut(&(size / PAGE)) {
                page[(size % PAGE) as usize..].fill(0);
            }
            d.size = size;
        }
        Ok(())
    }

    fn open(&mut self, path: &Path, opts: &OpenOptions) -> io::Result<u64> {
        let file = opts.open(path)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, file);
        Ok(fh)
    }
}

fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break, // past the backing file's end: the rest stays zero
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn file_attr(ino: u64, md: &std::fs::Metadata) -> FileAttr {
    let kind = if md.is_dir() {
        FileType::Directory
    } else if md.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino,
        size: md.len(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: time(md.ctime(), md.ctime_nsec()),
        kind,
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: PAGE as u32,
        flags: 0,
    }
}

/// The [`Filesystem`] the kernel talks to.
struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// unlink and rmdir: removes the backing entry, then forgets it and its unsynced data.
    fn remove(
        &self,
        parent: u64,
        name: &OsStr,
        op: impl FnOnce(&Path) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let result = s.child(parent, name).and_then(|path| {
            op(&path).map_err(|e| errno(&e))?;
            s.forget_path(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn entry(&self, path: PathBuf, reply: ReplyEntry) {
        let mut s = self.state();
        let ino = s.intern(path);
        match s.attr(ino) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => {
                if e == libc::ENOENT {
                    let path = s.path(ino).unwrap_or_default();
                    s.forget_path(&path);
                }
                reply.error(e)
            }
        }
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    // Always writable underneath: fsync through a read-only descriptor must still be
    // able to write the dirty pages out.
    o.read(true).write(true);
    o.custom_flags(flags & (libc::O_NOFOLLOW | libc::O_CLOEXEC));
    o
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        // Bound first: the guard of a temporary in a `match` scrutinee lives through the
        // arms, and `entry` locks again.
        let child = self.state().child(parent, name);
        match child {
            Ok(path) => self.entry(path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let result = (|| {
            if let Some(size) = size {
                s.truncate(ino, size).map_err(|e| errno(&e))?;
            }
            if let Some(mode) = mode {
                let path = s.path(ino)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| errno(&e))?;
            }
            // Owners and times are not modelled: the servers never set them.
            s.attr(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.state().child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = std::fs::create_dir(&path).and_then(|()| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !umask))
        });
        match made {
            Ok(()) => self.entry(path, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| std::fs::remove_file(p), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| std::fs::remove_dir(p), reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags != 0 {
            // RENAME_NOREPLACE / RENAME_EXCHANGE: the servers do not use them.
            return reply.error(libc::EINVAL);
        }
        let mut s = self.state();
        let result = (|| {
            let from = s.child(parent, name)?;
            let to = s.child(newparent, newname)?;
            std::fs::rename(&from, &to).map_err(|e| errno(&e))?;
            s.forget_path(&to);
            s.rename_paths(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut s = self.state();
        let result = (|| {
            let path = s.path(ino)?;
            let fh = s.open(&path, &open_options(flags)).map_err(|e| errno(&e))?;
            if flags & libc::O_TRUNC != 0 {
                s.truncate(ino, 0).map_err(|e| errno(&e))?;
            }
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let result = (|| {
            let path = s.child(parent, name)?;
            let mut opts = open_options(flags);
            opts.create(true).mode(mode & !umask);
            if flags & libc::O_EXCL != 0 {
                opts.create_new(true);
            }
            let fh = s.open(&path, &opts).map_err(|e| errno(&e))?;
            let ino = s.intern(path);
            if flags & libc::O_TRUNC != 0 {
                s.truncate(ino, 0).map_err(|e| errno(&e))?;
            }
            Ok((s.attr(ino)?, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, 0, fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self
            .state()
            .read(ino, fh, offset.max(0) as u64, size.into())
        {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino, fh, offset.max(0) as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        // close() is not a sync point: the data stays dirty.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().files.remove(&fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        match self.state().sync(ino, fh, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let mut names: Vec<(PathBuf, FileType)> = match std::fs::read_dir(&path) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| {
                    let kind = match e.file_type() {
                        Ok(t) if t.is_dir() => FileType::Directory,
                        Ok(t) if t.is_symlink() => FileType::Symlink,
                        _ => FileType::RegularFile,
                    };
                    (e.path(), kind)
                })
                .collect(),
            Err(e) => return reply.error(errno(&e)),
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = vec![
            (ino, FileType::Directory, OsStr::new(".").to_owned()),
            (ino, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        for (p, kind) in names {
            let name = p.file_name().unwrap_or_default().to_owned();
            entries.push((s.intern(p), kind, name));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        // Metadata is applied to the backing directory at once (see the module doc).
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let root = self.state().path(ROOT).unwrap_or_default();
        let Ok(c) = std::ffi::CString::new(root.as_os_str().as_bytes()) else {
            return reply.error(libc::EINVAL);
        };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-param.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// A mounted lazy disk; unmounted when dropped.
pub struct Mount {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    backing: PathBuf,
    session: Option<BackgroundSession>,
}

impl Mount {
    /// Mounts a lazy view of `backing` at `mountpoint`, creating both directories.
    pub fn new(backing: &Path, mountpoint: &Path) -> Result<Mount, LazyFsError> {
        for dir in [backing, mountpoint] {
            std::fs::create_dir_all(dir).map_err(|source| LazyFsError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let backing = backing.canonicalize().map_err(|source| LazyFsError::Dir {
            path: backing.to_path_buf(),
            source,
        })?;
        let state = Arc::new(Mutex::new(State::new(&backing)));
        let fs = LazyFs {
            state: state.clone(),
        };
        let options = [
            MountOption::FSName("jepsen-lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        let session =
            fuser::spawn_mount2(fs, mountpoint, &options).map_err(|source| LazyFsError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            })?;
        Ok(Mount {
            state,
            mountpoint: mountpoint.to_path_buf(),
            backing,
            session: Some(session),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Bytes written but not yet fsynced.
    pub fn unsynced(&self) -> Lost {
        self.state().unsynced()
    }

    /// The power loss: forgets every un-fsynced write. Call it only once every process
    /// using the mount is dead, or they will keep reading data that no longer exists.
    pub fn lose_unsynced(&self) -> Lost {
        // One lock: what is reported is exactly what is dropped.
        let mut s = self.state();
        let lost = s.unsynced();
        s.dirty.clear();
        s.files.clear();
        lost
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Unmounts (lazily, if something still holds a file open) and joins the session.
        drop(self.session.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// FUSE needs /dev/fuse and root; CI runs as root. Elsewhere the tests say why they
    /// did not run rather than failing on the environment.
    fn mount(dir: &Path) -> Option<Mount> {
        match Mount::new(&dir.join("backing"), &dir.join("mnt")) {
            Ok(m) => Some(m),
            Err(e) if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 => {
                eprintln!("SKIPPED: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn read_all(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_survive() {
        let dir = tempfile::tempdir().unwrap();
        let Some(m) = mount(dir.path()) else { return };
        let p = m.mountpoint().join("wal");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"durable ").unwrap();
        f.sync_data().unwrap();
        f.write_all(b"lost").unwrap();
        drop(f);
        // Readers through the mount see everything written so far...
        assert_eq!(read_all(&p), b"durable lost");
        // ...but the backing file only what was fsynced.
        assert_eq!(read_all(&m.backing().join("wal")), b"durable ");
        let lost = m.lose_unsynced();
        assert_eq!(
            lost,
            Lost {
                files: 1,
                bytes: PAGE
            }
        );
        assert_eq!(read_all(&p), b"durable ");
        assert_eq!(m.unsynced(), Lost::default());
    }

    #[test]
    fn table_of_write_patterns_reads_back_like_a_real_file() {
        // (offset, bytes) writes, some crossing page boundaries or leaving holes; the
        // mount must read back exactly what a plain file does, before and after fsync.
        let cases: &[&[(u64, usize)]] = &[
            &[(0, 10)],
            &[(4090, 20)],
            &[(0, 5000), (100, 3)],
            &[(10_000, 7)],
            &[(0, 3 * PAGE as usize + 1), (PAGE as usize as u64 - 1, 2)],
        ];
        let dir = tempfile::tempdir().unwrap();
        let Some(m) = mount(dir.path()) else { return };
        for (n, writes) in cases.iter().enumerate() {
            let lazy = m.mountpoint().join(format!("f{n}"));
            let plain = dir.path().join(format!("plain{n}"));
            let lf = File::create(&lazy).unwrap();
            let pf = File::create(&plain).unwrap();
            for (i, &(off, len)) in writes.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                lf.write_all_at(&data, off).unwrap();
                pf.write_all_at(&data, off).unwrap();
            }
            assert_eq!(read_all(&lazy), read_all(&plain), "case {n} before fsync");
            lf.sync_all().unwrap();
            assert_eq!(
                read_all(&m.backing().join(format!("f{n}"))),
                read_all(&plain)
            );
            assert_eq!(read_all(&lazy), read_all(&plain), "case {n} after fsync");
        }
    }

    #[test]
    fn metadata_is_durable_and_renames_keep_unsynced_data() {
        let dir = tempfile::tempdir().unwrap();
        let Some(m) = mount(dir.path()) else { return };
        let sub = m.mountpoint().join("member");
        std::fs::create_dir(&sub).unwrap();
        let tmp = sub.join("CURRENT.tmp");
        std::fs::write(&tmp, b"MANIFEST-1").unwrap();
        std::fs::rename(&tmp, sub.join("CURRENT")).unwrap();
        assert_eq!(read_all(&sub.join("CURRENT")), b"MANIFEST-1");
        let f = OpenOptions::new()
            .write(true)
            .open(sub.join("CURRENT"))
            .unwrap();
        f.set_len(3).unwrap();
        assert_eq!(read_all(&sub.join("CURRENT")), b"MAN");
        m.lose_unsynced();
        // The file and the truncate survive; its never-synced contents do not.
        assert_eq!(read_all(&sub.join("CURRENT")), vec![0u8; 3]);
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("CURRENT")]);
        std::fs::remove_file(sub.join("CURRENT")).unwrap();
        std::fs::remove_dir(&sub).unwrap();
    }
}
