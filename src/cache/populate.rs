//! Populate a pod's volume from a golden version: hardlink, reflink or copy, in parallel.
//!
//! The walk is fd-relative from the two roots: every golden directory is opened
//! with `openat(O_DIRECTORY|O_NOFOLLOW)` relative to its parent, files with
//! `O_NOFOLLOW`, entries are created with `mkdirat`/`linkat`/`symlinkat`/`openat(O_EXCL)`.
//! No path string is resolved below the roots, so a symlink in either tree is never
//! followed: symlinks are recreated with the same target text; fifos, sockets and
//! devices are skipped (debug log).
//!
//! Work items are directories. A fixed set of `threads` workers (the calling thread is
//! one of them) share a crossbeam channel; each worker walks depth-first from its own
//! local stack and offers work on the channel only while another worker is idle. That
//! keeps open descriptors proportional to the depth of the tree (a pending directory
//! holds only its parent's two fds, shared with its siblings), not to its width.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{unbounded, Receiver, Sender};
use log::debug;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::fs::{self, EntryType};

mod spec;
pub use spec::{Owner, Stats, Strategy};

/// Fill `dest` (an existing, empty directory) with the tree at `golden`.
///
/// Directories are created fresh, owned by `owner.uid/gid`, with `owner.mode` or the
/// golden directory's mode (the root `dest` gets the same treatment). Files: with
/// `Hardlink` they are the golden inodes and are never chowned or chmodded; with
/// `Reflink`/`Copy` they get `owner.uid/gid`, the golden permission bits (setuid and
/// setgid dropped) and the golden atime/mtime. Symlinks are recreated and owned by the
/// owner; fifos, sockets and devices are skipped.
///
/// `threads` workers run at once (at least 1); `threads == 1` walks on the calling
/// thread and gives the same result. On error the first error is returned and the
/// destination is left partly filled: the caller populates into a temporary name
/// and removes it on failure. Hardlink/reflink across filesystems and filesystems
/// without FICLONE fail with `Error::InvalidField { field: "strategy", .. }`.
pub fn populate(
    golden: &Path,
    dest: &Path,
    strategy: Strategy,
    owner: &Owner,
    threads: usize,
) -> Result<Stats> {
    populate_masked(golden, dest, strategy, owner, threads, 0o1777)
}

/// `populate` with the permission bits copied files keep (`file_mask`): the golden store
/// builds with 0o555 (read-only, no setuid/setgid). Ignored with `Hardlink`.
pub(crate) fn populate_masked(
    golden: &Path,
    dest: &Path,
    strategy: Strategy,
    owner: &Owner,
    threads: usize,
    file_mask: u32,
) -> Result<Stats> {
    let src = fs::open_dir(golden)?;
    // A tree with no subdirectory is one job: starting threads for it costs
    // more than the copy (an inline volume of a few files, published often).
    let threads = if threads > 1 && has_subdir(src.as_fd()) {
        threads
    } else {
        1
    };
    let dst = fs::open_dir(dest)?;
    let sst = fs::fstat(src.as_fd()).map_err(|e| Error::sys("fstat", golden, e))?;
    let job = Shared {
        golden,
        dest,
        strategy,
        owner: *owner,
        file_mask,
        threads,
        pending: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        chan: unbounded(),
    };
    job.set_dir_owner(dst.as_fd(), sst.st_mode, dest)?;
    let root = Arc::new(Pair {
        src,
        dst,
        rel: PathBuf::new(),
    });
    job.pending.store(1, Ordering::SeqCst);
    job.offer(Job::Root(root));

    let started = std::time::Instant::now();
    let mut stats = Stats::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(|| job.worker())).collect();
        stats = job.worker();
        for h in handles {
            match h.join() {
                Ok(s) => stats.add(&s),
                // Re-raise a worker's panic on the caller's thread.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    let error = match job.error.into_inner() {
        Ok(e) => e,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(e) = error {
        return Err(e);
    }
    debug!(
        "populated {} from {} ({strategy}, {threads} threads): {stats:?} in {:?}",
        dest.display(),
        golden.display(),
        started.elapsed()
    );
    Ok(stats)
}

/// Whether the directory has a subdirectory (an error reads as yes: the walk
/// reports it).
fn has_subdir(dir: BorrowedFd<'_>) -> bool {
    let Ok(mut d) = fs::read_dir(dir) else {
        return true;
    };
    let found = d.iter().any(|e| match e {
        Ok(e) => {
            !matches!(e.file_name().to_bytes(), b"." | b"..")
                && !matches!(
                    e.file_type(),
                    Some(t) if t != EntryType::Directory
                )
        }
        Err(_) => true,
    });
    found
}

fn cross_fs(strategy: Strategy, golden: &Path, dest: &Path) -> Error {
    Error::invalid(
        "strategy",
        format!(
            "{strategy}: EXDEV between golden copy {} and target {} (different filesystems \
             or mounts); put the golden store on the pods' mount or use overlay or copy",
            golden.display(),
            dest.display()
        ),
    )
}

/// A golden directory and its copy, both open; `rel` is the path below the roots.
struct Pair {
    src: OwnedFd,
    dst: OwnedFd,
    rel: PathBuf,
}

enum Job {
    /// The roots, already open and owned.
    Root(Arc<Pair>),
    /// Subdirectory `name` of `parent`: create it, then copy its entries.
    Sub { parent: Arc<Pair>, name: CString },
}

struct Shared<'a> {
    golden: &'a Path,
    dest: &'a Path,
    strategy: Strategy,
    owner: Owner,
    file_mask: u32,
    threads: usize,
    /// Jobs created and not yet finished; the worker that brings it to 0 stops everyone.
    pending: AtomicUsize,
    /// Workers blocked on the channel.
    idle: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// `None` tells a worker to exit.
    chan: (Sender<Option<Job>>, Receiver<Option<Job>>),
}

