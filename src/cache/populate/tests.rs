//! Tests of population and of the store probe, on the filesystems the
//! machine has.

use super::*;
use crate::cache::probe::*;
use crate::cache::testutil::*;
use std::os::unix::fs::MetadataExt;

fn populate_into(
    golden: &Path,
    strategy: Strategy,
    owner: &Owner,
    threads: usize,
) -> (TempDir, Stats) {
    let dest = TempDir::new("dest");
    let stats = populate(golden, dest.path(), strategy, owner, threads).unwrap();
    (dest, stats)
}

/// The tree minus the fifo, as population should reproduce it (modes of dirs aside).
fn expected(golden: &Path) -> std::collections::BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
    describe(golden, false)
}

fn check_same_tree(golden: &Path, dest: &Path, dir_mode: Option<u32>) {
    let mut want = expected(golden);
    if let Some(m) = dir_mode {
        for v in want.values_mut() {
            if v.0 == 'd' {
                v.1 = m;
            }
        }
    }
    let got = describe(dest, true);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    assert_eq!(want, got);
}

const POD: Owner = Owner {
    uid: Some(1234),
    gid: Some(5678),
    mode: None,
    group_writable: false,
};

#[test]
fn strategy_parses_and_prints() {
    for s in [Strategy::Hardlink, Strategy::Reflink, Strategy::Copy] {
        assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        assert_eq!(s.to_string(), s.as_str());
    }
    let e = "overlay".parse::<Strategy>().unwrap_err();
    assert!(e.to_string().contains("strategy"), "{e}");
}

#[test]
fn hardlink_shares_inodes_and_owns_dirs() {
    if skip_unless_root("hardlink_shares_inodes_and_owns_dirs") {
        return;
    }
    let g = TempDir::new("golden");
    sample_tree(g.path());
    for threads in [1, 4] {
        let (d, stats) = populate_into(g.path(), Strategy::Hardlink, &POD, threads);
        check_same_tree(g.path(), d.path(), None);
        assert_eq!(
            stats,
            Stats {
                files: 8,
                dirs: 5,
                symlinks: 4,
                skipped: 1,
                bytes: 0
            },
            "threads={threads}"
        );
        assert_eq!(
            ino(&g.path().join("a/b/c/three")),
            ino(&d.path().join("a/b/c/three"))
        );
        // Files are the golden inodes: never chowned.
        assert_eq!(owner(&d.path().join("ro/file")), (0, 0, 0o444));
        // Directories are the pod's, with the golden modes.
        assert_eq!(owner(&d.path().join("ro")), (1234, 5678, 0o555));
        assert_eq!(owner(&d.path().join("a/b")).0, 1234);
        assert_eq!(owner(d.path()).0, 1234);
        // Symlinks recreated, owned by the pod, never followed.
        assert_eq!(
            std::fs::read_link(d.path().join("abs-link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::symlink_metadata(d.path().join("a/b/up"))
                .unwrap()
                .uid(),
            1234
        );
        assert!(!d.path().join("a/fifo").exists());
    }
}

#[test]
fn copy_gives_independent_files_owned_by_pod() {
    if skip_unless_root("copy_gives_independent_files_owned_by_pod") {
        return;
    }
    let g = TempDir::new("golden");
    sample_tree(g.path());
    let pod = Owner {
        mode: Some(0o2770),
        ..POD
    };
    let (d, stats) = populate_into(g.path(), Strategy::Copy, &pod, 3);
    check_same_tree(g.path(), d.path(), Some(0o2770));
    assert_eq!(stats.files, 8);
    assert_eq!(stats.bytes, 3 + 10_000 + 3 + 200_000 + 10 + 2 + 1);
    let (gf, df) = (g.path().join("a/b/c/three"), d.path().join("a/b/c/three"));
    assert_ne!(ino(&gf), ino(&df));
    assert_eq!(owner(&df), (1234, 5678, 0o644));
    assert_eq!(owner(&d.path().join("exec.sh")), (1234, 5678, 0o750));
    let (gm, dm) = (
        std::fs::metadata(&gf).unwrap(),
        std::fs::metadata(&df).unwrap(),
    );
    assert_eq!((gm.mtime(), gm.mtime_nsec()), (dm.mtime(), dm.mtime_nsec()));
    std::fs::write(&df, b"pod wrote").unwrap();
    assert_eq!(std::fs::read(&gf).unwrap(), vec![3u8; 200_000]);
}

#[test]
fn single_and_multi_threaded_agree_on_a_wide_deep_tree() {
    if skip_unless_root("single_and_multi_threaded_agree_on_a_wide_deep_tree") {
        return;
    }
    let g = TempDir::new("golden");
    for i in 0..40 {
        let mut p = g.path().join(format!("w{i}"));
        for j in 0..(i % 7) {
            p = p.join(format!("d{j}"));
        }
        std::fs::create_dir_all(&p).unwrap();
        for k in 0..5 {
            std::fs::write(p.join(format!("f{k}")), format!("{i}-{k}")).unwrap();
        }
    }
    let (d1, s1) = populate_into(g.path(), Strategy::Copy, &Owner::default(), 1);
    let (d4, s4) = populate_into(g.path(), Strategy::Copy, &Owner::default(), 4);
    assert_eq!(s1, s4);
    assert_eq!(describe(d1.path(), true), describe(d4.path(), true));
    check_same_tree(g.path(), d4.path(), None);
}

#[test]
fn non_empty_destination_is_an_error_with_the_path() {
    if skip_unless_root("non_empty_destination_is_an_error_with_the_path") {
        return;
    }
    let g = TempDir::new("golden");
    sample_tree(g.path());
    let d = TempDir::new("dest");
    std::fs::write(d.path().join("top.txt"), b"already").unwrap();
    let e = populate(g.path(), d.path(), Strategy::Hardlink, &POD, 2).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::EEXIST));
    assert!(e.to_string().contains("top.txt"), "{e}");
}

