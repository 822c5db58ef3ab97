//! mount(2), umount2(2) and statfs(2): the only place bindery changes the
//! mount table.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::statfs;

use crate::error::{Error, Result};
use crate::sys::mounts;

/// FUSE_SUPER_MAGIC from linux/magic.h.
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

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
/// ignores MS_RDONLY, so read-only binds need this second, remount step; and
/// a bind remount REPLACES the per-mount flags, so the ones the bind has
/// (nosuid, nodev, noexec, atime: a fresh bind copies its source's) are
/// passed again.
pub fn remount_bind_read_only(target: &Path) -> Result<()> {
    remount_bind(target, MsFlags::MS_RDONLY)
}

/// Per-mount flags that a bind remount can set, by mount option name.
const PER_MOUNT: &[(&str, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
];

/// The per-mount flags in a mountinfo options field ("rw,nosuid,relatime").
pub fn per_mount_flags(options: &str) -> MsFlags {
    options
        .split(',')
        .filter_map(|o| PER_MOUNT.iter().find(|(n, _)| *n == o).map(|(_, f)| *f))
        .fold(MsFlags::empty(), |a, f| a | f)
}

/// The per-mount flags of the mount at `target`, read from mountinfo (not
/// statvfs: that would ask a FUSE server, which may hang).
pub fn mount_flags_of(target: &Path) -> Result<MsFlags> {
    mounts::lookup(target)?
        .map(|m| per_mount_flags(&m.options))
        .ok_or_else(|| Error::sys("read mount flags", target, Errno::EINVAL))
}

/// Add `flags` to the per-mount flags of the bind at `target`, keeping the
/// ones it has (a bind remount replaces them all).
pub fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    remount_bind_keeping(target, mount_flags_of(target)?, flags)
}

/// `remount_bind` for a bind whose current flags the caller already read
/// (e.g. a `/proc/self/fd/N` target, which mountinfo does not name).
pub fn remount_bind_keeping(target: &Path, keep: MsFlags, flags: MsFlags) -> Result<()> {
    let mut all = keep | flags;
    // The atime modes exclude each other: an explicit one replaces the kept one.
    let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
    if flags.intersects(atime) {
        all = (all - atime) | (flags & atime);
    }
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | all,
        None::<&str>,
    )
    .map_err(|e| Error::sys("remount bind", target, e))
}

/// Validate the CSI `volume_capability.mount.mount_flags` a CO asks for and
/// turn them into per-mount flags for `remount_bind`. Only flags
/// a bind can honour and that cannot widen access are known: ro, rw,
/// nosuid, nodev, noexec, noatime, nodiratime, relatime, strictatime
/// (`rw` is the default and sets nothing). Anything else is INVALID_ARGUMENT
/// naming the field: silently ignoring a flag the user relies on is worse.
pub fn csi_mount_flags(flags: &[String]) -> Result<MsFlags> {
    const FIELD: &str = "volume_capability.mount.mount_flags";
    let mut out = MsFlags::empty();
    let mut atime = 0;
    for f in flags {
        let f = f.trim();
        if f.is_empty() || f == "rw" || f == "defaults" {
            continue;
        }
        let known = PER_MOUNT.iter().find(|(n, _)| *n == f).map(|(_, v)| *v);
        let Some(v) = known else {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "{} is not supported (known: ro, rw, nosuid, nodev, noexec, noatime, \
                     nodiratime, relatime, strictatime)",
                    crate::error::quoted(f)
                ),
            ));
        };
        if matches!(f, "noatime" | "relatime" | "strictatime") {
            atime += 1;
        }
        out |= v;
    }
    if atime > 1 {
        return Err(Error::invalid(
            FIELD,
            "noatime, relatime and strictatime exclude each other",
        ));
    }
    Ok(out)
}

/// Mount an overlay with a golden version as its read-only lower layer: the
/// O(1) publish of cache volumes with the overlay strategy. Always nosuid and
/// nodev: what a pod's tree claims (a setuid file, a device node copied up
/// or created there) grants nothing.
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
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
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

