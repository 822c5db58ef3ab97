//! Safe removal of a pod's tree, and the trash that makes unpublish O(1).
//!
//! `remove_tree` deletes with `openat(O_DIRECTORY|O_NOFOLLOW)` + `unlinkat` from an fd
//! per directory: a symlink is removed as a link and never followed, whatever it points
//! to (/etc, the golden copy, another pod). It never descends into another mount: a
//! subdirectory is opened with `openat2(RESOLVE_NO_XDEV)`, which refuses every mount
//! point, bind mounts of the same filesystem included (on kernels without openat2,
//! st_dev is compared with the parent's). Such a directory stays and is reported.
//!
//! `Trash` moves a tree aside with one `rename` (same filesystem) and deletes it on a
//! background thread; `Trash::new` first queues whatever a crash left in the trash.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{unbounded, Sender};
use log::{debug, info, warn};
use nix::errno::Errno;
use nix::sys::stat::SFlag;

use crate::error::{Error, Result};
use crate::sys::fs::{self, EntryType};

/// Directory fds kept open at once while descending; deeper ancestors are closed and
/// reopened through `..` (checked by device and inode) on the way back up.
const MAX_OPEN_FDS: usize = 64;

/// How many times, per parent, a directory found not empty is listed again.
const MAX_RETRIES: u32 = 3;

/// Delete the tree at `path` without following symlinks or crossing mounts.
///
/// A missing `path` is success (idempotent); a symlink or file at `path` is unlinked
/// itself. Read-only and mode-000 directories inside the tree are made writable (on
/// the opened directory, never through a symlink) when a removal in them is refused.
/// Entries that cannot be removed (mount points below `path`, immutable files) stay;
/// everything else is removed and the error lists what stayed. `path` itself being a
/// mount point is refused before anything is touched.
pub fn remove_tree(path: &Path) -> Result<()> {
    let (parent_path, name) = split(path)?;
    let parent = match fs::open_dir(&parent_path) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = match fs::stat_at(parent.as_fd(), &name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::sys("fstatat", path, e)),
    };
    if !is_dir(st.st_mode) {
        return match fs::unlink_at(parent.as_fd(), &name, false) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::sys("unlinkat", path, e)),
        };
    }
    // Without openat2, a mount at `path` shows as a device differing from its parent's.
    let parent_dev = fs::fstat(parent.as_fd())
        .map_err(|e| Error::sys("fstat", &parent_path, e))?
        .st_dev;
    let root = match open_subdir(&parent, &name, parent_dev) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EXDEV) => {
            return Err(Error::InTheWay {
                path: path.to_path_buf(),
                what: "is a mount point: unmount it before removing the tree".into(),
            })
        }
        Err(e) => return Err(Error::sys("open directory", path, e)),
    };
    let mut walk = Walk {
        root_path: path,
        frames: Vec::new(),
        left: Vec::new(),
        removed: 0,
    };
    walk.push(root, name.clone())?;
    walk.run()?;
    if walk.left.is_empty() {
        match fs::unlink_at(parent.as_fd(), &name, true) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => walk
                .left
                .push((path.to_path_buf(), format!("rmdir: {}", e.desc()))),
        }
    }
    debug!("removed {} entries under {}", walk.removed, path.display());
    if walk.left.is_empty() {
        return Ok(());
    }
    for (p, why) in &walk.left {
        warn!(
            "left in place while removing {}: {} ({why})",
            path.display(),
            p.display()
        );
    }
    let (first, why) = &walk.left[0];
    Err(Error::InTheWay {
        path: path.to_path_buf(),
        what: format!(
            "{} entries could not be removed, first {} ({why})",
            walk.left.len(),
            first.display()
        ),
    })
}

