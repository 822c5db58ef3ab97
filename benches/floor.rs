//! The syscall floor of a hardlink population, for benches/cache_volumes.sh.
//!
//! ```text
//! floor SRC DST [THREADS]
//! cargo bench --bench floor -- SRC DST [THREADS]
//! rustc -C opt-level=3 --edition 2021 benches/floor.rs -o floor   # as the bench script does
//! ```
//!
//! Recreates the tree at SRC as DST (which must not exist) on the same
//! filesystem with the fewest syscalls a correct implementation needs:
//! `getdents64` with a 64 KiB buffer, `openat(O_NOFOLLOW)` and `fstat` per
//! directory (for its mode), `mkdirat` per directory, `linkat` per file,
//! `readlinkat` + `symlinkat` per symlink (bindery recreates symlinks too);
//! fifos, sockets and devices are skipped. Everything is fd-relative, nothing
//! is followed. No ownership, no timestamps, no state, no error recovery.
//!
//! THREADS (default 1, the floor) splits the top-level entries round-robin
//! over that many threads, to see whether parallel linking helps on a
//! filesystem at all.
//!
//! Prints one line: `floor: F files, D dirs, S symlinks, T thread(s) in X.XXXXXX s`
//! (the time covers the copy only, not process start).
//!
//! Only std: the libc functions are declared here, so this file builds with a
//! plain `rustc` (no cargo, no build lock) as well as a cargo bench target.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int, c_long, c_uint};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

const AT_FDCWD: c_int = -100;
const O_RDONLY: c_int = 0;
const O_DIRECTORY: c_int = 0o200000;
const O_NOFOLLOW: c_int = 0o400000;
const O_CLOEXEC: c_int = 0o2000000;
const O_PATH: c_int = 0o10000000;
const SYS_GETDENTS64: c_long = 217; // x86_64
const DT_UNKNOWN: u8 = 0;
const DT_DIR: u8 = 4;
const DT_REG: u8 = 8;
const DT_LNK: u8 = 10;
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

extern "C" {
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, ...) -> c_int;
    fn mkdirat(dirfd: c_int, path: *const c_char, mode: c_uint) -> c_int;
    fn linkat(
        olddirfd: c_int,
        oldpath: *const c_char,
        newdirfd: c_int,
        newpath: *const c_char,
        flags: c_int,
    ) -> c_int;
    fn symlinkat(target: *const c_char, newdirfd: c_int, linkpath: *const c_char) -> c_int;
    fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, size: usize) -> isize;
    fn umask(mask: c_uint) -> c_uint;
    fn syscall(num: c_long, ...) -> c_long;
}

#[derive(Default, Clone, Copy)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
    }
}

fn fail(what: &str, name: &CStr) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} {name:?}: {e}"))
}

fn check(rc: c_int, what: &str, name: &CStr) -> io::Result<()> {
    if rc < 0 {
        Err(fail(what, name))
    } else {
        Ok(())
    }
}

