//! Unit tests of `cache/golden/mod.rs`.

use super::*;
use crate::cache::populate::populate;
use crate::cache::testutil::*;
use std::os::unix::fs::MetadataExt;

fn store() -> (TempDir, GoldenStore) {
    let t = TempDir::new("store");
    let s = GoldenStore::new(&t.path().join("golden")).with_threads(2);
    (t, s)
}

#[test]
fn build_makes_a_sealed_current_version_with_manifest_outside() {
    if skip_unless_root("build_makes_a_sealed_current_version_with_manifest_outside") {
        return;
    }
    let src = TempDir::new("src");
    sample_tree(src.path());
    let (_t, s) = store();
    assert_eq!(s.current("npm").unwrap(), None);
    let v = s.build_from_dir("npm", src.path()).unwrap();
    assert_eq!(s.current("npm").unwrap(), Some(v.clone()));
    assert_eq!(s.versions("npm").unwrap(), vec![v.clone()]);
    let p = s.path("npm", &v);
    // Same content and symlinks, no fifo; files root-owned and read-only; dirs 0755.
    let want = describe(src.path(), false);
    let got = describe(&p, true);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (k, (kind, mode, data)) in &got {
        assert_eq!((kind, data), (&want[k].0, &want[k].2), "{k:?}");
        match kind {
            'd' => assert_eq!(*mode, 0o755, "{k:?}"),
            'f' => assert_eq!(*mode, want[k].1 & 0o555, "{k:?}"),
            _ => {}
        }
    }
    assert_eq!(owner(&p.join("exec.sh")), (0, 0, 0o550));
    assert!(!got.keys().any(|k| k.to_string_lossy().contains("manifest")));
    assert!(s.verify("npm", &v).unwrap().is_empty());
    assert!(std::fs::read_dir(s.root().join("npm")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(TMP_PREFIX)));
}

#[test]
fn new_versions_become_current_and_gc_keeps_what_is_in_use() {
    if skip_unless_root("new_versions_become_current_and_gc_keeps_what_is_in_use") {
        return;
    }
    let src = TempDir::new("src");
    std::fs::write(src.path().join("f"), b"1").unwrap();
    let (_t, s) = store();
    let v1 = s.build_from_dir("c", src.path()).unwrap();
    std::fs::write(src.path().join("f"), b"2").unwrap();
    let v2 = s.build_from_dir("c", src.path()).unwrap();
    let v3 = s.build_from_dir("c", src.path()).unwrap();
    assert!(v1 < v2 && v2 < v3);
    assert_eq!(s.current("c").unwrap(), Some(v3.clone()));
    assert_eq!(std::fs::read(s.path("c", &v3).join("f")).unwrap(), b"2");
    // A crash's leftover build.
    let stale = s
        .root()
        .join("c")
        .join(format!("{TMP_PREFIX}00000000000000000001"));
    std::fs::create_dir_all(stale.join("x")).unwrap();
    let in_use: HashSet<String> = [v1.to_string()].into();
    assert_eq!(s.gc("c", &in_use).unwrap(), vec![v2.clone()]);
    assert_eq!(s.versions("c").unwrap(), vec![v1.clone(), v3.clone()]);
    assert!(!stale.exists());
    assert!(!s.meta_path("c", &v2, "manifest").exists());
    assert_eq!(s.gc("c", &HashSet::new()).unwrap(), vec![v1]);
    assert_eq!(s.versions("c").unwrap(), vec![v3]);
}

#[test]
fn gc_never_removes_a_pinned_version() {
    if skip_unless_root("gc_never_removes_a_pinned_version") {
        return;
    }
    let src = TempDir::new("src");
    std::fs::write(src.path().join("f"), b"1").unwrap();
    let (_t, s) = store();
    let v1 = s.build_from_dir("c", src.path()).unwrap();
    let (cur, pin) = s.current_pinned("c").unwrap().unwrap();
    assert_eq!(cur, v1);
    let v2 = s.build_from_dir("c", src.path()).unwrap();
    assert!(s.gc("c", &HashSet::new()).unwrap().is_empty(), "v1 pinned");
    assert!(s.path("c", &v1).is_dir());
    let variant = Owner {
        uid: Some(1000),
        ..Owner::default()
    };
    let vp = s
        .variant(
            "c",
            &v1,
            "o-1000",
            Strategy::Copy,
            &variant,
            VariantLimit::Owners(1),
        )
        .unwrap();
    assert_eq!(owner(&vp.join("f")).0, 1000);
    // One owner variant allowed: the next owner is refused, the same one is not.
    let other = Owner {
        uid: Some(1001),
        ..Owner::default()
    };
    let limit = VariantLimit::Owners(1);
    let e = s
        .variant("c", &v1, "o-1001", Strategy::Copy, &other, limit)
        .unwrap_err();
    assert!(matches!(e, Error::Exhausted { .. }), "{e}");
    assert!(!s.variant_path("c", &v1, "o-1001").exists());
    assert_eq!(
        s.variant("c", &v1, "o-1000", Strategy::Copy, &variant, limit)
            .unwrap(),
        vp
    );
    // Variants of a pinned version stay; an unused one goes once unpinned,
    // a used one stays.
    assert!(s.gc_variants("c", &HashSet::new()).unwrap().is_empty());
    drop(pin);
    let used: HashSet<(String, String)> = [(v1.as_str().to_string(), "o-1000".into())].into();
    assert!(s.gc_variants("c", &used).unwrap().is_empty());
    assert!(vp.is_dir());
    assert_eq!(
        s.gc_variants("c", &HashSet::new()).unwrap(),
        vec![(v1.clone(), "o-1000".to_string())]
    );
    assert!(!vp.exists());
    let vp = s
        .variant("c", &v1, "o-1001", Strategy::Copy, &other, limit)
        .unwrap();
    assert_eq!(s.gc("c", &HashSet::new()).unwrap(), vec![v1.clone()]);
    assert!(!s.path("c", &v1).exists() && !vp.exists());
    assert_eq!(s.versions("c").unwrap(), vec![v2]);
}

