//! File-system system calls used by the cache engine (populate, remove, golden store).
//!
//! Every nix call of the cache engine goes through here, one small wrapper per
//! step, each with one line saying why the step exists. Two families:
//!
//! - fd-relative wrappers (`*_at`, `fstat`, `fchown`, `ficlone`, …) are on the hot
//!   path of population and removal (one call per file). They return
//!   `nix::Result` so that no path is built unless something fails: the caller,
//!   which knows the path, wraps the errno with `Error::sys(op, path, errno)`.
//! - path wrappers (`open_dir`, `stat_path`, `lock_exclusive`, …)
//!   return `crate::error::Result` with the path and errno already attached.
//!
//! Directories are always opened with `O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC`, files
//! with `O_NOFOLLOW`: a symlink planted in a tree is never followed.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{self, FileStat, Mode};
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

use crate::error::{Error, Result};

pub use nix::dir::Type as EntryType;
pub use nix::sys::stat::FileStat as Stat;

/// Flags for every directory open: never follow a final symlink, fail on non-directories.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// `..`, to reopen a parent directory from a child's fd.
#[allow(clippy::panic)] // evaluated at compile time: a bad literal fails the build
const DOTDOT: &CStr = match CStr::from_bytes_with_nul(b"..\0") {
    Ok(c) => c,
    Err(_) => panic!("literal is NUL-terminated"),
};

/// A file's size in bytes (the kernel never reports a negative one).
pub fn size_of(st: &Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

/// The bytes a file takes on disk: its 512-byte blocks.
pub fn allocated_bytes(st: &Stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
}

/// Turn a raw fd that a successful syscall just returned into an owned one.
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open/openat/openat2 call, so
    // it is a valid descriptor that nothing else owns or will close.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Open a directory by path, refusing a symlink as last component, as the root of an fd-relative walk.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    fcntl::open(path, DIR_FLAGS, Mode::empty())
        .map(owned)
        .map_err(|e| Error::sys("open directory", path, e))
}

/// Open a subdirectory relative to its parent fd without following a symlink, to descend a tree safely.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    fcntl::openat(Some(dir.as_raw_fd()), name, DIR_FLAGS, Mode::empty()).map(owned)
}

/// Open a subdirectory like `open_dir_at` but fail with EXDEV if it is a mount point
/// (any mount, bind mounts of the same filesystem included), so removal never crosses
/// into another mount. Returns ENOSYS on kernels without openat2 (< 5.6).
pub fn open_dir_at_no_xdev(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    let how = fcntl::OpenHow::new()
        .flags(DIR_FLAGS)
        .resolve(fcntl::ResolveFlag::RESOLVE_NO_XDEV | fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS);
    fcntl::openat2(dir.as_raw_fd(), name, how).map(owned)
}

/// Open the directory `rel` below `dir` without following a symlink in any of
/// its components and without leaving `dir` (openat2 RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS): for paths inside a tree that someone else controls.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    let how = fcntl::OpenHow::new()
        .flags(DIR_FLAGS)
        .resolve(fcntl::ResolveFlag::RESOLVE_BENEATH | fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS);
    fcntl::openat2(dir.as_raw_fd(), rel, how).map(owned)
}

