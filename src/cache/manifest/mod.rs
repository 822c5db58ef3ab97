//! The manifest of a golden version: what every entry looked like when it was built.
//!
//! With the hardlink strategy a pod's files ARE the golden inodes; a root pod writing in
//! place, or chmodding, changes the golden copy for every pod. `verify` compares the
//! tree with its manifest and names what changed, so the version can be retired.
//!
//! Compared per regular file: inode, size, mtime, mode, uid, gid, the content, and the
//! extended attributes (a file capability or an ACL is as good as a chmod). A
//! same-size write that restores the mtime (utimensat, root only) still changes the
//! ctime, which nobody can set back; but every link and unlink of a golden file (each
//! hardlink publish and unpublish) changes the ctime too. So: a file whose ctime is the
//! recorded one (or the one at which its content was last confirmed) is intact; any
//! other is hashed and compared, content and xattrs alike (setting an xattr moves the
//! ctime too). The hash is SipHash-2-4 under a random 128-bit key kept only in the
//! manifest (which pods never see), so a pod cannot craft a collision.
//!
//! Text format, one entry per line, fields separated by one space, paths and link
//! targets percent-encoded (any byte but a few safe ASCII ones, so spaces, newlines and
//! `%` never appear raw):
//!
//! ```text
//! bindery-manifest 3 <key, 32 hex digits>
//! d <mode-octal> <uid> <gid> <path>
//! f <mode-octal> <uid> <gid> <size> <ino> <mtime s.ns> <ctime s.ns> <hash> <xattrs> <path>
//! l <path> <target>
//! ```
//! `<hash>` and `<xattrs>` are 16 hex digits; `<xattrs>` is 0 for a file without
//! extended attributes, else the keyed hash of its sorted (name, value) pairs.
//! Version 2 manifests (no `<xattrs>`) and version 1 (no key, no hash) are still read;
//! what they lack is not compared.
//! The root directory's path is `.`.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::SFlag;

use crate::error::{Error, Result};
use crate::sys::fs::{self, Stat};

mod digest;
mod file;
mod pathcode;

use digest::{hash_fd, new_key, xattr_digest};
pub use pathcode::{decode, encode};

const HEADER_V1: &str = "bindery-manifest 1";
const HEADER_V2: &str = "bindery-manifest 2";
const HEADER_V3: &str = "bindery-manifest 3";

/// Ctimes at which a file's content was last found intact, so that a file is hashed
/// again only when its ctime moves (keep one per verified tree).
pub type Confirmed = HashMap<PathBuf, (i64, i64)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of a golden tree. Fields that do not apply to the kind are 0 / None.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the tree's root; the root itself is `.`.
    pub path: PathBuf,
    pub kind: Kind,
    /// Permission bits (no file type).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub ino: u64,
    /// (seconds, nanoseconds)
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// Symlinks only: the target text, byte for byte.
    pub target: Option<OsString>,
    /// Regular files of version 2 manifests: keyed hash of the content.
    pub hash: Option<u64>,
    /// Regular files of version 3 manifests: keyed hash of the extended
    /// attributes (0: none).
    pub xattrs: Option<u64>,
}

/// All entries of a tree, sorted by path bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
    /// The content hash key (None: a version 1 manifest, content not recorded).
    key: Option<(u64, u64)>,
}

impl Manifest {
    #[cfg(test)]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many entries of `kind` the tree holds.
    pub fn count(&self, kind: Kind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }

    /// Record every directory, regular file and symlink under `dir` (fifos, sockets and
    /// devices are left out, as population leaves them out). Walks fd-relative, no symlink followed.
    pub fn scan(dir: &Path) -> Result<Manifest> {
        let key = new_key()?;
        let root = fs::open_dir(dir)?;
        let st = fs::fstat(root.as_fd()).map_err(|e| Error::sys("fstat", dir, e))?;
        let mut entries = vec![entry_from_stat(PathBuf::from("."), Kind::Dir, &st, None)];
        walk_tree(dir, root, |fd, name, child, st| {
            match kind_of(st.st_mode) {
                Some(Kind::Dir) => {
                    entries.push(entry_from_stat(child.to_path_buf(), Kind::Dir, st, None))
                }
                Some(Kind::File) => {
                    let f = fs::open_file_at(fd, name)
                        .map_err(|e| Error::sys("open", dir.join(child), e))?;
                    let xattrs = xattr_digest(f.as_fd(), key, &dir.join(child))?;
                    let hash = hash_fd(f, key, &dir.join(child))?;
                    let mut e = entry_from_stat(child.to_path_buf(), Kind::File, st, None);
                    e.hash = Some(hash);
                    e.xattrs = Some(xattrs);
                    entries.push(e);
                }
                Some(Kind::Symlink) => {
                    let t = fs::readlink_at(fd, name)
                        .map_err(|e| Error::sys("readlinkat", dir.join(child), e))?;
                    entries.push(entry_from_stat(
                        child.to_path_buf(),
                        Kind::Symlink,
                        st,
                        Some(t),
                    ));
                }
                None => {}
            }
            Ok(())
        })?;
        entries.sort_by(|a, b| {
            a.path
                .as_os_str()
                .as_bytes()
                .cmp(b.path.as_os_str().as_bytes())
        });
        Ok(Manifest {
            entries,
            key: Some(key),
        })
    }

    /// Entries of `dir` that no longer match the manifest (changed, replaced or missing),
    /// as paths relative to `dir`. Empty means intact.
    #[cfg(test)]
    pub fn verify(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.verify_with(dir, &mut Confirmed::new())
    }

    /// `verify`, hashing only files whose ctime is neither the recorded one nor the one
    /// in `confirmed` (updated with every file found intact by its content).
    pub fn verify_with(&self, dir: &Path, confirmed: &mut Confirmed) -> Result<Vec<PathBuf>> {
        let root = fs::open_dir(dir)?;
        let mut bad = Vec::new();
        for want in &self.entries {
            let st = match fs::stat_rel(root.as_fd(), &want.path) {
                Ok(st) => st,
                Err(Errno::ENOENT | Errno::ENOTDIR) => {
                    bad.push(want.path.clone());
                    continue;
                }
                Err(e) => return Err(Error::sys("fstatat", dir.join(&want.path), e)),
            };
            let target = match want.kind {
                Kind::Symlink if kind_of(st.st_mode) == Some(Kind::Symlink) => {
                    let (pfd, name) = open_parent(root.as_fd(), dir, &want.path)?;
                    let at = pfd.as_ref().map_or(root.as_fd(), |f| f.as_fd());
                    Some(
                        fs::readlink_at(at, &name)
                            .map_err(|e| Error::sys("readlinkat", dir.join(&want.path), e))?,
                    )
                }
                _ => None,
            };
            let got = entry_from_stat(want.path.clone(), want.kind, &st, target);
            if !matches(want, &got, st.st_mode) {
                bad.push(want.path.clone());
                continue;
            }
            if want.kind != Kind::File || got.ctime == want.ctime {
                continue;
            }
            let (Some(key), Some(hash)) = (self.key, want.hash) else {
                continue;
            };
            if confirmed.get(&want.path) == Some(&got.ctime) {
                continue;
            }
            let p = dir.join(&want.path);
            let (pfd, name) = open_parent(root.as_fd(), dir, &want.path)?;
            let at = pfd.as_ref().map_or(root.as_fd(), |f| f.as_fd());
            let f = match fs::open_file_at(at, &name) {
                Ok(f) => f,
                Err(Errno::ENOENT | Errno::ELOOP) => {
                    bad.push(want.path.clone());
                    continue;
                }
                Err(e) => return Err(Error::sys("open", &p, e)),
            };
            if want
                .xattrs
                .is_some_and(|x| xattr_digest(f.as_fd(), key, &p).ok() != Some(x))
            {
                bad.push(want.path.clone());
                continue;
            }
            if hash_fd(f, key, &p)? == hash {
                confirmed.insert(want.path.clone(), got.ctime);
            } else {
                bad.push(want.path.clone());
            }
        }
        Ok(bad)
    }
}

