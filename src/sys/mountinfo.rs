//! /proc/self/mountinfo, read through a function that takes a reader so that
//! tests feed it text fixtures.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
    /// "major:minor": what identifies the filesystem a mount (or a bind of
    /// it) shows.
    pub fn dev_string(&self) -> String {
        format!("{}:{}", self.dev.0, self.dev.1)
    }

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
/// backslash) the kernel applies to paths in mountinfo. Every other byte is
/// as the kernel has it, which need not be UTF-8.
fn unescape_bytes(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|o| field[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            // Three octal digits are at most 0o777: only up to 0o377 is a byte.
            Some(o) if o[0] <= b'3' => {
                out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

fn unescape(field: &str) -> String {
    String::from_utf8_lossy(&unescape_bytes(field.as_bytes())).into_owned()
}

fn unescape_path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_bytes(field)))
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    let dash = line.windows(3).position(|w| w == b" - ")?;
    let (pre, post) = (&line[..dash], &line[dash + 3..]);
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u32>().ok();
    let mut f = pre.split(|&c| c == b' ');
    let id = number(f.next()?)?;
    let parent = number(f.next()?)?;
    let dev = f.next()?;
    let colon = dev.iter().position(|&c| c == b':')?;
    let dev = (number(&dev[..colon])?, number(&dev[colon + 1..])?);
    let root = unescape_path(f.next()?);
    let mount_point = unescape_path(f.next()?);
    let options = text(f.next()?);
    let mut p = post.split(|&c| c == b' ');
    let fs_type = text(p.next()?);
    let source = unescape(&text(p.next().unwrap_or_default()));
    let super_options = text(p.next().unwrap_or_default());
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

/// Parse mountinfo text; malformed lines are skipped. A line that is not
/// UTF-8 (a mount point is any bytes but `/` and NUL) is parsed like any
/// other and hides none of the lines after it.
pub fn parse(mut reader: impl Read) -> Vec<MountInfo> {
    let mut all = Vec::new();
    if reader.read_to_end(&mut all).is_err() {
        return Vec::new();
    }
    all.split(|&c| c == b'\n').filter_map(parse_line).collect()
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

/// The mount with id `id` (the `mnt_id` of an fd), if it is still there.
pub fn by_id(table: &[MountInfo], id: u32) -> Option<&MountInfo> {
    table.iter().find(|m| m.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

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
        assert_eq!(unescape("\\777 \\08"), "\\777 \\08");
    }

    #[test]
    fn a_line_that_is_not_utf8_hides_nothing() {
        let mut text = b"40 22 0:50 / /mnt/\xff\\040x rw - tmpfs tmpfs rw\n".to_vec();
        text.extend_from_slice(FIXTURE.as_bytes());
        let t = parse(&text[..]);
        assert_eq!(t.len(), 6);
        assert_eq!(
            t[0].mount_point.as_os_str().as_bytes(),
            b"/mnt/\xff x",
            "the path's bytes, unescaped"
        );
        assert!(mount_at(&t, Path::new("/pod/mount")).is_some());
    }
}