/// Every extended attribute of the open file `fd` as (name, value), sorted by
/// name; none where the filesystem has no xattrs. An attribute removed while
/// it is read is left out.
pub fn xattrs(fd: BorrowedFd<'_>) -> nix::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use nix::libc;
    let raw = fd.as_raw_fd();
    // Sized by asking with an empty buffer, then read; ERANGE (it grew
    // in between) asks again.
    let read = |get: &dyn Fn(*mut libc::c_void, usize) -> isize| -> nix::Result<Option<Vec<u8>>> {
        loop {
            let size = Errno::result(get(std::ptr::null_mut(), 0))?;
            let mut buf = vec![0u8; usize::try_from(size).map_err(|_| Errno::EOVERFLOW)?];
            match Errno::result(get(buf.as_mut_ptr().cast(), buf.len())) {
                Ok(n) => {
                    buf.truncate(usize::try_from(n).map_err(|_| Errno::EOVERFLOW)?);
                    return Ok(Some(buf));
                }
                Err(Errno::ERANGE) => continue,
                Err(Errno::ENODATA) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    };
    // SAFETY: `raw` is an open fd for the duration of the call; `buf` points
    // to `len` writable bytes (or is null with len 0, which asks the size).
    let names = match read(&|buf, len| unsafe { libc::flistxattr(raw, buf.cast(), len) }) {
        Ok(n) => n.unwrap_or_default(),
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = std::ffi::CString::new(name) else {
            continue;
        };
        // SAFETY: as above; `cname` is a NUL-terminated name that outlives the call.
        let value = read(&|buf, len| unsafe { libc::fgetxattr(raw, cname.as_ptr(), buf, len) });
        match value {
            Ok(Some(v)) => out.push((name.to_vec(), v)),
            Ok(None) | Err(Errno::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Open a directory's parent (`..`) from its fd, to get an ancestor back after its fd was closed.
pub fn open_parent(dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    fcntl::openat(Some(dir.as_raw_fd()), DOTDOT, DIR_FLAGS, Mode::empty()).map(owned)
}

/// Open a regular file read-only relative to its directory, never following a symlink, to copy or clone it.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()).map(owned)
}

/// Create a new file exclusively (fails if anything, a symlink included, has the name), to receive a copy.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(mode),
    )
    .map(owned)
}

/// Open (creating if needed) a small file by path for writing, for pointers, markers and locks.
pub fn create_file(path: &Path, truncate: bool) -> Result<File> {
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if truncate {
        flags |= OFlag::O_TRUNC;
    }
    fcntl::open(path, flags, Mode::from_bits_truncate(0o644))
        .map(|fd| File::from(owned(fd)))
        .map_err(|e| Error::sys("create file", path, e))
}

/// Create a directory relative to its parent fd: population recreates directories, never links them.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> nix::Result<()> {
    stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode))
}

/// Hard-link a file into another directory without following a symlink: the `hardlink` strategy.
pub fn link_at(
    src_dir: BorrowedFd<'_>,
    src: &CStr,
    dst_dir: BorrowedFd<'_>,
    dst: &CStr,
) -> nix::Result<()> {
    unistd::linkat(
        Some(src_dir.as_raw_fd()),
        src,
        Some(dst_dir.as_raw_fd()),
        dst,
        AtFlags::empty(),
    )
}

/// Create a symlink with the given target text: symlinks are recreated, never followed.
pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
    unistd::symlinkat(target, Some(dir.as_raw_fd()), name)
}

/// Read a symlink's target text relative to its directory, to recreate the link as it is.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OsString> {
    fcntl::readlinkat(Some(dir.as_raw_fd()), name)
}

/// Stat an entry relative to its directory without following a symlink, when readdir gives no type.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<FileStat> {
    stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Stat a relative path (which may contain '/') under a directory fd, not following a final symlink,
