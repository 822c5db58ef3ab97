//! One mount's entry without reading the whole mount table: statx(2) gives
//! the unique id of the mount a path or fd is on (STATX_MNT_ID_UNIQUE,
//! Linux 6.8) and statmount(2) that mount's fields. With thousands of
//! mounts on a node, /proc/self/mountinfo is a megabyte the kernel renders
//! and we parse per read; this is two syscalls whatever the table's size.
//! Kernels without them answer `None`, and the callers read the table.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;

use super::mountinfo::MountInfo;

/// statmount(2): the same number on every architecture bindery builds for.
const SYS_STATMOUNT: libc::c_long = 457;
const MNT_ID_REQ_SIZE_VER0: u32 = 24;

const STATMOUNT_SB_BASIC: u64 = 0x1;
const STATMOUNT_MNT_BASIC: u64 = 0x2;
const STATMOUNT_MNT_ROOT: u64 = 0x8;
const STATMOUNT_MNT_POINT: u64 = 0x10;
const STATMOUNT_FS_TYPE: u64 = 0x20;
const STATMOUNT_MNT_OPTS: u64 = 0x80;
const STATMOUNT_FS_SUBTYPE: u64 = 0x100;
const STATMOUNT_SB_SOURCE: u64 = 0x200;

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_ATIME: u64 = 0x70;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x200000;
const SB_RDONLY: u32 = 0x1;

/// The fixed part of `struct statmount`; its strings follow.
const FIXED: usize = 512;

/// Cleared the first time the kernel says it has neither call.
static AVAILABLE: AtomicBool = AtomicBool::new(true);

#[repr(C)]
struct MntIdReq {
    size: u32,
    spare: u32,
    mnt_id: u64,
    param: u64,
}

// The kernel writes 256 bytes of struct statx, whatever it fills.
const _: () = assert!(std::mem::size_of::<nix::libc::statx>() >= 256);