fn split(path: &Path) -> Result<(PathBuf, CString)> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("path", format!("{}: no final component", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = CString::new(name.as_bytes())
        .map_err(|_| Error::invalid("path", format!("{}: NUL byte", path.display())))?;
    Ok((parent, name))
}

fn is_dir(mode: u32) -> bool {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Open a subdirectory for removal: no symlink, no mount crossing (EXDEV if it is a mount).
fn open_subdir(parent: &OwnedFd, name: &CStr, parent_dev: u64) -> nix::Result<OwnedFd> {
    let open = || match fs::open_dir_at_no_xdev(parent.as_fd(), name) {
        Err(Errno::ENOSYS) => {
            // No openat2 (< 5.6): the device number catches mounts of other filesystems.
            let fd = fs::open_dir_at(parent.as_fd(), name)?;
            if fs::same_dev(fd.as_fd(), parent_dev)? {
                Ok(fd)
            } else {
                Err(Errno::EXDEV)
            }
        }
        other => other,
    };
    match open() {
        Err(Errno::EACCES) => {
            // A directory its owner made mode 000 and we lack CAP_DAC_OVERRIDE: open it up.
            fs::unlock_dir_at(parent.as_fd(), name)?;
            open()
        }
        other => other,
    }
}

struct Frame {
    /// Closed for ancestors far above the current directory (see MAX_OPEN_FDS).
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
    mode: u32,
    /// Name in the parent directory.
    name: CString,
    /// Subdirectories still to descend into.
    subdirs: Vec<CString>,
    /// Subdirectories listed again because they were not empty after a pass.
    retries: u32,
    /// Made writable already (after a refused unlink).
    unlocked: bool,
    /// `left.len()` when this directory was entered.
    left_at_push: usize,
}

struct Walk<'a> {
    root_path: &'a Path,
    frames: Vec<Frame>,
    /// What stays, and why.
    left: Vec<(PathBuf, String)>,
    removed: u64,
}

impl Walk<'_> {
    /// The path of the current directory (for messages only).
    fn path(&self) -> PathBuf {
        let mut p = self.root_path.to_path_buf();
        for f in self.frames.iter().skip(1) {
            p.push(OsStr::from_bytes(f.name.to_bytes()));
        }
        p
    }

    fn child_path(&self, name: &CStr) -> PathBuf {
        self.path().join(OsStr::from_bytes(name.to_bytes()))
    }

    fn push(&mut self, fd: OwnedFd, name: CString) -> Result<()> {
        let st =
            fs::fstat(fd.as_fd()).map_err(|e| Error::sys("fstat", self.child_path(&name), e))?;
        self.frames.push(Frame {
            fd: Some(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            name,
            subdirs: Vec::new(),
            retries: 0,
            unlocked: false,
            left_at_push: self.left.len(),
        });
        let n = self.frames.len();
        if n > MAX_OPEN_FDS {
            self.frames[n - MAX_OPEN_FDS - 1].fd = None;
        }
        self.list()
    }

    fn top(&self) -> &Frame {
        // `run` and `push` only call this while a frame exists.
        &self.frames[self.frames.len() - 1]
    }

    fn top_fd(&self) -> &OwnedFd {
        match &self.top().fd {
            Some(fd) => fd,
            // The top frame's fd is always open: only ancestors are closed.
            #[allow(clippy::unreachable)] // an invariant of the walk, not an input
            None => unreachable!("current directory fd closed"),
        }
    }

    /// List the current directory: unlink everything but subdirectories, queue those.
    fn list(&mut self) -> Result<()> {
        let top = self.frames.len() - 1;
        let dir_path = || self.path();
        let mut dir = fs::read_dir(self.top_fd().as_fd())
            .map_err(|e| Error::sys("read directory", dir_path(), e))?;
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| Error::sys("read directory", dir_path(), e))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let kind = match entry.file_type() {
                Some(t) => Some(t),
                None => match fs::stat_at(self.top_fd().as_fd(), name) {
                    Ok(st) if is_dir(st.st_mode) => Some(EntryType::Directory),
                    Ok(_) => None,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(Error::sys("fstatat", self.child_path(name), e)),
                },
            };
            if kind == Some(EntryType::Directory) {
                subdirs.push(name.to_owned());
            } else {
                files.push(name.to_owned());
            }
        }
        drop(dir);
        // Unlink after listing: no directory is changed while it is being read.
        for name in files {
            self.unlink(&name);
        }
        self.frames[top].subdirs = subdirs;
        Ok(())
    }

    /// Remove an entry of the current directory, making the directory writable first if
    /// the removal is refused (read-only directory and no CAP_DAC_OVERRIDE).
    fn remove_entry(&mut self, name: &CStr, is_dir: bool) -> nix::Result<()> {
        let r = fs::unlink_at(self.top_fd().as_fd(), name, is_dir);
        if !matches!(r, Err(Errno::EACCES | Errno::EPERM)) || self.top().unlocked {
            return r;
        }
        let top = self.frames.len() - 1;
        self.frames[top].unlocked = true;
        // On the opened directory itself: never through a path, never a symlink target.
        let mode = (self.frames[top].mode | 0o700) & 0o7777;
        if let Err(e) = fs::fchmod(self.top_fd().as_fd(), mode) {
            debug!("cannot make {} writable: {e}", self.path().display());
        }
        fs::unlink_at(self.top_fd().as_fd(), name, is_dir)
    }

    /// Unlink a non-directory entry of the current directory; what stays is recorded.
    fn unlink(&mut self, name: &CStr) {
        match self.remove_entry(name, false) {
            Ok(()) => self.removed += 1,
            Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => {
                // Replaced by a directory since it was listed: descend into it.
                let top = self.frames.len() - 1;
                self.frames[top].subdirs.push(name.to_owned());
            }
            Err(e) => {
                let p = self.child_path(name);
                self.left.push((p, format!("unlinkat: {}", e.desc())));
            }
        }
    }

    fn run(&mut self) -> Result<()> {
        while let Some(top) = self.frames.last_mut() {
            if let Some(name) = top.subdirs.pop() {
                let dev = top.dev;
                let opened = open_subdir(self.top_fd(), &name, dev);
                match opened {
                    Ok(fd) => self.push(fd, name)?,
                    Err(Errno::ENOENT) => {}
                    // Replaced by a file or a symlink since it was listed: unlink that.
                    Err(Errno::ENOTDIR | Errno::ELOOP) => self.unlink(&name),
                    Err(Errno::EXDEV) => {
                        let p = self.child_path(&name);
                        self.left.push((p, "mount point, not crossed".into()));
                    }
                    Err(e) => {
                        let p = self.child_path(&name);
                        self.left.push((p, format!("open: {}", e.desc())));
                    }
                }
                continue;
            }
            // Current directory done: go back up and remove it from its parent.
            let Some(done) = self.frames.pop() else { break };
            if self.frames.is_empty() {
                break;
            }
            let parent = self.frames.len() - 1;
            if self.frames[parent].fd.is_none() {
                let fd = self.reopen_parent(&done)?;
                self.frames[parent].fd = Some(fd);
            }
            drop(done.fd);
            if self.left.len() > done.left_at_push {
                // Something inside stays (and is reported): so does this directory.
                continue;
            }
            match self.remove_entry(&done.name, true) {
                Ok(()) | Err(Errno::ENOENT) => self.removed += 1,
                Err(Errno::ENOTEMPTY | Errno::EEXIST)
                    if self.frames[parent].retries < MAX_RETRIES =>
                {
                    // Entries appeared while we were inside: list it again.
                    self.frames[parent].retries += 1;
                    self.frames[parent].subdirs.push(done.name);
                }
                Err(e) => {
                    let p = self.child_path(&done.name);
                    self.left.push((p, format!("rmdir: {}", e.desc())));
                }
            }
        }
        Ok(())
    }

    /// Reopen the parent of `child` through `..`, checking it is still the directory we left.
    fn reopen_parent(&self, child: &Frame) -> Result<OwnedFd> {
        let parent = &self.frames[self.frames.len() - 1];
        let path = self.path();
        let Some(child_fd) = &child.fd else {
            return Err(Error::Changed {
                path,
                what: "lost both a directory and its parent fd".into(),
            });
        };
        let fd = fs::open_parent(child_fd.as_fd()).map_err(|e| Error::sys("open ..", &path, e))?;
        let st = fs::fstat(fd.as_fd()).map_err(|e| Error::sys("fstat ..", &path, e))?;
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
            return Err(Error::Changed {
                path,
                what: "directory moved during removal".into(),
            });
        }
        Ok(fd)
    }
}