/// to compare a golden file with its manifest entry.
pub fn stat_rel(dir: BorrowedFd<'_>, rel: &Path) -> nix::Result<FileStat> {
    stat::fstatat(Some(dir.as_raw_fd()), rel, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Stat an open file: its mode, owner and device (to compare filesystems and detect mount points).
pub fn fstat(fd: BorrowedFd<'_>) -> nix::Result<FileStat> {
    stat::fstat(fd.as_raw_fd())
}

/// Remove a directory entry relative to its parent fd (a directory if `is_dir`): fd-relative removal.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> nix::Result<()> {
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    unistd::unlinkat(Some(dir.as_raw_fd()), name, flag)
}

/// Remove a path (a directory if `is_dir`), for the top of a tree and for small files.
pub fn unlink_path(path: &Path, is_dir: bool) -> Result<()> {
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    unistd::unlinkat(None, path, flag).map_err(|e| Error::sys("unlink", path, e))
}

/// Rename an entry between two directory fds: atomic publish of a golden version, moves into the trash.
pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> nix::Result<()> {
    fcntl::renameat(
        Some(old_dir.as_raw_fd()),
        old,
        Some(new_dir.as_raw_fd()),
        new,
    )
}

/// Rename a path to another path (replacing a file there): atomic update of small pointer files.
pub fn rename_path(old: &Path, new: &Path) -> Result<()> {
    fcntl::renameat(None, old, None, new).map_err(|e| Error::sys("rename", old, e))
}

// FICLONE = _IOW(0x94, 9, int): share the extents of the source fd with the destination.
nix::ioctl_write_int!(ioctl_ficlone, 0x94, 9);

/// Clone a whole file's extents into an empty destination (copy-on-write): the `reflink` strategy.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> nix::Result<()> {
    // FICLONE takes the source fd as its integer argument; an fd is non-negative.
    let src_fd =
        nix::sys::ioctl::ioctl_param_type::try_from(src.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    // SAFETY: both fds are valid for the duration of the call (they are borrowed),
    // and FICLONE reads no memory from us: its argument is passed by value.
    unsafe { ioctl_ficlone(dst.as_raw_fd(), src_fd) }.map(drop)
}

/// Copy up to `len` bytes in the kernel between the current offsets of two fds: the `copy` strategy.
/// (A raw syscall: nix wraps it only behind its `zerocopy` feature, which bindery does not enable.)
pub fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: usize) -> nix::Result<usize> {
    // SAFETY: both fds are valid while borrowed; null offset pointers mean "use and
    // advance the file offsets", so the kernel writes to no memory of ours.
    let n = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_copy_file_range,
            src.as_raw_fd(),
            std::ptr::null_mut::<nix::libc::loff_t>(),
            dst.as_raw_fd(),
            std::ptr::null_mut::<nix::libc::loff_t>(),
            len,
            0u32,
        )
    };
    Errno::result(n).and_then(|n| usize::try_from(n).map_err(|_| Errno::EOVERFLOW))
}

/// Set owner and group of an open file or directory (None keeps it): population gives the pod its files.
pub fn fchown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()> {
    unistd::fchown(
        fd.as_raw_fd(),
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
    )
}

/// Set owner and group of a symlink itself (never its target), for recreated symlinks.
pub fn lchown_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> nix::Result<()> {
    unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// Set the permission bits of an open file or directory: exact modes, whatever the umask.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> nix::Result<()> {
    stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
}

/// Make a directory we cannot open (mode 000, not root) searchable, through an O_PATH fd so that
/// a symlink is never followed: removal of trees whose owner locked themselves out.
pub fn unlock_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = owned(fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags,
        Mode::empty(),
    )?);
    // fchmod() refuses O_PATH fds; /proc/self/fd/N names exactly the directory we opened.
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    stat::fchmodat(
        None,
        proc_path.as_str(),
        Mode::from_bits_truncate(0o700),
        stat::FchmodatFlags::FollowSymlink,
    )
}

/// Preserve a file's access and modification times on its copy (build tools compare mtimes).
pub fn set_times(fd: BorrowedFd<'_>, st: &FileStat) -> nix::Result<()> {
    let atime = nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    stat::futimens(fd.as_raw_fd(), &atime, &mtime)
}

/// Flush a whole filesystem to disk: one call makes a freshly built golden version durable.
pub fn syncfs(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    unistd::syncfs(fd.as_raw_fd()).map_err(|e| Error::sys("syncfs", path, e))
}

/// Flush one file or directory to disk: pointer files and the directory entries renamed into place.
pub fn fsync(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    unistd::fsync(fd.as_raw_fd()).map_err(|e| Error::sys("fsync", path, e))
}

/// Open a directory stream on a dup of `fd` to list entries while `fd` stays usable for `*at` calls.
pub fn read_dir(fd: BorrowedFd<'_>) -> nix::Result<Dir> {
    let dup = fd
        .try_clone_to_owned()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EMFILE)))?;
    // Dir::from closes the dup on failure.
    Dir::from(dup)
}

/// An exclusive advisory lock held until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

/// Take an exclusive flock on `path` (created if missing), blocking until it is free: builds of one
/// cache by the daemon and by `bindery cache build` never run at once.
pub fn lock_exclusive(path: &Path) -> Result<LockGuard> {
    let file = create_file(path, false)?;
    match Flock::lock(file, FlockArg::LockExclusive) {
        Ok(lock) => Ok(LockGuard { _lock: lock }),
        Err((_, e)) => Err(Error::sys("flock", path, e)),
    }
}