/// Mount the fusectl filesystem at its usual place when connection
/// `minor` does not show there (nobody mounted it yet).
fn ensure_fusectl(minor: u32) -> Result<()> {
    let dir = Path::new(FUSECTL);
    if !dir.is_dir() || dir.join(minor.to_string()).exists() {
        return Ok(());
    }
    match mount(
        Some("fusectl"),
        dir,
        Some("fusectl"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(Error::sys("mount fusectl", dir, e)),
    }
}

/// One FUSE connection, held by its fusectl `abort` file, opened while the
/// connection was the one mounted at a known path.
///
/// Connection numbers (device minors) are handed to the next FUSE mount as
/// soon as a mount is gone, so a number read before an unmount names
/// whatever mount came next by the time it is used: writing `abort` by number
/// after an unmount can kill another volume's mount. An open fusectl file,
/// though, stays tied to its own connection: when that connection ends the
/// kernel detaches the file from it (fs/fuse/control.c clears the inode's
/// connection pointer), and a later write does nothing.
#[derive(Debug)]
pub struct FuseConnection {
    minor: u32,
    abort: std::fs::File,
}

impl FuseConnection {
    /// The connection of the FUSE mount at `mnt`, if one is mounted there.
    /// Its number is read from mountinfo, its `abort` file opened, then
    /// mountinfo is read again: the same number still mounted at `mnt` means
    /// the file opened belongs to that mount (nothing else mounts at a
    /// volume's path while its guard is held), not to a reused number.
    pub fn of_mount(mnt: &Path) -> Option<FuseConnection> {
        let minor = mounts::fuse_minor_at(mnt)?;
        if let Err(e) = ensure_fusectl(minor) {
            log::warn!("FUSE connection of {}: {e}", mnt.display());
            return None;
        }
        let path = Path::new(FUSECTL).join(minor.to_string()).join("abort");
        let abort = std::fs::OpenOptions::new().write(true).open(&path).ok()?;
        (mounts::fuse_minor_at(mnt) == Some(minor)).then_some(FuseConnection { minor, abort })
    }

    /// Abort the connection: calls blocked on a hung server, and every later
    /// call on any copy of its mount, fail with ENOTCONN. A connection that
    /// has ended meanwhile is left as it is (the write then does nothing).
    pub fn abort(&self) -> Result<()> {
        use std::io::Write;
        (&self.abort)
            .write_all(b"1")
            .map_err(|e| Error::io("write", format!("{FUSECTL}/{}/abort", self.minor), e))
    }
}

/// Requests waiting for an answer on FUSE connection `minor` (fusectl
/// `waiting`): a server that does not answer shows a count that stays up.
pub fn fuse_waiting(minor: u32) -> Option<u64> {
    std::fs::read_to_string(Path::new(FUSECTL).join(minor.to_string()).join("waiting"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
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
// statfs field types differ between C libraries (i64 in glibc, u64 in
// musl): the conversions are identities on one and checked on the other.
#[allow(clippy::useless_conversion)]
pub fn fs_stats(path: &Path) -> Result<FsStats> {
    let s = statfs(path).map_err(|e| Error::sys("statfs", path, e))?;
    // FUSE servers report whatever they like (s3fs: 2^24 blocks of 2^24
    // bytes): saturate instead of overflowing, and stay within i64 for CSI.
    let block = u64::try_from(s.block_size()).unwrap_or(0);
    let bytes = |blocks: u64| blocks.saturating_mul(block).min(i64::MAX.unsigned_abs());
    let total = bytes(s.blocks());
    let free = bytes(s.blocks_free());
    let avail = bytes(s.blocks_available());
    let files = s.files();
    let ffree = s.files_free();
    Ok(FsStats {
        fuse: u64::try_from(s.filesystem_type().0).ok() == Some(FUSE_SUPER_MAGIC),
        total_bytes: total,
        available_bytes: avail,
        used_bytes: total.saturating_sub(free),
        total_inodes: files,
        free_inodes: ffree,
        used_inodes: files.saturating_sub(ffree),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_mount_flags_from_mountinfo() {
        let f = per_mount_flags("ro,nosuid,nodev,noexec,relatime");
        assert_eq!(
            f,
            MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RELATIME
        );
        assert_eq!(per_mount_flags("rw"), MsFlags::empty());
    }

    #[test]
    fn csi_mount_flags_are_checked() {
        let ok = |v: &[&str]| csi_mount_flags(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&["ro", "noexec", "noatime"]).unwrap(),
            MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME
        );
        assert_eq!(ok(&["rw", ""]).unwrap(), MsFlags::empty());
        for bad in [
            &["suid"][..],
            &["dev"],
            &["remount"],
            &["bind"],
            &["noatime", "relatime"],
        ] {
            let e = ok(bad).unwrap_err();
            assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert!(
                e.to_string()
                    .starts_with("volume_capability.mount.mount_flags"),
                "{e}"
            );
        }
    }
}
