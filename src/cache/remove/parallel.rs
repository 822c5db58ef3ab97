//! Parallel removal of one tree: its subdirectories near the top are handed
//! to `threads` threads, each removing whole subtrees with the same
//! fd-relative walk as `remove_tree`, then one walk over the root removes
//! what is left and reports what stays.
//!
//! The split opens directories with `open_subdir` (no symlink followed, no
//! mount crossed) and keeps each work item as (opened parent, name): no path
//! below the tree's root is ever resolved, so a directory swapped for a
//! symlink while the threads run is unlinked, not followed. Everything here
//! is best effort: what an item's walk could not remove is found again, and
//! reported, by the walk over the root that runs after the threads.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::debug;

use super::{empty_and_remove, is_dir, open_parent, open_root, open_subdir, remove_at};
use crate::error::Result;
use crate::sys::btrfs;
use crate::sys::fs::{self, EntryType};

/// How many levels below the root the split looks for subdirectories.
const SPLIT_DEPTH: usize = 3;

/// Work items wanted per thread, so that one large subtree does not leave
/// the other threads idle for long.
const ITEMS_PER_THREAD: usize = 8;

/// A subdirectory to remove whole: its opened parent, its name, its path
/// (for messages).
type Item = (Arc<OwnedFd>, CString, PathBuf);

/// `remove_tree` with up to `threads` threads (the calling one included):
/// the same guarantees, the tree's subdirectories near its top removed
/// concurrently. The threads it starts inherit the calling thread's CPU and
/// I/O priority.
pub fn remove_tree_with(path: &Path, threads: usize) -> Result<()> {
    let Some((parent, name)) = open_parent(path)? else {
        return Ok(());
    };
    let Some(root) = open_root(&parent, &name, path)? else {
        return Ok(());
    };
    if threads > 1 {
        remove_subtrees(&root, path, threads);
    }
    empty_and_remove(&parent, &name, path, root)
}

/// Remove the subtrees below `root` (the opened directory at `root_path`)
/// with `threads` threads, the calling one among them. The root itself and
/// the files at the levels split through stay, for the caller's walk.
fn remove_subtrees(root: &OwnedFd, root_path: &Path, threads: usize) {
    let items = split(root, root_path, threads);
    if items.len() < 2 {
        // Nothing to share: the caller's walk does it all.
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some((parent, name, path)) = items.get(i) else {
            break;
        };
        if let Err(e) = remove_at(parent, name, path) {
            debug!("parallel removal: {e} (left for the walk over the root)");
        }
    };
    std::thread::scope(|scope| {
        for n in 1..threads.min(items.len()) {
            let spawned = std::thread::Builder::new()
                .name(format!("bindery-rm-{n}"))
                .spawn_scoped(scope, work);
            if let Err(e) = spawned {
                // The others, and this thread, take its share.
                debug!("parallel removal: no thread {n}: {e}");
                break;
            }
        }
        work();
    });
}

/// Subdirectories of the tree, level by level from the top, until there are
/// enough for the threads or `SPLIT_DEPTH` levels were looked at.
pub(super) fn split(root: &OwnedFd, root_path: &Path, threads: usize) -> Vec<Item> {
    let (Ok(st), Ok(top)) = (fs::fstat(root.as_fd()), root.try_clone()) else {
        return Vec::new();
    };
    let dev = st.st_dev;
    let mut level = vec![(Arc::new(top), root_path.to_path_buf())];
    let mut items = Vec::new();
    for depth in 1..=SPLIT_DEPTH {
        let mut found: Vec<Item> = Vec::new();
        for (dir, path) in &level {
            for name in subdirs(dir) {
                let p = path.join(OsStr::from_bytes(name.to_bytes()));
                found.push((Arc::clone(dir), name, p));
            }
        }
        if items.len() + found.len() >= threads * ITEMS_PER_THREAD || depth == SPLIT_DEPTH {
            items.extend(found);
            break;
        }
        let mut below = Vec::new();
        for (parent, name, path) in found {
            match open_subdir(&parent, &name, dev) {
                Ok(fd) if !matches!(btrfs::is_subvolume(fd.as_fd()), Ok(true)) => {
                    below.push((Arc::new(fd), path));
                }
                // A subvolume (destroyed whole), a mount point (left and
                // reported), or gone: the item's own walk sees to it.
                _ => items.push((parent, name, path)),
            }
        }
        if below.is_empty() {
            break;
        }
        level = below;
    }
    items
}

/// The names of `dir`'s subdirectories (errors: none, the walk over the
/// root meets them again).
fn subdirs(dir: &OwnedFd) -> Vec<CString> {
    let Ok(mut d) = fs::read_dir(dir.as_fd()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in d.iter().flatten() {
        let name: &CStr = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let sub = match entry.file_type() {
            Some(t) => t == EntryType::Directory,
            None => matches!(fs::stat_at(dir.as_fd(), name), Ok(st) if is_dir(st.st_mode)),
        };
        if sub {
            out.push(name.to_owned());
        }
    }
    out
}
