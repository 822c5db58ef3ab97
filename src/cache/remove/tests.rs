//! Unit tests of `cache/remove.rs`.

use super::parallel::remove_tree_with;
use super::trash::{move_to_trash, Trash};
use super::*;
use crate::cache::testutil::*;
use std::fs as stdfs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::Duration;

fn chmod(p: &Path, mode: u32) {
    stdfs::set_permissions(p, stdfs::Permissions::from_mode(mode)).unwrap();
}

/// A pod's tree with symlinks pointing out of it (at `outside`), read-only and 000 dirs.
fn hostile_tree(root: &Path, outside: &Path) {
    sample_tree(root);
    symlink(outside, root.join("to-outside-dir")).unwrap();
    symlink(outside.join("precious"), root.join("to-outside-file")).unwrap();
    symlink(outside, root.join("a/b/c/deep-to-outside")).unwrap();
    stdfs::create_dir_all(root.join("locked/inner")).unwrap();
    stdfs::write(root.join("locked/inner/f"), b"x").unwrap();
    chmod(&root.join("locked/inner"), 0o000);
    chmod(&root.join("locked"), 0o000);
    chmod(&root.join("a/b"), 0o555);
}

fn outside_dir() -> TempDir {
    let o = TempDir::new("outside");
    stdfs::write(o.path().join("precious"), b"keep me").unwrap();
    stdfs::create_dir(o.path().join("sub")).unwrap();
    o
}

fn outside_intact(o: &Path) {
    assert_eq!(stdfs::read(o.join("precious")).unwrap(), b"keep me");
    assert!(o.join("sub").is_dir());
}

#[test]
fn removes_everything_and_follows_no_symlink() {
    let o = outside_dir();
    let t = TempDir::new("pod");
    let tree = t.path().join("vol");
    stdfs::create_dir(&tree).unwrap();
    hostile_tree(&tree, o.path());
    remove_tree(&tree).unwrap();
    assert!(!tree.exists());
    outside_intact(o.path());
    // Idempotent.
    remove_tree(&tree).unwrap();
    remove_tree(&t.path().join("never/existed")).unwrap();
}

/// A wide, deep tree around the hostile one: enough subdirectories at the
/// top and below for every thread, symlinks to outside at every level.
fn wide_hostile_tree(root: &Path, outside: &Path) {
    hostile_tree(root, outside);
    for i in 0..30 {
        let d = root.join(format!("pkg-{i}/lib/sub"));
        stdfs::create_dir_all(&d).unwrap();
        stdfs::write(d.join("f"), b"x").unwrap();
        stdfs::write(root.join(format!("pkg-{i}/index")), b"x").unwrap();
        symlink(outside, root.join(format!("pkg-{i}/lib/to-outside"))).unwrap();
    }
    chmod(&root.join("pkg-3/lib"), 0o555);
    chmod(&root.join("pkg-4/lib/sub"), 0o000);
}

#[test]
fn parallel_removal_is_as_safe_as_the_walk() {
    for threads in [2, 3, 8] {
        let o = outside_dir();
        let t = TempDir::new("pod");
        let tree = t.path().join("vol");
        stdfs::create_dir(&tree).unwrap();
        wide_hostile_tree(&tree, o.path());
        // Narrow at the top: the split goes down a level to find work.
        let narrow = t.path().join("narrow");
        wide_hostile_tree(&narrow.join("only"), o.path());
        for p in [&tree, &narrow] {
            remove_tree_with(p, threads).unwrap();
            assert!(!p.exists(), "{threads} threads: {}", p.display());
        }
        outside_intact(o.path());
        remove_tree_with(&tree, threads).unwrap();
    }
}

/// The split hands out subtrees that do not overlap, never a symlink, and
/// goes down only while the top is too narrow for the threads.
#[test]
fn the_split_hands_out_disjoint_subtrees() {
    let o = outside_dir();
    let t = TempDir::new("split");
    let root = t.path().join("vol");
    for i in 0..20 {
        stdfs::create_dir_all(root.join(format!("only/d{i:02}/x"))).unwrap();
    }
    stdfs::write(root.join("only/file"), b"x").unwrap();
    symlink(o.path(), root.join("link-dir")).unwrap();
    symlink(o.path(), root.join("only/link-dir")).unwrap();
    let fd = fs::open_dir(&root).unwrap();
    let names = |threads| {
        let mut v: Vec<PathBuf> = parallel::split(&fd, &root, threads)
            .into_iter()
            .map(|(_, _, p)| p.strip_prefix(&root).unwrap().to_path_buf())
            .collect();
        v.sort();
        v
    };
    // One thread wants 8 items: "only" is too few, its 20 children are enough.
    let want: Vec<PathBuf> = (0..20)
        .map(|i| PathBuf::from(format!("only/d{i:02}")))
        .collect();
    assert_eq!(names(1), want);
    // 3 threads want 24: one more level, the 20 "x" dirs (then the depth limit).
    let deeper: Vec<PathBuf> = (0..20)
        .map(|i| PathBuf::from(format!("only/d{i:02}/x")))
        .collect();
    assert_eq!(names(3), deeper);
    outside_intact(o.path());
    assert!(
        root.join("only/d00/x").is_dir(),
        "the split removes nothing"
    );
}

