//! One mount, looked up now: statmount(2) where the kernel has it (two
//! syscalls, and never a question to a FUSE server), else a read of the
//! whole mount table.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::libc;

use crate::error::Result;
use crate::sys::mountinfo::{by_id, mount_at, read_self, MountInfo};
use crate::sys::statmount;

/// The topmost mount at exactly `path` right now: two syscalls where the
/// kernel has statmount(2), else a read of the whole table.
pub fn lookup(path: &Path) -> Result<Option<MountInfo>> {
    match statmount::of_path(path) {
        Some(Ok(m)) => Ok((m.mount_point == path).then_some(m)),
        Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            Ok(None)
        }
        // Anything else (a FUSE inode marked bad, a mount gone meanwhile):
        // the table says what is there.
        _ => Ok(mount_at(&read_self()?, path).cloned()),
    }
}

/// The mount `fd` is on, whose id (`mnt_id` of the fd) is `id`, if it is
/// still there: statmount(2) where the kernel has it, else the table.
pub fn of_fd(fd: BorrowedFd<'_>, id: u32) -> Result<Option<MountInfo>> {
    match statmount::of_fd(fd) {
        Some(Ok(m)) if m.id == id => Ok(Some(m)),
        _ => Ok(by_id(&read_self()?, id).cloned()),
    }
}

/// The FUSE connection number (device minor, as in /sys/fs/fuse/connections)
/// of the FUSE mount at `path` right now. The kernel gives a freed number to
/// the next mount at once: act on it only while the mount is known to be
/// there (see `mount::FuseConnection`).
pub fn fuse_minor_at(path: &Path) -> Option<u32> {
    lookup(path)
        .ok()
        .flatten()
        .filter(|m| m.is_fuse())
        .map(|m| m.dev.1)
}

/// Whether anything is mounted at `path` right now.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(lookup(path)?.is_some())
}
