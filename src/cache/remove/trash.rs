//! The trash: a pod's tree moved aside with one `rename` (same
//! filesystem), then deleted on a background thread, `DELETE_THREADS` at a
//! time, at a lower CPU and I/O priority than the threads that answer the
//! kubelet (`sys::process::run_in_background`): deletion never competes with
//! a publish on equal terms. `Trash::new` first queues whatever a crash left
//! in it.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{unbounded, Sender};
use log::{debug, info, warn};
use nix::errno::Errno;

use super::open_parent;
use super::parallel::remove_tree_with;
use crate::error::{Error, Result};
use crate::sys::{fs, process};

static TRASH_SEQ: AtomicU64 = AtomicU64::new(0);

/// Threads that delete one tree (the trash thread and the ones it starts):
/// bounded, so that deletion takes at most this many cores from the node.
pub const DELETE_THREADS: usize = 2;

/// Move `path` into `trash_dir` under a unique name with one rename (same filesystem).
///
/// Returns the new path, or `None` if `path` did not exist. A trash on another
/// filesystem fails with EXDEV: the trash must sit on the filesystem of the trees.
pub fn move_to_trash(path: &Path, trash_dir: &Path) -> Result<Option<PathBuf>> {
    let Some((parent, name)) = open_parent(path)? else {
        return Ok(None);
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
                // The kernel's name too (std sets none on musl): for `top -H`, and tests.
                let _ = nix::sys::prctl::set_name(c"bindery-trash");
                if let Err(e) = process::run_in_background() {
                    warn!("trash: deleting at the daemon's own priority: {e}");
                }
                // Ends when the Trash (the only sender) is dropped and the queue is empty.
                for (path, size) in rx.iter() {
                    let started = Instant::now();
                    match remove_tree_with(&path, DELETE_THREADS) {
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