/// Stops every worker if the one holding it unwinds, so a panic cannot hang `populate`.
struct PanicGuard<'s, 'a>(&'s Shared<'a>);

impl Drop for PanicGuard<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
            self.0.stop_all();
        }
    }
}

impl Shared<'_> {
    fn stop_all(&self) {
        for _ in 0..self.threads {
            // Cannot fail: this struct holds a receiver for as long as it lives.
            let _ = self.chan.0.send(None);
        }
    }

    fn offer(&self, job: Job) {
        // Cannot fail: this struct holds a receiver for as long as it lives.
        let _ = self.chan.0.send(Some(job));
    }

    fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut slot = match self.error.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Share local work while some worker waits with an empty channel.
    fn share(&self, local: &mut VecDeque<Job>) {
        while local.len() > 1 && self.idle.load(Ordering::Relaxed) > self.chan.1.len() {
            if let Some(job) = local.pop_front() {
                self.offer(job);
            }
        }
    }

    fn worker(&self) -> Stats {
        let _guard = PanicGuard(self);
        let mut local: VecDeque<Job> = VecDeque::new();
        let mut stats = Stats::default();
        loop {
            self.share(&mut local);
            let job = match local.pop_back() {
                Some(j) => j,
                None => {
                    self.idle.fetch_add(1, Ordering::SeqCst);
                    let msg = self.chan.1.recv();
                    self.idle.fetch_sub(1, Ordering::SeqCst);
                    match msg {
                        Ok(Some(j)) => j,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if !self.failed.load(Ordering::Relaxed) {
                if let Err(e) = self.run(job, &mut local, &mut stats) {
                    self.fail(e);
                }
            }
            if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.stop_all();
            }
        }
        stats
    }

    fn run(&self, job: Job, local: &mut VecDeque<Job>, stats: &mut Stats) -> Result<()> {
        let pair = match job {
            Job::Root(pair) => pair,
            Job::Sub { parent, name } => {
                let pair = self.make_dir(&parent, &name)?;
                stats.dirs += 1;
                Arc::new(pair)
            }
        };
        self.copy_entries(&pair, local, stats)
    }

    fn src_path(&self, rel: &Path, name: &CStr) -> PathBuf {
        self.golden
            .join(rel)
            .join(OsStr::from_bytes(name.to_bytes()))
    }

    fn dst_path(&self, rel: &Path, name: &CStr) -> PathBuf {
        self.dest.join(rel).join(OsStr::from_bytes(name.to_bytes()))
    }

    fn set_dir_owner(&self, dst: BorrowedFd<'_>, golden_mode: u32, path: &Path) -> Result<()> {
        if self.owner.uid.is_some() || self.owner.gid.is_some() {
            fs::fchown(dst, self.owner.uid, self.owner.gid)
                .map_err(|e| Error::sys("fchown directory", path, e))?;
        }
        fs::fchmod(dst, self.owner.dir_mode(golden_mode))
            .map_err(|e| Error::sys("fchmod directory", path, e))
    }

    fn make_dir(&self, parent: &Pair, name: &CStr) -> Result<Pair> {
        let src = fs::open_dir_at(parent.src.as_fd(), name).map_err(|e| {
            Error::sys("open golden directory", self.src_path(&parent.rel, name), e)
        })?;
        let sst = fs::fstat(src.as_fd())
            .map_err(|e| Error::sys("fstat", self.src_path(&parent.rel, name), e))?;
        fs::mkdir_at(parent.dst.as_fd(), name, 0o700)
            .map_err(|e| Error::sys("mkdirat", self.dst_path(&parent.rel, name), e))?;
        let dst = fs::open_dir_at(parent.dst.as_fd(), name)
            .map_err(|e| Error::sys("open directory", self.dst_path(&parent.rel, name), e))?;
        let rel = parent.rel.join(OsStr::from_bytes(name.to_bytes()));
        self.set_dir_owner(dst.as_fd(), sst.st_mode, &self.dest.join(&rel))?;
        Ok(Pair { src, dst, rel })
    }

    fn copy_entries(
        &self,
        pair: &Arc<Pair>,
        local: &mut VecDeque<Job>,
        stats: &mut Stats,
    ) -> Result<()> {
        let list_err = |e| Error::sys("read golden directory", self.golden.join(&pair.rel), e);
        let mut dir = fs::read_dir(pair.src.as_fd()).map_err(list_err)?;
        for entry in dir.iter() {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let entry = entry.map_err(list_err)?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let kind = match entry.file_type() {
                Some(t) => t,
                None => self.stat_type(pair, name)?,
            };
            match kind {
                EntryType::File => {
                    self.copy_file(pair, name, stats)?;
                    stats.files += 1;
                }
                EntryType::Directory => {
                    self.pending.fetch_add(1, Ordering::SeqCst);
                    local.push_back(Job::Sub {
                        parent: Arc::clone(pair),
                        name: name.to_owned(),
                    });
                }
                EntryType::Symlink => {
                    self.copy_symlink(pair, name)?;
                    stats.symlinks += 1;
                }
                EntryType::Fifo
                | EntryType::Socket
                | EntryType::CharacterDevice
                | EntryType::BlockDevice => {
                    debug!(
                        "skipping {kind:?} {}",
                        self.src_path(&pair.rel, name).display()
                    );
                    stats.skipped += 1;
                }
            }
        }
        Ok(())
    }

    fn stat_type(&self, pair: &Pair, name: &CStr) -> Result<EntryType> {
        use nix::sys::stat::SFlag;
        let st = fs::stat_at(pair.src.as_fd(), name)
            .map_err(|e| Error::sys("fstatat", self.src_path(&pair.rel, name), e))?;
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        Ok(match fmt {
            SFlag::S_IFREG => EntryType::File,
            SFlag::S_IFDIR => EntryType::Directory,
            SFlag::S_IFLNK => EntryType::Symlink,
            SFlag::S_IFIFO => EntryType::Fifo,
            SFlag::S_IFSOCK => EntryType::Socket,
            SFlag::S_IFCHR => EntryType::CharacterDevice,
            _ => EntryType::BlockDevice,
        })
    }

    fn copy_symlink(&self, pair: &Pair, name: &CStr) -> Result<()> {
        let target = fs::readlink_at(pair.src.as_fd(), name)
            .map_err(|e| Error::sys("readlinkat", self.src_path(&pair.rel, name), e))?;
        fs::symlink_at(&target, pair.dst.as_fd(), name)
            .map_err(|e| Error::sys("symlinkat", self.dst_path(&pair.rel, name), e))?;
        if self.owner.uid.is_some() || self.owner.gid.is_some() {
            fs::lchown_at(pair.dst.as_fd(), name, self.owner.uid, self.owner.gid)
                .map_err(|e| Error::sys("chown symlink", self.dst_path(&pair.rel, name), e))?;
        }
        Ok(())
    }

    fn copy_file(&self, pair: &Pair, name: &CStr, stats: &mut Stats) -> Result<()> {
        if self.strategy == Strategy::Hardlink {
            return fs::link_at(pair.src.as_fd(), name, pair.dst.as_fd(), name).map_err(
                |e| match e {
                    Errno::EXDEV => cross_fs(self.strategy, self.golden, self.dest),
                    Errno::EMLINK => Error::sys(
                        "linkat (too many links to one golden file: use reflink or copy)",
                        self.src_path(&pair.rel, name),
                        e,
                    ),
                    _ => Error::sys("linkat", self.dst_path(&pair.rel, name), e),
                },
            );
        }
        let src = fs::open_file_at(pair.src.as_fd(), name)
            .map_err(|e| Error::sys("open golden file", self.src_path(&pair.rel, name), e))?;
        let sst = fs::fstat(src.as_fd())
            .map_err(|e| Error::sys("fstat", self.src_path(&pair.rel, name), e))?;
        let dst = fs::create_file_at(pair.dst.as_fd(), name, 0o600)
            .map_err(|e| Error::sys("create file", self.dst_path(&pair.rel, name), e))?;
        let dpath = || self.dst_path(&pair.rel, name);
        match self.strategy {
            Strategy::Reflink => fs::ficlone(dst.as_fd(), src.as_fd()).map_err(|e| match e {
                Errno::EXDEV => cross_fs(self.strategy, self.golden, self.dest),
                Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOTTY => Error::invalid(
                    "strategy",
                    format!(
                        "reflink: the filesystem of {} does not support FICLONE ({e}); \
                         use XFS with reflink=1 or btrfs, or strategy overlay or copy",
                        self.dest.display()
                    ),
                ),
                _ => Error::sys("ioctl FICLONE", dpath(), e),
            })?,
            _ => copy_data(src, &dst, &dpath)?,
        }
        if self.owner.uid.is_some() || self.owner.gid.is_some() {
            fs::fchown(dst.as_fd(), self.owner.uid, self.owner.gid)
                .map_err(|e| Error::sys("fchown", dpath(), e))?;
        }
        // After fchown (which clears setuid bits anyway): exact bits whatever the umask.
        fs::fchmod(
            dst.as_fd(),
            self.owner.file_mode(sst.st_mode & self.file_mask),
        )
        .map_err(|e| Error::sys("fchmod", dpath(), e))?;
        fs::set_times(dst.as_fd(), &sst).map_err(|e| Error::sys("futimens", dpath(), e))?;
        stats.bytes += fs::size_of(&sst);
        Ok(())
    }
}

/// Copy a whole file with copy_file_range, falling back to read/write where the
/// kernel refuses it (across filesystems on old kernels, special filesystems).
/// A file that grows while copied is copied up to EOF, not up to its stat'ed size.
fn copy_data(src: OwnedFd, dst: &OwnedFd, dpath: &dyn Fn() -> PathBuf) -> Result<()> {
    let mut copied: u64 = 0;
    loop {
        match fs::copy_range(src.as_fd(), dst.as_fd(), 1 << 30) {
            Ok(0) => return Ok(()),
            Ok(n) => copied += n as u64,
            Err(Errno::EINTR) => continue,
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
                if copied == 0 =>
            {
                break;
            }
            Err(e) => return Err(Error::sys("copy_file_range", dpath(), e)),
        }
    }
    let mut from = File::from(src);
    let mut to = File::from(dst.try_clone().map_err(|e| Error::io("dup", dpath(), e))?);
    std::io::copy(&mut from, &mut to)
        .map(drop)
        .map_err(|e| Error::io("copy", dpath(), e))
}

#[cfg(test)]
mod tests;
