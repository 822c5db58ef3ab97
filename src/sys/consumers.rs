//! The mounts a volume has beyond its staging path and its pods' targets
//! (in the pods' containers' mount namespaces, and the kubelet's subPath
//! binds): finding the ones that still show a dead FUSE connection of the
//! volume, and replacing each one, inside its namespace, by a clone of the
//! volume's new mount. This is how a running container gets its volume
//! back after the volume's mounter was restarted, without a pod restart and
//! without mountPropagation in the pod spec.
//!
//! A container's mount is found by its device ("major:minor" of the dead
//! FUSE connection, recorded when the pod's bind was made) and its
//! filesystem type; it is replaced only if, at the moment of the change, the
//! mount reached through the container's root is still that very mount (the
//! mount id of the fd is the one listed) and still dead (statfs answers
//! ENOTCONN). A FUSE minor freed and reused by another volume's live mount
//! is therefore never touched.
//!
//! The replacement is made without a moment where the container sees an
//! empty directory: the clone is moved BENEATH the dead mount
//! (MOVE_MOUNT_BENEATH, Linux 6.5), then the dead mount is detached. On an
//! older kernel the dead mount is detached first, then the clone moved in.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use crate::sys::mountinfo::{self, MountInfo};
use crate::sys::nodepath::{mount_id_of, RACED_RETRIES};

// From linux/mount.h and linux/fcntl.h (the libc crate's names for these
// moved between versions; the values are the kernel ABI).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x200;
const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_NOSUID: u64 = 0x02;
const MOUNT_ATTR_NODEV: u64 = 0x04;
const MOUNT_ATTR_NOEXEC: u64 = 0x08;
const MOUNT_ATTR_ATIME: u64 = 0x70;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MS_PRIVATE: u64 = 1 << 18;

/// struct mount_attr (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One mount namespace that holds mounts of the devices asked for.
#[derive(Debug, Clone)]
pub struct Holder {
    /// A process in the namespace, through which it is entered.
    pub pid: i32,
    /// The namespace's inode (what /proc/PID/ns/mnt links to).
    pub ns: u64,
    /// The pod the process belongs to, from its cgroup path, when it has one.
    pub pod: Option<String>,
    /// The mounts of the devices asked for, as the process sees them.
    pub mounts: Vec<MountInfo>,
}

impl Holder {
    /// How a log line or a VolumeCondition names this holder.
    pub fn describe(&self) -> String {
        match &self.pod {
            Some(uid) => format!("pod {uid} (pid {})", self.pid),
            None => format!("pid {}", self.pid),
        }
    }
}

/// "major:minor" as publications record a mount's device.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The inode a /proc/PID/ns/mnt link names ("mnt:[4026531841]").
fn ns_of(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// The pod UID in a /proc/PID/cgroup text: the kubelet names pod cgroups
/// `pod<uid>` (cgroupfs driver) or `kubepods-…-pod<uid_with_underscores>.slice`
/// (systemd driver).
pub fn pod_of_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(|part| {
            let at = part.rfind("pod")?;
            let uid: String = part[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-' || *c == '_')
                .map(|c| if c == '_' { '-' } else { c })
                .collect();
            (uid.len() == 36 && uid.matches('-').count() == 4).then_some(uid)
        })
    })
}

/// The mount namespaces that show a FUSE mount of type `fs_type` on one of
/// `devs`, each once, with a process in it. This process's own namespace
/// is one of them when it still shows such a mount (a bind the kubelet made
/// for a subPath, say): the pods' targets and the staging path were made
/// anew by the heal and show the new mount.
pub fn holders(devs: &[(u32, u32)], fs_type: &str) -> Vec<Holder> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // A process that exits meanwhile is no error: it is skipped.
        let Some(ns) = ns_of(&PathBuf::from(format!("/proc/{pid}/ns/mnt"))) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        let Ok(f) = std::fs::File::open(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        let mounts: Vec<MountInfo> = mountinfo::parse(f)
            .into_iter()
            .filter(|m| m.fs_type == fs_type && devs.contains(&m.dev))
            .collect();
        if mounts.is_empty() {
            continue;
        }
        let pod = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| pod_of_cgroup(&t));
        out.push(Holder {
            pid,
            ns,
            pod,
            mounts,
        });
    }
    out
}

/// What became of one mount of a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Replaced by a clone of the new mount.
    Replaced,
    /// Not dead (a live mount on a reused device number): left alone.
    Skipped(&'static str),
}

