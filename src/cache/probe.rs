//! Whether hardlink, reflink and snapshot population work between the golden store and
//! a pod's directory: found by doing it once with a probe file, never
//! inferred from device numbers.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info};
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::{btrfs, fs};

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The name of the probe file kept in the golden store's root.
pub const PROBE_FILE: &str = ".probe";

/// The golden store's probe subvolume on btrfs (empty, read-only), which the
/// snapshot probe takes a snapshot of, as a publish does of a version.
pub const PROBE_SUBVOLUME: &str = ".probe-subvolume";

/// What a real probe between the golden store and a pod's directory found: whether
/// `linkat` and `ioctl(FICLONE)` of a golden file into that directory work, and
/// whether a btrfs snapshot of a golden subvolume can be made there. Never
/// inferred from st_dev: hardlinks fail across two mounts of one filesystem, and
/// FICLONE works across them on Linux >= 5.18.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub link: std::result::Result<(), Errno>,
    pub reflink: std::result::Result<(), Errno>,
    pub snapshot: std::result::Result<(), Errno>,
}

/// Make sure the store's probe file exists (4 KiB, root, read-only) and, where
/// the store is on btrfs, its probe subvolume, for `probe_pair`.
pub fn ensure_probe_file(store: &Path) -> Result<()> {
    write_probe_file(store)?;
    let root = fs::open_dir(store)?;
    if !btrfs::is_btrfs(root.as_fd()).unwrap_or(false) {
        return Ok(());
    }
    let sub = store.join(PROBE_SUBVOLUME);
    let name = cstring(PROBE_SUBVOLUME.as_bytes(), store)?;
    match btrfs::create_subvolume(root.as_fd(), &name) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => {
            info!("{}: no probe subvolume ({e}): no snapshots", sub.display());
            return Ok(());
        }
    }
    let fd = fs::open_dir(&sub)?;
    if btrfs::is_subvolume(fd.as_fd()).unwrap_or(false) {
        btrfs::set_read_only(fd.as_fd(), true)
            .map_err(|e| Error::sys("make probe subvolume read-only", &sub, e))?;
    }
    Ok(())
}

fn write_probe_file(dir: &Path) -> Result<()> {
    let dfd = fs::open_dir(dir)?;
    let name = cstring(PROBE_FILE.as_bytes(), dir)?;
    let tmp = format!("{PROBE_FILE}.tmp-{}", std::process::id());
    let ctmp = cstring(tmp.as_bytes(), dir)?;
    if fs::stat_at(dfd.as_fd(), &name).is_ok() {
        return Ok(());
    }
    let _ = fs::unlink_at(dfd.as_fd(), &ctmp, false);
    let fd = fs::create_file_at(dfd.as_fd(), &ctmp, 0o400)
        .map_err(|e| Error::sys("create probe file", dir.join(&tmp), e))?;
    let mut f = File::from(fd);
    f.write_all(&[0x5a; 4096])
        .map_err(|e| Error::io("write probe file", dir.join(&tmp), e))?;
    drop(f);
    fs::rename_at(
        dfd.as_fd(),
        OsStr::new(&tmp),
        dfd.as_fd(),
        OsStr::new(PROBE_FILE),
    )
    .map_err(|e| Error::sys("rename probe file", dir.join(&tmp), e))
}

/// Link, clone and snapshot the store's probe into `target` (then remove the
/// copies): what hardlink, reflink and snapshot population would do there.
pub fn probe_pair(store: &Path, target: &Path) -> Result<Probe> {
    let sfd = fs::open_dir(store)?;
    let subvolume = fs::open_dir(&store.join(PROBE_SUBVOLUME))
        .ok()
        .filter(|fd| btrfs::is_subvolume(fd.as_fd()).unwrap_or(false));
    let tfd = fs::open_dir(target)?;
    let src_name = cstring(PROBE_FILE.as_bytes(), store)?;
    let seq = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
    let base = format!(".bindery-probe-{}-{seq}", std::process::id());
    let (lname, rname, sname) = (
        cstring(format!("{base}-l").as_bytes(), target)?,
        cstring(format!("{base}-r").as_bytes(), target)?,
        cstring(format!("{base}-s").as_bytes(), target)?,
    );
    let link = fs::link_at(sfd.as_fd(), &src_name, tfd.as_fd(), &lname);
    if link.is_ok() {
        let _ = fs::unlink_at(tfd.as_fd(), &lname, false);
    }
    let src = fs::open_file_at(sfd.as_fd(), &src_name)
        .map_err(|e| Error::sys("open probe file", store.join(PROBE_FILE), e))?;
    let dst = fs::create_file_at(tfd.as_fd(), &rname, 0o600)
        .map_err(|e| Error::sys("create probe file", target.join(format!("{base}-r")), e))?;
    let reflink = fs::ficlone(dst.as_fd(), src.as_fd());
    drop(dst);
    if let Err(e) = fs::unlink_at(tfd.as_fd(), &rname, false) {
        debug!("cannot remove probe in {}: {e}", target.display());
    }
    let snapshot = match subvolume {
        // No subvolume to take: the store is not on btrfs.
        None => Err(Errno::EOPNOTSUPP),
        Some(sub) => {
            let made = btrfs::snapshot(sub.as_fd(), tfd.as_fd(), &sname, false);
            if made.is_ok() {
                if let Err(e) = btrfs::destroy(tfd.as_fd(), &sname) {
                    debug!("cannot destroy probe snapshot in {}: {e}", target.display());
                }
            }
            made
        }
    };
    let p = Probe {
        link,
        reflink,
        snapshot,
    };
    let say =
        |r: std::result::Result<(), Errno>| r.map_or_else(|e| e.to_string(), |()| "works".into());
    info!(
        "probe golden store {} -> {}: linkat {}, FICLONE {}, snapshot {}",
        store.display(),
        target.display(),
        say(p.link),
        say(p.reflink),
        say(p.snapshot),
    );
    Ok(p)
}

fn cstring(bytes: &[u8], ctx: &Path) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::invalid("path", format!("{}: NUL byte", ctx.display())))
}