#[test]
fn a_symlink_at_the_top_is_removed_not_followed() {
    let o = outside_dir();
    let t = TempDir::new("pod");
    let link = t.path().join("vol");
    symlink(o.path(), &link).unwrap();
    remove_tree(&link).unwrap();
    assert!(stdfs::symlink_metadata(&link).is_err());
    outside_intact(o.path());
    let f = t.path().join("file");
    stdfs::write(&f, b"x").unwrap();
    remove_tree(&f).unwrap();
    assert!(!f.exists());
}

#[test]
fn deep_tree_beyond_the_fd_budget() {
    let t = TempDir::new("deep");
    let mut p = t.path().join("vol");
    for i in 0..(3 * MAX_OPEN_FDS + 7) {
        p = p.join(format!("d{i}"));
    }
    stdfs::create_dir_all(&p).unwrap();
    stdfs::write(p.join("leaf"), b"x").unwrap();
    remove_tree(&t.path().join("vol")).unwrap();
    assert!(!t.path().join("vol").exists());
}

#[test]
fn mode_000_dirs_without_dac_override() {
    if skip_unless_root("mode_000_dirs_without_dac_override") {
        return;
    }
    // A pod (uid 65534) locked itself out of its own dirs; remove as that uid, which
    // has no capability, so only the fchmod fallbacks can get in.
    let t = TempDir::new("nobody");
    chmod(t.path(), 0o777);
    let tree = t.path().join("vol");
    stdfs::create_dir_all(tree.join("x/y/z")).unwrap();
    stdfs::write(tree.join("x/y/z/f"), b"x").unwrap();
    stdfs::write(tree.join("x/f"), b"x").unwrap();
    let ok = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&tree)
        .status()
        .unwrap();
    assert!(ok.success());
    chmod(&tree.join("x/y/z"), 0o000);
    chmod(&tree.join("x/y"), 0o000);
    chmod(&tree.join("x"), 0o500);
    // SAFETY: the child only calls remove_tree and _exit; glibc's malloc is fork-safe.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let id = nix::unistd::Gid::from_raw(65534);
            let uid = nix::unistd::Uid::from_raw(65534);
            let code = if nix::unistd::setresgid(id, id, id).is_ok()
                && nix::unistd::setresuid(uid, uid, uid).is_ok()
                && remove_tree(&tree).is_ok()
            {
                0
            } else {
                1
            };
            // SAFETY: _exit ends the forked child without running the parent's atexit state.
            unsafe { nix::libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    assert!(!tree.exists());
}

/// Mounts inside the tree (needs a private mount namespace: BINDERY_MOUNT_TESTS=1).
#[test]
fn never_crosses_into_a_mount() {
    if std::env::var_os("BINDERY_MOUNT_TESTS").is_none() {
        eprintln!("SKIP never_crosses_into_a_mount: set BINDERY_MOUNT_TESTS=1 inside `unshare --mount --propagation private`");
        return;
    }
    for threads in [1, 3] {
        let o = outside_dir();
        let t = TempDir::new("pod");
        let tree = t.path().join("vol");
        stdfs::create_dir_all(tree.join("sub/tmpfs")).unwrap();
        stdfs::create_dir_all(tree.join("sub/bind")).unwrap();
        stdfs::write(tree.join("sub/file"), b"x").unwrap();
        let run = |args: &[&str]| {
            assert!(Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success())
        };
        let tm = tree.join("sub/tmpfs");
        let bd = tree.join("sub/bind");
        run(&["mount", "-t", "tmpfs", "bindery-test", tm.to_str().unwrap()]);
        stdfs::write(tm.join("in-tmpfs"), b"x").unwrap();
        // A bind mount of a directory on the same filesystem: st_dev alone would not see it.
        run(&[
            "mount",
            "--bind",
            o.path().to_str().unwrap(),
            bd.to_str().unwrap(),
        ]);
        let e = remove_tree_with(&tree, threads).unwrap_err();
        assert!(
            e.to_string().contains("2 entries could not be removed"),
            "{e}"
        );
        assert!(tm.join("in-tmpfs").exists());
        outside_intact(o.path());
        assert!(!tree.join("sub/file").exists());
        // The tree's own top being a mount point is refused outright.
        let e = remove_tree_with(&tm, threads).unwrap_err();
        assert!(e.to_string().contains("mount point"), "{e}");
        run(&["umount", tm.to_str().unwrap()]);
        run(&["umount", bd.to_str().unwrap()]);
        remove_tree_with(&tree, threads).unwrap();
        assert!(!tree.exists());
        outside_intact(o.path());
    }
}