#[test]
fn tampered_version_is_detected_and_retired() {
    if skip_unless_root("tampered_version_is_detected_and_retired") {
        return;
    }
    let src = TempDir::new("src");
    sample_tree(src.path());
    let (_t, s) = store();
    let v1 = s.build_from_dir("c", src.path()).unwrap();
    let v2 = s.build_from_dir("c", src.path()).unwrap();
    let pod = TempDir::new("pod");
    let owner = Owner {
        uid: Some(1000),
        gid: Some(1000),
        mode: None,
        group_writable: false,
    };
    populate(&s.path("c", &v2), pod.path(), Strategy::Hardlink, &owner, 2).unwrap();
    assert!(s.verify("c", &v2).unwrap().is_empty());
    // A root pod writes through its hardlink, although the file is read-only.
    std::fs::write(pod.path().join("a/one"), b"tampered").unwrap();
    assert_eq!(s.verify("c", &v2).unwrap(), vec![PathBuf::from("a/one")]);
    s.retire("c", &v2).unwrap();
    assert!(s.is_retired("c", &v2));
    assert_eq!(s.current("c").unwrap(), Some(v1.clone()));
    // Rebuilding gives a fresh, intact current version.
    let v3 = s.build_from_dir("c", src.path()).unwrap();
    assert_eq!(s.current("c").unwrap(), Some(v3.clone()));
    assert!(s.verify("c", &v3).unwrap().is_empty());
    s.retire("c", &v3).unwrap();
    s.retire("c", &v1).unwrap();
    assert_eq!(s.current("c").unwrap(), None);
}

#[test]
fn concurrent_builds_take_turns() {
    if skip_unless_root("concurrent_builds_take_turns") {
        return;
    }
    let src = TempDir::new("src");
    sample_tree(src.path());
    let (_t, s) = store();
    let vs: Vec<Version> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| s.build_from_dir("c", src.path()).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = vs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3);
    assert_eq!(s.versions("c").unwrap(), sorted);
    for v in &sorted {
        assert!(s.verify("c", v).unwrap().is_empty());
    }
}

#[test]
fn names_are_checked_and_failed_builds_leave_nothing() {
    let (_t, s) = store();
    for bad in ["", ".hidden", "a/b", "..", "x y", "a\0b"] {
        assert!(matches!(
            s.build_from_dir(bad, Path::new("/nonexistent")),
            Err(Error::InvalidField { .. })
        ));
    }
    assert!(s
        .build_from_dir("ok", Path::new("/nonexistent-bindery"))
        .is_err());
    assert!(s.versions("ok").unwrap().is_empty());
    assert_eq!(Version::parse("123"), None);
    assert!(Version::parse("00000000000000000042").is_some());
}

/// On btrfs, versions and variants are read-only subvolumes (not even root
/// writes into them) that verify intact, and gc destroys the unused ones.
#[test]
fn versions_on_btrfs_are_read_only_subvolumes() {
    let Some(b) = env_dir(
        "BINDERY_BTRFS_DIR",
        "versions_on_btrfs_are_read_only_subvolumes",
    ) else {
        return;
    };
    let t = TempDir::new_in(&b, "store");
    let s = GoldenStore::new(&t.path().join("golden")).with_threads(2);
    let src = TempDir::new("src");
    sample_tree(src.path());
    let frozen = |p: &Path| {
        let fd = fs::open_dir(p).unwrap();
        btrfs::is_subvolume(fd.as_fd()).unwrap() && btrfs::is_read_only(fd.as_fd()).unwrap()
    };
    let v1 = s.build_from_dir("npm", src.path()).unwrap();
    let p1 = s.path("npm", &v1);
    assert!(frozen(&p1));
    assert!(std::fs::write(p1.join("new"), b"x").is_err());
    assert!(std::fs::write(p1.join("top.txt"), b"x").is_err());
    assert_eq!(s.verify("npm", &v1).unwrap(), Vec::<PathBuf>::new());
    let v2 = s.build_from_dir("npm", src.path()).unwrap();
    let owner = Owner {
        uid: Some(1000),
        gid: Some(1000),
        mode: None,
        group_writable: false,
    };
    let var = s
        .variant(
            "npm",
            &v2,
            "o-1000",
            Strategy::Reflink,
            &owner,
            VariantLimit::Owners(1),
        )
        .unwrap();
    assert!(frozen(&var));
    assert_eq!(
        std::fs::symlink_metadata(var.join("a/b")).unwrap().uid(),
        1000
    );
    assert_eq!(s.gc("npm", &HashSet::new()).unwrap(), vec![v1]);
    assert!(!p1.exists());
    assert_eq!(
        s.gc_variants("npm", &HashSet::new()).unwrap(),
        vec![(v2.clone(), "o-1000".to_string())]
    );
    assert!(!var.exists());
    // A cache whose strategies name hardlink keeps plain directories.
    let plain = GoldenStore::new(&t.path().join("golden")).with_plain_dirs(["tools".to_string()]);
    let v = plain.build_from_dir("tools", src.path()).unwrap();
    let fd = fs::open_dir(&plain.path("tools", &v)).unwrap();
    assert!(!btrfs::is_subvolume(fd.as_fd()).unwrap());
    let left: Vec<_> = std::fs::read_dir(t.path().join("golden/npm"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().starts_with(".tmp-")),
        "{left:?}"
    );
}