fn err(op: &str, what: &Path, e: Errno) -> String {
    format!("{op} {}: {}", what.display(), e.desc())
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: every caller passes an fd that a successful open, openat2 or
    // open_tree call just returned, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_path(dir: RawFd, path: &Path, flags: ResolveFlag) -> Result<OwnedFd, Errno> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(flags);
    // openat2 answers EAGAIN when a rename or mount raced its lookup:
    // asked again as often as the node's own walks do.
    let mut left = RACED_RETRIES;
    loop {
        match fcntl::openat2(dir, rel, how) {
            Err(Errno::EAGAIN) if left > 0 => left -= 1,
            r => return r.map(owned),
        }
    }
}

/// The per-mount attributes of a mountinfo options field, as mount_setattr
/// takes them (every attribute that can be named is set or cleared).
fn attrs_of(options: &str) -> MountAttr {
    let has = |o: &str| options.split(',').any(|x| x == o);
    let mut set = 0;
    for (name, bit) in [
        ("ro", MOUNT_ATTR_RDONLY),
        ("nosuid", MOUNT_ATTR_NOSUID),
        ("nodev", MOUNT_ATTR_NODEV),
        ("noexec", MOUNT_ATTR_NOEXEC),
        ("nodiratime", MOUNT_ATTR_NODIRATIME),
    ] {
        if has(name) {
            set |= bit;
        }
    }
    if has("noatime") {
        set |= MOUNT_ATTR_NOATIME;
    } else if has("strictatime") {
        set |= MOUNT_ATTR_STRICTATIME;
    }
    MountAttr {
        attr_set: set,
        attr_clr: MOUNT_ATTR_RDONLY
            | MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | MOUNT_ATTR_NOEXEC
            | MOUNT_ATTR_ATIME
            | MOUNT_ATTR_NODIRATIME,
        propagation: MS_PRIVATE,
        userns_fd: 0,
    }
}

/// A detached clone of `root` beneath `source` (a mount's root), with the
/// per-mount attributes `options` and private propagation.
fn clone_of(source: BorrowedFd<'_>, root: &Path, options: &str) -> Result<OwnedFd, String> {
    let dir = open_path(
        source.as_raw_fd(),
        root,
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    )
    .map_err(|e| err("open the new mount's", root, e))?;
    let empty = c"";
    // SAFETY: open_tree(2) with a valid dirfd and a NUL-terminated empty
    // path; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_EMPTY_PATH,
        )
    };
    if fd < 0 {
        return Err(err("clone the new mount at", root, Errno::last()));
    }
    let fd = RawFd::try_from(fd).map_err(|_| err("clone", root, Errno::EBADF))?;
    let clone = owned(fd);
    let attr = attrs_of(options);
    // SAFETY: mount_setattr(2) on the clone's fd with a valid, fully
    // initialised struct mount_attr and its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            clone.as_raw_fd(),
            empty.as_ptr(),
            AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(err("set the flags of the clone of", root, Errno::last()));
    }
    Ok(clone)
}

fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>, beneath: bool) -> Result<(), Errno> {
    let empty = c"";
    let mut flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH;
    if beneath {
        flags |= MOVE_MOUNT_BENEATH;
    }
    // SAFETY: move_mount(2) with two valid fds and empty NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Detach the mount `fd` was opened on, by its magic link in `proc` (this
/// process's /proc): never a path someone could have swapped.
fn detach_fd(proc: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::unistd::fchdir(proc.as_raw_fd())?;
    let link =
        CString::new(format!("thread-self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
    nix::mount::umount2(link.as_c_str(), nix::mount::MntFlags::MNT_DETACH)
}

/// One mount to replace, prepared in this namespace: the fd of the dead
/// mount as the container sees it, and the clone that takes its place.
struct Prepared {
    mount: MountInfo,
    dead: OwnedFd,
    clone: OwnedFd,
}

/// Replace, in `holder`'s namespace, every listed mount that is still the
/// one listed and still dead by a clone of the same directory of the mount
/// whose root `source` is, with the same per-mount flags. Gives up after
/// `timeout` (the work goes on, on its own thread). One result per mount.
pub fn replace(
    holder: &Holder,
    source: BorrowedFd<'_>,
    timeout: Duration,
) -> Vec<(PathBuf, Result<Outcome, String>)> {
    let whole = |e: String| {
        holder
            .mounts
            .iter()
            .map(|m| (m.mount_point.clone(), Err(e.clone())))
            .collect::<Vec<_>>()
    };
    // Everything is opened from here, in our own namespace: the process's
    // namespace and root (checked to be the namespace that was listed, as
    // the pid may have been reused), and our /proc.
    let open = |p: String| {
        fcntl::open(
            p.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(owned)
        .map_err(|e| err("open", Path::new(&p), e))
    };
    let ns = match open(format!("/proc/{}/ns/mnt", holder.pid)) {
        Ok(fd) => fd,
        Err(_) => return Vec::new(), // the process exited: nothing to do
    };
    if ns_of(&PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()))) != Some(holder.ns) {
        return Vec::new();
    }
    let root = match fcntl::open(
        format!("/proc/{}/root", holder.pid).as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => owned(fd),
        Err(_) => return Vec::new(),
    };
    let proc = match fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => owned(fd),
        Err(e) => return whole(err("open", Path::new("/proc"), e)),
    };
    let mut results = Vec::new();
    let mut work = Vec::new();
    for m in &holder.mounts {
        // Resolved in the container's root, never leaving it, no symlinks.
        let dead = match open_path(
            root.as_raw_fd(),
            &m.mount_point,
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                results.push((m.mount_point.clone(), Err(err("open", &m.mount_point, e))));
                continue;
            }
        };
        if mount_id_of(dead.as_fd()).ok() != Some(m.id) {
            // Gone meanwhile (unmounted, or replaced by propagation from a
            // namespace done before): nothing left to do. Still listed:
            // another mount covers it, out of reach for now; tried again on
            // the next health pass.
            let listed = std::fs::File::open(format!("/proc/{}/mountinfo", holder.pid))
                .map(mountinfo::parse)
                .unwrap_or_default()
                .iter()
                .any(|now| now.id == m.id && now.dev == m.dev);
            results.push((
                m.mount_point.clone(),
                if listed {
                    Err("covered by another mount".into())
                } else {
                    Ok(Outcome::Skipped("gone"))
                },
            ));
            continue;
        }
        match clone_of(source, &m.root, &m.options) {
            Ok(clone) => work.push(Prepared {
                mount: m.clone(),
                dead,
                clone,
            }),
            Err(e) => results.push((m.mount_point.clone(), Err(e))),
        }
    }
    if work.is_empty() {
        return results;
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("rebind".into())
        .spawn(move || {
            let _ = tx.send(in_namespace(ns, root, proc, work));
        });
    if let Err(e) = spawned {
        results.extend(whole(format!("no thread to enter the namespace: {e}")));
        return results;
    }
    match rx.recv_timeout(timeout) {
        Ok(done) => results.extend(done),
        Err(_) => results.extend(whole(format!(
            "no answer in {} s (a hung filesystem?)",
            timeout.as_secs()
        ))),
    }
    results
}

/// On a thread of its own, which ends with this function (it never serves
/// anything else once it entered another namespace): enter the namespace,
/// then for each mount check it is dead and swap the clone in.
fn in_namespace(
    ns: OwnedFd,
    root: OwnedFd,
    proc: OwnedFd,
    work: Vec<Prepared>,
) -> Vec<(PathBuf, Result<Outcome, String>)> {
    let whole = |e: String| {
        work.iter()
            .map(|p| (p.mount.mount_point.clone(), Err(e.clone())))
            .collect::<Vec<_>>()
    };
    // setns(CLONE_NEWNS) refuses a thread that shares its filesystem
    // context (root, cwd) with other threads: unshare it first.
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_FS) {
        return whole(format!("unshare CLONE_FS: {}", e.desc()));
    }
    if let Err(e) = nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNS) {
        return whole(format!("enter the mount namespace: {}", e.desc()));
    }
    let mut out = Vec::new();
    for p in work {
        let at = p.mount.mount_point.clone();
        // Dead: its FUSE connection answers ENOTCONN. A live mount on a
        // reused minor answers (or hangs: the caller's timeout covers that).
        match nix::sys::statfs::fstatfs(p.dead.as_fd()) {
            Err(Errno::ENOTCONN) => {}
            Ok(_) | Err(_) => {
                out.push((at, Ok(Outcome::Skipped("not a dead FUSE connection"))));
                continue;
            }
        }
        let res = match move_mount(p.clone.as_fd(), p.dead.as_fd(), true) {
            Ok(()) => detach_fd(proc.as_fd(), p.dead.as_fd())
                .map(|()| Outcome::Replaced)
                .map_err(|e| err("detach the dead mount at", &at, e)),
            // Before Linux 6.5 (no MOVE_MOUNT_BENEATH): detach, then move the
            // clone onto the directory the dead mount covered.
            Err(Errno::EINVAL) => detach_fd(proc.as_fd(), p.dead.as_fd())
                .map_err(|e| err("detach the dead mount at", &at, e))
                .and_then(|()| {
                    let under = open_path(
                        root.as_raw_fd(),
                        &at,
                        ResolveFlag::RESOLVE_IN_ROOT
                            | ResolveFlag::RESOLVE_NO_SYMLINKS
                            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                    )
                    .map_err(|e| err("open", &at, e))?;
                    move_mount(p.clone.as_fd(), under.as_fd(), false)
                        .map(|()| Outcome::Replaced)
                        .map_err(|e| err("move the new mount to", &at, e))
                }),
            Err(e) => Err(err("move the new mount beneath", &at, e)),
        };
        out.push((at, res));
    }
    out
}

#[cfg(test)]
mod tests;
