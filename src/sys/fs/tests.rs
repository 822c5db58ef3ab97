//! Unit tests of `sys/fs.rs`.

use super::*;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn b(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("bindery-fs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn open_dir_refuses_symlink() {
    let d = tmp("sym");
    std::os::unix::fs::symlink("/etc", d.join("l")).unwrap();
    // O_DIRECTORY|O_NOFOLLOW on a symlink: ENOTDIR (ELOOP on some kernels).
    let refused = |e: Errno| matches!(e, Errno::ENOTDIR | Errno::ELOOP);
    let e = open_dir(&d.join("l")).unwrap_err();
    assert!(refused(e.errno().unwrap()));
    assert!(e.to_string().contains("/l"));
    let fd = open_dir(&d).unwrap();
    assert!(refused(open_dir_at(b(&fd), &c("l")).unwrap_err()));
    assert!(refused(open_dir_at_no_xdev(b(&fd), &c("l")).unwrap_err()));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn link_symlink_readlink_roundtrip() {
    let d = tmp("link");
    std::fs::write(d.join("f"), b"x").unwrap();
    let fd = open_dir(&d).unwrap();
    link_at(b(&fd), &c("f"), b(&fd), &c("g")).unwrap();
    let (a, g) = (
        stat_at(b(&fd), &c("f")).unwrap(),
        stat_at(b(&fd), &c("g")).unwrap(),
    );
    assert_eq!(a.st_ino, g.st_ino);
    symlink_at(OsStr::from_bytes(b"../nowhere\n"), b(&fd), &c("s")).unwrap();
    assert_eq!(
        readlink_at(b(&fd), &c("s")).unwrap().as_bytes(),
        b"../nowhere\n"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn lock_is_exclusive_between_open_files() {
    let d = tmp("lock");
    let p = d.join(".lock");
    let g = lock_exclusive(&p).unwrap();
    let f = create_file(&p, false).unwrap();
    let again = Flock::lock(f, FlockArg::LockExclusiveNonblock);
    assert!(matches!(again, Err((_, Errno::EWOULDBLOCK))));
    drop(g);
    std::fs::remove_dir_all(&d).unwrap();
}