static TRASH_SEQ: AtomicU64 = AtomicU64::new(0);

/// Move `path` into `trash_dir` under a unique name with one rename (same filesystem).
///
/// Returns the new path, or `None` if `path` did not exist. A trash on another
/// filesystem fails with EXDEV: the trash must sit on the filesystem of the trees.
pub fn move_to_trash(path: &Path, trash_dir: &Path) -> Result<Option<PathBuf>> {
    let (parent_path, name) = split(path)?;
    let parent = match fs::open_dir(&parent_path) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let trash = fs::open_dir(trash_dir)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = TRASH_SEQ.fetch_add(1, Ordering::Relaxed);
    let unique = format!("{nanos}-{}-{seq}", std::process::id());
    match fs::rename_at(
        parent.as_fd(),
        OsStr::from_bytes(name.as_bytes()),
        trash.as_fd(),
        OsStr::new(&unique),
    ) {
        Ok(()) => Ok(Some(trash_dir.join(unique))),
        Err(Errno::ENOENT) => Ok(None),
        // rename checks filesystems before the source exists: a missing path is still None.
        Err(Errno::EXDEV) if matches!(fs::stat_at(parent.as_fd(), &name), Err(Errno::ENOENT)) => {
            Ok(None)
        }
        Err(Errno::EXDEV) => Err(Error::sys(
            "rename into trash (the trash must be on the same filesystem)",
            path,
            Errno::EXDEV,
        )),
        Err(e) => Err(Error::sys("rename into trash", path, e)),
    }
}