#[test]
fn golden_root_symlink_is_refused() {
    let g = TempDir::new("golden");
    let d = TempDir::new("dest");
    let link = g.path().join("link");
    std::os::unix::fs::symlink(d.path(), &link).unwrap();
    assert!(populate(&link, d.path(), Strategy::Copy, &Owner::default(), 1).is_err());
}

fn probe(store: &Path, target: &Path) -> Probe {
    ensure_probe_file(store).unwrap();
    let p = probe_pair(store, target).unwrap();
    assert_eq!(
        std::fs::read_dir(target).unwrap().count(),
        0,
        "the probe leaves nothing behind"
    );
    p
}

#[test]
fn probe_is_real_and_leaves_nothing() {
    if skip_unless_root("probe_is_real_and_leaves_nothing") {
        return;
    }
    let (s, t) = (TempDir::new("store"), TempDir::new("target"));
    let p = probe(s.path(), t.path());
    assert_eq!(p.link, Ok(()));
    ensure_probe_file(s.path()).unwrap();
    assert!(probe_pair(Path::new("/nonexistent-bindery"), t.path()).is_err());
}

#[test]
fn hardlink_across_filesystems_is_a_clear_error() {
    if skip_unless_root("hardlink_across_filesystems_is_a_clear_error") {
        return;
    }
    // /dev/shm is a tmpfs, never the filesystem of /tmp on these machines.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIP hardlink_across_filesystems_is_a_clear_error: no /dev/shm");
        return;
    }
    let g = TempDir::new("golden");
    sample_tree(g.path());
    let d = TempDir::new_in(shm, "dest");
    let p = probe(g.path(), d.path());
    assert_eq!(p.link, Err(Errno::EXDEV));
    assert!(p.reflink.is_err());
    std::fs::remove_file(g.path().join(PROBE_FILE)).unwrap();
    for s in [Strategy::Hardlink, Strategy::Reflink] {
        let e = populate(g.path(), d.path(), s, &POD, 2).unwrap_err();
        assert!(matches!(e, Error::InvalidField { .. }), "{e}");
        assert!(e.to_string().contains("EXDEV"), "{e}");
        std::fs::remove_dir_all(d.path()).unwrap();
        std::fs::create_dir(d.path()).unwrap();
    }
    let stats = populate(g.path(), d.path(), Strategy::Copy, &POD, 2).unwrap();
    assert_eq!(stats.files, 8);
}

#[test]
fn group_writable_owner_gives_fsgroup_modes() {
    if skip_unless_root("group_writable_owner_gives_fsgroup_modes") {
        return;
    }
    let g = TempDir::new("golden");
    sample_tree(g.path());
    let pod = Owner {
        uid: None,
        gid: Some(2000),
        mode: None,
        group_writable: true,
    };
    let (d, _) = populate_into(g.path(), Strategy::Copy, &pod, 2);
    assert_eq!(owner(&d.path().join("ro")), (0, 2000, 0o2575));
    assert_eq!(owner(&d.path().join("a/b")), (0, 2000, 0o2775));
    assert_eq!(owner(&d.path().join("ro/file")), (0, 2000, 0o664));
    assert_eq!(owner(&d.path().join("exec.sh")), (0, 2000, 0o770));
}

