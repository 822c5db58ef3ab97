//! Node paths from the CO (staging and target paths), resolved beneath the
//! kubelet dir without following any symlink, and held as O_PATH fds.
//!
//! A textual "starts with the kubelet dir" check is not enough: a symlink in
//! any component (planted by a pod or a tenant) would send a mount, a mkdir
//! or a removal outside the kubelet dir. Every component here is opened from
//! its parent's fd with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS), and mounts act on `/proc/self/fd/N` of the fd that
//! was checked, so swapping a component between check and use redirects
//! nothing.

use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::sys::mountinfo::{self, MountInfo};
use crate::sys::mounts;

/// O_PATH directory fds: no read access needed, only a handle on the inode
/// and the mount it was reached through.
const PATH_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NOFOLLOW);

/// Directories bindery creates on a node path (the kubelet creates most of
/// them itself; CSI lets the plugin create the rest): what `mkdir -p` makes.
const DIR_MODE: u32 = 0o755;

/// The kubelet dir, opened once by path: it is the admin's configuration and
/// may itself be a symlink (e.g. to a data disk); everything below it is not
/// trusted.
pub struct KubeletDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A node path resolved beneath the kubelet dir and held open.
pub struct NodePath {
    /// The path as the CO named it (normalised).
    pub path: PathBuf,
    fd: OwnedFd,
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open/openat2 call: a
    // valid descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One step of the walk: open `name` in `dir` without leaving `dir` and
/// without following symlinks (openat2 refuses them with ELOOP/EXDEV).
/// openat2 answers EAGAIN when a rename or mount elsewhere raced its
/// lookup: asked again this many times before the walk gives up.
pub const RACED_RETRIES: usize = 3;

fn open_beneath(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    let how = OpenHow::new().flags(PATH_FLAGS).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let mut left = RACED_RETRIES;
    loop {
        match fcntl::openat2(dir.as_raw_fd(), name, how) {
            Err(Errno::EAGAIN) if left > 0 => left -= 1,
            other => return other.map(owned),
        }
    }
}

/// Create one missing directory of a node path (EEXIST is fine: someone else
/// created it first, and the next open checks what it is).
fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    match nix::sys::stat::mkdirat(
        Some(dir.as_raw_fd()),
        name,
        Mode::from_bits_truncate(DIR_MODE),
    ) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One checked step of a walk: `name` opened beneath `dir` (created first when
/// `create`); a missing entry is None, a symlink, an escape or a
/// non-directory INVALID_ARGUMENT naming `field` and `path` (the entry), a
/// lookup raced by renames or mounts every time UNAVAILABLE (retry).
fn open_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    field: &'static str,
    path: &Path,
    create: bool,
) -> Result<Option<OwnedFd>> {
    let opened = match open_beneath(dir, name) {
        Err(Errno::ENOENT) if create => {
            mkdir_at(dir, name).map_err(|e| Error::sys("mkdir", path, e))?;
            open_beneath(dir, name)
        }
        other => other,
    };
    match opened {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::EAGAIN) => Err(Error::Changed {
            path: path.to_path_buf(),
            what: "renames or mounts kept racing its lookup".into(),
        }),
        Err(Errno::ELOOP | Errno::EXDEV) => Err(Error::invalid(
            field,
            format!("{} is a symlink or leaves the kubelet dir", path.display()),
        )),
        Err(Errno::ENOTDIR) => Err(Error::invalid(
            field,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(Error::sys("open", path, e)),
    }
}

impl KubeletDir {
    pub fn open(path: &Path) -> Result<KubeletDir> {
        let fd = fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(owned)
        .map_err(|e| Error::sys("open kubelet dir", path, e))?;
        Ok(KubeletDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Resolve `path` (already validated: absolute, below the kubelet dir, no
    /// `.`/`..`) component by component. Missing directories are created when
    /// `create` is set; otherwise a missing component gives `Ok(None)`.
    /// A symlink, a non-directory or an escape is INVALID_ARGUMENT naming
    /// `field`.
    pub fn resolve(
        &self,
        field: &'static str,
        path: &Path,
        create: bool,
    ) -> Result<Option<NodePath>> {
        self.walk(field, path, create, true)
    }

    /// The walk behind `resolve`: `last_may_be_fuse` is false when the path
    /// is the parent of the entry the caller will open or create, so that
    /// it too is run through.
    fn walk(
        &self,
        field: &'static str,
        path: &Path,
        create: bool,
        last_may_be_fuse: bool,
    ) -> Result<Option<NodePath>> {
        let rel = path.strip_prefix(&self.path).map_err(|_| {
            Error::invalid(
                field,
                format!("{} is not below the kubelet dir", path.display()),
            )
        })?;
        let mut cur = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup", &self.path, e))?;
        let mut walked = self.path.clone();
        let comps: Vec<Component> = rel.components().collect();
        let mut cur_mount = mount_id_of(cur.as_fd())?;
        for (i, comp) in comps.iter().enumerate() {
            let Component::Normal(name) = comp else {
                return Err(Error::invalid(
                    field,
                    "must not contain '.' or '..' components",
                ));
            };
            walked.push(name);
            let Some(next) = open_entry(cur.as_fd(), name, field, &walked, create)? else {
                return Ok(None);
            };
            // A node path never runs THROUGH a FUSE mount (another volume's
            // data, under its tenant's control): only its last component
            // may be one (a staging mount, a pod's bind).
            if i + 1 < comps.len() || !last_may_be_fuse {
                let id = mount_id_of(next.as_fd())?;
                if id != cur_mount {
                    if mounts::of_fd(next.as_fd(), id)?.is_some_and(|m| m.is_fuse()) {
                        return Err(Error::invalid(
                            field,
                            format!("{} is inside a FUSE mount", walked.display()),
                        ));
                    }
                    cur_mount = id;
                }
            }
            cur = next;
        }
        Ok(Some(NodePath {
            path: path.to_path_buf(),
            fd: cur,
        }))
    }

    /// The parent directory of `path`, resolved as above (created when
    /// `create`), and the last component: for operations that must name the
    /// entry itself (rmdir, unmounting a mount whose root no longer answers).
    pub fn resolve_parent(
        &self,
        field: &'static str,
        path: &Path,
        create: bool,
    ) -> Result<Option<(NodePath, CString)>> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::invalid(field, "has no parent directory"));
        };
        let name = CString::new(name.as_bytes())
            .map_err(|_| Error::invalid(field, "contains a NUL byte"))?;
        Ok(self.walk(field, parent, create, false)?.map(|p| (p, name)))
    }
}

impl NodePath {
    /// `/proc/self/fd/N`: names exactly the inode (and mount) that was
    /// checked. Mounting onto it is what runc does against symlink swaps.
    /// The fd this path was resolved to.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The entry `name` of this directory, opened beneath it without
    /// following symlinks (created first when `create`): the parent's fd pins
    /// the directory, so renaming or swapping any ancestor after the parent
    /// was resolved redirects nothing. Opened after a mount was made on
    /// `name`, it is the root of that mount.
    pub fn child(
        &self,
        field: &'static str,
        name: &CString,
        create: bool,
    ) -> Result<Option<NodePath>> {
        let os = OsStr::from_bytes(name.to_bytes());
        let path = self.path.join(os);
        Ok(open_entry(self.fd.as_fd(), os, field, &path, create)?.map(|fd| NodePath { path, fd }))
    }

    /// The id of the mount this fd was reached through (`mnt_id` of
    /// /proc/self/fdinfo/N): the topmost mount at the path when it was opened.
    pub fn mount_id(&self) -> Result<u32> {
        mount_id_of(self.fd.as_fd())
    }

    /// The mount this path is the root of, or None when the path is a plain
    /// directory of its parent's filesystem.
    pub fn mount_here(&self, parent: &NodePath, table: &[MountInfo]) -> Result<Option<MountInfo>> {
        let (mine, theirs) = (self.mount_id()?, parent.mount_id()?);
        if mine == theirs {
            return Ok(None);
        }
        Ok(mountinfo::by_id(table, mine).cloned())
    }

    /// `mount_here` without a table in hand: the one mount is looked up
    /// (see `mounts::of_fd`), at a cost that does not grow with the
    /// number of mounts on the node.
    pub fn mount_here_now(&self, parent: &NodePath) -> Result<Option<MountInfo>> {
        let (mine, theirs) = (self.mount_id()?, parent.mount_id()?);
        if mine == theirs {
            return Ok(None);
        }
        mounts::of_fd(self.fd.as_fd(), mine)
    }
}

/// Bind the checked `source` onto the checked `target`: how a pod gets its
/// view of a staged volume, immune to a symlink swapped in after the check.
pub fn bind(source: &NodePath, target: &NodePath) -> Result<()> {
    nix::mount::mount(
        Some(&source.proc_path()),
        &target.proc_path(),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::sys("bind mount", &target.path, e))
}

/// Detach exactly the mount `target` was opened on (the magic link is
/// followed to it, never to a path someone swapped in). Lazy: our own fd
/// keeps the mount busy, and the kernel frees it once the fd is closed.
pub fn detach(target: &NodePath) -> Result<()> {
    nix::mount::umount2(&target.proc_path(), nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Error::sys("unmount", &target.path, e))
}

/// Remove the (empty) directory `name` in `parent`: the target dir the
/// plugin created. A non-empty or missing one is left alone.
pub fn rmdir_at(parent: &NodePath, name: &CString) -> Result<()> {
    // unlinkat needs a real directory fd, not O_PATH: reopen it.
    let dir = fcntl::openat(
        Some(parent.fd.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| Error::sys("open", &parent.path, e))?;
    match nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        name.as_c_str(),
        nix::unistd::UnlinkatFlags::RemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENOTEMPTY) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(Error::sys(
            "rmdir",
            parent.path.join(OsStr::from_bytes(name.to_bytes())),
            e,
        )),
    }
}

/// The id of the mount an fd was reached through: statx's `stx_mnt_id`,
/// asked for with an empty mask and AT_STATX_DONT_SYNC (FUSE answers from
/// its cache, never asks its server: a hung mounter cannot block it), else
/// `mnt_id` of /proc/self/fdinfo/N (kernels before 5.8; an inode FUSE
/// marked bad), which no call to the filesystem serves at all. One system
/// call instead of four on the path every node call resolves.
pub fn mount_id_of(fd: BorrowedFd<'_>) -> Result<u32> {
    if let Some(id) = crate::sys::fs::cached_mount_id(fd).and_then(|id| u32::try_from(id).ok()) {
        return Ok(id);
    }
    fdinfo_mount_id(fd)
}

/// `mount_id_of` from /proc/self/fdinfo/N only.
pub fn fdinfo_mount_id(fd: BorrowedFd<'_>) -> Result<u32> {
    let p = PathBuf::from(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()));
    let f = std::fs::File::open(&p).map_err(|e| Error::io("open", &p, e))?;
    parse_mnt_id(f).ok_or_else(|| Error::Corrupt {
        path: p,
        reason: "no mnt_id".into(),
    })
}

