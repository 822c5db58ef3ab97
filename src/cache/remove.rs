//! Safe removal of a pod's tree, and the trash that makes unpublish O(1).
//!
//! `remove_tree` deletes with `openat(O_DIRECTORY|O_NOFOLLOW)` + `unlinkat` from an fd
//! per directory: a symlink is removed as a link and never followed, whatever it points
//! to (/etc, the golden copy, another pod). It never descends into another mount: a
//! subdirectory is opened with `openat2(RESOLVE_NO_XDEV)`, which refuses every mount
//! point, bind mounts of the same filesystem included (on kernels without openat2,
//! st_dev is compared with the parent's). Such a directory stays and is reported.
//! A btrfs subvolume met on the way (the `snapshot` strategy's pod trees, the
//! golden store's versions) is destroyed whole with one ioctl instead of emptied
//! file by file; one that cannot be (it holds a subvolume a pod made) is made
//! writable and emptied like any directory.
//!
//! `Trash` moves a tree aside with one `rename` (same filesystem) and deletes it on a
//! background thread; `Trash::new` first queues whatever a crash left in the trash.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::stat::SFlag;

use crate::error::{Error, Result};
use crate::sys::btrfs;
use crate::sys::fs::{self, EntryType};

pub mod parallel;
pub mod trash;

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
    match open_parent(path)? {
        Some((parent, name)) => remove_at(&parent, &name, path),
        None => Ok(()),
    }
}

/// Remove entry `name` of the opened directory `parent` (`path` names it in
/// messages) and everything below it, as `remove_tree` says.
fn remove_at(parent: &OwnedFd, name: &CStr, path: &Path) -> Result<()> {
    match open_root(parent, name, path)? {
        Some(root) => empty_and_remove(parent, name, path, root),
        None => Ok(()),
    }
}

/// The directory to empty at `name` of `parent`, opened; None when there is
/// nothing more to do: it did not exist, it was a file or a symlink (now
/// unlinked) or a btrfs subvolume (now destroyed whole).
fn open_root(parent: &OwnedFd, name: &CStr, path: &Path) -> Result<Option<OwnedFd>> {
    let st = match fs::stat_at(parent.as_fd(), name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::sys("fstatat", path, e)),
    };
    if !is_dir(st.st_mode) {
        return match fs::unlink_at(parent.as_fd(), name, false) {
            Ok(()) | Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::sys("unlinkat", path, e)),
        };
    }
    // Without openat2, a mount at `path` shows as a device differing from its parent's.
    let parent_dev = fs::fstat(parent.as_fd())
        .map_err(|e| Error::sys("fstat", path, e))?
        .st_dev;
    let root = match open_subdir(parent, name, parent_dev) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EXDEV) => {
            return Err(Error::InTheWay {
                path: path.to_path_buf(),
                what: "is a mount point: unmount it before removing the tree".into(),
            })
        }
        Err(e) => return Err(Error::sys("open directory", path, e)),
    };
    if destroy_subvolume(parent, name, &root) {
        debug!("destroyed subvolume {}", path.display());
        return Ok(None);
    }
    Ok(Some(root))
}

/// Empty the opened directory `root` (entry `name` of `parent`) with one
/// walk, then remove it; the error lists what stayed.
fn empty_and_remove(parent: &OwnedFd, name: &CStr, path: &Path, root: OwnedFd) -> Result<()> {
    let mut walk = Walk {
        root_path: path,
        frames: Vec::new(),
        left: Vec::new(),
        removed: 0,
    };
    walk.push(root, name.to_owned())?;
    walk.run()?;
    if walk.left.is_empty() {
        match fs::unlink_at(parent.as_fd(), name, true) {
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

/// The directory `path` is in, opened, and its last component; None when
/// that directory does not exist (nothing to remove or move).
fn open_parent(path: &Path) -> Result<Option<(OwnedFd, CString)>> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("path", format!("{}: no final component", path.display())))?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| Error::invalid("path", format!("{}: NUL byte", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match fs::open_dir(parent) {
        Ok(fd) => Ok(Some((fd, name))),
        Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(mode: u32) -> bool {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Destroy `name` of `parent` whole if the opened directory `dir` is a btrfs
/// subvolume's root; false (nothing changed but, for a read-only subvolume that
/// cannot be destroyed, its flag) when it is not, or must be emptied first.
fn destroy_subvolume(parent: &OwnedFd, name: &CStr, dir: &OwnedFd) -> bool {
    if !matches!(btrfs::is_subvolume(dir.as_fd()), Ok(true)) {
        return false;
    }
    match btrfs::destroy(parent.as_fd(), name) {
        Ok(()) => true,
        Err(e) => {
            // ENOTEMPTY: it holds another subvolume, which the walk destroys.
            debug!("subvolume {name:?} not destroyed whole ({e}): emptying it");
            if let Err(e) = btrfs::set_read_only(dir.as_fd(), false) {
                debug!("cannot make subvolume {name:?} writable: {e}");
            }
            false
        }
    }
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
                    Ok(fd) if destroy_subvolume(self.top_fd(), &name, &fd) => self.removed += 1,
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

#[cfg(test)]
mod tests;
