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

    /// Write atomically (temp file, fsync, rename).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let mut text = String::with_capacity(64 * self.entries.len() + 32);
        let v3 = self.key.is_some()
            && self
                .entries
                .iter()
                .all(|e| e.kind != Kind::File || e.xattrs.is_some());
        match self.key {
            Some((k0, k1)) => {
                let header = if v3 { HEADER_V3 } else { HEADER_V2 };
                let _ = writeln!(text, "{header} {k0:016x}{k1:016x}");
            }
            None => {
                text.push_str(HEADER_V1);
                text.push('\n');
            }
        }
        for e in &self.entries {
            let p = encode(e.path.as_os_str().as_bytes());
            // Writing to a String cannot fail.
            let _ = match e.kind {
                Kind::Dir => writeln!(text, "d {:o} {} {} {p}", e.mode, e.uid, e.gid),
                Kind::File => {
                    let _ = write!(
                        text,
                        "f {:o} {} {} {} {} {}.{:09} {}.{:09} ",
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size,
                        e.ino,
                        e.mtime.0,
                        e.mtime.1,
                        e.ctime.0,
                        e.ctime.1
                    );
                    if let (Some(h), Some(_)) = (e.hash, self.key) {
                        let _ = write!(text, "{h:016x} ");
                    }
                    if let (Some(x), true) = (e.xattrs, v3) {
                        let _ = write!(text, "{x:016x} ");
                    }
                    writeln!(text, "{p}")
                }
                Kind::Symlink => {
                    let t = e.target.as_deref().unwrap_or_default();
                    writeln!(text, "l {p} {}", encode(t.as_bytes()))
                }
            };
        }
        let tmp = tmp_name(path);
        let mut f = fs::create_file(&tmp, true)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write manifest", &tmp, e))?;
        drop(f);
        fs::rename_path(&tmp, path)
    }

    pub fn read_from(path: &Path) -> Result<Manifest> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open manifest", path, e))?;
        let bad = |n: usize, why: &str| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("line {n}: {why}"),
        };
        let mut entries = Vec::new();
        let mut key = None;
        let mut v3 = false;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let n = i + 1;
            let line = line.map_err(|e| Error::io("read manifest", path, e))?;
            if n == 1 {
                if line == HEADER_V1 {
                    continue;
                }
                v3 = line.starts_with(HEADER_V3);
                let k = line
                    .strip_prefix(if v3 { HEADER_V3 } else { HEADER_V2 })
                    .and_then(|r| r.strip_prefix(' '))
                    .filter(|k| k.len() == 32)
                    .and_then(|k| {
                        Some((
                            u64::from_str_radix(&k[..16], 16).ok()?,
                            u64::from_str_radix(&k[16..], 16).ok()?,
                        ))
                    });
                match k {
                    Some(k) => key = Some(k),
                    None => return Err(bad(n, "not a bindery manifest (version 1, 2 or 3)")),
                }
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad(n, "bad number"));
            let oct = |s: &str| u32::from_str_radix(s, 8).map_err(|_| bad(n, "bad mode"));
            let id = |s: &str| s.parse::<u32>().map_err(|_| bad(n, "bad id"));
            let time = |s: &str| -> Result<(i64, i64)> {
                let (a, b) = s.split_once('.').ok_or_else(|| bad(n, "bad time"))?;
                Ok((
                    a.parse().map_err(|_| bad(n, "bad time"))?,
                    b.parse().map_err(|_| bad(n, "bad time"))?,
                ))
            };
            let path_of = |s: &str| -> Result<PathBuf> {
                Ok(PathBuf::from(OsString::from_vec(
                    decode(s).ok_or_else(|| bad(n, "bad path encoding"))?,
                )))
            };
            let mut e = Entry {
                path: PathBuf::new(),
                kind: Kind::Dir,
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                ino: 0,
                mtime: (0, 0),
                ctime: (0, 0),
                target: None,
                hash: None,
                xattrs: None,
            };
            let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad(n, "bad hash"));
            match fields.as_slice() {
                ["d", mode, uid, gid, p] => {
                    (e.mode, e.uid, e.gid, e.path) = (oct(mode)?, id(uid)?, id(gid)?, path_of(p)?);
                }
                ["f", mode, uid, gid, size, ino, mtime, ctime, p] if key.is_none() => {
                    e.kind = Kind::File;
                    (e.mode, e.uid, e.gid) = (oct(mode)?, id(uid)?, id(gid)?);
                    (e.size, e.ino) = (num(size)?, num(ino)?);
                    (e.mtime, e.ctime, e.path) = (time(mtime)?, time(ctime)?, path_of(p)?);
                }
                ["f", mode, uid, gid, size, ino, mtime, ctime, h, p] if key.is_some() && !v3 => {
                    e.kind = Kind::File;
                    (e.mode, e.uid, e.gid) = (oct(mode)?, id(uid)?, id(gid)?);
                    (e.size, e.ino, e.hash) = (num(size)?, num(ino)?, Some(hex(h)?));
                    (e.mtime, e.ctime, e.path) = (time(mtime)?, time(ctime)?, path_of(p)?);
                }
                ["f", mode, uid, gid, size, ino, mtime, ctime, h, x, p] if v3 => {
                    e.kind = Kind::File;
                    (e.mode, e.uid, e.gid) = (oct(mode)?, id(uid)?, id(gid)?);
                    (e.size, e.ino, e.hash) = (num(size)?, num(ino)?, Some(hex(h)?));
                    e.xattrs = Some(hex(x)?);
                    (e.mtime, e.ctime, e.path) = (time(mtime)?, time(ctime)?, path_of(p)?);
                }
                ["l", p, t] => {
                    e.kind = Kind::Symlink;
                    e.path = path_of(p)?;
                    e.target = Some(OsString::from_vec(
                        decode(t).ok_or_else(|| bad(n, "bad target encoding"))?,
                    ));
                }
                _ => return Err(bad(n, "unknown entry")),
            }
            if e.path.is_absolute()
                || e.path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad(n, "path escapes the tree"));
            }
            entries.push(e);
        }
        if entries.is_empty() {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: "empty manifest".into(),
            });
        }
        Ok(Manifest { entries, key })
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
mod tests {
    use super::*;
    use crate::cache::populate::{populate, Owner, Strategy};
    use crate::cache::testutil::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn encoding_roundtrips_any_byte() {
        let all: Vec<u8> = (1u8..=255).collect();
        let e = encode(&all);
        assert!(!e.contains(' ') && !e.contains('\n'));
        assert_eq!(decode(&e).unwrap(), all);
        assert_eq!(encode(b"a b\n%"), "a%20b%0A%25");
        assert!(decode("%4").is_none() && decode("%zz").is_none());
    }