fn open_at(dir: RawFd, name: &CStr, flags: c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; no mode argument is
    // needed without O_CREAT.
    let fd = unsafe { openat(dir, name.as_ptr(), flags | O_CLOEXEC | O_NOFOLLOW) };
    if fd < 0 {
        return Err(fail("openat", name));
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mode and file type bits of an open fd (one statx/fstat).
fn mode_of(fd: &OwnedFd) -> io::Result<u32> {
    let f = File::from(fd.try_clone()?);
    Ok(f.metadata()?.permissions().mode())
}

/// The entries of a directory fd, as (name, d_type), with raw getdents64 calls.
fn list(dir: RawFd, buf: &mut [u8]) -> io::Result<Vec<(CString, u8)>> {
    let mut out = Vec::new();
    loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe { syscall(SYS_GETDENTS64, dir, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let dtype = buf[off + 18];
            let name = CStr::from_bytes_until_nul(&buf[off + 19..off + reclen])
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad dirent"))?;
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                out.push((name.to_owned(), dtype));
            }
            off += reclen;
        }
    }
}

/// d_type of `name`, asking the filesystem when getdents did not say.
fn kind(dir: RawFd, name: &CStr, dtype: u8) -> io::Result<u8> {
    if dtype != DT_UNKNOWN {
        return Ok(dtype);
    }
    let fd = open_at(dir, name, O_PATH)?;
    Ok(match mode_of(&fd)? & S_IFMT {
        S_IFDIR => DT_DIR,
        S_IFREG => DT_REG,
        S_IFLNK => DT_LNK,
        _ => DT_UNKNOWN,
    })
}

/// Recreate entry `name` of `src` in `dst`.
fn entry(src: RawFd, dst: RawFd, name: &CStr, dtype: u8, c: &mut Counts) -> io::Result<()> {
    match kind(src, name, dtype)? {
        DT_DIR => {
            let s = open_at(src, name, O_RDONLY | O_DIRECTORY)?;
            let mode = mode_of(&s)? & 0o7777;
            // SAFETY: `name` is NUL-terminated and outlives the call.
            let rc = unsafe { mkdirat(dst, name.as_ptr(), mode) };
            check(rc, "mkdirat", name)?;
            let d = open_at(dst, name, O_RDONLY | O_DIRECTORY)?;
            c.dirs += 1;
            tree(s.as_raw_fd(), d.as_raw_fd(), c)
        }
        DT_REG => {
            // SAFETY: both names are NUL-terminated and outlive the call; flags 0
            // links a symlink itself, never its target.
            let rc = unsafe { linkat(src, name.as_ptr(), dst, name.as_ptr(), 0) };
            check(rc, "linkat", name)?;
            c.files += 1;
            Ok(())
        }
        DT_LNK => {
            let mut target = [0u8; 4097];
            // SAFETY: readlinkat writes at most 4096 bytes into the 4097-byte buffer.
            let n = unsafe {
                readlinkat(
                    src,
                    name.as_ptr(),
                    target.as_mut_ptr().cast(),
                    target.len() - 1,
                )
            };
            if n < 0 {
                return Err(fail("readlinkat", name));
            }
            target[n as usize] = 0;
            // SAFETY: `target` is NUL-terminated (set above), `name` too.
            let rc = unsafe { symlinkat(target.as_ptr().cast(), dst, name.as_ptr()) };
            check(rc, "symlinkat", name)?;
            c.symlinks += 1;
            Ok(())
        }
        _ => Ok(()), // fifos, sockets, devices: skipped
    }
}

/// Recreate the contents of directory `src` in directory `dst`.
fn tree(src: RawFd, dst: RawFd, c: &mut Counts) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    for (name, dtype) in list(src, &mut buf)? {
        entry(src, dst, &name, dtype, c)?;
    }
    Ok(())
}

fn run(src: &OsStr, dst: &OsStr, threads: usize) -> io::Result<Counts> {
    let src_c = CString::new(src.as_bytes())?;
    let dst_c = CString::new(dst.as_bytes())?;
    let s = open_at(AT_FDCWD, &src_c, O_RDONLY | O_DIRECTORY)?;
    let mode = mode_of(&s)? & 0o7777;
    // SAFETY: `dst_c` is NUL-terminated and outlives the call.
    let rc = unsafe { mkdirat(AT_FDCWD, dst_c.as_ptr(), mode) };
    check(rc, "mkdirat", &dst_c)?;
    let d = open_at(AT_FDCWD, &dst_c, O_RDONLY | O_DIRECTORY)?;
    let mut total = Counts {
        dirs: 1,
        ..Counts::default()
    };
    if threads <= 1 {
        tree(s.as_raw_fd(), d.as_raw_fd(), &mut total)?;
        return Ok(total);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let top = list(s.as_raw_fd(), &mut buf)?;
    let (sfd, dfd) = (s.as_raw_fd(), d.as_raw_fd());
    let results: Vec<io::Result<Counts>> = std::thread::scope(|scope| {
        let top = &top;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut c = Counts::default();
                    for (name, dtype) in top.iter().skip(t).step_by(threads) {
                        entry(sfd, dfd, name, *dtype, &mut c)?;
                    }
                    Ok(c)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("floor thread panicked"))
            .collect()
    });
    for r in results {
        total.add(r?);
    }
    Ok(total)
}

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // `cargo bench` appends `--bench`: ignore flags.
    let args: Vec<_> = args
        .into_iter()
        .filter(|a| !a.as_bytes().starts_with(b"--"))
        .collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: floor SRC DST [THREADS]   (DST must not exist; same filesystem as SRC)");
        std::process::exit(64);
    }
    let threads = match args.get(2).map(|t| t.to_string_lossy().parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=256).contains(&n) => n,
        Some(_) => {
            eprintln!("floor: THREADS must be 1..256");
            std::process::exit(64);
        }
    };
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { umask(0) };
    let started = Instant::now();
    match run(&args[0], &args[1], threads) {
        Ok(c) => println!(
            "floor: {} files, {} dirs, {} symlinks, {} thread(s) in {:.6} s",
            c.files,
            c.dirs,
            c.symlinks,
            threads,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
    }
}