/// A trash directory and the background thread that empties it.
pub struct Trash {
    dir: PathBuf,
    tx: Sender<(PathBuf, u64)>,
    /// Paths queued or being removed; the condvar signals when it drops to 0.
    pending: Arc<(Mutex<usize>, Condvar)>,
    /// The bytes those paths used when last measured (a tree never measured,
    /// or left from before a restart, counts 0).
    bytes: Arc<AtomicU64>,
}

impl Trash {
    /// Use (creating it, mode 0700) `dir` as trash, and queue what a crash left in it.
    pub fn new(dir: &Path) -> Result<Trash> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create trash dir", dir, e))?;
        let d = fs::open_dir(dir)?;
        fs::fchmod(d.as_fd(), 0o700).map_err(|e| Error::sys("fchmod", dir, e))?;
        let (tx, rx) = unbounded::<(PathBuf, u64)>();
        let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
        let state = Arc::clone(&pending);
        let bytes = Arc::new(AtomicU64::new(0));
        let left = Arc::clone(&bytes);
        std::thread::Builder::new()
            .name("bindery-trash".into())
            .spawn(move || {
                // Ends when the Trash (the only sender) is dropped and the queue is empty.
                for (path, size) in rx.iter() {
                    let started = Instant::now();
                    match remove_tree(&path) {
                        Ok(()) => debug!(
                            "trash: removed {} in {:?}",
                            path.display(),
                            started.elapsed()
                        ),
                        Err(e) => warn!("trash: {e}"),
                    }
                    // Saturating: never below zero, whatever the order.
                    let _ = left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(size))
                    });
                    let (lock, cv) = &*state;
                    let mut n = lock.lock().unwrap_or_else(|p| p.into_inner());
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        cv.notify_all();
                    }
                }
            })
            .map_err(|e| Error::io("spawn trash thread", dir, e))?;
        let trash = Trash {
            dir: dir.to_path_buf(),
            tx,
            pending,
            bytes,
        };
        let leftovers = std::fs::read_dir(dir).map_err(|e| Error::io("read trash dir", dir, e))?;
        let mut n = 0;
        for entry in leftovers {
            let entry = entry.map_err(|e| Error::io("read trash dir", dir, e))?;
            trash.enqueue(entry.path(), 0);
            n += 1;
        }
        if n > 0 {
            info!(
                "trash {}: removing {n} entries left from before",
                dir.display()
            );
        }
        Ok(trash)
    }

    fn enqueue(&self, path: PathBuf, size: u64) {
        let (lock, _) = &*self.pending;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        if let Err(e) = self.tx.send((path, size)) {
            // Only if the trash thread died (a panic): the path stays for the next start.
            warn!(
                "trash thread is gone; {} stays until restart",
                e.into_inner().0.display()
            );
            *lock.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            self.bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Move `path` (which used `size` bytes when last measured) into the
    /// trash and queue its deletion; returns at once. `false` if `path` did
    /// not exist (idempotent unpublish).
    pub fn discard(&self, path: &Path, size: u64) -> Result<bool> {
        match move_to_trash(path, &self.dir)? {
            Some(moved) => {
                self.enqueue(moved, size);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Trees queued or being removed, and the bytes they used when last
    /// measured.
    pub fn backlog(&self) -> (usize, u64) {
        let (lock, _) = &*self.pending;
        let n = *lock.lock().unwrap_or_else(|p| p.into_inner());
        (n, self.bytes.load(Ordering::Relaxed))
    }

    /// Wait until nothing is queued or being removed; false on timeout.
    #[cfg(test)]
    pub fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let (lock, cv) = &*self.pending;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *guard == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::*;
    use std::fs as stdfs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;
    use std::time::Duration;

    fn chmod(p: &Path, mode: u32) {
        stdfs::set_permissions(p, stdfs::Permissions::from_mode(mode)).unwrap();
    }

    /// A pod's tree with symlinks pointing out of it (at `outside`), read-only and 000 dirs.
    fn hostile_tree(root: &Path, outside: &Path) {
        sample_tree(root);
        symlink(outside, root.join("to-outside-dir")).unwrap();
        symlink(outside.join("precious"), root.join("to-outside-file")).unwrap();
        symlink(outside, root.join("a/b/c/deep-to-outside")).unwrap();
        stdfs::create_dir_all(root.join("locked/inner")).unwrap();
        stdfs::write(root.join("locked/inner/f"), b"x").unwrap();
        chmod(&root.join("locked/inner"), 0o000);
        chmod(&root.join("locked"), 0o000);
        chmod(&root.join("a/b"), 0o555);
    }

    fn outside_dir() -> TempDir {
        let o = TempDir::new("outside");
        stdfs::write(o.path().join("precious"), b"keep me").unwrap();
        stdfs::create_dir(o.path().join("sub")).unwrap();
        o
    }

    fn outside_intact(o: &Path) {
        assert_eq!(stdfs::read(o.join("precious")).unwrap(), b"keep me");
        assert!(o.join("sub").is_dir());
    }

    #[test]
    fn removes_everything_and_follows_no_symlink() {
        let o = outside_dir();
        let t = TempDir::new("pod");
        let tree = t.path().join("vol");
        stdfs::create_dir(&tree).unwrap();
        hostile_tree(&tree, o.path());
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        outside_intact(o.path());
        // Idempotent.
        remove_tree(&tree).unwrap();
        remove_tree(&t.path().join("never/existed")).unwrap();
    }

    #[test]
    fn a_symlink_at_the_top_is_removed_not_followed() {
        let o = outside_dir();
        let t = TempDir::new("pod");
        let link = t.path().join("vol");
        symlink(o.path(), &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(stdfs::symlink_metadata(&link).is_err());
        outside_intact(o.path());
        let f = t.path().join("file");
        stdfs::write(&f, b"x").unwrap();
        remove_tree(&f).unwrap();
        assert!(!f.exists());
    }

    #[test]
    fn deep_tree_beyond_the_fd_budget() {
        let t = TempDir::new("deep");
        let mut p = t.path().join("vol");
        for i in 0..(3 * MAX_OPEN_FDS + 7) {
            p = p.join(format!("d{i}"));
        }
        stdfs::create_dir_all(&p).unwrap();
        stdfs::write(p.join("leaf"), b"x").unwrap();
        remove_tree(&t.path().join("vol")).unwrap();
        assert!(!t.path().join("vol").exists());
    }

    #[test]
    fn mode_000_dirs_without_dac_override() {
        if skip_unless_root("mode_000_dirs_without_dac_override") {
            return;
        }
        // A pod (uid 65534) locked itself out of its own dirs; remove as that uid, which
        // has no capability, so only the fchmod fallbacks can get in.
        let t = TempDir::new("nobody");
        chmod(t.path(), 0o777);
        let tree = t.path().join("vol");
        stdfs::create_dir_all(tree.join("x/y/z")).unwrap();
        stdfs::write(tree.join("x/y/z/f"), b"x").unwrap();
        stdfs::write(tree.join("x/f"), b"x").unwrap();
        let ok = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&tree)
            .status()
            .unwrap();
        assert!(ok.success());
        chmod(&tree.join("x/y/z"), 0o000);
        chmod(&tree.join("x/y"), 0o000);
        chmod(&tree.join("x"), 0o500);
        // SAFETY: the child only calls remove_tree and _exit; glibc's malloc is fork-safe.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let id = nix::unistd::Gid::from_raw(65534);
                let uid = nix::unistd::Uid::from_raw(65534);
                let code = if nix::unistd::setresgid(id, id, id).is_ok()
                    && nix::unistd::setresuid(uid, uid, uid).is_ok()
                    && remove_tree(&tree).is_ok()
                {
                    0
                } else {
                    1
                };
                // SAFETY: _exit ends the forked child without running the parent's atexit state.
                unsafe { nix::libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        assert!(!tree.exists());
    }

    /// Mounts inside the tree (needs a private mount namespace: BINDERY_MOUNT_TESTS=1).
    #[test]
    fn never_crosses_into_a_mount() {
        if std::env::var_os("BINDERY_MOUNT_TESTS").is_none() {
            eprintln!("SKIP never_crosses_into_a_mount: set BINDERY_MOUNT_TESTS=1 inside `unshare --mount --propagation private`");
            return;
        }
        let o = outside_dir();
        let t = TempDir::new("pod");
        let tree = t.path().join("vol");
        stdfs::create_dir_all(tree.join("sub/tmpfs")).unwrap();
        stdfs::create_dir_all(tree.join("sub/bind")).unwrap();
        stdfs::write(tree.join("sub/file"), b"x").unwrap();
        let run = |args: &[&str]| {
            assert!(Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success())
        };
        let tm = tree.join("sub/tmpfs");
        let bd = tree.join("sub/bind");
        run(&["mount", "-t", "tmpfs", "bindery-test", tm.to_str().unwrap()]);
        stdfs::write(tm.join("in-tmpfs"), b"x").unwrap();
        // A bind mount of a directory on the same filesystem: st_dev alone would not see it.
        run(&[
            "mount",
            "--bind",
            o.path().to_str().unwrap(),
            bd.to_str().unwrap(),
        ]);
        let e = remove_tree(&tree).unwrap_err();
        assert!(
            e.to_string().contains("2 entries could not be removed"),
            "{e}"
        );
        assert!(tm.join("in-tmpfs").exists());
        outside_intact(o.path());
        assert!(!tree.join("sub/file").exists());
        // The tree's own top being a mount point is refused outright.
        let e = remove_tree(&tm).unwrap_err();
        assert!(e.to_string().contains("mount point"), "{e}");
        run(&["umount", tm.to_str().unwrap()]);
        run(&["umount", bd.to_str().unwrap()]);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        outside_intact(o.path());
    }

    #[test]
    fn trash_moves_fast_and_empties_leftovers_at_start() {
        let base = TempDir::new("trash");
        let trash_dir = base.path().join("trash");
        // Leftovers from a "crash": a tree and a file already in the trash.
        stdfs::create_dir_all(trash_dir.join("old/x/y")).unwrap();
        stdfs::write(trash_dir.join("old/x/y/f"), b"x").unwrap();
        stdfs::write(trash_dir.join("oldfile"), b"x").unwrap();
        let o = outside_dir();
        let trash = Trash::new(&trash_dir).unwrap();
        assert!(trash.wait_idle(Duration::from_secs(10)));
        assert_eq!(stdfs::read_dir(&trash_dir).unwrap().count(), 0);

        let vol = base.path().join("vol");
        stdfs::create_dir(&vol).unwrap();
        hostile_tree(&vol, o.path());
        assert!(trash.discard(&vol, 0).unwrap());
        assert!(!vol.exists());
        assert!(!trash.discard(&vol, 0).unwrap());
        assert!(trash.wait_idle(Duration::from_secs(10)));
        assert_eq!(stdfs::read_dir(&trash_dir).unwrap().count(), 0);
        outside_intact(o.path());
    }

    #[test]
    fn move_to_trash_across_filesystems_fails() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("SKIP move_to_trash_across_filesystems_fails: no /dev/shm");
            return;
        }
        let t = TempDir::new_in(shm, "trash");
        let v = TempDir::new("vol");
        let e = move_to_trash(v.path(), t.path()).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EXDEV), "{e}");
        assert!(v.path().exists());
        assert_eq!(
            move_to_trash(&v.path().join("missing"), t.path()).unwrap(),
            None
        );
    }
}