    #[test]
    fn scan_write_read_roundtrip_and_intact_tree_verifies() {
        let g = TempDir::new("golden");
        sample_tree(g.path());
        let m = Manifest::scan(g.path()).unwrap();
        let kinds = |k| m.entries().iter().filter(|e| e.kind == k).count();
        assert_eq!(
            (kinds(Kind::Dir), kinds(Kind::File), kinds(Kind::Symlink)),
            (6, 8, 4)
        );
        let out = TempDir::new("manifest");
        let p = out.path().join("v.manifest");
        m.write_to(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("weird%0Aname%20%2541"), "{text}");
        assert!(text.starts_with("bindery-manifest 3 "), "{text}");
        assert_eq!(Manifest::read_from(&p).unwrap(), m);
        assert!(m.verify(g.path()).unwrap().is_empty());
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated and outlive the call; `value`
        // is `value.len()` readable bytes.
        let r = unsafe {
            nix::libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {}: {}", path.display(), Errno::last());
    }

    /// An xattr set on a golden file (a file capability, an ACL: what a root
    /// pod sharing the inode could add) is a change, as a chmod is; one the
    /// file had at scan time is part of what it should look like.
    #[test]
    fn detects_an_added_or_changed_xattr() {
        let g = TempDir::new("golden");
        sample_tree(g.path());
        let f = m_file(g.path());
        set_xattr(&f, "user.origin", b"build");
        let m = Manifest::scan(g.path()).unwrap();
        assert!(m.verify(g.path()).unwrap().is_empty());
        let rel = f.strip_prefix(g.path()).unwrap().to_path_buf();
        set_xattr(&f, "user.origin", b"pod");
        assert_eq!(m.verify(g.path()).unwrap(), vec![rel.clone()]);
        set_xattr(&f, "user.origin", b"build");
        set_xattr(&f, "user.extra", b"1");
        assert_eq!(m.verify(g.path()).unwrap(), vec![rel]);
        // A version 2 manifest recorded no xattrs: it does not compare them.
        let out = TempDir::new("manifest");
        let p = out.path().join("v2.manifest");
        let mut v2 = m.clone();
        v2.entries.iter_mut().for_each(|e| e.xattrs = None);
        v2.write_to(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("bindery-manifest 2 "), "{text}");
        let back = Manifest::read_from(&p).unwrap();
        assert_eq!(back, v2);
        assert!(back.verify(g.path()).unwrap().is_empty());
    }

    /// Some regular file of `sample_tree`.
    fn m_file(root: &Path) -> PathBuf {
        let m = Manifest::scan(root).unwrap();
        let e = m.entries().iter().find(|e| e.kind == Kind::File).unwrap();
        root.join(&e.path)
    }

    #[test]
    fn detects_in_place_write_through_a_hardlink() {
        if skip_unless_root("detects_in_place_write_through_a_hardlink") {
            return;
        }
        let g = TempDir::new("golden");
        sample_tree(g.path());
        let m = Manifest::scan(g.path()).unwrap();
        let pod = TempDir::new("pod");
        let owner = Owner {
            uid: Some(1000),
            gid: Some(1000),
            mode: None,
            group_writable: false,
        };
        populate(g.path(), pod.path(), Strategy::Hardlink, &owner, 2).unwrap();
        // Publishing (linking) changes golden ctimes, and must not count as tampering.
        assert!(m.verify(g.path()).unwrap().is_empty());
        // A root pod writes in place through its link, another chmods, a third deletes
        // a golden file it should not reach (here: directly, as a stand-in).
        std::fs::write(pod.path().join("a/b/two"), b"evil").unwrap();
        std::fs::set_permissions(
            pod.path().join("top.txt"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        std::fs::remove_file(g.path().join("exec.sh")).unwrap();
        let mut bad = m.verify(g.path()).unwrap();
        bad.sort();
        assert_eq!(
            bad,
            vec![
                PathBuf::from("a/b/two"),
                PathBuf::from("exec.sh"),
                PathBuf::from("top.txt")
            ]
        );
        // A replaced symlink target is seen too.
        std::fs::remove_file(g.path().join("abs-link")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", g.path().join("abs-link")).unwrap();
        assert!(m
            .verify(g.path())
            .unwrap()
            .contains(&PathBuf::from("abs-link")));
    }

    #[test]
    fn same_size_write_with_mtime_restored_is_caught() {
        let g = TempDir::new("golden");
        sample_tree(g.path());
        let m = Manifest::scan(g.path()).unwrap();
        let out = TempDir::new("manifest");
        let p = out.path().join("v.manifest");
        m.write_to(&p).unwrap();
        let m = Manifest::read_from(&p).unwrap();
        let f = g.path().join("a/b/two");
        // A hardlink elsewhere changes the ctime only: still intact, by content.
        std::fs::hard_link(&f, out.path().join("link")).unwrap();
        let mut confirmed = Confirmed::new();
        assert!(m.verify_with(g.path(), &mut confirmed).unwrap().is_empty());
        assert!(confirmed.contains_key(Path::new("a/b/two")));
        let before = std::fs::metadata(&f).unwrap();
        std::fs::write(&f, b"owt").unwrap();
        let mtime = std::fs::FileTimes::new().set_modified(before.modified().unwrap());
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_times(mtime)
            .unwrap();
        let after = std::fs::metadata(&f).unwrap();
        assert_eq!(
            (after.len(), after.mtime(), after.mtime_nsec()),
            (before.len(), before.mtime(), before.mtime_nsec())
        );
        assert_eq!(
            m.verify_with(g.path(), &mut confirmed).unwrap(),
            vec![PathBuf::from("a/b/two")]
        );
    }

    #[test]
    fn rejects_malformed_manifests() {
        let d = TempDir::new("manifest");
        for (i, text) in [
            "nope\n",
            "bindery-manifest 1\nx 1 2\n",
            "bindery-manifest 1\nd 755 0 0 ../etc\n",
            "bindery-manifest 1\nf 644 0 0 1 2 3 4.5 a\n",
            "bindery-manifest 1\n",
        ]
        .iter()
        .enumerate()
        {
            let p = d.path().join(format!("m{i}"));
            std::fs::write(&p, text).unwrap();
            let e = Manifest::read_from(&p).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{text:?}: {e}");
        }
    }
}
