//! btrfs subvolumes: the `snapshot` cache strategy's four ioctls (create a
//! subvolume, snapshot one, destroy one, read and set its read-only flag),
//! all relative to an open directory, never through a path.
//!
//! Facts these rely on (kernel 6.x): a snapshot is writable unless asked
//! read-only, even of a read-only source, and is on disk when the ioctl
//! returns; a subvolume's root directory has inode 256 and a device number of
//! its own, but `openat2(RESOLVE_NO_XDEV)` does not stop at it; `rmdir` of an
//! EMPTY subvolume deletes it; destroying one that holds another subvolume
//! fails with ENOTEMPTY.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::statfs::fstatfs;

/// `BTRFS_SUPER_MAGIC`, the f_type statfs reports on btrfs.
const BTRFS_SUPER_MAGIC: i128 = 0x9123_683E;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root
/// directory (other inodes of a subvolume are numbered above it).
const SUBVOLUME_ROOT_INO: u64 = 256;
/// `BTRFS_SUBVOL_RDONLY`, in `vol_args_v2.flags` and the subvolume flags.
const SUBVOL_RDONLY: u64 = 1 << 1;
const IOCTL_MAGIC: u8 = 0x94;

/// `struct btrfs_ioctl_vol_args` (4096 bytes).
#[repr(C)]
pub struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (4096 bytes; the qgroup union unused).
#[repr(C)]
pub struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

nix::ioctl_write_ptr!(ioctl_snap_destroy, IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(ioctl_snap_create_v2, IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_write_ptr!(ioctl_subvol_create_v2, IOCTL_MAGIC, 24, VolArgsV2);
nix::ioctl_read!(ioctl_subvol_getflags, IOCTL_MAGIC, 25, u64);
nix::ioctl_write_ptr!(ioctl_subvol_setflags, IOCTL_MAGIC, 26, u64);

/// Copy `name` (one path component, no NUL) into an ioctl's name field.
fn put_name(dst: &mut [u8], name: &CStr) -> nix::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.len() >= dst.len() || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    dst[..b.len()].copy_from_slice(b);
    Ok(())
}

fn v2(fd: i64, flags: u64, name: &CStr) -> nix::Result<Box<VolArgsV2>> {
    let mut a = Box::new(VolArgsV2 {
        fd,
        transid: 0,
        flags,
        unused: [0; 4],
        name: [0; 4040],
    });
    put_name(&mut a.name, name)?;
    Ok(a)
}

/// Whether `fd` is on btrfs.
pub fn is_btrfs(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    Ok(i128::from(fstatfs(fd)?.filesystem_type().0) == BTRFS_SUPER_MAGIC)
}

/// Whether the directory `fd` is the root of a btrfs subvolume.
pub fn is_subvolume(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(st.st_ino == SUBVOLUME_ROOT_INO && is_btrfs(fd)?)
}

/// Create an empty subvolume `name` in the directory `dir`.
pub fn create_subvolume(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
    let args = v2(0, 0, name)?;
    // SAFETY: `args` is a live, fully initialised vol_args_v2 of the size the
    // ioctl number encodes; the kernel only reads it.
    unsafe { ioctl_subvol_create_v2(dir.as_raw_fd(), &*args) }.map(drop)
}

/// Snapshot the subvolume `source` (an open fd of its root directory) as
/// `name` in the directory `dir`: writable unless `read_only`, copy-on-write,
/// O(1) in the tree's size, on disk when this returns.
pub fn snapshot(
    source: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
    read_only: bool,
) -> nix::Result<()> {
    let flags = if read_only { SUBVOL_RDONLY } else { 0 };
    let args = v2(i64::from(source.as_raw_fd()), flags, name)?;
    // SAFETY: as in create_subvolume; `args.fd` is an fd we hold open for the call.
    unsafe { ioctl_snap_create_v2(dir.as_raw_fd(), &*args) }.map(drop)
}

/// Destroy the subvolume `name` of the directory `dir`, whatever it holds
/// (ENOTEMPTY if it holds another subvolume; EINVAL if `name` is not a
/// subvolume's root). Mounts of it are detached by the kernel.
pub fn destroy(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; 4088],
    });
    put_name(&mut args.name, name)?;
    // SAFETY: a live, fully initialised vol_args of the encoded size; read only.
    unsafe { ioctl_snap_destroy(dir.as_raw_fd(), &*args) }.map(drop)
}

/// Whether the subvolume whose root is `fd` is read-only.
pub fn is_read_only(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    let mut flags = 0u64;
    // SAFETY: the kernel writes one u64 into `flags`, which outlives the call.
    unsafe { ioctl_subvol_getflags(fd.as_raw_fd(), &mut flags) }?;
    Ok(flags & SUBVOL_RDONLY != 0)
}

/// Make the subvolume whose root is `fd` read-only (or writable again); a
/// subvolume that already is stays as it is (the kernel then writes nothing).
pub fn set_read_only(fd: BorrowedFd<'_>, on: bool) -> nix::Result<()> {
    let mut flags = 0u64;
    // SAFETY: as in is_read_only.
    unsafe { ioctl_subvol_getflags(fd.as_raw_fd(), &mut flags) }?;
    let flags = if on {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    // SAFETY: the kernel reads one u64 from `flags`, which outlives the call.
    unsafe { ioctl_subvol_setflags(fd.as_raw_fd(), &flags) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_argument_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::offset_of!(VolArgsV2, name), 56);
    }

    #[test]
    fn names_must_be_one_component() {
        let mut buf = [0u8; 8];
        assert_eq!(put_name(&mut buf, c"a/b"), Err(Errno::EINVAL));
        assert_eq!(put_name(&mut buf, c""), Err(Errno::EINVAL));
        assert_eq!(put_name(&mut buf, c"12345678"), Err(Errno::EINVAL));
        assert_eq!(put_name(&mut buf, c"1234567"), Ok(()));
    }
}