/// Reflink on XFS (reflink=1): BINDERY_XFS_DIR names a directory on such a mount.
#[test]
fn reflink_on_xfs() {
    let Some(xfs) = env_dir("BINDERY_XFS_DIR", "reflink_on_xfs") else {
        return;
    };
    let g = TempDir::new_in(&xfs, "golden");
    let t = TempDir::new_in(&xfs, "target");
    assert_eq!(probe(g.path(), t.path()).reflink, Ok(()));
    std::fs::remove_file(g.path().join(PROBE_FILE)).unwrap();
    sample_tree(g.path());
    for threads in [1, 4] {
        let d = TempDir::new_in(&xfs, "dest");
        let stats = populate(g.path(), d.path(), Strategy::Reflink, &POD, threads).unwrap();
        assert_eq!(stats.files, 8);
        check_same_tree(g.path(), d.path(), None);
        let (gf, df) = (g.path().join("a/b/c/three"), d.path().join("a/b/c/three"));
        assert_ne!(ino(&gf), ino(&df));
        assert_eq!(owner(&df), (1234, 5678, 0o644));
        std::fs::write(&df, b"pod wrote").unwrap();
        assert_eq!(std::fs::read(&gf).unwrap(), vec![3u8; 200_000]);
        let d2 = TempDir::new_in(&xfs, "dest");
        populate(g.path(), d2.path(), Strategy::Hardlink, &POD, threads).unwrap();
        check_same_tree(g.path(), d2.path(), None);
    }
}

/// btrfs: the store keeps a read-only probe subvolume beside its probe file:
/// snapshots, FICLONE and linkat (of the plain probe file, as of a version
/// kept as a plain directory for hardlink) all work. Nothing is left behind.
#[test]
fn snapshot_probe_on_btrfs() {
    let Some(b) = env_dir("BINDERY_BTRFS_DIR", "snapshot_probe_on_btrfs") else {
        return;
    };
    let g = TempDir::new_in(&b, "golden");
    let t = TempDir::new_in(&b, "target");
    let p = probe(g.path(), t.path());
    assert_eq!(p.snapshot, Ok(()), "{p:?}");
    assert_eq!(p.reflink, Ok(()), "{p:?}");
    assert_eq!(p.link, Ok(()), "{p:?}");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    let sub = crate::sys::fs::open_dir(&g.path().join(PROBE_SUBVOLUME)).unwrap();
    assert!(crate::sys::btrfs::is_read_only(sub.as_fd()).unwrap());
    // Again, on the existing probe subvolume.
    assert_eq!(probe(g.path(), t.path()), p);
}

/// tmpfs has no FICLONE: reflink fails clearly, hardlink and copy work.
#[test]
fn strategies_on_tmpfs() {
    let Some(tmpfs) = env_dir("BINDERY_TMPFS_DIR", "strategies_on_tmpfs") else {
        return;
    };
    let g = TempDir::new_in(&tmpfs, "golden");
    let t = TempDir::new_in(&tmpfs, "target");
    let p = probe(g.path(), t.path());
    assert!(
        p.reflink.is_err() && p.link.is_ok() && p.snapshot.is_err(),
        "{p:?}"
    );
    std::fs::remove_file(g.path().join(PROBE_FILE)).unwrap();
    sample_tree(g.path());
    let d = TempDir::new_in(&tmpfs, "dest");
    let e = populate(g.path(), d.path(), Strategy::Reflink, &POD, 2).unwrap_err();
    assert!(e.to_string().contains("FICLONE"), "{e}");
    for s in [Strategy::Hardlink, Strategy::Copy] {
        let d = TempDir::new_in(&tmpfs, "dest");
        populate(g.path(), d.path(), s, &POD, 2).unwrap();
        check_same_tree(g.path(), d.path(), None);
    }
}

/// Threads are started only for a tree with a subdirectory; a flat tree
/// (files, symlinks, even one to a directory) is copied on the calling thread.
#[test]
fn only_trees_with_subdirectories_get_threads() {
    let t = TempDir::new("flat");
    let has = |p: &Path| has_subdir(fs::open_dir(p).unwrap().as_fd());
    assert!(!has(t.path()));
    std::fs::write(t.path().join("one"), b"1").unwrap();
    std::os::unix::fs::symlink("/etc", t.path().join("to-a-dir")).unwrap();
    assert!(!has(t.path()));
    let dest = TempDir::new("flat-dest");
    let stats = populate(t.path(), dest.path(), Strategy::Copy, &Owner::default(), 4).unwrap();
    assert_eq!((stats.files, stats.symlinks), (1, 1));
    std::fs::create_dir(t.path().join("sub")).unwrap();
    assert!(has(t.path()));
}
