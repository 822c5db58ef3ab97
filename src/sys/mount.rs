//! mount(2), umount2(2) and statfs(2): the only place bindery changes the
//! mount table.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::statfs;

use crate::error::{Error, Result};

/// FUSE_SUPER_MAGIC from linux/magic.h.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Bind `source` onto `target`: how every pod gets its view of a staged volume.
pub fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::sys("bind mount", target, e))
}

/// Make an existing bind read-only. A single MS_BIND|MS_RDONLY call silently
/// ignores MS_RDONLY, so read-only binds need this second, remount step.
pub fn remount_bind_read_only(target: &Path) -> Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| Error::sys("remount read-only", target, e))
}

/// Mount an overlay with a golden version as its read-only lower layer: the
/// O(1) publish of cache volumes with the overlay strategy.
pub fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| Error::sys("overlay mount", target, e))
}

/// Unmount `target`. A FUSE mount whose daemon died (ENOTCONN) or is still
/// used (EBUSY) is detached lazily so the path is usable again at once.
/// Returns false when nothing was mounted there.
pub fn unmount(target: &Path) -> Result<bool> {
    match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
        Err(Errno::EBUSY) | Err(Errno::ENOTCONN) | Err(Errno::EIO) => unmount_lazy(target),
        Err(e) => Err(Error::sys("unmount", target, e)),
    }
}

/// Detach `target` from the tree now; the kernel finishes when it is idle.
pub fn unmount_lazy(target: &Path) -> Result<bool> {
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::sys("lazy unmount", target, e)),
    }
}

/// Detach the mount at `target` at once while holding an fd on its root:
/// the kernel's teardown (dropping every cached dentry of a tree a pod has
/// walked: hundreds of ms at 100k files) then runs when the fd is closed,
/// which the caller does off the request path.
pub fn detach_holding(target: &Path) -> Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{open, OFlag};
    use std::os::fd::FromRawFd;
    let raw = open(
        target,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys("open", target, e))?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
        .map_err(|e| Error::sys("detach", target, e))?;
    Ok(fd)
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Abort the FUSE connection with device minor `minor` through fusectl
/// (mounted here first if nobody did): a hung server's callers get ENOTCONN.
/// Returns false when the connection does not exist (any more).
pub fn abort_fuse_connection(minor: u32) -> Result<bool> {
    let dir = Path::new(FUSECTL);
    if !dir.join(minor.to_string()).exists() && dir.is_dir() {
        match mount(
            Some("fusectl"),
            dir,
            Some("fusectl"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(Error::sys("mount fusectl", dir, e)),
        }
    }
    let abort = dir.join(minor.to_string()).join("abort");
    if !abort.exists() {
        return Ok(false);
    }
    std::fs::write(&abort, "1").map_err(|e| Error::io("write", &abort, e))?;
    Ok(true)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    pub fuse: bool,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// statfs(2): what filesystem serves `path` and how full it is. ENOTCONN here
/// is how a dead FUSE mount shows itself.
pub fn fs_stats(path: &Path) -> Result<FsStats> {
    let s = statfs(path).map_err(|e| Error::sys("statfs", path, e))?;
    // FUSE servers report whatever they like (s3fs: 2^24 blocks of 2^24
    // bytes): saturate instead of overflowing, and stay within i64 for CSI.
    let bytes =
        |blocks: u64| (blocks as u128 * s.block_size() as u128).min(i64::MAX as u128) as u64;
    let total = bytes(s.blocks() as u64);
    let free = bytes(s.blocks_free() as u64);
    let avail = bytes(s.blocks_available() as u64);
    let files = s.files() as u64;
    let ffree = s.files_free() as u64;
    Ok(FsStats {
        fuse: s.filesystem_type().0 as i64 == FUSE_SUPER_MAGIC,
        total_bytes: total,
        available_bytes: avail,
        used_bytes: total.saturating_sub(free),
        total_inodes: files,
        free_inodes: ffree,
        used_inodes: files.saturating_sub(ffree),
    })
}
