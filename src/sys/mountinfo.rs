//! /proc/self/mountinfo, read through a function that takes a reader so that
//! tests feed it text fixtures.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys::statmount;
use nix::libc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    pub dev: (u32, u32),
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// The filesystem's options, as the kernel shows them (values still
    /// escaped: split on `,` first, then `option_values`).
    pub super_options: String,
}

impl MountInfo {
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }

    /// Every value of filesystem option `name` (e.g. an overlay's
    /// `lowerdir`), unescaped.
    pub fn option_values(&self, name: &str) -> Vec<String> {
        self.super_options
            .split(',')
            .filter_map(|o| o.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| unescape(v))
            .collect()
    }
}

/// Undo the octal escapes (`\040` for space, `\012` for newline, `\134` for
/// backslash) the kernel applies to paths in mountinfo.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &field[i + 1..(i + 4).min(field.len())];
            if oct.len() == 3 && oct.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
                if let Ok(v) = u8::from_str_radix(oct, 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let (maj, min) = f.next()?.split_once(':')?;
    let dev = (maj.parse().ok()?, min.parse().ok()?);
    let root = PathBuf::from(unescape(f.next()?));
    let mount_point = PathBuf::from(unescape(f.next()?));
    let options = f.next()?.to_string();
    let mut p = post.split(' ');
    let fs_type = p.next()?.to_string();
    let source = unescape(p.next().unwrap_or(""));
    let super_options = p.next().unwrap_or("").to_string();
    Some(MountInfo {
        id,
        parent,
        dev,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse(reader: impl Read) -> Vec<MountInfo> {
    BufReader::new(reader)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| parse_line(&l))
        .collect()
}

/// The mount table of this process's mount namespace.
pub fn read_self() -> Result<Vec<MountInfo>> {
    let path = Path::new("/proc/self/mountinfo");
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    Ok(parse(f))
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at<'a>(table: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    table.iter().rev().find(|m| m.mount_point == path)
}

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

/// The mount with id `id` (the `mnt_id` of an fd), if it is still there.
pub fn by_id(table: &[MountInfo], id: u32) -> Option<&MountInfo> {
    table.iter().find(|m| m.id == id)
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 0:45 / /var/lib/kubelet/plugins/kubernetes.io/csi/bindery.csi.dev/abc/globalmount rw,nosuid,nodev,relatime shared:60 - fuse.s3fs s3fs rw,user_id=0,group_id=0,allow_other
96 22 0:45 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv/mount ro,nosuid,nodev,relatime shared:60 - fuse.s3fs s3fs rw,user_id=0,group_id=0,allow_other
97 22 0:46 / /mnt/with\\040space rw - tmpfs tmpfs rw
98 22 0:47 / /pod/mount rw,relatime - overlay overlay rw,lowerdir=/golden/c/0001\\054x,upperdir=/u,workdir=/w
garbage line
";

    #[test]
    fn filesystem_options_are_split_then_unescaped() {
        let t = parse(FIXTURE.as_bytes());
        let o = mount_at(&t, Path::new("/pod/mount")).unwrap();
        assert_eq!(o.option_values("lowerdir"), vec!["/golden/c/0001,x"]);
        assert_eq!(o.option_values("upperdir"), vec!["/u"]);
        assert!(o.option_values("nothing").is_empty());
    }

    #[test]
    fn parses_fixture() {
        let t = parse(FIXTURE.as_bytes());
        assert_eq!(t.len(), 5);
        let g = mount_at(
            &t,
            Path::new("/var/lib/kubelet/plugins/kubernetes.io/csi/bindery.csi.dev/abc/globalmount"),
        )
        .unwrap();
        assert!(g.is_fuse());
        assert_eq!(g.dev, (0, 45));
        let p = mount_at(
            &t,
            Path::new("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv/mount"),
        )
        .unwrap();
        assert!(p.options.starts_with("ro,"));
        assert_eq!(t[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(!t[3].is_fuse());
        assert!(mount_at(&t, Path::new("/nope")).is_none());
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a\\040b\\134c\\012"), "a b\\c\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