#[test]
fn trash_moves_fast_and_empties_leftovers_at_start() {
    let base = TempDir::new("trash");
    let trash_dir = base.path().join("trash");
    // Leftovers from a "crash": a tree and a file already in the trash.
    stdfs::create_dir_all(trash_dir.join("old/x/y")).unwrap();
    stdfs::write(trash_dir.join("old/x/y/f"), b"x").unwrap();
    stdfs::write(trash_dir.join("oldfile"), b"x").unwrap();
    let o = outside_dir();
    let trash = Trash::new(&trash_dir).unwrap();
    assert!(trash.wait_idle(Duration::from_secs(10)));
    assert_eq!(stdfs::read_dir(&trash_dir).unwrap().count(), 0);

    let vol = base.path().join("vol");
    stdfs::create_dir(&vol).unwrap();
    hostile_tree(&vol, o.path());
    assert!(trash.discard(&vol, 0).unwrap());
    assert!(!vol.exists());
    assert!(!trash.discard(&vol, 0).unwrap());
    assert!(trash.wait_idle(Duration::from_secs(10)));
    assert_eq!(stdfs::read_dir(&trash_dir).unwrap().count(), 0);
    outside_intact(o.path());
}

/// The trash deletes below the daemon's priority: nice 10, idle I/O class.
#[test]
fn the_trash_deletes_in_the_background() {
    use crate::sys::process::{thread_priority, BACKGROUND_NICE, IOPRIO_CLASS_IDLE};
    let base = TempDir::new("trash-prio");
    let _trash = Trash::new(&base.path().join("trash")).unwrap();
    let trash_threads = || -> Vec<i32> {
        stdfs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|e| {
                stdfs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "bindery-trash")
            })
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    };
    // Every trash thread (other tests make theirs) lowers its own priority
    // first thing; wait for that, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tids = trash_threads();
        let prios: Vec<_> = tids.iter().map(|t| thread_priority(*t)).collect();
        if !tids.is_empty()
            && prios.iter().all(|p| {
                matches!(p, Ok(p) if *p == (BACKGROUND_NICE, IOPRIO_CLASS_IDLE)) || p.is_err()
            })
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "threads named bindery-trash: {tids:?} {prios:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn move_to_trash_across_filesystems_fails() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIP move_to_trash_across_filesystems_fails: no /dev/shm");
        return;
    }
    let t = TempDir::new_in(shm, "trash");
    let v = TempDir::new("vol");
    let e = move_to_trash(v.path(), t.path()).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::EXDEV), "{e}");
    assert!(v.path().exists());
    assert_eq!(
        move_to_trash(&v.path().join("missing"), t.path()).unwrap(),
        None
    );
}

/// btrfs: subvolumes met by `remove_tree` are destroyed whole: a read-only one
/// (a golden version: emptying it would fail with EROFS), writable ones below a
/// plain directory, one a pod nested in its snapshot, a read-only one holding
/// another (made writable, emptied, removed); nothing outside is touched.
#[test]
fn subvolumes_are_destroyed_whole() {
    let Some(dir) = env_dir("BINDERY_BTRFS_DIR", "subvolumes_are_destroyed_whole") else {
        return;
    };
    let top = TempDir::new_in(&dir, "subvols");
    let outside = outside_dir();
    let subvolume = |parent: &Path, name: &str| {
        let fd = fs::open_dir(parent).unwrap();
        btrfs::create_subvolume(fd.as_fd(), &CString::new(name).unwrap()).unwrap();
        parent.join(name)
    };
    let read_only = |p: &Path| {
        let fd = fs::open_dir(p).unwrap();
        btrfs::set_read_only(fd.as_fd(), true).unwrap();
        assert!(btrfs::is_read_only(fd.as_fd()).unwrap());
    };

    let ro = subvolume(top.path(), "ro");
    sample_tree(&ro);
    read_only(&ro);
    assert!(
        stdfs::write(ro.join("new"), b"x").is_err(),
        "root gets EROFS"
    );
    remove_tree(&ro).unwrap();
    assert!(!ro.exists());

    let plain = top.path().join("plain");
    stdfs::create_dir(&plain).unwrap();
    let outer = subvolume(&plain, "outer");
    hostile_tree(&outer, outside.path());
    let inner = subvolume(&outer, "inner");
    sample_tree(&inner);
    read_only(&inner);
    // Side by side: the parallel removal's threads destroy them as items.
    for i in 0..4 {
        let s = subvolume(&plain, &format!("pod-{i}"));
        sample_tree(&s);
        if i % 2 == 0 {
            read_only(&s);
        }
    }
    remove_tree_with(&plain, 3).unwrap();
    assert!(!plain.exists());
    outside_intact(outside.path());

    let holder = subvolume(top.path(), "holder");
    sample_tree(&subvolume(&holder, "nested"));
    read_only(&holder);
    remove_tree(&holder).unwrap();
    assert!(!holder.exists());
    assert_eq!(stdfs::read_dir(top.path()).unwrap().count(), 0);
}