/// Whether the fd's filesystem is the same as `dev` (stat's st_dev).
pub fn same_dev(fd: BorrowedFd<'_>, dev: u64) -> nix::Result<bool> {
    Ok(fstat(fd)?.st_dev == dev)
}

/// Give a directory bindery created for a pod to the pod's user, so that it
/// can add, delete and replace files in it. Follows no symlink at `path`.
pub fn chown_path(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    unistd::fchownat(
        None,
        path,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::sys("chown", path, e))
}

/// The mount id of an open file (statx STX_MNT_ID): probes of the golden store against a pod's
/// directory are cached per mount, since linkat works only within one vfsmount.
pub fn mount_id(fd: BorrowedFd<'_>) -> nix::Result<u64> {
    statx_mount_id(fd, nix::libc::STATX_MNT_ID, 0)
}

/// The mount id of an open file without asking its filesystem for anything
/// (an empty statx mask, AT_STATX_DONT_SYNC: FUSE and network filesystems
/// answer from their caches); None where the kernel does not report it.
pub fn cached_mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    statx_mount_id(fd, 0, nix::libc::AT_STATX_DONT_SYNC).ok()
}

fn statx_mount_id(fd: BorrowedFd<'_>, mask: u32, flags: nix::libc::c_int) -> nix::Result<u64> {
    let mut buf = std::mem::MaybeUninit::<nix::libc::statx>::zeroed();
    let empty: &CStr = match CStr::from_bytes_with_nul(b"\0") {
        Ok(c) => c,
        Err(_) => return Err(Errno::EINVAL),
    };
    // SAFETY: `fd` is valid while borrowed; `empty` is a NUL-terminated string that
    // AT_EMPTY_PATH makes the kernel ignore; `buf` is a writable statx buffer that
    // lives across the call and that the kernel fills (zeroed first, so any field the
    // kernel leaves alone is still initialised).
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_statx,
            fd.as_raw_fd(),
            empty.as_ptr(),
            nix::libc::AT_EMPTY_PATH | nix::libc::AT_SYMLINK_NOFOLLOW | flags,
            mask,
            buf.as_mut_ptr(),
        )
    };
    Errno::result(r)?;
    // SAFETY: zero-initialised above and filled by a successful statx.
    let st = unsafe { buf.assume_init() };
    if st.stx_mask & nix::libc::STATX_MNT_ID == 0 {
        return Err(Errno::ENOSYS);
    }
    Ok(st.stx_mnt_id)
}

/// Fill `buf` from the kernel's random source: per-manifest secret keys for content hashes.
pub fn random_bytes(buf: &mut [u8]) -> nix::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a writable buffer of `rest.len()` bytes for the whole call.
        let n = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_getrandom,
                rest.as_mut_ptr(),
                rest.len(),
                0u32,
            )
        };
        match Errno::result(n) {
            Ok(n) => done += usize::try_from(n).map_err(|_| Errno::EOVERFLOW)?,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `struct fsverity_enable_arg` (linux/fsverity.h): version 1, SHA-256, 4 KiB blocks, no salt.
#[repr(C)]
struct FsverityEnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

// FS_IOC_ENABLE_VERITY = _IOW('f', 133, struct fsverity_enable_arg).
nix::ioctl_write_ptr!(ioctl_enable_verity, b'f', 133, FsverityEnableArg);

/// Seal a file (open read-only, no writers) with fs-verity: the kernel then refuses every write
/// to it, which is what makes sharing its inode with a pod safe. EOPNOTSUPP/ENOTTY where the
/// filesystem or kernel lacks it.
pub fn enable_verity(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let arg = FsverityEnableArg {
        version: 1,
        hash_algorithm: 1,
        block_size: 4096,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: `fd` is valid while borrowed; `arg` is a correctly laid out, initialised
    // fsverity_enable_arg that outlives the call, with null salt/signature pointers.
    unsafe { ioctl_enable_verity(fd.as_raw_fd(), &arg) }.map(drop)
}

#[cfg(test)]
mod tests;