fn kind_of(mode: u32) -> Option<Kind> {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Some(Kind::Dir),
        SFlag::S_IFREG => Some(Kind::File),
        SFlag::S_IFLNK => Some(Kind::Symlink),
        _ => None,
    }
}

fn entry_from_stat(path: PathBuf, kind: Kind, st: &Stat, target: Option<OsString>) -> Entry {
    let file = kind == Kind::File;
    Entry {
        path,
        kind,
        mode: if kind == Kind::Symlink {
            0
        } else {
            st.st_mode & 0o7777
        },
        uid: if kind == Kind::Symlink { 0 } else { st.st_uid },
        gid: if kind == Kind::Symlink { 0 } else { st.st_gid },
        size: if file { fs::size_of(st) } else { 0 },
        ino: if file { st.st_ino } else { 0 },
        mtime: if file {
            (st.st_mtime, st.st_mtime_nsec)
        } else {
            (0, 0)
        },
        ctime: if file {
            (st.st_ctime, st.st_ctime_nsec)
        } else {
            (0, 0)
        },
        target,
        hash: None,
        xattrs: None,
    }
}

/// Same kind and same recorded fields, ctime and content excepted (see the module doc).
fn matches(want: &Entry, got: &Entry, got_mode: u32) -> bool {
    if kind_of(got_mode) != Some(want.kind) {
        return false;
    }
    let meta = (want.mode, want.uid, want.gid) == (got.mode, got.uid, got.gid);
    match want.kind {
        Kind::Dir => meta,
        Kind::File => meta && (want.size, want.ino, want.mtime) == (got.size, got.ino, got.mtime),
        Kind::Symlink => want.target == got.target,
    }
}

/// Walk the tree below `root` (the open directory `dir`) fd-relative, never
/// following a symlink: `visit` sees every entry but `.` and `..` with the fd
/// of its directory, its name, its path relative to `dir` and its lstat;
/// directories are then descended into.
pub(super) fn walk_tree(
    dir: &Path,
    root: OwnedFd,
    mut visit: impl FnMut(BorrowedFd<'_>, &CStr, &Path, &Stat) -> Result<()>,
) -> Result<()> {
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::new())];
    while let Some((fd, rel)) = stack.pop() {
        let list_err = |e| Error::sys("read directory", dir.join(&rel), e);
        let mut d = fs::read_dir(fd.as_fd()).map_err(list_err)?;
        for ent in d.iter() {
            let ent = ent.map_err(list_err)?;
            let name = ent.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let child = rel.join(OsStr::from_bytes(name.to_bytes()));
            let st = fs::stat_at(fd.as_fd(), name)
                .map_err(|e| Error::sys("fstatat", dir.join(&child), e))?;
            visit(fd.as_fd(), name, &child, &st)?;
            if kind_of(st.st_mode) == Some(Kind::Dir) {
                let sub = fs::open_dir_at(fd.as_fd(), name)
                    .map_err(|e| Error::sys("open directory", dir.join(&child), e))?;
                stack.push((sub, child));
            }
        }
    }
    Ok(())
}

/// The directory holding `rel` below `root` (the open directory `dir`),
/// opened without following symlinks (None: `root` itself), and `rel`'s last
/// component.
fn open_parent(root: BorrowedFd<'_>, dir: &Path, rel: &Path) -> Result<(Option<OwnedFd>, CString)> {
    let (parent, name) = split_rel(rel);
    let pfd = if parent.as_os_str().is_empty() {
        None
    } else {
        Some(
            fs::open_dir_at(root, &cpath(&parent)?)
                .map_err(|e| Error::sys("open directory", dir.join(&parent), e))?,
        )
    };
    Ok((pfd, cpath(Path::new(&name))?))
}

fn split_rel(rel: &Path) -> (PathBuf, OsString) {
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = rel.file_name().map(OsStr::to_os_string).unwrap_or_default();
    (parent, name)
}

fn cpath(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("path", format!("{}: NUL byte", p.display())))
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests;