/// `mnt_id:` of an fdinfo file.
pub fn parse_mnt_id(reader: impl Read) -> Option<u32> {
    BufReader::new(reader)
        .lines()
        .map_while(|l| l.ok())
        .find_map(|l| {
            l.strip_prefix("mnt_id:")
                .and_then(|v| v.trim().parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn fdinfo_mnt_id() {
        assert_eq!(
            parse_mnt_id("pos:\t0\nflags:\t010000000\nmnt_id:\t42\nino:\t7\n".as_bytes()),
            Some(42)
        );
        assert_eq!(parse_mnt_id("pos:\t0\n".as_bytes()), None);
    }

    /// statx's mount id is the one /proc/self/fdinfo shows, on distinct
    /// mounts and on O_PATH fds (what path resolution holds).
    #[test]
    fn statx_and_fdinfo_agree_on_mount_ids() {
        let mut seen = std::collections::BTreeSet::new();
        for dir in [
            "/",
            "/proc",
            "/dev",
            "/sys",
            std::env::temp_dir().to_str().unwrap(),
        ] {
            for flags in [OFlag::O_RDONLY, OFlag::O_PATH] {
                let fd = fcntl::open(
                    dir,
                    flags | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(owned)
                .unwrap();
                let via_proc = fdinfo_mount_id(fd.as_fd()).unwrap();
                let via_statx = crate::sys::fs::cached_mount_id(fd.as_fd()).unwrap();
                assert_eq!(u64::from(via_proc), via_statx, "{dir}");
                assert_eq!(mount_id_of(fd.as_fd()).unwrap(), via_proc, "{dir}");
                seen.insert(via_proc);
            }
        }
        assert!(seen.len() >= 3, "distinct mounts expected: {seen:?}");
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bindery-np-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn creates_and_resolves_beneath() {
        let root = scratch("ok");
        let k = KubeletDir::open(&root).unwrap();
        let p = root.join("pods/a/volumes/v/mount");
        assert!(k.resolve("target_path", &p, false).unwrap().is_none());
        let np = k.resolve("target_path", &p, true).unwrap().unwrap();
        assert!(p.is_dir());
        assert_eq!(fs::read_link(np.proc_path()).unwrap(), p);
        let (parent, name) = k.resolve_parent("target_path", &p, false).unwrap().unwrap();
        assert_eq!(name.to_bytes(), b"mount");
        assert!(np.mount_here(&parent, &[]).unwrap().is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn symlinks_anywhere_are_refused_and_nothing_is_created_outside() {
        let root = scratch("sym");
        let outside = scratch("outside");
        fs::create_dir_all(root.join("pods")).unwrap();
        symlink(&outside, root.join("pods/evil")).unwrap();
        symlink("/", root.join("pods/rootlink")).unwrap();
        let k = KubeletDir::open(&root).unwrap();
        for p in [
            root.join("pods/evil/volumes/x/mount"),
            root.join("pods/evil"),
            root.join("pods/rootlink/tmp"),
        ] {
            for create in [false, true] {
                let e = k.resolve("target_path", &p, create).err().expect("refused");
                assert!(e.to_string().contains("target_path"), "{e}");
            }
        }
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing created outside"
        );
        fs::write(root.join("pods/file"), b"x").unwrap();
        let e = k
            .resolve("target_path", &root.join("pods/file/x"), true)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a directory"), "{e}");
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
