//! Unit tests of `cache/manifest/mod.rs`.

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