/// Unique mount id of what `dirfd` + `path` (with `flags`) names; None when
/// the kernel does not give one.
fn unique_id(dirfd: libc::c_int, path: &CString, flags: libc::c_int) -> io::Result<Option<u64>> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stx` is a
    // writable struct statx, which the kernel fills.
    let r = unsafe {
        libc::syscall(
            libc::SYS_statx,
            dirfd,
            path.as_ptr(),
            flags | libc::AT_STATX_DONT_SYNC | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID_UNIQUE,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed, then filled by a successful statx: initialised.
    let stx = unsafe { stx.assume_init() };
    Ok((stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

/// The NUL-terminated string at `off` in the strings part.
fn str_at(b: &[u8], off: u32) -> Option<&[u8]> {
    let s = b.get(FIXED + off as usize..)?;
    let end = s.iter().position(|c| *c == 0)?;
    Some(&s[..end])
}

/// The per-mount options as mountinfo shows them.
fn per_mount_options(attr: u64) -> String {
    let mut o = String::from(if attr & MOUNT_ATTR_RDONLY != 0 {
        "ro"
    } else {
        "rw"
    });
    for (bit, name) in [
        (MOUNT_ATTR_NOSUID, ",nosuid"),
        (MOUNT_ATTR_NODEV, ",nodev"),
        (MOUNT_ATTR_NOEXEC, ",noexec"),
    ] {
        if attr & bit != 0 {
            o.push_str(name);
        }
    }
    if attr & MOUNT_ATTR_ATIME == MOUNT_ATTR_NOATIME {
        o.push_str(",noatime");
    }
    if attr & MOUNT_ATTR_NODIRATIME != 0 {
        o.push_str(",nodiratime");
    }
    if attr & MOUNT_ATTR_ATIME == 0 {
        o.push_str(",relatime");
    }
    if attr & MOUNT_ATTR_NOSYMFOLLOW != 0 {
        o.push_str(",nosymfollow");
    }
    o
}

/// Decode a statmount buffer the kernel filled.
fn decode(b: &[u8]) -> Option<MountInfo> {
    let mask = u64_at(b, 8);
    let need = STATMOUNT_SB_BASIC
        | STATMOUNT_MNT_BASIC
        | STATMOUNT_MNT_ROOT
        | STATMOUNT_MNT_POINT
        | STATMOUNT_FS_TYPE;
    if mask & need != need {
        return None;
    }
    let text = |off: usize, bit: u64| {
        (mask & bit != 0)
            .then(|| str_at(b, u32_at(b, off)))
            .flatten()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    };
    let path = |off: usize| {
        str_at(b, u32_at(b, off)).map(|s| PathBuf::from(std::ffi::OsStr::from_bytes(s)))
    };
    let mut fs_type = text(36, STATMOUNT_FS_TYPE)?;
    if let Some(sub) = text(120, STATMOUNT_FS_SUBTYPE).filter(|s| !s.is_empty()) {
        fs_type = format!("{fs_type}.{sub}");
    }
    let ro = u32_at(b, 32) & SB_RDONLY != 0;
    let sb_opts = text(4, STATMOUNT_MNT_OPTS).unwrap_or_default();
    let super_options = match (ro, sb_opts.is_empty()) {
        (true, true) => "ro".to_string(),
        (false, true) => "rw".to_string(),
        (true, false) => format!("ro,{sb_opts}"),
        (false, false) => format!("rw,{sb_opts}"),
    };
    Some(MountInfo {
        id: u32_at(b, 56),
        parent: u32_at(b, 60),
        dev: (u32_at(b, 16), u32_at(b, 20)),
        root: path(104)?,
        mount_point: path(108)?,
        options: per_mount_options(u64_at(b, 64)),
        fs_type,
        source: text(124, STATMOUNT_SB_SOURCE).unwrap_or_else(|| "none".into()),
        super_options,
    })
}

/// statmount(2) of the mount with unique id `id`.
fn stat_mount(id: u64) -> io::Result<MountInfo> {
    let req = MntIdReq {
        size: MNT_ID_REQ_SIZE_VER0,
        spare: 0,
        mnt_id: id,
        param: STATMOUNT_SB_BASIC
            | STATMOUNT_MNT_BASIC
            | STATMOUNT_MNT_ROOT
            | STATMOUNT_MNT_POINT
            | STATMOUNT_FS_TYPE
            | STATMOUNT_MNT_OPTS
            | STATMOUNT_FS_SUBTYPE
            | STATMOUNT_SB_SOURCE,
    };
    let mut size = 4096usize;
    loop {
        let mut buf = vec![0u64; size / 8];
        // SAFETY: `req` is a valid mnt_id_req of the size it declares; `buf`
        // is `size` writable, 8-aligned bytes, and the kernel writes at most
        // that many (EOVERFLOW when its strings do not fit).
        let r = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.as_mut_ptr(),
                size,
                0u32,
            )
        };
        if r == 0 {
            // SAFETY: `buf` is `size` initialised bytes; viewing them as u8
            // is always valid.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), size) };
            return decode(bytes).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOVERFLOW) && size < 1 << 20 {
            size *= 4;
            continue;
        }
        return Err(e);
    }
}

/// The answer of one lookup: the kernel lacks the calls (use the table),
/// or what they found.
fn answer(found: io::Result<Option<u64>>) -> Option<io::Result<MountInfo>> {
    if !AVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let id = match found {
        Ok(Some(id)) => id,
        Ok(None) => {
            AVAILABLE.store(false, Ordering::Relaxed);
            return None;
        }
        Err(e) => return Some(Err(e)),
    };
    match stat_mount(id) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            AVAILABLE.store(false, Ordering::Relaxed);
            None
        }
        r => Some(r),
    }
}

/// The mount `fd` is on. None: this kernel cannot say (read the table).
pub fn of_fd(fd: BorrowedFd<'_>) -> Option<io::Result<MountInfo>> {
    answer(unique_id(
        fd.as_raw_fd(),
        &CString::default(),
        libc::AT_EMPTY_PATH,
    ))
}

/// The mount `path` (not following a symlink in its last component) is on.
/// None: this kernel cannot say (read the table).
pub fn of_path(path: &Path) -> Option<io::Result<MountInfo>> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Some(Err(io::Error::from_raw_os_error(libc::EINVAL)));
    };
    answer(unique_id(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mountinfo;

    #[test]
    fn options_read_as_mountinfo_shows_them() {
        assert_eq!(per_mount_options(0), "rw,relatime");
        assert_eq!(
            per_mount_options(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV),
            "ro,nosuid,nodev,relatime"
        );
        assert_eq!(
            per_mount_options(MOUNT_ATTR_NOATIME | MOUNT_ATTR_NOEXEC),
            "rw,noexec,noatime"
        );
        assert_eq!(per_mount_options(0x20), "rw");
    }

    /// Where the kernel has the calls, every mount of the table reads the
    /// same through them (the fields bindery uses).
    #[test]
    fn agrees_with_the_mount_table() {
        let table = mountinfo::read_self().unwrap();
        let first = of_path(Path::new("/"));
        if !crate::testkit::prerequisite(
            "agrees_with_the_mount_table",
            first.is_some(),
            "this kernel has no statmount (Linux 6.8+)",
        ) {
            return;
        }
        if let Some(r) = first {
            r.unwrap();
        }
        let mut compared = 0;
        for m in &table {
            // Only the topmost mount at a path is reachable by it.
            if mountinfo::mount_at(&table, &m.mount_point) != Some(m) {
                continue;
            }
            let Some(Ok(got)) = of_path(&m.mount_point) else {
                continue; // gone meanwhile, or not reachable (overmounted parent)
            };
            if got.mount_point != m.mount_point {
                continue;
            }
            assert_eq!(
                (&got.id, &got.dev, &got.root, &got.fs_type, &got.options),
                (&m.id, &m.dev, &m.root, &m.fs_type, &m.options),
                "{m:?}"
            );
            compared += 1;
        }
        assert!(compared > 0);
    }
}
